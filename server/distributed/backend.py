"""Where the worker's prompts run: in this process, or on Ray actors, behind one contract.

``PromptWorker`` takes prompts from the SQLite-backed queue and hands each to a ``PromptBackend``.
A backend runs one prompt per *lane*: the in-process backend has one lane (one ``Executor``, whose
model cache is the process's memory), a Ray backend one per actor. The queue is not handed over:
a prompt leaves it only when a lane is free, so pending prompts stay visible, reorderable and
cancellable until a worker actually starts them, and the store stays the single source of truth.

Which backend runs is the ``--workers`` flag (``server.distributed.spec``).
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Protocol

from graph.cache import OutputCache
from graph.events import Listener
from graph.progress import InterruptFlag

__all__ = ["PromptBackend", "PromptEngine", "LocalBackend", "WorkerLostError"]


class PromptEngine(Protocol):
    """What a backend needs of ``graph.executor.Executor`` (and what tests may stand in for)."""

    def execute(
        self,
        prompt: dict[str, Any],
        outputs: list[str],
        *,
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
        listener: Listener | None = None,
        interrupt: InterruptFlag | None = None,
    ) -> Any: ...


class PromptBackend(PromptEngine, Protocol):
    """Runs prompts for ``PromptWorker``: ``execute`` may be called from ``lanes`` threads at once.

    ``execute`` returns the executor's ``ExecutionRecord`` (status, outputs, ``history_status()``,
    meta) and reports events through ``listener`` exactly as the executor emits them; it raises only
    when the prompt could not be run at all, which the worker records as an ``execution_error``.
    """

    @property
    def lanes(self) -> int: ...

    def free(self, unload_models: bool, free_memory: bool) -> None: ...

    def close(self) -> None: ...


class LocalBackend:
    """The executor in this process: one lane, exactly the path the server had before backends."""

    def __init__(self, engine: PromptEngine, cache: OutputCache | None) -> None:
        self._engine = engine
        self._cache = cache

    def execute(
        self,
        prompt: dict[str, Any],
        outputs: list[str],
        *,
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
        listener: Listener | None = None,
        interrupt: InterruptFlag | None = None,
    ) -> Any:
        return self._engine.execute(
            prompt, outputs, prompt_id=prompt_id, extra_data=extra_data, listener=listener, interrupt=interrupt
        )

    @property
    def lanes(self) -> int:
        return 1

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Drop the output cache: it is the only owner of loaded models (the runtime's ``ModelMemory``
        knows them weakly), so their weights are freed with it, on the device too once ``gc`` has run
        and ``empty_cache`` has handed the freed blocks back to the driver (docs/architecture.md, "Memory")."""
        if (unload_models or free_memory) and self._cache is not None:
            self._cache.clear()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        return None


class WorkerLostError(RuntimeError):
    """Every worker a prompt was tried on died under it (or none was left to try)."""

    def __init__(self, prompt_id: str, workers: list[str], reason: str) -> None:
        tried = ", ".join(workers) if workers else "none"
        super().__init__(f"prompt {prompt_id} lost its worker (tried: {tried}): {reason}")
        self.prompt_id = prompt_id
        self.workers = workers
        self.reason = reason
