"""``/internal/...``: what ComfyUI's official frontend asks its own server beside the public API.

ComfyUI keeps these for its frontend only (the frontend builds them as ``{base}/internal/...``, without
``/api``). Loom answers the ones the editor needs to work: the model folders, which its missing-model
check uses to tell a person where a file belongs, and the file names of the input, output and temp
folders, which its assets panel lists; and the server log its Logs panel shows, the lines so far
and, for a WebSocket client that subscribes, each new batch as a ``logs`` message (``server.log_buffer``,
docs/compatibility.md §C.2).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from nodes.folders import FOLDER_KINDS
from server.keys import HUB, LOGS, RUNTIME
from server.log_buffer import console_size
from server.request_body import BadRequestBody, read_json
from server.responses import error_response

__all__ = ["routes"]

routes = web.RouteTableDef()


def _newest_first(folder: Path) -> list[str]:
    """Names of the visible files directly in ``folder``, most recently modified first."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        files = [entry for entry in entries if not entry.name.startswith(".") and entry.is_file()]
    return [entry.name for entry in sorted(files, key=lambda entry: (-entry.stat().st_mtime, entry.name))]


@routes.get("/internal/folder_paths")
async def folder_paths(request: web.Request) -> web.Response:
    folders = await asyncio.to_thread(request.app[RUNTIME].model_paths.all_folders)
    return web.json_response({key: [str(path) for path in paths] for key, paths in folders.items()})


@routes.get("/internal/files/{directory_type}")
async def folder_files(request: web.Request) -> web.Response:
    requested = request.match_info["directory_type"]
    kind = next((kind for kind in FOLDER_KINDS if kind == requested), None)
    if kind is None:
        return error_response(
            400, "bad_request", f"No file folder {requested!r}", f"expected one of {', '.join(FOLDER_KINDS)}"
        )
    folder = request.app[RUNTIME].folders.directory(kind)
    return web.json_response(await asyncio.to_thread(_newest_first, folder))


@routes.get("/internal/logs")
async def log_text(request: web.Request) -> web.Response:
    """The log as one JSON string, each line after its time, as ComfyUI answers."""
    return web.json_response("".join(f"{entry.t} - {entry.m}" for entry in request.app[LOGS].entries()))


@routes.get("/internal/logs/raw")
async def log_entries(request: web.Request) -> web.Response:
    entries = [entry.wire() for entry in request.app[LOGS].entries()]
    return web.json_response({"entries": entries, "size": console_size()})


@routes.patch("/internal/logs/subscribe")
async def subscribe_to_logs(request: web.Request) -> web.Response:
    """Start or stop ``logs`` messages to one connected WebSocket client.

    Stopping for a client that is not connected succeeds: it receives nothing either way, and the
    frontend unsubscribes as its panel closes, which may be after its socket did.
    """
    try:
        body = await read_json(request, "LogsSubscription")
    except BadRequestBody as error:
        return error.response()
    client_id, enabled = body["clientId"], body["enabled"]
    client = request.app[HUB].client(client_id)
    if client is not None:
        client.wants_logs = enabled
    elif enabled:
        return error_response(
            400,
            "unknown_client",
            f"No WebSocket client {client_id!r} is connected",
            "open /ws?clientId=<id> first, then subscribe with that id",
        )
    return web.Response()
