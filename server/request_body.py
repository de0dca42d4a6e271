"""Reading request bodies: the one place where a client's bytes become values a handler may use.

Every JSON route reads its body with ``read_json``: the bytes are decoded by ``parse_json`` (UTF-8,
nesting capped, finite numbers only), then checked against the route's request schema in the
OpenAPI document (``server.openapi``), so a handler only ever sees a body of the shape the API
documents, and the document cannot drift from what the server accepts. Upload forms are read with
``read_form``, opaque bodies (a user file) with ``read_bytes``. Anything unacceptable raises
``BadRequestBody``, which the route answers in its usual error shape: never a 500 for something
the client sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from jsonschema import Draft202012Validator
from multidict import MultiDictProxy

from graph.errors import SchemaIssue
from graph.formats.schema import schema_registry, validator_issues
from graph.formats.strict_json import JsonDocumentError, parse_json
from server.openapi import SCHEMAS
from server.responses import error_response

__all__ = ["BadRequestBody", "check_body", "decode_json", "read_bytes", "read_form", "read_json"]

#: Schema issues listed in an error's ``details``; all of them are in ``extra_info.issues``.
_LISTED_ISSUES = 10


class BadRequestBody(Exception):
    """A body no handler may see: ``status`` 400, or 413 when it is over the size limit."""

    def __init__(
        self, message: str, details: str = "", *, status: int = 400, issues: Sequence[SchemaIssue] = ()
    ) -> None:
        super().__init__(f"{message}: {details}" if details else message)
        self.status = status
        self.message = message
        self.details = details
        self.issues = tuple(issues)

    def response(self, type_: str = "bad_request", **extra: Any) -> web.Response:
        """The error reply; ``extra`` adds top-level keys (``node_errors`` for ``/prompt``)."""
        extra_info = (
            {"issues": [{"path": issue.path, "message": issue.message} for issue in self.issues]} if self.issues else {}
        )
        return error_response(self.status, type_, self.message, self.details, extra_info=extra_info, **extra)


@cache
def _validator(schema: str) -> Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{schema}", "components": {"schemas": SCHEMAS}}
    return Draft202012Validator(root, registry=schema_registry())


def check_body(value: Any, schema: str, what: str = "Request body") -> None:
    """Raise ``BadRequestBody`` listing every way ``value`` breaks the OpenAPI component ``schema``."""
    issues = validator_issues(_validator(schema), value)
    if issues:
        shown = "; ".join(str(issue) for issue in issues[:_LISTED_ISSUES])
        more = f" (and {len(issues) - _LISTED_ISSUES} more)" if len(issues) > _LISTED_ISSUES else ""
        raise BadRequestBody(f"{what} does not match the {schema} schema", shown + more, issues=issues)


def decode_json(data: str | bytes, what: str = "Request body") -> Any:
    """``parse_json`` with its refusal turned into a ``BadRequestBody`` naming ``what`` was refused."""
    try:
        return parse_json(data)
    except JsonDocumentError as error:
        raise BadRequestBody(f"{what} is not acceptable JSON", error.reason) from error


async def read_bytes(request: web.Request) -> bytes:
    """The raw body; one over the server's size limit is refused with 413."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise BadRequestBody("Request body is too large", error.text or "", status=413) from error


async def read_json(request: web.Request, schema: str | None = None, *, default: Any = None) -> Any:
    """The body as JSON whatever the Content-Type says (API clients often send none, docs/compatibility.md §C.6).

    An empty body is ``default``. With ``schema`` the value (the default too) must match that
    component of the OpenAPI document.
    """
    raw = await read_bytes(request)
    body = decode_json(raw) if raw.strip() else default
    if schema is not None:
        check_body(body, schema)
    return body


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The body as a multipart or URL-encoded form.

    aiohttp's form parser reports a malformed body with whatever the failing step raises: a
    missing boundary or field name (``ValueError``), an unknown charset (``LookupError``), an
    unknown transfer encoding (``RuntimeError``), a broken part header (``HttpProcessingError``).
    All of them are the client's doing, so all are answered 400.
    """
    try:
        return await request.post()
    except web.HTTPRequestEntityTooLarge as error:
        raise BadRequestBody("Request body is too large", error.text or "", status=413) from error
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as error:
        raise BadRequestBody("Request body is not a readable form", str(error)) from error
