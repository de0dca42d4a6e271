"""Running a model larger than the device budget: some blocks stay on the device, the others are streamed.

When a model does not fit (an SDXL or FLUX workflow on a 6 GB card, `--vram-budget`), `ModelMemory` keeps as
many of its blocks on the device as the budget allows and leaves the rest in the offload memory (CPU RAM). A
streamed block's weights are copied to the device when its forward starts and the copies dropped when it
returns, so the device holds the resident blocks plus the block running now. Results are identical to a
fully loaded model: the same weights and the same kernels on the same device; only the copies cost time.

Blocks, not single layers, are the streamed units because model code may read a child layer's weight from
its parent's forward (`self.fc1.gelu(x)`, a fused MLP), where no hook of the child runs. So a
model is split through containers (`nn.ModuleList`, `nn.Sequential`, `nn.ModuleDict`, and modules that
only group others, with no forward of their own), at its root, and through a module only when it is larger
than a quarter of the budget (a text encoder's whole decoder under its wrapper): every other module is one
unit, entered only through its own ``__call__``. Tests run every family's models with their blocks made
unreachable between calls (`StreamedUnit.unreachable`) to prove those splits safe. The root's and the containers'
own tensors (positional tables, a final norm's scale) stay resident. A UNet streams ResBlocks and spatial
transformers, a FLUX transformer its double and single blocks, a text encoder its layers.

Whatever is bound to a streamed unit's parameters when it is called is what moves: a LoRA handle that binds
its patched weights around a sampling (`nodes/patched_weights.py`) is streamed like the plain ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "KEEP_RESIDENT",
    "STREAM_METHODS",
    "STREAM_WHOLE",
    "StreamedUnit",
    "Unit",
    "direct_tensors",
    "rebind",
    "split_units",
]

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


@dataclass(frozen=True)
class Unit:
    """One module streamed or kept whole, and its bytes in its current dtypes."""

    module: nn.Module
    size: int
    #: ids of the modules inside it that stay resident (``KEEP_RESIDENT``)
    resident_inside: frozenset[int] = frozenset()


def direct_tensors(module: nn.Module) -> Iterator[tuple[dict[str, Any], str, torch.Tensor]]:
    """(the dict holding it, its name, the tensor) for each parameter and buffer of ``module`` itself."""
    for table in (module._parameters, module._buffers):
        for name, tensor in table.items():
            if tensor is not None:
                yield table, name, tensor


#: A class attribute, True on modules that read their layers' weights in their own forward (a fused MLP):
#: such a module is never split, however large.
STREAM_WHOLE = "loom_stream_whole"
#: A class attribute naming methods other than ``forward`` that callers enter a unit through (Chroma calls
#: a FLUX block's ``modulated`` with its own modulation): they bind and release the unit's weights too.
STREAM_METHODS = "loom_stream_methods"
#: Set to True on a module whose tensors its model reads outside that module's own call (T5's relative
#: position table, read by the encoder for all blocks): it stays resident wherever its block is streamed.
KEEP_RESIDENT = "loom_keep_resident"


def split_units(
    model: nn.Module, size_of: Callable[[nn.Module], int], largest: int
) -> tuple[list[Unit], list[nn.Module]]:
    """(the units, in registration order; the modules whose own tensors stay resident).

    A module is split when it is ``model`` itself, a container, has no forward, or holds more than
    ``largest`` bytes in children; any other module is one unit whatever its size, since only its own
    ``__call__`` is known to be the way in (module docstring). Modules marked ``KEEP_RESIDENT`` (and all
    under them) stay resident inside their unit."""
    units: list[Unit] = []
    resident: list[nn.Module] = []

    def splits(module: nn.Module, is_root: bool) -> bool:
        if getattr(module, STREAM_WHOLE, False) and not is_root:
            return False
        if is_root or isinstance(module, _CONTAINERS) or type(module).forward is nn.Module.forward:
            return True
        return size_of(module) > largest and any(True for _ in module.children())

    def visit(module: nn.Module, is_root: bool) -> None:
        if splits(module, is_root):
            resident.append(module)
            for child in module.children():
                visit(child, is_root=False)
            return
        kept = [m for m in module.modules() if getattr(m, KEEP_RESIDENT, False)]
        kept_all = [inner for m in kept for inner in m.modules()]
        resident.extend(kept_all)
        units.append(Unit(module, size_of(module) - sum(size_of(m) for m in kept), frozenset(map(id, kept_all))))

    visit(model, is_root=True)
    return units, resident


@dataclass
class StreamedUnit:
    """Hooks that bind a unit's tensors on ``device`` for each call and rebind what was there after it.

    ``on_enter``/``on_exit`` get the unit's size, so the owner can count the bytes in flight. With
    ``unreachable`` the unit's parameters and buffers are replaced by meta-device stand-ins between calls
    and the real ones are held here: any use outside the unit's own call then fails, which is how tests
    prove a model is split at safe points."""

    unit: Unit
    device: torch.device
    on_enter: Callable[[int], None]
    on_exit: Callable[[int], None]
    unreachable: bool = False
    _depth: int = 0
    _saved: list[torch.Tensor] = field(default_factory=list)
    _handles: list[RemovableHandle] = field(default_factory=list)

    def __post_init__(self) -> None:
        inside = self.unit.module.modules()
        kept = self.unit.resident_inside
        slots = [(table, name) for m in inside if id(m) not in kept for table, name, _ in direct_tensors(m)]
        self._slots = slots
        self._real = [table[name] for table, name in slots]
        self._stand_ins = [_meta_like(tensor) for tensor in self._real] if self.unreachable else self._real
        self._bind(self._stand_ins)
        module = self.unit.module
        self._handles = [
            module.register_forward_pre_hook(self._enter),
            module.register_forward_hook(self._exit, always_call=True),
        ]
        self._methods = tuple(getattr(type(module), STREAM_METHODS, ()))
        for name in self._methods:
            module.__dict__[name] = self._entered_through(getattr(module, name))

    def remove(self) -> None:
        """Take the hooks off and leave the real tensors bound (where they rest: the offload device)."""
        for handle in self._handles:
            handle.remove()
        for name in self._methods:
            del self.unit.module.__dict__[name]
        self._bind(self._real)

    def _entered_through(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` with the unit's weights bound around it, as a call of the unit binds them."""

        def bound(*args: Any, **kwargs: Any) -> Any:
            self._enter(self.unit.module, args)
            try:
                return method(*args, **kwargs)
            finally:
                self._exit(self.unit.module, args, None)

        return bound

    def _bind(self, tensors: list[torch.Tensor]) -> None:
        for (table, name), tensor in zip(self._slots, tensors, strict=True):
            table[name] = tensor

    def _enter(self, module: nn.Module, args: Any) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self.on_enter(self.unit.size)
        self._bind(self._real)
        self._saved = [_data(tensor) for tensor in self._real]
        for (table, name), data in zip(self._slots, self._saved, strict=True):
            rebind(table, name, data.to(self.device, non_blocking=True))

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for (table, name), data in zip(self._slots, self._saved, strict=True):
            rebind(table, name, data)
        self._saved = []
        self._bind(self._stand_ins)
        self.on_exit(self.unit.size)


def _data(tensor: torch.Tensor) -> torch.Tensor:
    """What is bound now: a parameter's ``.data`` (a LoRA handle may have rebound it), or a buffer."""
    return tensor.data if isinstance(tensor, nn.Parameter) else tensor


def rebind(table: dict[str, Any], name: str, value: torch.Tensor) -> None:
    """Bind ``value`` under ``name``: as a parameter's data (the parameter object stays) or as the buffer."""
    current = table[name]
    if isinstance(current, nn.Parameter):
        current.data = value
    else:
        table[name] = value


def _meta_like(tensor: torch.Tensor) -> torch.Tensor:
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(tensor.data.to("meta"), requires_grad=tensor.requires_grad)
    return tensor.to("meta")
