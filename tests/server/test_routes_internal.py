"""``/internal/...``: the model folders and the file lists ComfyUI's official frontend asks its server for."""

from __future__ import annotations

import os


async def test_folder_paths_names_every_model_folder_with_its_directories(client, tmp_path):
    folders = await (await client.get("/internal/folder_paths")).json()
    assert str(tmp_path / "models" / "checkpoints") in folders["checkpoints"]
    assert str(tmp_path / "models" / "diffusion_models") in folders["diffusion_models"]
    assert all(isinstance(paths, list) and all(isinstance(p, str) for p in paths) for paths in folders.values())
    experiment = await (await client.get("/api/experiment/models")).json()
    assert set(folders) == {entry["name"] for entry in experiment}, "the same folders /experiment/models lists"
    assert await (await client.get("/api/internal/folder_paths")).json() == folders


async def test_files_lists_a_folders_own_files_newest_first(make_client, tmp_path):
    client = await make_client(starter_files=False)
    inputs = tmp_path / "input"
    (inputs / "sub").mkdir(parents=True, exist_ok=True)
    for age, name in enumerate(("new.png", "middle.png", "old.png")):
        (inputs / name).write_bytes(b"x")
        os.utime(inputs / name, (1_700_000_000 - age * 60, 1_700_000_000 - age * 60))
    (inputs / ".hidden.png").write_bytes(b"x")
    (inputs / "sub" / "nested.png").write_bytes(b"x")
    assert await (await client.get("/internal/files/input")).json() == ["new.png", "middle.png", "old.png"]
    assert await (await client.get("/internal/files/temp")).json() == []


async def test_files_refuses_any_other_folder(client):
    for name in ("models", "user", "..", "input%2F.."):
        reply = await client.get(f"/internal/files/{name}")
        assert reply.status in (400, 404), name
        if reply.status == 400:
            assert "input, output, temp" in (await reply.json())["error"]["details"]
