"""Each app has its own runtime: two servers in one process never see each other's folders."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient

from tests.server.conftest import MakeClient, wait_for_history


def prompt(prefix: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def run(client: TestClient, prefix: str) -> None:
    response = await client.post("/prompt", json={"prompt": prompt(prefix)})
    assert response.status == 200, await response.text()
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["status"]["status_str"] == "success"


async def test_two_apps_in_one_process_keep_their_own_folders(make_client: MakeClient, tmp_path: Path) -> None:
    first_base, second_base = tmp_path / "first", tmp_path / "second"
    for base, name in ((first_base, "mine.safetensors"), (second_base, "theirs.safetensors")):
        (base / "models" / "checkpoints").mkdir(parents=True)
        (base / "models" / "checkpoints" / name).write_bytes(b"x")
    first = await make_client(plugins=True, base_dir=first_base, starter_files=False)
    second = await make_client(plugins=True, base_dir=second_base, starter_files=False)

    assert await (await first.get("/models/checkpoints")).json() == ["mine.safetensors"]
    assert await (await second.get("/models/checkpoints")).json() == ["theirs.safetensors"]
    info = await (await second.get("/object_info/CheckpointLoaderSimple")).json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["theirs.safetensors"]

    await run(first, "from_first")
    await run(second, "from_second")
    assert [p.name for p in (first_base / "output").iterdir()] == ["from_first_00001_.png"]
    assert [p.name for p in (second_base / "output").iterdir()] == ["from_second_00001_.png"]
