"""Queue, history, jobs, interrupt and free (COMPAT 1.2, 1.7, C.4).

Deleting from the queue only removes *pending* prompts (ComfyUI semantics); the running one is
stopped with ``/interrupt``, which with a ``prompt_id`` stops only that prompt (COMPAT section 7 #17).
Job cancel does whichever of the two applies.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from server.jobs import JobQuery, job_from_history, job_from_queue
from server.keys import QUEUE, STORE, WORKER
from server.responses import BadJson, error_response, read_json

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, default={})
    if not isinstance(body, dict):
        raise BadJson(f"expected a JSON object, got {type(body).__name__}")
    return body


def _bad_request(error: Exception) -> web.Response:
    return error_response(400, "bad_request", "Bad request", str(error))


def _id_list(body: dict[str, Any], key: str) -> list[str]:
    ids = body.get(key) or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadJson(f"{key!r} must be a list of prompt ids")
    return ids


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    return web.json_response({
        "queue_running": [item.wire() for item in queue.running()],
        "queue_pending": [item.wire() for item in queue.pending()],
    })


@routes.post("/queue")
async def edit_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    try:
        body = await _json_object(request)
        delete = _id_list(body, "delete")
    except BadJson as error:
        return _bad_request(error)
    if body.get("clear"):
        await asyncio.to_thread(queue.clear)
    if delete:
        await asyncio.to_thread(queue.delete, delete)
    return web.Response()


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    try:
        max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        offset = int(request.query.get("offset", 0))
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
        body = await _json_object(request)
        delete = _id_list(body, "delete")
    except BadJson as error:
        return _bad_request(error)
    if body.get("clear"):
        await asyncio.to_thread(store.clear_history)
    if delete:
        await asyncio.to_thread(store.delete_history, delete)
    return web.Response()


@routes.post("/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    try:
        body = await _json_object(request)
    except BadJson as error:
        return _bad_request(error)
    prompt_id = body.get("prompt_id")
    request.app[WORKER].interrupt(prompt_id if isinstance(prompt_id, str) else None)
    return web.Response()


@routes.post("/free")
async def free(request: web.Request) -> web.Response:
    try:
        body = await _json_object(request)
    except BadJson as error:
        return _bad_request(error)
    request.app[WORKER].request_free(bool(body.get("unload_models")), bool(body.get("free_memory")))
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
        job_ids = _id_list(await _json_object(request), "job_ids")
    except BadJson as error:
        return _bad_request(error)
    return web.json_response({"cancelled": await _cancel(request, job_ids)})
