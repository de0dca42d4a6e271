"""Where a runtime's models sit, and which are loaded: placement within a device budget, never lifetime.

A workflow alternates between models (text encoder, UNet, VAE, maybe a refiner): moving all of them
to the GPU up front fails on small cards, moving each one back after use wastes the PCIe bus on
big ones. Like ComfyUI's "smart memory", models stay resident after use and are offloaded only when a
new request would not fit: least recently used first, to the offload device (CPU RAM). Weights are
never dropped, because a model built from a memory-mapped file has no other copy to reload from once
it has been moved.

Partial ("lowvram") placement is not implemented: a request that cannot fit even after offloading
every other model raises `MemoryBudgetError` instead.

`ModelMemory` owns no model. It knows models through weak references only, both the ones it places
and the loads it shares (`load_shared`: one copy of a file per runtime while anything uses it), so a
model lives exactly as long as its users hold it; in Loom those are the handles in the output cache,
whose `--cache-budget` counts the weights (docs/architecture.md, "Memory"). Dropping the last handle
therefore frees the weights wherever they sit, and no stale copy lingers here to be served or
counted twice. The device budget here and the cache budget there bound different memories: this one
what sits on the accelerator, that one everything kept between prompts.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from diffusion.checkpoint.files import release_file_pages
from diffusion.devices import memory_info
from diffusion.stored_weights import ComputesFromStored

__all__ = ["DEFAULT_RESERVE_BYTES", "MemoryBudgetError", "ModelMemory", "module_bytes", "place"]

_T = TypeVar("_T")

# Headroom for the CUDA context, other processes and fragmentation. ComfyUI keeps 400-600 MB plus at
# least 0.8 GB per call (docs/compatibility.md §6.2); one GiB is a round default in that range. A call's own
# activation estimate goes on top, through `use(..., extra_bytes=...)`.
DEFAULT_RESERVE_BYTES = 1 << 30


def module_bytes(model: nn.Module) -> int:
    """Bytes a module holds: each layer's parameters and buffers in their current dtypes, or what a
    layer reports through ``loom_nbytes()`` (``PackedConv2d``: its packed copies in place of a stored
    weight). ``graph.sizeof`` walks modules the same way for the output cache."""
    total = 0
    for layer in model.modules():
        own = getattr(layer, "loom_nbytes", None)
        if callable(own):
            total += int(own())
        else:
            tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def place(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """``model.to(device, dtype)``, except for layers that compute in ``dtype`` from their stored weight.

    Those (``diffusion.stored_weights``: oneDNN convolutions, which hold only their packed copy, and
    layers whose stored weight is narrower than ``dtype``) keep their weight as loaded, moved but not
    cast: on the CPU a view of the mapped file. Every other tensor is moved and cast as ``.to``
    would, and a tensor replaced by its cast copy drops its file pages at once
    (``release_file_pages``), so the file does not stay resident beside the cast model until its
    last view dies (bench/RESULTS.md, "Memory").
    """
    stored: dict[int, tuple[ComputesFromStored, torch.dtype]] = {}
    scales: set[int] = set()  # scaled-fp8 weight scales stay fp32 whatever the compute dtype
    for layer in model.modules():
        if isinstance(layer, ComputesFromStored):
            compute = layer.weight.dtype if dtype is None else dtype
            if layer.keeps_stored_weight(torch.device(device), compute):
                stored[id(layer.weight)] = (layer, compute)
            if layer.weight_scale is not None:
                scales.add(id(layer.weight_scale))

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        kept = id(tensor) in stored or id(tensor) in scales
        cast = dtype is not None and tensor.is_floating_point() and not kept
        moved = tensor.to(device, dtype) if cast else tensor.to(device)
        if moved.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            release_file_pages(tensor)
        return moved

    model._apply(convert)
    for layer, compute in stored.values():
        layer.compute_from_stored(compute)


class MemoryBudgetError(RuntimeError):
    """The requested models (plus working memory) exceed the device budget on their own."""

    def __init__(self, needed: int, budget: int, device: torch.device) -> None:
        self.needed = needed
        self.budget = budget
        self.device = device
        super().__init__(
            f"models need {needed / 2**20:.1f} MiB on {device} but the budget is {budget / 2**20:.1f} MiB "
            "even with every other model offloaded"
        )


@dataclass
class _Entry:
    size: int
    resident: bool
    explicit_size: bool
    last_used: int


class ModelMemory:
    """Which registered models sit on `device`; `use()` places models there within `budget_bytes`.

    With a `dtype`, floating-point weights are cast to it when first placed (and stay cast when
    offloaded), so a file's fp16 weights can compute in fp32 on a CPU or in bf16 on a GPU.
    """

    def __init__(
        self,
        device: torch.device | str,
        budget_bytes: int,
        offload_device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload_device = torch.device(offload_device)
        self.budget_bytes = budget_bytes
        self._entries: weakref.WeakKeyDictionary[nn.Module, _Entry] = weakref.WeakKeyDictionary()
        self._clock = itertools.count()  # orders `_Entry.last_used`
        self._lock = threading.Lock()
        self._loads: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
        self._loads_lock = threading.Lock()

    @classmethod
    def for_device(
        cls, device: torch.device | str, reserve_bytes: int = DEFAULT_RESERVE_BYTES, dtype: torch.dtype | None = None
    ) -> ModelMemory:
        """A budget of the device's total memory minus a reserve."""
        total = memory_info(device).total
        return cls(device, max(total - reserve_bytes, 0), dtype=dtype)

    def load_shared(self, key: Hashable, load: Callable[[], _T]) -> _T:
        """What `load()` gave for `key`, while anything still holds it; else `load()` now, remembered weakly.

        `key` must change whenever the source does (a file's path, modification time and size), so a
        changed file is loaded again instead of being served from the old load.
        """
        with self._loads_lock:
            loaded = self._loads.get(key)
            if loaded is None:
                loaded = load()
                self._loads[key] = loaded
            return loaded

    def register(self, model: nn.Module, size_bytes: int | None = None) -> None:
        """Track a model (where it is now: resident if its weights are on `device`)."""
        with self._lock:
            self._register(model, size_bytes)

    def _register(self, model: nn.Module, size_bytes: int | None) -> _Entry:
        entry = self._entries.get(model)
        if entry is None:
            first = next(iter(model.parameters()), None)
            resident = first is not None and first.device == self.device and self.device != self.offload_device
            size = module_bytes(model) if size_bytes is None else size_bytes
            entry = _Entry(size, resident, size_bytes is not None, next(self._clock))
            self._entries[model] = entry
        return entry

    def use(self, *models: nn.Module, extra_bytes: int = 0) -> None:
        """Put `models` on the device, leaving `extra_bytes` free for the call about to run.

        Unregistered models are registered with their parameter size. Other resident models are
        offloaded, least recently used first, only as far as needed.
        """
        with self._lock:
            entries = [self._register(m, None) for m in models]
            wanted = set(models)
            needed = sum(e.size for e in entries) + extra_bytes
            if needed > self.budget_bytes:
                raise MemoryBudgetError(needed, self.budget_bytes, self.device)
            for other, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
                if self._resident_bytes(excluding=wanted) + needed <= self.budget_bytes:
                    break
                if other not in wanted and entry.resident:
                    self._offload(other, entry)
            for model, entry in zip(models, entries, strict=True):
                if not entry.resident:
                    place(model, self.device, self.dtype)
                    if self.dtype is not None and not entry.explicit_size:
                        entry.size = module_bytes(model)
                    entry.resident = True
                entry.last_used = next(self._clock)

    def offload(self, model: nn.Module) -> None:
        """Move one model to the offload device now."""
        with self._lock:
            entry = self._entries.get(model)
            if entry is not None and entry.resident:
                self._offload(model, entry)

    def unload_all(self) -> None:
        """Offload every resident model (recovery after running out of memory)."""
        with self._lock:
            for model, entry in list(self._entries.items()):
                if entry.resident:
                    self._offload(model, entry)

    def forget(self, model: nn.Module) -> None:
        """Stop tracking a model that stays alive elsewhere; it is left where it is."""
        with self._lock:
            self._entries.pop(model, None)

    def is_resident(self, model: nn.Module) -> bool:
        entry = self._entries.get(model)
        return entry is not None and entry.resident

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes(excluding=set())

    def _resident_bytes(self, excluding: set[nn.Module]) -> int:
        return sum(e.size for model, e in list(self._entries.items()) if e.resident and model not in excluding)

    def _offload(self, model: nn.Module, entry: _Entry) -> None:
        model.to(self.offload_device)
        entry.resident = False
