"""The output cache: node outputs by content-addressed key, within a byte budget, least recently used first out.

Two budgets, counted separately, because they bound two memories: ``device_budget_bytes``
(``--cache-vram-budget``) bounds the bytes of output tensors that stay on a non-CPU device and
``budget_bytes`` (``--cache-budget``) everything else the cache holds, in RAM. Values stay where the node
produced them (a GPU latent stays on the GPU, so the next prompt needs no copy). When the device budget is
exceeded, the least recently used entries are first *offloaded*: their device tensors are copied to CPU,
which frees device memory but keeps the result, now counted in RAM. Only when the RAM budget is exceeded
are entries *dropped*, again least recently used first. ComfyUI's RAM-pressure mode
(docs/compatibility.md §4.4) weighs age against size; plain LRU is predictable and testable.

The cache owns the memory of what it holds, models included: a loaded checkpoint lives exactly as
long as some entry (or the running prompt) holds a handle over it, because nothing else keeps one
alive (docs/architecture.md, "Memory"). So the budget counts what entries really hold, sized by
``graph.sizeof``, and an object that several entries hold (the modules under a checkpoint loader's
and a LoRA loader's outputs, a latent passed through) once: dropping an entry frees only what no
other entry holds. Live objects (modules, ``loom_nbytes``) are measured again when each prompt ends,
since first use casts or moves weights and computes LoRA weights after they were stored.

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

from graph.sizeof import Held, footprint, is_device_tensor, measure


@dataclass(slots=True)
class CacheEntry:
    """One node's result: a list of items per output slot (list mapping), its UI dict, its sizes.

    ``nbytes`` and ``device_nbytes`` are what the entry holds when stored (or offloaded), shared
    objects included; the cache's totals count an object held by several entries once.
    """

    outputs: tuple[list[Any], ...]
    ui: dict[str, list[Any]] | None
    nbytes: int
    device_nbytes: int
    #: Bytes of the numbers and strings, charged to this entry alone.
    scalar_bytes: int = 0
    #: ``id``s of the distinct objects the entry holds, each charged once in the cache's ``_charges``.
    holds: tuple[int, ...] = ()


@dataclass(slots=True)
class _Charge:
    """One object that entries hold, charged once however many hold it (and kept alive until none does)."""

    held: Held
    holders: int = 1


@dataclass(frozen=True)
class CacheStats:
    """``bytes`` and ``device_bytes`` count each distinct object once, across all entries."""

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
        self._charges: dict[int, _Charge] = {}
        self._live: dict[int, _Charge] = {}  # the charges to measure again when a prompt ends
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
        scalar_bytes, held = footprint(outputs)
        entry = CacheEntry(outputs, ui, scalar_bytes, 0, scalar_bytes)
        if held:
            _hold(entry, held)
        with self._lock:
            self._charge(entry, held)  # before the replaced entry lets go of what both hold
            self._remove(key)
            self._entries[key] = entry
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
                self._measure_live()
                self._enforce_budgets()

    def clear(self) -> None:
        """Drop every entry (``/free``); hit and miss counters are kept, they describe the process."""
        with self._lock:
            self._entries.clear()
            self._charges.clear()
            self._live.clear()
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
            self._release(old.scalar_bytes, old.holds)

    def _charge(self, entry: CacheEntry, held: dict[int, Held]) -> None:
        self._bytes += entry.scalar_bytes
        for ident, item in held.items():
            charge = self._charges.get(ident)
            if charge is not None:
                charge.holders += 1
                continue
            self._charges[ident] = charge = _Charge(item)
            if item.live:
                self._live[ident] = charge
            self._bytes += item.nbytes
            self._device_bytes += item.device_nbytes

    def _release(self, scalar_bytes: int, holds: tuple[int, ...]) -> None:
        self._bytes -= scalar_bytes
        for ident in holds:
            charge = self._charges[ident]
            charge.holders -= 1
            if not charge.holders:
                del self._charges[ident]
                self._live.pop(ident, None)
                self._bytes -= charge.held.nbytes
                self._device_bytes -= charge.held.device_nbytes

    def _measure_live(self) -> None:
        for charge in self._live.values():
            now = measure(charge.held.value)
            self._bytes += now.nbytes - charge.held.nbytes
            self._device_bytes += now.device_nbytes - charge.held.device_nbytes
            charge.held = now

    def _enforce_budgets(self) -> None:
        if self.device_budget_bytes is not None and self._device_bytes > self.device_budget_bytes:
            for key in [k for k, e in self._entries.items() if e.device_nbytes and k not in self._pinned]:
                self._offload(self._entries[key])
                if self._device_bytes <= self.device_budget_bytes:
                    break
        if self.budget_bytes is not None and self._host_bytes > self.budget_bytes:
            for key in [k for k in self._entries if k not in self._pinned]:
                self._remove(key)
                self._evictions += 1
                if self._host_bytes <= self.budget_bytes:
                    break

    @property
    def _host_bytes(self) -> int:
        return self._bytes - self._device_bytes

    def _offload(self, entry: CacheEntry) -> None:
        released, device_before = (entry.scalar_bytes, entry.holds), entry.device_nbytes
        entry.outputs = tuple(_to_cpu(slot) for slot in entry.outputs)
        entry.scalar_bytes, held = footprint(entry.outputs)
        _hold(entry, held)
        self._charge(entry, held)  # before the device tensors' charges are released
        self._release(*released)
        self._offloads += 1
        self._offloaded_bytes += device_before - entry.device_nbytes


def _hold(entry: CacheEntry, held: dict[int, Held]) -> None:
    """Size the entry from its scalars and the distinct objects its outputs hold (``footprint``)."""
    entry.holds = tuple(held)
    entry.nbytes = entry.scalar_bytes + sum(item.nbytes for item in held.values())
    entry.device_nbytes = sum(item.device_nbytes for item in held.values())


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
