"""The frontend: static files from the frontend root, or a placeholder page when there is none.

Registered after every API route, so a file in the frontend root can never shadow an API path.
Symlinks are not followed out of the root (aiohttp's default), and ``index.html`` is sent with
``no-cache`` so a frontend upgrade is picked up on the next reload.

Which root ``loom serve`` hands over is chosen by ``--frontend``: ``loom``, the editor in ``web/``,
or ``comfyui``, ComfyUI's own frontend from the ``comfyui-frontend-package`` wheel (an optional
extra under its own license). Both are static pages over the same API, so nothing else changes.

Two things the official frontend loads beside itself are answered here too, where ComfyUI serves
them: ``/user.css`` (its page links it; a person's own stylesheet when the root has one, else an empty
one) and ``/templates/...``, the files of the installed ``comfyui-workflow-templates`` packages. Without
those packages the template indexes are empty lists, so the template browser opens empty instead of
failing.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from pathlib import Path

from aiohttp import web

from nodes.folders import UnsafePathError, resolve_inside
from server.config import REPO_ROOT
from server.responses import error_response
from server.templates import template_sources

__all__ = [
    "add_frontend_routes",
    "comfyui_frontend_root",
    "frontend_root",
    "FrontendNotInstalledError",
    "FRONTENDS",
    "LOOM_FRONTEND_ROOT",
    "PLACEHOLDER_PAGE",
    "template_package_folders",
]

LOOM_FRONTEND_ROOT = REPO_ROOT / "web"
COMFYUI_FRONTEND_PACKAGE = "comfyui_frontend_package"
#: The names ``--frontend`` takes.
FRONTENDS = ("loom", "comfyui")


class FrontendNotInstalledError(ValueError):
    """``--frontend comfyui`` on a machine without ComfyUI's frontend package; says how to install it."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"--frontend comfyui: {reason}; install it with pip install 'loom[comfyui-frontend]' "
            "(or pip install comfyui-frontend-package), or leave out --frontend to use Loom's editor"
        )
        self.reason = reason


def comfyui_frontend_root() -> Path:
    """The ``static`` folder of the installed ``comfyui_frontend_package``, the way ComfyUI finds it."""
    if importlib.util.find_spec(COMFYUI_FRONTEND_PACKAGE) is None:
        raise FrontendNotInstalledError("ComfyUI's frontend (comfyui-frontend-package) is not installed")
    root = Path(str(importlib.resources.files(COMFYUI_FRONTEND_PACKAGE) / "static"))
    if not (root / "index.html").is_file():
        raise FrontendNotInstalledError(f"the installed comfyui-frontend-package has no {root / 'index.html'}")
    return root


def frontend_root(frontend: str | None, folder: Path | None) -> Path:
    """The folder to serve at ``/``: ``folder`` (``--frontend-root``) as given, else the named frontend's.

    Naming both is refused rather than letting one silently win.
    """
    if folder is not None:
        if frontend is not None:
            raise ValueError("give --frontend or --frontend-root, not both")
        return folder
    if frontend == "comfyui":
        return comfyui_frontend_root()
    return LOOM_FRONTEND_ROOT


PLACEHOLDER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Loom</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Loom is running</h1>
<p>No editor is installed in the frontend root, so there is nothing to draw here yet. The API is
available: <a href="/openapi.json">/openapi.json</a> describes every route.</p></body></html>
"""


#: The official frontend's template indexes: ``index.json`` and its translations list categories,
#: ``index_logo.json`` maps providers to logo files.
_TEMPLATE_LISTS = re.compile(r"index(\.[A-Za-z-]+)?\.json")
_TEMPLATE_MAPS = frozenset({"index_logo.json"})


def template_package_folders() -> tuple[Path, ...]:
    """The ``templates/`` folders of the installed ``comfyui-workflow-templates`` packages, in lookup order."""
    return next((source.folders for source in template_sources(Path()) if source.key == "comfyui"), ())


async def template_file(request: web.Request) -> web.StreamResponse:
    """A file of the installed template packages; their indexes answer empty when none is installed."""
    name = request.match_info["path"]
    for folder in template_package_folders():
        try:
            path = resolve_inside(folder, name)
        except UnsafePathError as error:
            return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")
        if path.is_file():
            return web.FileResponse(path)
    if _TEMPLATE_LISTS.fullmatch(name):
        return web.json_response([])
    if name in _TEMPLATE_MAPS:
        return web.json_response({})
    return error_response(404, "not_found", f"No template file {name!r}", "install comfyui-workflow-templates")


def add_frontend_routes(app: web.Application, root: Path) -> None:
    index = root / "index.html"
    user_css = root / "user.css"

    async def home(request: web.Request) -> web.StreamResponse:
        if index.is_file():
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})
        return web.Response(text=PLACEHOLDER_PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def stylesheet(request: web.Request) -> web.StreamResponse:
        if user_css.is_file():
            return web.FileResponse(user_css, headers={"Cache-Control": "no-cache"})
        return web.Response(text="", content_type="text/css", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", home)
    app.router.add_get("/user.css", stylesheet)
    app.router.add_get("/templates/{path:.+}", template_file)
    if root.is_dir():
        app.router.add_static("/", root, follow_symlinks=False, append_version=False)
