"""Prompts on a local Ray cluster: two worker actors behind the real server, on loopback.

One Ray instance per module (starting one costs seconds); every test builds a server whose
``ray-local:2`` backend joins it with two fresh actors. The stand-in nodes (``Wait`` is slow and
interruptible, ``Previewing`` reports previews) are model-free; placement and warm model caches are
shown with the built-in nodes on tiny SD1.5 checkpoints (``diffusion.tiny``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from diffusion.tiny import write_tiny_checkpoint
from nodes.runtime_options import RuntimeOptions
from server.app import create_app
from server.config import REPO_ROOT, ServerConfig
from server.distributed import ray_backend
from server.distributed.spec import parse_workers
from server.keys import WORKER
from tests.server.conftest import wait_for_history, wait_prompt, wait_until
from tests.server.standin_nodes import standin_registry

PREVIEW_PROMPT = {
    "1": {"class_type": "Previewing", "inputs": {"steps": 3, "text": "p"}},
    "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
}


def image_prompt(prefix: str, seconds: float = 0.0) -> dict[str, Any]:
    """EmptyImage → ImageInvert → SaveImage, after an optional wait (a prompt that writes a file)."""
    return {
        "1": {"class_type": "Wait", "inputs": {"seconds": seconds, "text": prefix}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": ["1", 0]}},
    }


def txt2img(ckpt_name: str, seed: int) -> dict[str, Any]:
    """The default text-to-image workflow at 64 px, 2 steps, saving under a name of its own."""
    model, clip = ["4", 0], ["4", 1]
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "seed": seed,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"{ckpt_name}-{seed}"}},
    }


def standin_setup(base: Path, cache_budget_bytes: int) -> ray_backend.WorkerSetup:
    return ray_backend.WorkerSetup(RuntimeOptions(base_dir=base), cache_budget_bytes, registry=standin_registry())


def cached_nodes(entry: dict[str, Any]) -> list[str]:
    return next(data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    yield
    ray.shutdown()


async def start_client(config: ServerConfig) -> TestClient:
    client = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def ray_client(make_client):
    return await make_client(workers="ray-local:2")


def backend_of(client):
    return client.server.app[WORKER].backend


async def submit(client, prompt: dict[str, Any], **extra: Any) -> str:
    response = await client.post("/prompt", json={"prompt": prompt, **extra})
    body = await response.json()
    assert response.status == 200, body
    return body["prompt_id"]


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async def holds() -> bool:
        return check()

    await wait_until(holds, timeout)


async def placed(client, prompt_id: str) -> str:
    """The worker a prompt runs on, once it has been placed."""
    backend = backend_of(client)
    await eventually(lambda: backend.running_on(prompt_id) is not None)
    return backend.running_on(prompt_id)


async def test_concurrent_prompts_run_on_both_workers_and_write_their_outputs(ray_client, tmp_path: Path):
    ids = [await submit(ray_client, image_prompt(f"img{index}", seconds=0.4)) for index in range(4)]
    entries = [await wait_for_history(ray_client, prompt_id, timeout=30) for prompt_id in ids]
    assert [entry["status"]["status_str"] for entry in entries] == ["success"] * 4
    for index, entry in enumerate(entries):
        (image,) = entry["outputs"]["4"]["images"]
        assert image["filename"] == f"img{index}_00001_.png" and (tmp_path / "output" / image["filename"]).is_file()
    served = await ray_client.get("/view", params={"filename": "img0_00001_.png", "type": "output"})
    assert served.status == 200 and (await served.read()).startswith(b"\x89PNG")
    books = [backend_of(ray_client).dispatcher.book(name) for name in ("worker-1", "worker-2")]
    assert all(book is not None and book.finished >= 1 for book in books), books


async def frames_of_one_prompt(client, prompt: dict[str, Any]) -> list[Any]:
    """Every frame one previews-capable client sees for a prompt, with timestamps and ids made stable."""
    ws = await client.ws_connect("/ws?clientId=watcher")
    await ws.receive_json()
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    while (await ws.receive_json(timeout=10))["type"] != "feature_flags":
        pass
    prompt_id = await submit(client, prompt, client_id="watcher")
    frames: list[Any] = []
    while True:
        message = await ws.receive(timeout=30)
        if message.type is WSMsgType.BINARY:
            frames.append(message.data.replace(prompt_id.encode(), b"PID"))
            continue
        data = json.loads(message.data.replace(prompt_id, "PID"))
        if data["type"] == "status":
            continue
        data["data"].pop("timestamp", None)
        frames.append(data)
        if data["type"] == "executing" and data["data"]["node"] is None:
            await ws.close()
            return frames


async def test_events_reach_websocket_clients_exactly_as_in_process(make_client, tmp_path: Path):
    in_process = await frames_of_one_prompt(await make_client(), PREVIEW_PROMPT)
    on_ray = await frames_of_one_prompt(
        await make_client(workers="ray-local:2", base_dir=tmp_path / "ray"), PREVIEW_PROMPT
    )
    assert sum(isinstance(frame, bytes) for frame in on_ray) == 3
    assert on_ray == in_process


async def test_interrupt_reaches_the_worker_running_that_prompt_only(ray_client):
    first = await submit(ray_client, wait_prompt(4.0, "first"))
    second = await submit(ray_client, wait_prompt(8.0, "second"))
    first_worker, second_worker = await placed(ray_client, first), await placed(ray_client, second)
    assert first_worker != second_worker
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await ray_client.post("/interrupt", json={"prompt_id": second})
    stopped = await wait_for_history(ray_client, second, timeout=10)
    assert time.monotonic() - started < 3.0
    assert stopped["status"]["messages"][-1][0] == "execution_interrupted"
    finished = await wait_for_history(ray_client, first, timeout=15)
    assert finished["status"]["status_str"] == "success" and finished["outputs"]["2"]["text"] == ["first"]


async def test_a_worker_killed_mid_prompt_is_replaced_and_its_prompt_retried_elsewhere(ray_client):
    backend = backend_of(ray_client)
    ids = [await submit(ray_client, wait_prompt(1.5, f"p{index}")) for index in range(3)]
    victim = await placed(ray_client, ids[0])
    await asyncio.sleep(0.4)
    ray.kill(backend.actors()[victim])
    entries = [await wait_for_history(ray_client, prompt_id, timeout=40) for prompt_id in ids]
    assert [entry["status"]["status_str"] for entry in entries] == ["success"] * 3
    assert [entry["outputs"]["2"]["text"] for entry in entries] == [["p0"], ["p1"], ["p2"]]
    assert victim not in backend.actors() and len(backend.actors()) == 2
    queue = await (await ray_client.get("/queue")).json()
    assert queue == {"queue_running": [], "queue_pending": []}


async def test_a_prompt_that_loses_its_worker_twice_is_reported_failed_and_the_pool_recovers(ray_client):
    backend = backend_of(ray_client)
    prompt_id = await submit(ray_client, wait_prompt(3.0, "doomed"))
    first = await placed(ray_client, prompt_id)
    await asyncio.sleep(0.3)
    ray.kill(backend.actors()[first])
    await eventually(lambda: backend.running_on(prompt_id) not in (None, first))
    ray.kill(backend.actors()[backend.running_on(prompt_id)])
    entry = await wait_for_history(ray_client, prompt_id, timeout=30)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    kind, error = entry["status"]["messages"][-1]
    assert kind == "execution_error" and error["exception_type"] == "WorkerLostError"
    assert "lost its worker" in error["exception_message"]
    after = await submit(ray_client, wait_prompt(0.0, "after"))
    assert (await wait_for_history(ray_client, after, timeout=30))["status"]["status_str"] == "success"


async def test_tiny_checkpoint_prompts_run_concurrently_and_each_model_stays_warm_on_its_worker(tmp_path: Path):
    for name in ("a.safetensors", "b.safetensors"):
        write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / name, "sd15")
    client = await start_client(
        ServerConfig(base_dir=tmp_path, frontend_root=tmp_path / "web", auth_token=None, workers="ray-local:2")
    )
    books = backend_of(client).dispatcher
    try:
        first_round = [await submit(client, txt2img(ckpt, seed=1)) for ckpt in ("a.safetensors", "b.safetensors")]
        for entry in [await wait_for_history(client, prompt_id, timeout=60) for prompt_id in first_round]:
            assert entry["status"]["status_str"] == "success" and cached_nodes(entry) == []
            (image,) = entry["outputs"]["9"]["images"]
            assert (tmp_path / "output" / image["filename"]).is_file()
        held = {name: books.book(name).held for name in ("worker-1", "worker-2")}
        assert sorted(map(sorted, held.values())) == [["a.safetensors"], ["b.safetensors"]]

        # One at a time, both workers idle, each having finished one prompt: without affinity the
        # older worker-1 would take the first, and the second would go to the one that did less.
        for ckpt in [*held["worker-2"], *held["worker-1"]]:
            entry = await wait_for_history(client, await submit(client, txt2img(ckpt, seed=2)), timeout=60)
            assert entry["status"]["status_str"] == "success" and "4" in cached_nodes(entry)  # the loader

        # /free reaches every actor: the models are gone from their caches and from the books.
        await client.post("/free", json={"unload_models": True})
        await eventually(lambda: all(not books.book(name).held for name in ("worker-1", "worker-2")))
        entry = await wait_for_history(client, await submit(client, txt2img("a.safetensors", seed=3)), timeout=60)
        assert cached_nodes(entry) == []
    finally:
        await client.close()


PLUGIN = """
from graph.declare import NodeOutput, Output, String, node


