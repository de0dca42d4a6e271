"""The prompt queue: priority order, one running item, backed by the SQLite store.

Priority follows ComfyUI (docs/compatibility.md §1.3 step 2): an explicit ``number`` is used as given; otherwise the
server counter is used, negated when ``front`` is set, and the counter advances only in that case.
Lower numbers run first, so several ``front`` submissions run newest-first. Ties keep submission
order.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterable

from server.store import PromptStore, QueueItem

__all__ = ["PromptQueue"]


class PromptQueue:
    """Thread-safe: HTTP handlers put and delete, the worker thread takes and finishes."""

    def __init__(self, store: PromptStore, on_change: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_change = on_change or (lambda: None)
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._order = itertools.count()
        self._running: dict[str, QueueItem] = {}
        self._counter = int(store.highest_number()) + 1
        self._closed = False
        for item in sorted(store.load_pending(), key=lambda item: (item.number, item.create_time)):
            heapq.heappush(self._heap, (item.number, next(self._order), item))

    def assign_number(self, number: float | None, front: bool) -> float:
        """The priority a new prompt gets (see the module docstring)."""
        if number is not None:
            return float(number)
        with self._cond:
            value = self._counter
            self._counter += 1
        return float(-value if front else value)

    def put(self, item: QueueItem) -> None:
        """Persist first: once this returns, the prompt survives a crash."""
        self._store.add_pending(item)
        with self._cond:
            heapq.heappush(self._heap, (item.number, next(self._order), item))
            self._cond.notify_all()
        self._on_change()

    def take(self, timeout: float | None = None) -> QueueItem | None:
        """The next prompt to run, marked running; ``None`` if none arrived within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._heap) or self._closed, timeout) or self._closed:
                return None
            _, _, item = heapq.heappop(self._heap)
            self._running[item.prompt_id] = item
        self._on_change()
        return item

    def close(self) -> None:
        """Wake a waiting ``take`` for good (shutdown); stored pending prompts stay for the next start."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def done(self, prompt_id: str) -> None:
        """The worker has written the history entry (which also removed the stored pending row)."""
        with self._cond:
            self._running.pop(prompt_id, None)
        self._on_change()

    def running(self) -> list[QueueItem]:
        with self._cond:
            return list(self._running.values())

    def pending(self) -> list[QueueItem]:
        with self._cond:
            return [item for _, _, item in sorted(self._heap, key=lambda entry: entry[:2])]

    def remaining(self) -> int:
        """Running plus pending: what ``exec_info.queue_remaining`` reports."""
        with self._cond:
            return len(self._heap) + len(self._running)

    def find(self, prompt_id: str) -> QueueItem | None:
        with self._cond:
            if prompt_id in self._running:
                return self._running[prompt_id]
            return next((item for _, _, item in self._heap if item.prompt_id == prompt_id), None)

    def delete(self, prompt_ids: Iterable[str]) -> list[str]:
        """Remove pending prompts (a running one is stopped with an interrupt, not here)."""
        wanted = set(prompt_ids)
        return self._remove(lambda item: item.prompt_id in wanted)

    def clear(self) -> list[str]:
        return self._remove(lambda item: True)

    def _remove(self, predicate: Callable[[QueueItem], bool]) -> list[str]:
        with self._cond:
            removed = [item.prompt_id for _, _, item in self._heap if predicate(item)]
            if not removed:
                return []
            gone = set(removed)
            self._heap = [entry for entry in self._heap if entry[2].prompt_id not in gone]
            heapq.heapify(self._heap)
            self._store.remove_pending(removed)
        self._on_change()
        return removed
