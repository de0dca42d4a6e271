"""Executor event names and payloads, exactly as ComfyUI clients read them (docs/compatibility.md §1.4, §1.7).

The executor calls ``listener(event, data)`` from its worker thread; the server turns each call into
a WebSocket frame (``{"type": event, "data": data}``) and keeps the start/cached/end ones in the
history entry. Payload builders live here so the field names are written once.

One event is Loom's own: ``PREVIEW`` carries the opaque preview object a node passed to
``report_progress`` (for example ``("JPEG", PIL image, max_size)``) plus the ids the binary
``PREVIEW_IMAGE_WITH_METADATA`` frame needs; the server encodes it as a binary frame, never as JSON.
The executor never sends ``executing`` with ``node: null``: the server sends that after it has
written the history entry, which is the order clients rely on.
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
PROGRESS = "progress"
PROGRESS_STATE = "progress_state"
EXECUTED = "executed"
EXECUTION_SUCCESS = "execution_success"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"
PREVIEW = "preview"

#: ``listener(event_name, data)``; called synchronously (a slow listener slows the prompt); what it raises is logged.
Listener = Callable[[str, dict[str, Any]], None]

#: How much of one input value ``current_inputs`` shows; enough to recognise it, never a dump.
MAX_VALUE_CHARS = 200

# reprlib bounds the work as well as the text: a huge list is cut before it is formatted.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 8, 8, 80, 80


class NodeMeta(TypedDict):
    """The history ``meta`` entry of one node (``node_meta`` says what each id is)."""

    node_id: str
    display_node: str
    parent_node: str | None
    real_node_id: str


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, the unit of every ``timestamp`` field."""
    return int(time.time() * 1000)


def execution_start(prompt_id: str) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "timestamp": now_ms()}


def execution_cached(prompt_id: str, nodes: Iterable[str]) -> dict[str, Any]:
    return {"nodes": list(nodes), "prompt_id": prompt_id, "timestamp": now_ms()}


def executing(prompt_id: str, node_id: str, display_node: str) -> dict[str, Any]:
    return {"node": node_id, "display_node": display_node, "prompt_id": prompt_id}


def progress(prompt_id: str, node_id: str, value: float, total: float) -> dict[str, Any]:
    return {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}


def node_progress(
    prompt_id: str, node_id: str, value: float, total: float, state: str, meta: NodeMeta
) -> dict[str, Any]:
    """One entry of ``progress_state.nodes``; ``state`` is ``running``, ``finished`` or ``error``."""
    return {
        "value": value,
        "max": total,
        "state": state,
        "node_id": node_id,
        "prompt_id": prompt_id,
        "display_node_id": meta["display_node"],
        "parent_node_id": meta["parent_node"],
        "real_node_id": meta["real_node_id"],
    }


def progress_state(prompt_id: str, nodes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Every started node's progress, as a snapshot: the listener may serialise it later.

    Only the outer mapping is copied; callers replace an entry instead of mutating it (entries
    come from ``node_progress``), which keeps a snapshot per event cheap on graphs of thousands.
    """
    return {"prompt_id": prompt_id, "nodes": dict(nodes)}


def executed(prompt_id: str, node_id: str, display_node: str, output: Any) -> dict[str, Any]:
    return {"node": node_id, "display_node": display_node, "output": output, "prompt_id": prompt_id}


def execution_success(prompt_id: str) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "timestamp": now_ms()}


def execution_error(
    prompt_id: str,
    node_id: str | None,
    node_type: str | None,
    executed_ids: Iterable[str],
    exception_message: str,
    exception_type: str,
    traceback: list[str],
    current_inputs: Mapping[str, list[Any]],
    current_outputs: Iterable[str],
) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node_type,
        "executed": list(executed_ids),
        "exception_message": exception_message,
        "exception_type": exception_type,
        "traceback": traceback,
        "current_inputs": dict(current_inputs),
        "current_outputs": list(current_outputs),
        "timestamp": now_ms(),
    }


def execution_interrupted(
    prompt_id: str, node_id: str | None, node_type: str | None, executed_ids: Iterable[str]
) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "node_type": node_type,
        "executed": list(executed_ids),
        "timestamp": now_ms(),
    }


def preview(prompt_id: str, node_id: str, meta: NodeMeta, image: Any) -> dict[str, Any]:
    """Loom's ``preview`` event: the ids of binary frame type 4 plus the unencoded preview."""
    return {
        "prompt_id": prompt_id,
        "node_id": node_id,
        "display_node_id": meta["display_node"],
        "parent_node_id": meta["parent_node"],
        "real_node_id": meta["real_node_id"],
        "image": image,
    }


def node_meta(
    node_id: str, display_node: str | None = None, parent_node: str | None = None, real_node_id: str | None = None
) -> NodeMeta:
    """The history ``meta`` entry of a node.

    A node of the prompt is its own display and real node. A node created by an expansion is shown
    on the node that expanded it (``display_node``), names that node as ``parent_node``, and
    ``real_node_id`` is the prompt node at the root of the expansion chain.
    """
    return {
        "node_id": node_id,
        "display_node": display_node or node_id,
        "parent_node": parent_node,
        "real_node_id": real_node_id or node_id,
    }


def format_value(value: Any) -> Any:
    """A JSON-safe, short stand-in for one input value in ``current_inputs``.

    Plain scalars pass through (long strings cut); tensors show shape, dtype and device rather
    than their contents, since an error payload must stay small enough to send and read.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        device = getattr(value, "device", None)
        where = f", device={device}" if device is not None else ""
        return f"{type(value).__name__}(shape={list(shape)}, dtype={value.dtype}{where})"
    text = _SHORT.repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."


def format_inputs(inputs: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """``current_inputs``: every input as the list of values the node was called over."""
    return {name: [format_value(item) for item in values] for name, values in inputs.items()}
