"""Per-user files the editor keeps on the server: settings, saved workflows, templates
(docs/compatibility.md §1.2, §C.2).

Single-user: everything lives in ``<user dir>/default`` (the ``Comfy-User`` header is not an identity,
so it selects nothing). The ``{file}`` segment arrives URL-decoded, ``workflows/a.json`` for
``workflows%2Fa.json`` (docs/compatibility.md §C.4); every such path goes through
``nodes.folders.resolve_inside`` so ``..``,
absolute paths and symlinks cannot leave the user folder. Files are served as downloads, never as
pages (``server.downloads``), except that ``user.css`` keeps its CSS type because the editor links it
(and is an empty sheet until the user writes one).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from nodes.folders import UnsafePathError, resolve_inside
from server.downloads import file_response
from server.keys import RUNTIME
from server.request_body import BadRequestBody, read_bytes, read_json
from server.responses import PATH_CONFLICTS, error_response

__all__ = ["routes", "user_root"]

routes = web.RouteTableDef()

SETTINGS_FILE = "comfy.settings.json"
USER_CSS = "user.css"
_CSS_HEADERS = {"Content-Type": "text/css", "X-Content-Type-Options": "nosniff"}
#: The folders the official editor lists as it starts: made with the user folder, so a person who has
#: saved nothing yet gets empty lists rather than the 404 of a folder that does not exist.
EDITOR_FOLDERS = ("workflows", "subgraphs")
_TRUE = ("true", "1", "yes")


def user_root(request: web.Request) -> Path:
    root = request.app[RUNTIME].folders.user / "default"
    for folder in EDITOR_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.lower() in _TRUE


def _refused(error: UnsafePathError) -> web.Response:
    # The reason, not str(error): that names the server's absolute folder, which clients need not know.
    return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _info(path: Path, root: Path) -> dict[str, Any]:
    stat = path.stat()
    return {
        "path": path.relative_to(root).as_posix(),
        "size": stat.st_size,
        "modified": stat.st_mtime,
        "created": stat.st_ctime,
    }


# settings and users ------------------------------------------------------------------------


def _load_settings(root: Path) -> dict[str, Any]:
    path = root / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def _save_settings(root: Path, settings: dict[str, Any]) -> None:
    _write_atomic(root / SETTINGS_FILE, json.dumps(settings, indent=2).encode())


@routes.get("/settings")
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(_load_settings(user_root(request)))


@routes.post("/settings")
async def post_settings(request: web.Request) -> web.Response:
    try:
        update = await read_json(request, "Settings", default={})
    except BadRequestBody as error:
        return error.response()
    root = user_root(request)
    _save_settings(root, {**_load_settings(root), **update})
    return web.Response()


@routes.get("/settings/{setting_id}")
async def get_setting(request: web.Request) -> web.Response:
    return web.json_response(_load_settings(user_root(request)).get(request.match_info["setting_id"]))


@routes.post("/settings/{setting_id}")
async def post_setting(request: web.Request) -> web.Response:
    try:
        value = await read_json(request)
    except BadRequestBody as error:
        return error.response()
    root = user_root(request)
    _save_settings(root, {**_load_settings(root), request.match_info["setting_id"]: value})
    return web.Response()


@routes.get("/users")
async def get_users(request: web.Request) -> web.Response:
    return web.json_response({"storage": "server", "migrated": True})


@routes.post("/users")
async def post_users(request: web.Request) -> web.Response:
    return error_response(400, "single_user", "This server has one user; there are no accounts to create")


# user files -------------------------------------------------------------------------------


def _listing(directory: Path, root: Path, recurse: bool, full_info: bool, split: bool) -> list[Any]:
    paths = sorted(directory.rglob("*") if recurse else directory.iterdir())
    entries: list[Any] = []
    for path in paths:
        if not path.is_file() or path.name.startswith(".") or not path.resolve().is_relative_to(root.resolve()):
            continue
        relative = path.relative_to(directory).as_posix()
        if full_info:
            entries.append({**_info(path, directory), "path": relative})
        elif split:
            entries.append([relative, *relative.split("/")])
        else:
            entries.append(relative)
    return entries


@routes.get("/userdata")
async def list_userdata(request: web.Request) -> web.Response:
    requested = request.query.get("dir")
    if not requested:
        return error_response(400, "bad_request", "Query parameter 'dir' is required")
    root = user_root(request)
    try:
        directory = resolve_inside(root, requested)
    except UnsafePathError as error:
        return _refused(error)
    if not directory.is_dir():
        return error_response(404, "not_found", f"No folder {requested!r}")
    entries = await asyncio.to_thread(
        _listing,
        directory,
        root,
        _flag(request, "recurse", False),
        _flag(request, "full_info", False),
        _flag(request, "split", False),
    )
    return web.json_response(entries)


@routes.get("/v2/userdata")
async def list_userdata_v2(request: web.Request) -> web.Response:
    root = user_root(request)
    try:
        directory = resolve_inside(root, request.query.get("path", "") or ".")
    except UnsafePathError as error:
        return _refused(error)
    if not directory.is_dir():
        return error_response(404, "not_found", f"No folder {request.query.get('path', '')!r}")
    entries = []
    for path in sorted(directory.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
        if path.name.startswith(".") or not path.resolve().is_relative_to(root.resolve()):
            continue
        entry: dict[str, Any] = {"name": path.name, "path": path.relative_to(root).as_posix()}
        if path.is_dir():
            entry["type"] = "directory"
        else:
            stat = path.stat()
            entry.update(type="file", size=stat.st_size, modified=stat.st_mtime)
        entries.append(entry)
    return web.json_response(entries)


def _user_file(request: web.Request, key: str = "file") -> tuple[Path, Path]:
    root = user_root(request)
    return root, resolve_inside(root, request.match_info[key])


@routes.get("/userdata/{file}")
async def get_userdata(request: web.Request) -> web.StreamResponse:
    try:
        _, path = _user_file(request)
    except UnsafePathError as error:
        return _refused(error)
    if not path.is_file():
        if request.match_info["file"] == USER_CSS:
            # The official editor links it on every page: without one, an empty sheet rather than a 404.
            return web.Response(text="", headers=_CSS_HEADERS)
        return error_response(404, "not_found", f"No user file {request.match_info['file']!r}")
    if path.name == USER_CSS:
        return web.FileResponse(path, headers=_CSS_HEADERS)
    return file_response(path)


def _written(request: web.Request, root: Path, path: Path) -> web.Response:
    if _flag(request, "full_info", False):
        return web.json_response(_info(path, root))
    return web.json_response(path.relative_to(root).as_posix())


@routes.post("/userdata/{file}")
async def post_userdata(request: web.Request) -> web.Response:
    try:
        root, path = _user_file(request)
    except UnsafePathError as error:
        return _refused(error)
    if path == root or path.is_dir():
        return error_response(400, "bad_request", f"{request.match_info['file']!r} is a folder")
    if path.exists() and not _flag(request, "overwrite", True):
        return error_response(409, "conflict", f"{request.match_info['file']!r} exists and overwrite is false")
    try:
        data = await read_bytes(request)
    except BadRequestBody as error:
        return error.response()
    try:
        await asyncio.to_thread(_write_atomic, path, data)
    except PATH_CONFLICTS as error:
        return error_response(409, "conflict", f"Cannot write {request.match_info['file']!r}", error.strerror or "")
    return _written(request, root, path)


@routes.delete("/userdata/{file}")
async def delete_userdata(request: web.Request) -> web.Response:
    try:
        _, path = _user_file(request)
    except UnsafePathError as error:
        return _refused(error)
    if not path.is_file():
        return error_response(404, "not_found", f"No user file {request.match_info['file']!r}")
    path.unlink()
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request: web.Request) -> web.Response:
    try:
        root, source = _user_file(request)
        _, dest = _user_file(request, "dest")
    except UnsafePathError as error:
        return _refused(error)
    if not source.is_file():
        return error_response(404, "not_found", f"No user file {request.match_info['file']!r}")
    if dest.exists() and not _flag(request, "overwrite", True):
        return error_response(409, "conflict", f"{request.match_info['dest']!r} exists and overwrite is false")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
    except PATH_CONFLICTS as error:
        return error_response(409, "conflict", f"Cannot move to {request.match_info['dest']!r}", error.strerror or "")
    return _written(request, root, dest)
