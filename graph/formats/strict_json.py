"""Decode JSON that comes from outside (a request body, a workflow file, a PNG text chunk) safely.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` 5,000 deep raises
``RecursionError``, and a document just under Python's limit parses but then breaks every later
recursive walk of it (``copy.deepcopy`` in validation, the cache key's canonical form, the store's
``json.dumps``). The depth is therefore measured *before* parsing, by one linear scan that skips
string contents, and documents nested deeper than ``MAX_DEPTH`` are refused; real workflows nest
about ten levels.

``NaN``, ``Infinity`` and numbers too large for a float (``1e999``) are refused as well: they are
not JSON (RFC 8259), and once stored they would make every later reply that echoes them
unparseable by a browser. Text must be UTF-8, the only encoding RFC 8259 allows between systems.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_DEPTH", "JsonDocumentError", "nesting_depth", "parse_json"]

#: Deepest nesting of arrays and objects accepted, far above any real document and far below
#: the depth at which recursive code over the parsed value could reach Python's recursion limit.
MAX_DEPTH = 100

# A string token (its closing quote optional, so an unterminated string ends the scan instead of
# being retried from every later quote, which would make the scan quadratic) or one bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|([\[\]{}])', re.DOTALL)
_OPENING = frozenset("[{")


class JsonDocumentError(ValueError):
    """Text that is not acceptable JSON; ``reason`` says why in words a client can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """The deepest bracket nesting in ``text``, brackets inside strings not counted.

    With ``stop_above`` the scan ends as soon as the depth exceeds it, so a hostile document is
    refused after reading only its too-deep prefix.
    """
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        bracket = match.group(1)
        if bracket is None:
            continue
        if bracket in _OPENING:
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise JsonDocumentError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonDocumentError(f"the number {text[:40]} is too large")
    return value


def parse_json(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The decoded value of ``data``; raises ``JsonDocumentError`` for anything unacceptable."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise JsonDocumentError(f"not UTF-8 text: {error}") from error
    # Depth cannot exceed the number of opening brackets; most documents are settled by counting.
    if data.count("[") + data.count("{") > max_depth and nesting_depth(data, stop_above=max_depth) > max_depth:
        raise JsonDocumentError(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonDocumentError:
        raise
    except ValueError as error:  # JSONDecodeError, and int() refusing more than 4,300 digits
        raise JsonDocumentError(f"not valid JSON: {error}") from error
