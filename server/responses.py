"""Error replies in one shape, ``{"error": {type, message, details, extra_info}}`` (COMPAT 1.3).

The frontend shows ``error.message`` for any non-200 reply it can parse; using the prompt error
shape everywhere means every refusal a user meets says what was refused and why.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["error_response", "read_json", "BadJson"]


def error_response(status: int, type_: str, message: str, details: str = "", **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": {"type": type_, "message": message, "details": details, "extra_info": {}}}
    body.update(extra)
    return web.json_response(body, status=status)


class BadJson(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def read_json(request: web.Request, *, default: Any = None) -> Any:
    """The body as JSON whatever the Content-Type says: API clients often send none (COMPAT C.6)."""
    raw = await request.read()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except ValueError as error:
        raise BadJson(f"request body is not valid JSON: {error}") from error
