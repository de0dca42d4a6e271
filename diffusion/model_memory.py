"""Keep models on the compute device within a byte budget, offloading the least recently used.

A workflow alternates between models (text encoder, UNet, VAE, maybe a refiner): moving all of them
to the GPU up front fails on small cards, moving each one back after use wastes the PCIe bus on
big ones. Like ComfyUI's "smart memory", models stay resident after use and are offloaded only when a
new request would not fit: least recently used first, to the offload device (CPU RAM). Weights are
never dropped, because a model built from a memory-mapped file has no other copy to reload from once
it has been moved.

Partial ("lowvram") placement is not implemented: a request that cannot fit even after offloading
every other model raises `MemoryBudgetError` instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.devices import memory_info

__all__ = ["DEFAULT_RESERVE_BYTES", "MemoryBudgetError", "ModelMemory", "module_bytes"]

# Headroom for the CUDA context, other processes and fragmentation. ComfyUI keeps 400-600 MB plus at
# least 0.8 GB per call (docs/compatibility.md §6.2); one GiB is a round default in that range. A call's own
# activation estimate goes on top, through `use(..., extra_bytes=...)`.
DEFAULT_RESERVE_BYTES = 1 << 30


def module_bytes(model: nn.Module) -> int:
    """Bytes of a module's parameters and buffers in their current dtypes."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


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
    model: nn.Module
    size: int
    resident: bool
    explicit_size: bool


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
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    @classmethod
    def for_device(
        cls, device: torch.device | str, reserve_bytes: int = DEFAULT_RESERVE_BYTES, dtype: torch.dtype | None = None
    ) -> ModelMemory:
        """A budget of the device's total memory minus a reserve."""
        total = memory_info(device).total
        return cls(device, max(total - reserve_bytes, 0), dtype=dtype)

    def register(self, model: nn.Module, size_bytes: int | None = None) -> None:
        """Track a model (where it is now: resident if its weights are on `device`)."""
        with self._lock:
            self._register(model, size_bytes)

    def _register(self, model: nn.Module, size_bytes: int | None) -> _Entry:
        entry = self._entries.get(id(model))
        if entry is None:
            first = next(iter(model.parameters()), None)
            resident = first is not None and first.device == self.device and self.device != self.offload_device
            entry = _Entry(model, module_bytes(model) if size_bytes is None else size_bytes, resident, size_bytes is not None)
            self._entries[id(model)] = entry
        return entry

    def use(self, *models: nn.Module, extra_bytes: int = 0) -> None:
        """Put `models` on the device, leaving `extra_bytes` free for the call about to run.

        Unregistered models are registered with their parameter size. Other resident models are
        offloaded, least recently used first, only as far as needed.
        """
        with self._lock:
            entries = [self._register(m, None) for m in models]
            wanted = {id(m) for m in models}
            needed = sum(e.size for e in entries) + extra_bytes
            if needed > self.budget_bytes:
                raise MemoryBudgetError(needed, self.budget_bytes, self.device)
            for key, other in list(self._entries.items()):
                if self._resident_bytes(excluding=wanted) + needed <= self.budget_bytes:
                    break
                if key not in wanted and other.resident:
                    self._offload(other)
            for entry in entries:
                if not entry.resident:
                    entry.model.to(self.device, dtype=self.dtype)
                    if self.dtype is not None and not entry.explicit_size:
                        entry.size = module_bytes(entry.model)
                    entry.resident = True
                self._entries.move_to_end(id(entry.model))

    def offload(self, model: nn.Module) -> None:
        """Move one model to the offload device now."""
        with self._lock:
            entry = self._entries.get(id(model))
            if entry is not None and entry.resident:
                self._offload(entry)

    def unload_all(self) -> None:
        """Offload every resident model (the `/free` route, or recovery after running out of memory)."""
        with self._lock:
            for entry in self._entries.values():
                if entry.resident:
                    self._offload(entry)

    def forget(self, model: nn.Module) -> None:
        """Stop tracking a model (its owner is discarding it); it is left where it is."""
        with self._lock:
            self._entries.pop(id(model), None)

    def is_resident(self, model: nn.Module) -> bool:
        entry = self._entries.get(id(model))
        return entry is not None and entry.resident

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes(excluding=set())

    def _resident_bytes(self, excluding: set[int]) -> int:
        return sum(e.size for k, e in self._entries.items() if e.resident and k not in excluding)

    def _offload(self, entry: _Entry) -> None:
        entry.model.to(self.offload_device)
        entry.resident = False
