"""Call plugin hooks with only the keyword arguments they declare.

ComfyUI hooks (``IS_CHANGED``, ``VALIDATE_INPUTS``) are called with the node's constant inputs, and
plugins commonly declare just the few they care about; passing the rest would raise ``TypeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


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
