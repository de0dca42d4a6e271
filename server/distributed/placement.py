"""Which worker runs a prompt: cache affinity first, then the least busy.

Loading a checkpoint costs far more than sampling a tiny preview (an SD1.5 file is 2–4 GB read and
converted), so a prompt should go to a worker whose model cache already holds the files it
names. The dispatcher cannot see inside a worker's ``OutputCache`` (its keys are content hashes), so
it keeps its own book: after a prompt ran on a worker, the files named by the loader inputs of the
nodes that worker executed or served from its cache are recorded as *held* there. The book is a hint,
never a guarantee — a budget eviction or a ``/free`` can drop a model behind its back, and a wrong
guess costs one load, never a wrong result.

Pure Python and thread-safe: the worker's lane threads call it concurrently; Ray is not needed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODEL_FILE_INPUTS", "model_files", "WorkerBook", "Dispatcher"]

#: Input names through which loader nodes (docs/compatibility.md Appendix A) name a model file.
MODEL_FILE_INPUTS = frozenset(
    {
        "ckpt_name",
        "unet_name",
        "vae_name",
        "clip_name",
        "clip_name1",
        "clip_name2",
        "clip_name3",
        "lora_name",
        "control_net_name",
        "style_model_name",
        "clip_vision_name",
        "model_name",
        "upscale_model",
    }
)


def model_files(prompt: Mapping[str, Any], node_ids: Iterable[str] | None = None) -> frozenset[str]:
    """The model files a prompt's loader nodes name (only ``node_ids`` when given)."""
    nodes = prompt if node_ids is None else {node_id: prompt[node_id] for node_id in node_ids if node_id in prompt}
    found: set[str] = set()
    for node in nodes.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        found.update(value for name, value in inputs.items() if name in MODEL_FILE_INPUTS and isinstance(value, str))
    return frozenset(found)


@dataclass
class WorkerBook:
    """What the dispatcher knows of one worker."""

    name: str
    running: int = 0
    held: set[str] = field(default_factory=set)
    finished: int = 0


class Dispatcher:
    """Hands out workers by name; ``acquire`` and ``release`` bracket every prompt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._books: dict[str, WorkerBook] = {}

    def add(self, name: str) -> None:
        with self._lock:
            self._books[name] = WorkerBook(name)

    def remove(self, name: str) -> None:
        with self._lock:
            self._books.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._books)

    def book(self, name: str) -> WorkerBook | None:
        with self._lock:
            return self._books.get(name)

    def acquire(self, files: frozenset[str], exclude: Iterable[str] = ()) -> str | None:
        """The worker for a prompt needing ``files``, marked busy; ``None`` when none is left.

        Order: an idle worker holding the most of ``files``; then the least busy (ties: the one that
        has finished fewest prompts, so work spreads, then the oldest).
        """
        skip = set(exclude)
        with self._lock:
            books = [book for book in self._books.values() if book.name not in skip]
            if not books:
                return None

            def rank(book: WorkerBook) -> tuple[int, int, int, int]:
                shared = len(files & book.held)
                holds_and_idle = book.running == 0 and shared > 0
                return (0 if holds_and_idle else 1, book.running, -shared, book.finished)

            chosen = min(books, key=rank)
            chosen.running += 1
            return chosen.name

    def release(self, name: str, held: Iterable[str] = ()) -> None:
        """The prompt on ``name`` is over; ``held`` are the files it left in that worker's cache."""
        with self._lock:
            book = self._books.get(name)
            if book is None:
                return
            book.running = max(0, book.running - 1)
            book.finished += 1
            book.held.update(held)

    def forget_models(self) -> None:
        """Every worker was told to drop its cache (``/free``)."""
        with self._lock:
            for book in self._books.values():
                book.held.clear()
