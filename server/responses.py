"""Error replies in one shape, ``{"error": {type, message, details, extra_info}}`` (docs/compatibility.md §1.3).

The frontend shows ``error.message`` for any non-200 reply it can parse; using the prompt error
shape everywhere means every refusal a user meets says what was refused and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["PATH_CONFLICTS", "api_not_found", "error_response", "json_routing_errors"]

#: What writing to a requested path raises when a file stands where the path needs a folder, or a
#: folder where it needs a file: the request conflicts with what is there (409), nothing broke.
PATH_CONFLICTS = (FileExistsError, NotADirectoryError, IsADirectoryError)


def error_response(
    status: int,
    type_: str,
    message: str,
    details: str = "",
    *,
    extra_info: Mapping[str, Any] | None = None,
    **extra: Any,
) -> web.Response:
    """The error reply; ``extra`` adds top-level keys beside ``error`` (``node_errors`` for ``/prompt``)."""
    body: dict[str, Any] = {
        "error": {"type": type_, "message": message, "details": details, "extra_info": dict(extra_info or {})}
    }
    body.update(extra)
    return web.json_response(body, status=status)


async def api_not_found(request: web.Request) -> web.Response:
    """Registered last under ``/api/``: an API path nothing serves is an API error, not a missing file
    of the editor (the frontend's static route would answer an empty 404)."""
    return error_response(404, "not_found", f"No API route {request.path}")


@web.middleware
async def json_routing_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own answers for a path nothing serves (404) or a method a route lacks (405), in the
    same error shape as every other refusal, so clients can always parse what went wrong."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        response = error_response(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.path}", f"allowed: {allowed}"
        )
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        return error_response(404, "not_found", f"Nothing is served at {request.path}")
