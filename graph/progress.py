"""Progress reporting and interruption that node code can use without knowing the executor.

A sampler deep inside ``diffusion/`` calls ``report_progress(step, steps, preview)`` once per step;
it has no idea which prompt or node it serves. The executor runs every node call inside
``node_context(...)``, which puts the running node's sink into a ``ContextVar``, so the report
reaches the right prompt's listener (docs/compatibility.md §4.6). The same call is the interruption point: ComfyUI
checks its interrupt flag in every progress update, which is what makes ``/interrupt`` stop a
sampler between steps rather than after the whole node (docs/compatibility.md §4.5).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, NamedTuple, Protocol


class Interrupted(BaseException):
    """The running prompt was interrupted.

    A ``BaseException`` for the same reason as ``asyncio.CancelledError``: node code often wraps
    work in ``except Exception`` to log and carry on, and that must not swallow a user's stop.
    """

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__("interrupted" if node_id is None else f"interrupted while node {node_id!r} was running")
        self.node_id = node_id


class InterruptFlag:
    """A stop request: the server's ``/interrupt`` sets it from its thread, the executor's worker polls it.

    A plain attribute rather than ``threading.Event``: it is polled before every node call and on
    every progress report, nobody waits on it, and assigning or reading one attribute is atomic.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


class ProgressSink(Protocol):
    """Receives the reports of the node that is running (the executor implements it)."""

    def on_progress(self, node_id: str, value: float, total: float, preview: Any | None) -> None: ...


class NodeContext(NamedTuple):
    """Who is running right now: the node, the flag that can stop it, and where reports go."""

    node_id: str
    interrupt: InterruptFlag
    sink: ProgressSink | None


_current: ContextVar[NodeContext | None] = ContextVar("loom_node_context", default=None)


class node_context:
    """Route ``report_progress``/``check_interrupted`` calls made inside the block to this node.

    A class rather than ``@contextmanager``: it wraps every node call, and the generator
    machinery costs several times more than setting and resetting one ``ContextVar``.
    """

    __slots__ = ("_context", "_token")

    def __init__(self, node_id: str, interrupt: InterruptFlag, sink: ProgressSink | None) -> None:
        self._context = NodeContext(node_id, interrupt, sink)

    def __enter__(self) -> NodeContext:
        self._token = _current.set(self._context)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


def current_node_id() -> str | None:
    """The id of the node whose code is running in this context, if any."""
    context = _current.get()
    return None if context is None else context.node_id


def interrupt_running_prompt() -> bool:
    """Ask the prompt whose node is running in this context to stop at its next interruption point (what a
    node does to stop its own run); False outside any node, where there is nothing to stop."""
    context = _current.get()
    if context is None:
        return False
    context.interrupt.set()
    return True


def check_interrupted() -> None:
    """Raise ``Interrupted`` if the running prompt was asked to stop; a no-op outside any node."""
    context = _current.get()
    if context is not None and context.interrupt.is_set():
        raise Interrupted(context.node_id)


def report_progress(value: float, total: float, preview: Any | None = None) -> None:
    """Report that the running node is ``value`` of ``total`` done, optionally with a preview.

    ``preview`` is opaque to the engine (for example ``("JPEG", PIL image, max_size)``); it is handed
    to the listener for the server to encode. Raises ``Interrupted`` when a stop was requested.
    Outside a node (a library used on its own) it does nothing.
    """
    context = _current.get()
    if context is None:
        return
    if context.interrupt.is_set():
        raise Interrupted(context.node_id)
    if context.sink is not None:
        context.sink.on_progress(context.node_id, value, total, preview)
