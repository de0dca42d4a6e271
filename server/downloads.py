"""Serving files that users or plugins wrote, without letting a file run as a page.

Anything under the input/output/temp/user folders may have been written by a plugin or uploaded by
someone else; served as ``text/html`` or JavaScript under our origin it would run with full access to
the API. Such types are sent as ``application/octet-stream`` with ``Content-Disposition: attachment``;
every response also carries ``nosniff`` (so the browser cannot guess HTML back) and a sandboxing CSP.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

__all__ = ["file_response", "bytes_response", "guess_type", "ACTIVE_CONTENT_TYPES"]

#: Types a browser would execute or render with script access to our origin.
ACTIVE_CONTENT_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "application/javascript",
        "text/javascript",
        "text/css",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "application/ecmascript",
        "text/ecmascript",
    }
)


def _headers(name: str, content_type: str) -> dict[str, str]:
    active = content_type.split(";")[0].strip().lower() in ACTIVE_CONTENT_TYPES
    safe_name = name.replace('"', "").replace("\r", "").replace("\n", "")
    disposition = "attachment" if active else "inline"
    return {
        "Content-Type": "application/octet-stream" if active else content_type,
        "Content-Disposition": f'{disposition}; filename="{safe_name}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'",
    }


def guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def file_response(path: Path, content_type: str | None = None) -> web.FileResponse:
    return web.FileResponse(path, headers=_headers(path.name, content_type or guess_type(path.name)))


def bytes_response(data: bytes, name: str, content_type: str) -> web.Response:
    return web.Response(body=data, headers=_headers(name, content_type))
