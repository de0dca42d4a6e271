"""``/internal/...``: what ComfyUI's official frontend asks its own server beside the public API.

ComfyUI keeps these for its frontend only (the frontend builds them as ``{base}/internal/...``, without
``/api``). Loom answers the ones the editor needs to work: the model folders, which its missing-model
check uses to tell a person where a file belongs, and the file names of the input, output and temp
folders, which its assets panel lists (docs/compatibility.md §C.2).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from nodes.folders import FOLDER_KINDS
from server.keys import RUNTIME
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
