"""The frontend: static files from the frontend root, or a placeholder page when there is none.

Registered after every API route, so a file in the frontend root can never shadow an API path.
Symlinks are not followed out of the root (aiohttp's default), and ``index.html`` is sent with
``no-cache`` so a frontend upgrade is picked up on the next reload.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

__all__ = ["add_frontend_routes", "PLACEHOLDER_PAGE"]

PLACEHOLDER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Loom</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Loom is running</h1>
<p>No editor is installed in the frontend root, so there is nothing to draw here yet. The API is
available: <a href="/openapi.json">/openapi.json</a> describes every route.</p></body></html>
"""


def add_frontend_routes(app: web.Application, root: Path) -> None:
    index = root / "index.html"

    async def home(request: web.Request) -> web.StreamResponse:
        if index.is_file():
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})
        return web.Response(text=PLACEHOLDER_PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", home)
    if root.is_dir():
        app.router.add_static("/", root, follow_symlinks=False, append_version=False)
