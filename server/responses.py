"""Error replies in one shape, ``{"error": {type, message, details, extra_info}}`` (docs/compatibility.md §1.3).

The frontend shows ``error.message`` for any non-200 reply it can parse; using the prompt error
shape everywhere means every refusal a user meets says what was refused and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["PATH_CONFLICTS", "error_response"]

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
