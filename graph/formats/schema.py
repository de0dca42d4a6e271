"""Check a document against the JSON Schemas of the workflow formats.

The schemas (``schemas/*.json``) are permissive where real files vary (any extra key is allowed)
and strict where the converter and the engine read: node ids, link shapes, ``inputs`` entries,
``widgets_values``. Every violation is reported with a path a person can follow into the file,
``nodes[3].widgets_values``, instead of jsonschema's deque of keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from graph.errors import SchemaError, SchemaIssue

SchemaName = Literal["api_prompt", "workflow_v04", "workflow_v1"]
SCHEMA_NAMES: tuple[SchemaName, ...] = ("api_prompt", "workflow_v04", "workflow_v1")
_SHARED = ("workflow_common",)
_MAX_MESSAGE = 160


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema file ``schemas/<name>.json``."""
    text = resources.files("graph.formats").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def schema_registry() -> Registry:
    """Every schema file under its ``$id``, so that other schemas (the server's request bodies) can ``$ref`` them."""
    return Registry().with_resources(
        (load_schema(other)["$id"], Resource.from_contents(load_schema(other))) for other in (*SCHEMA_NAMES, *_SHARED)
    )


@cache
def _validator(name: SchemaName) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), registry=schema_registry())


def schema_for(document: Any) -> SchemaName:
    """Which schema a document claims: an editor workflow by its ``version``, else an API prompt."""
    if isinstance(document, dict) and "nodes" in document:
        return "workflow_v1" if document.get("version") == 1 else "workflow_v04"
    return "api_prompt"


def schema_issues(document: Any, name: SchemaName | None = None) -> list[SchemaIssue]:
    """Every violation of the named schema (by default the one ``schema_for`` picks), in file order."""
    return validator_issues(_validator(name or schema_for(document)), document)


def validator_issues(validator: Draft202012Validator, document: Any) -> list[SchemaIssue]:
    """Every violation ``validator`` finds, in file order, each with a path a person can follow.

    Public so that other schemas (the server's request bodies) report problems in the same words.
    """
    errors = validator.iter_errors(document)
    return [
        _issue(error) for error in sorted(errors, key=lambda error: [_sort_key(part) for part in error.absolute_path])
    ]


def check_document(document: Any, name: SchemaName | None = None) -> None:
    """Raise ``SchemaError`` listing every violation, or return quietly."""
    chosen = name or schema_for(document)
    issues = schema_issues(document, chosen)
    if issues:
        raise SchemaError(chosen, issues)


def json_path(parts: Iterable[str | int]) -> str:
    """``["nodes", 3, "widgets_values"]`` → ``nodes[3].widgets_values``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _sort_key(part: str | int) -> tuple[int, int, str]:
    # Indexes sort numerically (nodes[2] before nodes[10]); keys by name.
    return (0, part, "") if isinstance(part, int) else (1, 0, str(part))


def _issue(error: ValidationError) -> SchemaIssue:
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return SchemaIssue(path=json_path(error.absolute_path), message=message)
