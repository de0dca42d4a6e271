"""The explicit state of one prompt's execution, and the record it leaves behind.

Modelled on dagster's ``ActiveExecution`` (docs/architecture.md): every node of the prompt is in one named state
(pending, running, succeeded, cached, failed, skipped), and every transition goes through one
method that also emits the matching docs/compatibility.md §1.4 event. So what the listener saw, what the history
stores (docs/compatibility.md §1.7 ``status.messages``, ``outputs``, ``meta``) and what a test can inspect are one
and the same data. Without a listener no payload is built except the few the history keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from graph import events
from graph.events import Listener

log = logging.getLogger(__name__)


class NodeState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CACHED = "cached"
    FAILED = "failed"
    #: Not run and not needed: below a cached node, an unrequested lazy branch, or silently blocked.
    SKIPPED = "skipped"


class PromptStatus(str, Enum):
    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"


@dataclass
class ExecutionRecord:
    """What one ``Executor.execute`` call did; the server builds the history entry from it."""

    prompt_id: str
    status: PromptStatus
    #: ``{node_id: ui dict}`` for every node that produced UI output, cached ones included.
    outputs: dict[str, dict[str, list[Any]]]
    #: ``[event, data]`` pairs in the history ``status.messages`` form.
    messages: list[list[Any]]
    executed: list[str]
    cached: list[str]
    error: dict[str, Any] | None
    meta: dict[str, events.NodeMeta]
    node_states: dict[str, NodeState] = field(default_factory=dict)

    def nodes_in(self, state: NodeState) -> list[str]:
        return [node_id for node_id, node_state in self.node_states.items() if node_state is state]

    def history_status(self) -> dict[str, Any]:
        """The history ``status`` object; ``status_str`` is ``error`` for interruptions too."""
        ok = self.status is PromptStatus.SUCCESS
        return {"status_str": "success" if ok else "error", "completed": ok, "messages": self.messages}


class ExecutionState:
    """Per-prompt state machine; the executor drives it, it keeps the books and talks to the listener."""

    def __init__(self, prompt_id: str, node_ids: Iterable[str], listener: Listener | None) -> None:
        self.prompt_id = prompt_id
        self.listener = listener
        self.states: dict[str, NodeState] = dict.fromkeys(node_ids, NodeState.PENDING)
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.outputs: dict[str, dict[str, list[Any]]] = {}
        self.messages: list[list[Any]] = []
        self.error: dict[str, Any] | None = None
        #: ``progress_state`` bookkeeping: only nodes that have started appear (pending ones do not).
        self._progress: dict[str, dict[str, Any]] = {}
        #: ``meta`` of the nodes created by expansions; prompt nodes use the default.
        self._expanded_meta: dict[str, events.NodeMeta] = {}

    def meta(self, node_id: str) -> events.NodeMeta:
        return self._expanded_meta.get(node_id) or events.node_meta(node_id)

    def display_node(self, node_id: str) -> str:
        return self.meta(node_id)["display_node"]

    def add_expanded(self, node_id: str, parent: str, display_node: str | None) -> None:
        """A node created by ``parent``'s expansion joins the prompt, shown on the parent's display node."""
        parent_meta = self.meta(parent)
        self._expanded_meta[node_id] = events.node_meta(
            node_id, display_node or parent_meta["display_node"], parent, parent_meta["real_node_id"]
        )
        self.states[node_id] = NodeState.PENDING

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        try:
            self.listener(event, data)
        except Exception:  # a broken client connection must not fail the prompt (ComfyUI logs send errors too)
            log.exception("listener failed on %s event of prompt %s", event, self.prompt_id)

    def _remember(self, event: str, data: dict[str, Any]) -> None:
        self.messages.append([event, data])
        self._emit(event, data)

    def start(self) -> None:
        self._remember(events.EXECUTION_START, events.execution_start(self.prompt_id))

    def found_cached(self, node_ids: list[str]) -> None:
        for node_id in node_ids:
            self.states[node_id] = NodeState.CACHED
        self.cached = node_ids
        self._remember(events.EXECUTION_CACHED, events.execution_cached(self.prompt_id, node_ids))

    def served_from_cache(self, node_id: str, ui: dict[str, list[Any]] | None) -> None:
        """A cached output node: its UI is re-sent so the client shows the images again."""
        if ui is not None:
            self._record_ui(node_id, ui)
        self._set_progress(node_id, 1, 1, "finished")

    def node_started(self, node_id: str) -> None:
        self.states[node_id] = NodeState.RUNNING
        if self.listener is not None:
            self._emit(events.EXECUTING, events.executing(self.prompt_id, node_id, self.display_node(node_id)))
            self._set_progress(node_id, 0, 1, "running")

    def node_deferred(self, node_id: str) -> None:
        """The node asked for lazy inputs first; it goes back to pending until they are computed."""
        self.states[node_id] = NodeState.PENDING

    def node_succeeded(self, node_id: str, ui: dict[str, list[Any]] | None) -> None:
        self.states[node_id] = NodeState.SUCCEEDED
        self.executed.append(node_id)
        if ui is not None:
            self._record_ui(node_id, ui)
        if self.listener is not None:
            entry = self._progress.get(node_id)
            total = entry["max"] if entry else 1
            self._set_progress(node_id, total, total, "finished")

    def node_skipped(self, node_id: str) -> None:
        self.states[node_id] = NodeState.SKIPPED

    def on_progress(self, node_id: str, value: float, total: float, preview: Any | None) -> None:
        """The ``ProgressSink`` hook behind ``graph.progress.report_progress``."""
        if self.listener is None:
            return
        self._emit(events.PROGRESS, events.progress(self.prompt_id, node_id, value, total))
        self._set_progress(node_id, value, total, "running")
        if preview is not None:
            self._emit(events.PREVIEW, events.preview(self.prompt_id, node_id, self.meta(node_id), preview))

    def _set_progress(self, node_id: str, value: float, total: float, state: str) -> None:
        if self.listener is None:
            return
        meta = self.meta(node_id)
        self._progress[node_id] = events.node_progress(self.prompt_id, node_id, value, total, state, meta)
        self._emit(events.PROGRESS_STATE, events.progress_state(self.prompt_id, self._progress))

    def _record_ui(self, node_id: str, ui: dict[str, list[Any]]) -> None:
        self.outputs[node_id] = ui
        self._emit(events.EXECUTED, events.executed(self.prompt_id, node_id, self.display_node(node_id), ui))

    def succeed(self) -> ExecutionRecord:
        for node_id, state in self.states.items():
            if state is NodeState.PENDING:
                self.states[node_id] = NodeState.SKIPPED
        self._remember(events.EXECUTION_SUCCESS, events.execution_success(self.prompt_id))
        return self._record(PromptStatus.SUCCESS)

    def fail(
        self,
        node_id: str | None,
        node_type: str | None,
        error: BaseException,
        traceback: list[str],
        current_inputs: dict[str, list[Any]],
        current_outputs: list[str],
        exception_type: str | None = None,
    ) -> ExecutionRecord:
        if node_id is not None and node_id in self.states:
            self.states[node_id] = NodeState.FAILED
            if self.listener is not None:
                entry = self._progress.get(node_id)
                self._set_progress(node_id, entry["value"] if entry else 0, entry["max"] if entry else 1, "error")
        self.error = events.execution_error(
            self.prompt_id,
            node_id,
            node_type,
            self.executed,
            str(error),
            exception_type or _qualified_name(error),
            traceback,
            events.format_inputs(current_inputs),
            current_outputs,
        )
        self._remember(events.EXECUTION_ERROR, self.error)
        return self._record(PromptStatus.ERROR)

    def interrupt(self, node_id: str | None, node_type: str | None) -> ExecutionRecord:
        if node_id is not None and node_id in self.states and self.states[node_id] is NodeState.RUNNING:
            self.states[node_id] = NodeState.PENDING
        data = events.execution_interrupted(self.prompt_id, node_id, node_type, self.executed)
        self._remember(events.EXECUTION_INTERRUPTED, data)
        return self._record(PromptStatus.INTERRUPTED)

    def _record(self, status: PromptStatus) -> ExecutionRecord:
        return ExecutionRecord(
            prompt_id=self.prompt_id,
            status=status,
            outputs=self.outputs,
            messages=self.messages,
            executed=list(self.executed),
            cached=list(self.cached),
            error=self.error,
            meta={node_id: self.meta(node_id) for node_id in self.outputs},
            node_states=self.states,
        )


def _qualified_name(error: BaseException) -> str:
    """``exception_type`` as ComfyUI writes it: the module path for non-builtins (``torch.OutOfMemoryError``)."""
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
