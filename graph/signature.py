"""Call plugin hooks with only the keyword arguments they declare.

ComfyUI hooks (``IS_CHANGED``, ``VALIDATE_INPUTS``) are called with the node's constant inputs, and
plugins commonly declare just the few they care about; passing the rest would raise ``TypeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypedDict


def accepted_names(function: Callable[..., Any]) -> frozenset[str] | None:
    """Parameter names a hook accepts, or ``None`` when it takes ``**kwargs`` (then it gets all)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL)


def call_with_accepted(function: Callable[..., Any], accepted: frozenset[str] | None, values: dict[str, Any]) -> Any:
    if accepted is None:
        return function(**values)
    return function(**{k: v for k, v in values.items() if k in accepted})


class CustomValidation(TypedDict):
    """The ``NodeSpec`` fields that describe a node's custom validator, passed as ``**`` keywords."""

    validate: Callable[[dict[str, Any], dict[str, str] | None], Any] | None
    validate_takes: frozenset[str] | None
    validate_wants_types: bool


def custom_validation(validator: Callable[..., Any] | None) -> CustomValidation:
    """How validation calls ``validator`` (V1 ``VALIDATE_INPUTS`` or ``@node(validate=...)``).

    Both front doors follow ComfyUI's contract (docs/compatibility.md §3.5), so it is built here once:
    the validator gets the constant inputs it declares and judges them instead of the built-in checks;
    one that declares ``input_types`` also gets the types linked into the node, and with them takes
    over the link type check.
    """
    if validator is None:
        return CustomValidation(validate=None, validate_takes=None, validate_wants_types=False)
    accepted = accepted_names(validator)
    wants_types = accepted is not None and "input_types" in accepted

    def validate(constants: dict[str, Any], input_types: dict[str, str] | None) -> Any:
        values = dict(constants)
        if wants_types:
            values["input_types"] = input_types or {}
        return call_with_accepted(validator, accepted, values)

    return CustomValidation(
        validate=validate,
        validate_takes=accepted - {"input_types"} if accepted is not None else None,
        validate_wants_types=wants_types,
    )
