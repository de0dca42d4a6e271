"""Where a runtime's models sit, and which are loaded: placement within a device budget, never lifetime.

A workflow alternates between models (text encoder, UNet, VAE, maybe a refiner): moving all of them
to the GPU up front fails on small cards, moving each one back after use wastes the PCIe bus on
big ones. Like ComfyUI's "smart memory", models stay resident after use and are offloaded only when a
new request would not fit: least recently used first, to the offload device (CPU RAM). Weights are
never dropped, because a model built from a memory-mapped file has no other copy to reload from once
it has been moved.

A request that cannot fit even after offloading every other model is placed partially, as ComfyUI's
"lowvram" mode does: the blocks that fit stay on the device and the others are streamed to it one call at a
time (`diffusion/weight_streaming.py`). Only a request whose largest block plus the working memory exceeds
the budget raises `MemoryBudgetError`. The budget is the device's memory less a reserve, or `--vram-budget`;
on the CPU that budget is a simulation (nothing moves, the blocks in flight are counted), so every path is
tested without a GPU.

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
from diffusion.devices import COMPUTE_DEVICE_ATTRIBUTE, memory_info
from diffusion.fp8_matmul import fp8_matmul_supported, takes_fp8_matmul
from diffusion.stored_weights import ComputesFromStored
from diffusion.weight_streaming import StreamedUnit, Unit, direct_tensors, rebind, split_units

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


def place(
    model: nn.Module, device: torch.device, dtype: torch.dtype | None, storage: torch.device | None = None
) -> None:
    """``model.to(device, dtype)``, except for layers that compute in ``dtype`` from their stored weight.

    With ``storage``, the model is prepared to compute on ``device`` but its tensors are put on ``storage``:
    a partly placed model's streamed blocks rest there, cast as they will compute (``ModelMemory``).

    Those (``diffusion.stored_weights``: oneDNN convolutions, which hold only their packed copy, and
    layers whose stored weight is narrower than ``dtype``) keep their weight as loaded, moved but not
    cast: on the CPU a view of the mapped file. Every other tensor is moved and cast as ``.to``
    would, and a tensor replaced by its cast copy drops its file pages at once
    (``release_file_pages``), so the file does not stay resident beside the cast model until its
    last view dies (bench/RESULTS.md, "Memory").
    """
    target = device if storage is None else storage
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
        moved = tensor.to(target, dtype) if cast else tensor.to(target)
        if moved.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            release_file_pages(tensor)
        return moved

    model._apply(convert)
    fp8_device = fp8_matmul_supported(torch.device(device))
    for layer, compute in stored.values():
        layer.compute_from_stored(compute)
        layer.fp8_matmul = fp8_device and takes_fp8_matmul(layer.weight, compute)


class MemoryBudgetError(RuntimeError):
    """The requested models (plus working memory) exceed the device budget on their own."""

    def __init__(self, needed: int, budget: int, device: torch.device) -> None:
        self.needed = needed
        self.budget = budget
        self.device = device
        super().__init__(
            f"models need {needed / 2**20:.1f} MiB on {device} but the budget is {budget / 2**20:.1f} MiB "
            "even with every other model offloaded and the rest of theirs streamed block by block"
        )


@dataclass
class _Partial:
    """A model placed in part: what sits on the device for good, and the hooks streaming the rest."""

    device_bytes: int
    streamed: list[StreamedUnit]
    largest_streamed: int


@dataclass
class _Entry:
    size: int
    resident: bool
    explicit_size: bool
    last_used: int
    partial: _Partial | None = None

    @property
    def device_bytes(self) -> int:
        """What this model holds on the device between calls (a partial model: not its blocks in flight)."""
        if not self.resident:
            return 0
        return self.size if self.partial is None else self.partial.device_bytes


class ModelMemory:
    """Which registered models sit on `device`; `use()` places models there within `budget_bytes`.

    With a `dtype`, floating-point weights are cast to it when first placed (and stay cast when
    offloaded), so a file's fp16 weights can compute in fp32 on a CPU or in bf16 on a GPU.
    `peak_bytes` is the most the models ever held on the device at once, streamed blocks in flight
    included: on the CPU, where nothing moves, it is what shows that a budget was kept.
    `unreachable_streaming` (tests) parks streamed blocks on the meta device between their calls.
    """

    def __init__(
        self,
        device: torch.device | str,
        budget_bytes: int,
        offload_device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        unreachable_streaming: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload_device = torch.device(offload_device)
        self.budget_bytes = budget_bytes
        self.unreachable_streaming = unreachable_streaming
        self._entries: weakref.WeakKeyDictionary[nn.Module, _Entry] = weakref.WeakKeyDictionary()
        self._clock = itertools.count()  # orders `_Entry.last_used`
        self._lock = threading.Lock()
        self._loads: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
        self._loads_lock = threading.Lock()
        self._in_flight = 0
        self.peak_bytes = 0

    @classmethod
    def for_device(
        cls,
        device: torch.device | str,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        dtype: torch.dtype | None = None,
        budget_bytes: int | None = None,
    ) -> ModelMemory:
        """A budget of the device's total memory minus a reserve, or ``budget_bytes`` (``--vram-budget``)."""
        if budget_bytes is None:
            budget_bytes = max(memory_info(device).total - reserve_bytes, 0)
        return cls(device, budget_bytes, dtype=dtype)

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
        offloaded, least recently used first, only as far as needed; models that do not fit even then
        are placed in part and stream their other blocks (module docstring).
        """
        with self._lock:
            entries = [self._register(m, None) for m in models]
            wanted = set(models)
            needed = sum(e.size for e in entries) + extra_bytes
            if needed > self.budget_bytes:
                self._use_partially(models, entries, extra_bytes)
                return
            self._make_room(wanted, needed)
            for model, entry in zip(models, entries, strict=True):
                if entry.partial is not None:
                    self._stop_streaming(entry)
                    entry.resident = False
                if not entry.resident:
                    place(model, self.device, self.dtype)
                    if self.dtype is not None and not entry.explicit_size:
                        entry.size = module_bytes(model)
                    entry.resident = True
                    model.__dict__[COMPUTE_DEVICE_ATTRIBUTE] = self.device
                entry.last_used = next(self._clock)
            self._note_peak()

    def _make_room(self, wanted: set[nn.Module], needed: int) -> None:
        for other, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
            if self._resident_bytes(excluding=wanted) + needed <= self.budget_bytes:
                break
            if other not in wanted and entry.resident:
                self._offload(other, entry)

    def _use_partially(self, models: tuple[nn.Module, ...], entries: list[_Entry], extra_bytes: int) -> None:
        """Place `models` in part: every other model is offloaded, their blocks fill what the budget leaves
        beside room for the largest streamed block and `extra_bytes`, in order, and the rest stream."""
        if all(e.partial is not None for e in entries):
            held = sum(e.device_bytes for e in entries)
            largest = max(e.partial.largest_streamed for e in entries if e.partial is not None)
            if held + largest + extra_bytes <= self.budget_bytes:
                self._make_room(set(models), held + largest + extra_bytes)
                for entry in entries:
                    entry.last_used = next(self._clock)
                return
        for model, entry in zip(models, entries, strict=True):
            if entry.partial is not None:  # laid out for another request: start again from the offload device
                self._offload(model, entry)
            if not entry.resident:
                # Cast where the weights rest, as they will compute, to measure each block in its compute dtype.
                place(model, self.device, self.dtype, storage=self.offload_device)
                if not entry.explicit_size:
                    entry.size = module_bytes(model)
        splits = [split_units(model, module_bytes, self.budget_bytes // 4) for model in models]
        glues = [sum(_nbytes(t) for module in resident for *_, t in direct_tensors(module)) for _, resident in splits]
        largest = max((unit.size for units, _ in splits for unit in units), default=0)
        needed = sum(glues) + largest + extra_bytes
        if needed > self.budget_bytes:
            raise MemoryBudgetError(needed, self.budget_bytes, self.device)
        for other, entry in list(self._entries.items()):
            if other not in models and entry.resident:
                self._offload(other, entry)
        room = self.budget_bytes - needed
        for model, (units, resident), glue, entry in zip(models, splits, glues, entries, strict=True):
            kept = 0
            streamed: list[Unit] = []
            for unit in units:
                if not streamed and unit.size <= room:
                    unit.module.to(self.device)
                    room -= unit.size
                    kept += unit.size
                else:
                    unit.module.to(self.offload_device)
                    streamed.append(unit)
            for module in resident:  # after the units: some lie inside streamed ones
                for table, name, tensor in direct_tensors(module):
                    rebind(table, name, tensor.to(self.device))
            hooks = [
                StreamedUnit(unit, self.device, self._enter_stream, self._exit_stream, self.unreachable_streaming)
                for unit in streamed
            ]
            entry.partial = _Partial(glue + kept, hooks, max((unit.size for unit in streamed), default=0))
            entry.resident = True
            model.__dict__[COMPUTE_DEVICE_ATTRIBUTE] = self.device
            entry.last_used = next(self._clock)
        self._note_peak()

    def _enter_stream(self, size: int) -> None:
        self._in_flight += size
        self._note_peak()

    def _exit_stream(self, size: int) -> None:
        self._in_flight -= size

    def _note_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._resident_bytes(excluding=set()) + self._in_flight)

    def is_partial(self, model: nn.Module) -> bool:
        """Whether `model` is placed in part, streaming some of its blocks."""
        entry = self._entries.get(model)
        return entry is not None and entry.resident and entry.partial is not None

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
        """Stop tracking a model that stays alive elsewhere; it is left where it is (a partial one whole again)."""
        with self._lock:
            entry = self._entries.pop(model, None)
            if entry is not None and entry.partial is not None:
                self._stop_streaming(entry)

    def is_resident(self, model: nn.Module) -> bool:
        entry = self._entries.get(model)
        return entry is not None and entry.resident

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes(excluding=set())

    def _resident_bytes(self, excluding: set[nn.Module]) -> int:
        return sum(e.device_bytes for model, e in list(self._entries.items()) if model not in excluding)

    def _stop_streaming(self, entry: _Entry) -> None:
        if entry.partial is not None:
            for hook in entry.partial.streamed:
                hook.remove()
            entry.partial = None

    def _offload(self, model: nn.Module, entry: _Entry) -> None:
        self._stop_streaming(entry)
        model.to(self.offload_device)
        model.__dict__[COMPUTE_DEVICE_ATTRIBUTE] = self.offload_device
        entry.resident = False


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
