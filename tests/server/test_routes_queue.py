"""Queue, history, jobs, interrupt and free, observed through the HTTP API."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from diffusion.tiny import write_tiny_checkpoint
from graph.services import services_context
from nodes.shared_models import load_shared_checkpoint
from server.keys import RUNTIME
from tests.nodes.tiny_models import decode_prompt
from tests.server.conftest import wait_for_history, wait_prompt, wait_until


async def submit(client, prompt, **body):
    response = await client.post("/prompt", json={"prompt": prompt, **body})
    assert response.status == 200, await response.text()
    return (await response.json())["prompt_id"]


async def running_id(client):
    running = (await (await client.get("/queue")).json())["queue_running"]
    return running[0][1] if running else None


async def test_global_interrupt_stops_the_running_prompt_and_the_next_one_runs(client):
    slow = await submit(client, wait_prompt(30, "slow"))
    after = await submit(client, wait_prompt(0, "after"))
    await wait_until(lambda: _is_running(client, slow))
    assert (await client.post("/interrupt")).status == 200
    entry = await wait_for_history(client, slow)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert "execution_interrupted" in [name for name, _ in entry["status"]["messages"]]
    assert (await wait_for_history(client, after))["status"]["status_str"] == "success"


async def _is_running(client, prompt_id):
    return await running_id(client) == prompt_id


async def test_targeted_interrupt_only_stops_the_named_prompt(client):
    slow = await submit(client, wait_prompt(1.0, "slow"))
    await wait_until(lambda: _is_running(client, slow))
    response = await client.post("/interrupt", json={"prompt_id": "someone-else"})
    assert response.status == 200
    entry = await wait_for_history(client, slow)
    assert entry["status"]["status_str"] == "success"

    second = await submit(client, wait_prompt(30, "second"))
    await wait_until(lambda: _is_running(client, second))
    await client.post("/api/interrupt", json={"prompt_id": second})
    assert (await wait_for_history(client, second))["status"]["status_str"] == "error"


async def test_queue_delete_and_clear_remove_only_pending_prompts(client):
    slow = await submit(client, wait_prompt(30, "slow"))
    await wait_until(lambda: _is_running(client, slow))
    a, b, c = [await submit(client, wait_prompt(0, name)) for name in "abc"]
    assert (await client.post("/queue", json={"delete": [b, slow]})).status == 200
    queue = await (await client.get("/queue")).json()
    assert [item[1] for item in queue["queue_pending"]] == [a, c]
    assert [item[1] for item in queue["queue_running"]] == [slow]
    await client.post("/queue", json={"clear": True})
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    await client.post("/interrupt")
    await wait_for_history(client, slow)
    history = await (await client.get("/history")).json()
    assert list(history) == [slow]


async def test_history_paging_delete_and_clear(client):
    ids = [await submit(client, wait_prompt(0, str(n))) for n in range(3)]
    for prompt_id in ids:
        await wait_for_history(client, prompt_id)
    assert list(await (await client.get("/history")).json()) == ids
    assert list(await (await client.get("/history?max_items=2")).json()) == ids[1:]
    assert await (await client.get("/history/unknown")).json() == {}
    await client.post("/history", json={"delete": [ids[0]]})
    assert list(await (await client.get("/history")).json()) == ids[1:]
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


async def test_jobs_list_detail_and_cancel(client):
    slow = await submit(client, wait_prompt(30, "slow"), extra_data={"extra_pnginfo": {"workflow": {"id": "wf-1"}}})
    await wait_until(lambda: _is_running(client, slow))
    pending = await submit(client, wait_prompt(0, "p"))
    jobs = await (await client.get("/api/jobs?status=in_progress,pending")).json()
    assert [(j["id"], j["status"]) for j in jobs["jobs"]] == [(pending, "pending"), (slow, "in_progress")]
    assert jobs["pagination"] == {"offset": 0, "limit": 2, "total": 2, "has_more": False}
    assert jobs["jobs"][1]["workflow_id"] == "wf-1"

    assert (await client.post(f"/api/jobs/{pending}/cancel")).status == 200
    assert (await client.post("/api/jobs/cancel", json={"job_ids": [slow]})).status == 200
    await wait_for_history(client, slow)
    detail = await (await client.get(f"/api/jobs/{slow}")).json()
    assert (
        detail["status"] == "cancelled"
        and detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"] == "wf-1"
    )
    assert detail["execution_start_time"] <= detail["execution_end_time"]
    assert (await client.get(f"/api/jobs/{pending}")).status == 404

    done = await submit(client, wait_prompt(0, "done"))
    await wait_for_history(client, done)
    page = await (await client.get("/api/jobs?status=completed,cancelled&limit=1&sort_order=desc")).json()
    assert [j["id"] for j in page["jobs"]] == [done] and page["pagination"]["has_more"] is True
    assert (await client.get("/api/jobs?status=bogus")).status == 400


async def test_failed_node_is_reported_and_the_server_keeps_working(client):
    failing = await submit(
        client,
        {
            "1": {"class_type": "Fail", "inputs": {"message": "kaput"}},
            "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
        },
    )
    entry = await wait_for_history(client, failing)
    errors = [data for name, data in entry["status"]["messages"] if name == "execution_error"]
    assert (
        errors[0]["node_id"] == "1" and errors[0]["node_type"] == "Fail" and errors[0]["exception_message"] == "kaput"
    )
    job = await (await client.get(f"/api/jobs/{failing}")).json()
    assert job["status"] == "failed" and job["execution_error"]["node_id"] == "1"
    ok = await submit(client, wait_prompt(0, "ok"))
    assert (await wait_for_history(client, ok))["status"]["status_str"] == "success"


def cached_nodes(entry):
    return next(data["nodes"] for name, data in entry["status"]["messages"] if name == "execution_cached")


async def test_free_memory_drops_cached_outputs_before_the_next_prompt(client):
    prompt = wait_prompt(0, "same")
    first = await wait_for_history(client, await submit(client, prompt))
    again = await wait_for_history(client, await submit(client, prompt))
    assert cached_nodes(first) == [] and set(cached_nodes(again)) == {"1", "2"}
    assert (await client.post("/free", json={"unload_models": True, "free_memory": True})).status == 200
    assert (await client.post("/free", data=b"[1]")).status == 400
    after = await wait_for_history(client, await submit(client, prompt))
    assert cached_nodes(after) == []


async def test_free_unloading_models_releases_the_loaded_weights(make_client, tmp_path: Path):
    path = write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "tiny.safetensors", "sd15")
    client = await make_client(plugins=True, starter_files=False)
    entry = await wait_for_history(client, await submit(client, decode_prompt("tiny.safetensors")))
    assert entry["status"]["status_str"] == "success"
    runtime = client.app[RUNTIME]
    with services_context(runtime):
        loaded = load_shared_checkpoint(path)  # the copy the cached handles keep, not a new load
    weights = [weakref.ref(module) for module in (loaded.unet, loaded.vae, *loaded.text_encoders.encoders.values())]
    del loaded
    gc.collect()
    assert all(ref() is not None for ref in weights), "between prompts the cache keeps the loaded model"

    assert (await client.post("/free", json={"unload_models": True})).status == 200

    async def released() -> bool:
        gc.collect()
        return all(ref() is None for ref in weights)

    await wait_until(released)
    assert runtime.memory.resident_bytes == 0
