"""The output cache: node outputs by content-addressed key, within a byte budget, least recently used first out.

Two budgets, because accelerator memory is the scarce one: ``device_budget_bytes`` bounds the bytes
that stay on a non-CPU device and ``budget_bytes`` bounds everything the cache holds. Values stay
where the node produced them (a GPU latent stays on the GPU, so the next prompt needs no copy).
When the device budget is exceeded, the least recently used entries are first *offloaded*: their
device tensors are copied to CPU, which frees device memory but keeps the result. Only when the
total budget is exceeded are entries *dropped*, again least recently used first. ComfyUI's
RAM-pressure mode (docs/compatibility.md §4.4) weighs age against size; plain LRU is predictable and testable.

Entries a running prompt has read or written are pinned until that prompt ends, so a prompt never
loses an input it still needs; the budget therefore holds between prompts and may be overshot by
the pinned working set of one prompt while it runs. The cache also keeps each entry's UI output so
a cached output node can re-send ``executed``. It is shared between the worker thread and the
server (``/free``), hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from graph.sizeof import is_device_tensor, sizes


@dataclass(slots=True)
class CacheEntry:
    """One node's result: a list of items per output slot (list mapping), its UI dict, its sizes."""

    outputs: tuple[list[Any], ...]
    ui: dict[str, list[Any]] | None
    nbytes: int
    device_nbytes: int


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    device_bytes: int
    hits: int
    misses: int
    evictions: int
    offloads: int
    offloaded_bytes: int


class CacheBudgetError(ValueError):
    """A budget that can hold nothing (negative)."""


class OutputCache:
    """LRU output cache keyed by ``cache_keys`` signatures; see the module docstring for the policy."""

    def __init__(self, budget_bytes: int | None = None, *, device_budget_bytes: int | None = None) -> None:
        for name, budget in (("budget_bytes", budget_bytes), ("device_budget_bytes", device_budget_bytes)):
            if budget is not None and budget < 0:
                raise CacheBudgetError(f"{name} must be >= 0 or None (unbounded), got {budget}")
        self.budget_bytes = budget_bytes
        self.device_budget_bytes = device_budget_bytes
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self._pinned: set[Hashable] = set()
        self._running = False
        self._bytes = 0
        self._device_bytes = 0
        self._hits = self._misses = self._evictions = self._offloads = self._offloaded_bytes = 0
        self._lock = threading.RLock()

    def get(self, key: Hashable) -> CacheEntry | None:
        """The entry under ``key`` (marked most recently used, pinned while a prompt runs), or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._entries.move_to_end(key)
            if self._running:
                self._pinned.add(key)
            return entry

    def get_many(self, keys: dict[str, Hashable]) -> dict[str, CacheEntry]:
        """``get`` for a whole prompt under one lock: ``{name: entry}`` for the names whose key is cached."""
        found: dict[str, CacheEntry] = {}
        with self._lock:
            entries = self._entries
            for name, key in keys.items():
                entry = entries.get(key)
                if entry is not None:
                    found[name] = entry
                    entries.move_to_end(key)
                    if self._running:
                        self._pinned.add(key)
            self._hits += len(found)
            self._misses += len(keys) - len(found)
        return found

    def put(self, key: Hashable, outputs: tuple[list[Any], ...], ui: dict[str, list[Any]] | None = None) -> CacheEntry:
        """Store a node's result, then evict unpinned entries until the budgets hold again."""
        total, device = sizes(outputs)
        entry = CacheEntry(outputs=outputs, ui=ui, nbytes=total, device_nbytes=device)
        with self._lock:
            self._remove(key)
            self._entries[key] = entry
            self._bytes += entry.nbytes
            self._device_bytes += entry.device_nbytes
            if self._running:
                self._pinned.add(key)
            if self.budget_bytes is not None or self.device_budget_bytes is not None:
                self._enforce_budgets()
        return entry

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def prompt_scope(self) -> Iterator[None]:
        """Pin what the prompt inside the block touches; unpin and enforce the budgets when it ends."""
        with self._lock:
            self._running = True
        try:
            yield
        finally:
            with self._lock:
                self._running = False
                self._pinned.clear()
                self._enforce_budgets()

    def clear(self) -> None:
        """Drop every entry (``/free``); hit and miss counters are kept, they describe the process."""
        with self._lock:
            self._entries.clear()
            self._pinned.clear()
            self._bytes = self._device_bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                device_bytes=self._device_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                offloads=self._offloads,
                offloaded_bytes=self._offloaded_bytes,
            )

    def _remove(self, key: Hashable) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
            self._device_bytes -= old.device_nbytes

    def _enforce_budgets(self) -> None:
        if self.device_budget_bytes is not None and self._device_bytes > self.device_budget_bytes:
            for key in [k for k, e in self._entries.items() if e.device_nbytes and k not in self._pinned]:
                self._offload(self._entries[key])
                if self._device_bytes <= self.device_budget_bytes:
                    break
        if self.budget_bytes is not None and self._bytes > self.budget_bytes:
            for key in [k for k in self._entries if k not in self._pinned]:
                self._remove(key)
                self._evictions += 1
                if self._bytes <= self.budget_bytes:
                    break

    def _offload(self, entry: CacheEntry) -> None:
        entry.outputs = tuple(_to_cpu(slot) for slot in entry.outputs)
        new_total, new_device = sizes(entry.outputs)
        freed = entry.device_nbytes - new_device
        self._device_bytes -= freed
        self._bytes += new_total - entry.nbytes
        entry.device_nbytes -= freed
        entry.nbytes = new_total
        self._offloads += 1
        self._offloaded_bytes += freed


def _to_cpu(value: Any) -> Any:
    """A copy of ``value`` with device tensors moved to CPU; containers are rebuilt, other objects kept."""
    if is_device_tensor(value):
        return value.to("cpu")
    kind = type(value)
    if kind is dict:
        return {key: _to_cpu(item) for key, item in value.items()}
    if kind is list:
        return [_to_cpu(item) for item in value]
    if kind is tuple:
        return tuple(_to_cpu(item) for item in value)
    return value
