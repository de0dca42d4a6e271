"""The threads that run prompts, in queue order, through a backend.

In process, one prompt at a time, as in ComfyUI (docs/compatibility.md §4.2): a diffusion run saturates the device,
and models cached by one prompt are reused by the next. A distributed backend
(``server.distributed``) has one *lane* per remote worker, and the worker runs one thread per lane,
each taking the next prompt from the queue when its lane is free. Per prompt a lane clears its
interrupt flag, runs the backend with a listener that forwards events to the WebSocket hub (routed
per docs/compatibility.md §1.4), then writes the history entry *before* it sends ``executing {node: null}`` — clients
fetch ``/history/{id}`` as soon as they see that frame (docs/compatibility.md §C.6). ``/free`` requests are applied
between prompts, never under a running one.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from graph import events
from graph.progress import InterruptFlag
from server.distributed.backend import PromptBackend, PromptEngine
from server.previews import PreviewEncodingError, encode_preview
from server.queue import PromptQueue
from server.store import HistoryRecord, PromptStore, QueueItem

__all__ = ["PromptWorker", "EventPublisher", "PromptEngine"]

log = logging.getLogger(__name__)

#: Events only the submitting socket receives; with no ``client_id`` they are not sent at all.
_CLIENT_ONLY = frozenset(
    {
        events.EXECUTION_START,
        events.EXECUTION_CACHED,
        events.EXECUTING,
        events.EXECUTED,
        events.EXECUTION_SUCCESS,
        events.EXECUTION_ERROR,
    }
)
#: Events for the submitting socket, or everybody when the prompt has no ``client_id``.
_CLIENT_OR_EVERYONE = frozenset({events.PROGRESS, events.EXECUTION_INTERRUPTED})


class EventPublisher(Protocol):
    """Thread-safe delivery to WebSocket clients (implemented by ``websocket.ThreadSafePublisher``)."""

    def event(self, name: str, data: Mapping[str, Any], sid: str | None) -> None: ...

    def preview(self, sid: str, image: bytes, mime: str, metadata: Mapping[str, Any]) -> None: ...

    def wants_previews(self, sid: str) -> bool: ...


class _Lane:
    """One prompt at a time: its thread, its interrupt flag and the prompt it is running."""

    def __init__(self, index: int, target: Callable[[_Lane], None]) -> None:
        self.interrupt = InterruptFlag()
        self.running: QueueItem | None = None
        self.thread = threading.Thread(target=target, args=(self,), name=f"loom-prompt-worker-{index}", daemon=True)


class PromptWorker:
    """Runs queued prompts on ``backend.lanes`` daemon threads until ``stop()``."""

    def __init__(
        self,
        queue: PromptQueue,
        store: PromptStore,
        backend: PromptBackend,
        publisher: EventPublisher,
        previews_enabled: bool = True,
    ) -> None:
        self._queue = queue
        self._store = store
        self._backend = backend
        self._publisher = publisher
        self._previews_enabled = previews_enabled
        self._lock = threading.Lock()
        self._free_request: tuple[bool, bool] | None = None
        self._stopping = threading.Event()
        self._lanes = [_Lane(index, self._loop) for index in range(backend.lanes)]

    def start(self) -> None:
        for lane in self._lanes:
            lane.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current prompts (interrupted); pending prompts stay stored for next start."""
        self._stopping.set()
        self._queue.close()
        self.interrupt()
        for lane in self._lanes:
            lane.thread.join(timeout)

    @property
    def backend(self) -> PromptBackend:
        return self._backend

    @property
    def running_prompt_ids(self) -> list[str]:
        with self._lock:
            return [lane.running.prompt_id for lane in self._lanes if lane.running is not None]

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop every running prompt, or only ``prompt_id`` if given; returns whether one was stopped.

        Checked and set under the lock the lanes hold while switching prompts, so a targeted
        interrupt can never land on the prompt that starts right after the intended one.
        """
        stopped = False
        with self._lock:
            for lane in self._lanes:
                if lane.running is not None and (prompt_id is None or lane.running.prompt_id == prompt_id):
                    lane.interrupt.set()
                    stopped = True
        return stopped

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            previous = self._free_request or (False, False)
            self._free_request = (previous[0] or unload_models, previous[1] or free_memory)

    def _loop(self, lane: _Lane) -> None:
        while not self._stopping.is_set():
            item = self._queue.take(timeout=0.5)
            self._apply_free_request()
            if item is None:
                continue
            if self._stopping.is_set():
                return
            self._run(lane, item)

    def _apply_free_request(self) -> None:
        with self._lock:
            request, self._free_request = self._free_request, None
        if request is not None:
            self._backend.free(*request)

    def _run(self, lane: _Lane, item: QueueItem) -> None:
        with self._lock:
            lane.interrupt.clear()
            lane.running = item
        sid = item.extra_data.get("client_id") or None
        start = time.time()
        log.info("prompt %s started (%d nodes)", item.prompt_id, len(item.prompt))
        try:
            record = self._backend.execute(
                item.prompt,
                list(item.outputs),
                prompt_id=item.prompt_id,
                extra_data={**item.extra_data, **item.sensitive},
                listener=lambda name, data: self._forward(sid, name, data),
                interrupt=lane.interrupt,
            )
            status = str(getattr(record.status, "value", record.status))
            outputs, history_status, meta = record.outputs, record.history_status(), record.meta
        except Exception as error:  # an executor bug or a lost worker must not kill the lane: record it, go on
            log.exception("prompt %s could not be run", item.prompt_id)
            status, outputs, meta = "error", {}, {}
            failure = events.execution_error(
                item.prompt_id,
                None,
                None,
                [],
                str(error),
                type(error).__name__,
                traceback.format_exception(error),
                {},
                [],
            )
            messages = [
                [events.EXECUTION_START, events.execution_start(item.prompt_id)],
                [events.EXECUTION_ERROR, failure],
            ]
            history_status = {"status_str": "error", "completed": False, "messages": messages}
            self._forward(sid, events.EXECUTION_ERROR, failure)
        if status == "interrupted" and self._stopping.is_set():
            # Cut off by shutdown, not by a user: it stays stored as pending and runs at the next start.
            with self._lock:
                lane.running = None
            self._queue.done(item.prompt_id)
            return
        entry = {"prompt": item.wire(), "outputs": outputs, "status": history_status, "meta": meta}
        end = time.time()
        self._store.finish(HistoryRecord(item.prompt_id, item.number, status, item.create_time, start, end, entry))
        log.info("prompt %s finished: %s in %.2f s", item.prompt_id, status, end - start)
        with self._lock:
            lane.running = None
        self._queue.done(item.prompt_id)
        if sid is not None:
            self._publisher.event(events.EXECUTING, {"node": None, "prompt_id": item.prompt_id}, sid)

    def _forward(self, sid: str | None, name: str, data: dict[str, Any]) -> None:
        """Route one executor event (docs/compatibility.md §1.4 targets); previews become binary frames."""
        if name == events.PREVIEW:
            self._forward_preview(sid, data)
        elif name == events.EXECUTING and data.get("node") is None:
            return  # the worker sends the end marker itself, after history is written
        elif name in _CLIENT_ONLY:
            if sid is not None:
                self._publisher.event(name, data, sid)
        elif name in _CLIENT_OR_EVERYONE:
            self._publisher.event(name, data, sid)
        else:
            self._publisher.event(name, data, None)

    def _forward_preview(self, sid: str | None, data: dict[str, Any]) -> None:
        if not self._previews_enabled or sid is None or not self._publisher.wants_previews(sid):
            return
        try:
            image, mime = encode_preview(data["image"])
        except PreviewEncodingError as error:
            log.warning("preview of node %s dropped: %s", data.get("node_id"), error)
            return
        metadata = {key: value for key, value in data.items() if key != "image"}
        self._publisher.preview(sid, image, mime, metadata)
