"""Queue, history, jobs, interrupt and free (docs/compatibility.md §1.2, §1.7, §C.4).

Deleting from the queue only removes *pending* prompts (ComfyUI semantics); the running one is
stopped with ``/interrupt``, which with a ``prompt_id`` stops only that prompt (docs/compatibility.md §7.11).
Job cancel does whichever of the two applies.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.jobs import JobQuery, job_from_history, job_from_queue
from server.keys import QUEUE, STORE, WORKER
from server.request_body import BadRequestBody, read_json
from server.responses import error_response

__all__ = ["routes"]

routes = web.RouteTableDef()

#: SQLite integers are 64-bit; paging numbers are clamped to that range so a huge one means
#: "everything" (or "nothing") instead of an overflow inside the database driver.
_SQLITE_INT_MAX = 2**63 - 1


def _bad_request(error: Exception) -> web.Response:
    return error_response(400, "bad_request", "Bad request", str(error))


def _query_int(request: web.Request, name: str) -> int | None:
    """The integer query parameter ``name`` clamped to SQLite's range, ``None`` when absent; raises ValueError."""
    if name not in request.query:
        return None
    return max(-_SQLITE_INT_MAX, min(int(request.query[name]), _SQLITE_INT_MAX))


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    return web.json_response(
        {
            "queue_running": [item.wire() for item in queue.running()],
            "queue_pending": [item.wire() for item in queue.pending()],
        }
    )


@routes.post("/queue")
async def edit_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    try:
        body = await read_json(request, "DeleteOrClear", default={})
    except BadRequestBody as error:
        return error.response()
    if body.get("clear"):
        await asyncio.to_thread(queue.clear)
    if body.get("delete"):
        await asyncio.to_thread(queue.delete, body["delete"])
    return web.Response()


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    try:
        max_items = _query_int(request, "max_items")
        offset = _query_int(request, "offset") or 0
    except ValueError as error:
        return _bad_request(error)
    records = await asyncio.to_thread(request.app[STORE].history, max_items, max(0, offset))
    return web.json_response({record.prompt_id: record.entry for record in records})


@routes.get("/history/{prompt_id}")
async def get_history_entry(request: web.Request) -> web.Response:
    record = await asyncio.to_thread(request.app[STORE].history_entry, request.match_info["prompt_id"])
    return web.json_response({} if record is None else {record.prompt_id: record.entry})


@routes.post("/history")
async def edit_history(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        body = await read_json(request, "DeleteOrClear", default={})
    except BadRequestBody as error:
        return error.response()
    if body.get("clear"):
        await asyncio.to_thread(store.clear_history)
    if body.get("delete"):
        await asyncio.to_thread(store.delete_history, body["delete"])
    return web.Response()


@routes.post("/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, "InterruptRequest", default={})
    except BadRequestBody as error:
        return error.response()
    request.app[WORKER].interrupt(body.get("prompt_id"))
    return web.Response()


@routes.post("/free")
async def free(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, "FreeRequest", default={})
    except BadRequestBody as error:
        return error.response()
    request.app[WORKER].request_free(body.get("unload_models", False), body.get("free_memory", False))
    return web.Response()


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    try:
        query = JobQuery(dict(request.query))
    except ValueError as error:
        return _bad_request(error)
    queue = request.app[QUEUE]
    jobs = [job_from_queue(item, running=True) for item in queue.running()]
    jobs += [job_from_queue(item, running=False) for item in queue.pending()]
    if query.statuses & {"completed", "failed", "cancelled"}:
        records = await asyncio.to_thread(request.app[STORE].history)
        jobs += [job_from_history(record) for record in records]
    return web.json_response(query.apply(jobs))


@routes.get("/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    queue = request.app[QUEUE]
    item = queue.find(job_id)
    if item is not None:
        running = any(r.prompt_id == job_id for r in queue.running())
        return web.json_response(job_from_queue(item, running, detail=True))
    record = await asyncio.to_thread(request.app[STORE].history_entry, job_id)
    if record is None:
        return error_response(404, "not_found", f"No job {job_id!r}")
    return web.json_response(job_from_history(record, detail=True))


async def _cancel(request: web.Request, job_ids: list[str]) -> list[str]:
    cancelled = await asyncio.to_thread(request.app[QUEUE].delete, job_ids)
    worker = request.app[WORKER]
    for job_id in set(job_ids) - set(cancelled):
        if worker.interrupt(job_id):
            cancelled.append(job_id)
    return cancelled


@routes.post("/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    cancelled = await _cancel(request, [request.match_info["job_id"]])
    if not cancelled:
        return error_response(404, "not_found", f"No pending or running job {request.match_info['job_id']!r}")
    return web.json_response({"cancelled": cancelled})


@routes.post("/jobs/cancel")
async def cancel_jobs(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, "JobIds", default={})
    except BadRequestBody as error:
        return error.response()
    return web.json_response({"cancelled": await _cancel(request, body.get("job_ids", []))})