@node(category="test", outputs=[Output("STRING")], output_node=True)
def ShoutText(text=String("hi")):
    \"\"\"Upper-cases its text.\"\"\"
    return NodeOutput(text.upper(), ui={"text": [text.upper()]})
"""


async def test_workers_load_the_servers_plugins_themselves(tmp_path: Path):
    """A plugin imported by file path: a pickled registry could not bring it to the actor."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "shout.py").write_text(PLUGIN)
    client = await start_client(
        ServerConfig(
            base_dir=tmp_path,
            frontend_root=tmp_path / "web",
            auth_token=None,
            workers="ray-local:1",
            extra_custom_node_dirs=(tmp_path / "plugins",),
            starter_files=False,
        )
    )
    try:
        entry = await wait_for_history(
            client, await submit(client, {"1": {"class_type": "ShoutText", "inputs": {"text": "loud"}}}), timeout=60
        )
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["outputs"]["1"]["text"] == ["LOUD"]
    finally:
        await client.close()


def test_actors_that_cannot_start_in_time_stop_the_server_with_the_resources_named(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(ray_backend, "START_SECONDS", 0.001)  # far less than any actor takes to start
    with pytest.raises(ray_backend.WorkersDidNotStartError, match="did not start within") as caught:
        ray_backend.RayBackend(parse_workers("ray-local:2"), standin_setup(tmp_path, 0))
    assert caught.value.count == 2 and caught.value.resources == {"num_cpus": 1}  # the 2 CPUs split in two


def test_the_actor_body_streams_events_in_order_then_its_record_and_stops_only_its_own_prompt(tmp_path: Path):
    actor = ray_backend.LoomWorkerActor(standin_setup(tmp_path, 2**20))
    messages = [message for batch in actor.run(PREVIEW_PROMPT, ["2"], "p1", {}) for message in batch]
    names = [name for kind, name, _ in messages[:-1]]
    assert names[0] == "execution_start" and names[-1] == "execution_success" and names.count("preview") == 3
    ((kind, record, _),) = messages[-1:]
    assert kind == "record" and record.status == "success" and record.outputs["2"]["text"] == ["p"]

    assert actor.interrupt("p2") is False  # not started yet: the caller asks again
    stream = actor.run(wait_prompt(5.0, "long"), ["2"], "p2", {})
    assert next(stream)[0][1] == "execution_start"
    assert actor.interrupt("another prompt") is False and actor.interrupt("p2") is True
    *_, (kind, record, _) = [message for batch in stream for message in batch]
    assert record.status == "interrupted"


def test_the_actor_body_sees_the_servers_extra_model_folders(tmp_path: Path):
    theirs = tmp_path / "comfy" / "checkpoints"
    theirs.mkdir(parents=True)
    (theirs / "theirs.safetensors").write_bytes(b"")
    paths = tmp_path / "extra_model_paths.yaml"
    paths.write_text(f"comfy:\n  base_path: {tmp_path / 'comfy'}\n  checkpoints: checkpoints\n")
    setup = dataclasses.replace(
        standin_setup(tmp_path, 2**20), runtime=RuntimeOptions(tmp_path, extra_model_paths=(paths,))
    )
    actor = ray_backend.LoomWorkerActor(setup)
    assert actor.runtime.model_paths.names("checkpoints") == ["theirs.safetensors"]


def test_the_actor_body_frees_its_cache_between_prompts(tmp_path: Path):
    actor = ray_backend.LoomWorkerActor(standin_setup(tmp_path, 2**20))

    def cached(prompt_id: str) -> list[str]:
        messages = [message for batch in actor.run(wait_prompt(0.0, "x"), ["2"], prompt_id, {}) for message in batch]
        return next(data["nodes"] for _, name, data in messages if name == "execution_cached")

    assert cached("first") == [] and cached("again") == ["1", "2"]
    actor.free(True, False)
    assert cached("after free") == []


@pytest.mark.parametrize(
    "workers, available, count, asked",
    [
        ("ray://auto", {"CPU": 64, "GPU": 4}, 4, {"num_gpus": 1.0}),  # a cluster: one GPU each, Ray's CPU default
        ("ray-local:2", {"CPU": 8, "GPU": 1}, 2, {"num_gpus": 0.5, "num_cpus": 4}),  # one machine's GPU shared
        ("ray-local:3", {"CPU": 2}, 3, {"num_cpus": 1}),  # never less than a core each
    ],
)
def test_each_actor_asks_for_its_share_of_the_devices(workers, available, count, asked):
    assert ray_backend.actor_resources(parse_workers(workers), count, available) == asked
