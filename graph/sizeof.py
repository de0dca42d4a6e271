"""How many bytes a cached value holds, without importing torch.

The output cache enforces a byte budget, so it has to size arbitrary node outputs: tensors (a
LATENT is a dict holding one, CONDITIONING a list of ``[tensor, {...}]`` pairs), plain Python
values, and the models that loader nodes return. Everything is duck-typed so ``graph/`` stays
importable without torch (docs/architecture.md):

- a tensor-like object with ``element_size()`` and ``nelement()`` holds their product (torch);
- a module-like object with ``modules()`` and ``parameters()`` holds its layers' parameters and
  buffers, or what a layer reports through ``loom_nbytes()`` (derived copies: oneDNN-packed weights);
- an object with ``loom_nbytes()`` holds that many bytes of its own;
- an object with ``loom_parts()`` holds those values too, walked like a container's items. A model
  handle lists the modules it keeps alive there, so a MODEL and a CLIP handle over one checkpoint, or
  a LoRA handle and its base, are charged the shared modules once, not a checkpoint each;
- an object with an integer ``nbytes`` holds that many (numpy arrays);
- dicts, lists and tuples hold the sum of their items;
- strings are charged their length and numbers a small constant, per occurrence;
- anything else is charged that small constant too: its bookkeeping is not what exhausts memory.

Every object is counted once per walk however often it occurs, and ``footprint`` lists the distinct
objects so that the cache can count one held by several entries once as well. Modules and
``loom_nbytes`` objects are *live*: their size can change after the walk (weights cast to the compute
dtype on first use, LoRA weights computed on the first call), so the cache measures them again
(``measure``). Their bytes count as host bytes wherever they sit: which model weights occupy the
device is ``diffusion.model_memory.ModelMemory``'s to decide, not the cache's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: What an opaque scalar or small object is charged; it keeps empty entries from being free.
SMALL_OBJECT_BYTES = 64


#: Values charged per occurrence, never walked: numbers and ``None`` a constant, strings their length.
_SCALARS = frozenset({int, float, bool, type(None), str})


@dataclass(frozen=True, slots=True)
class Held:
    """One distinct object inside a value and what it weighed when measured."""

    value: Any
    nbytes: int
    device_nbytes: int = 0
    #: Measured by asking the object (a module, ``loom_nbytes``): measure again for its size now.
    live: bool = False


def nbytes(value: Any) -> int:
    """Total bytes ``value`` holds, counting every distinct container, tensor and object once."""
    return sizes(value)[0]


def device_nbytes(value: Any) -> int:
    """Bytes ``value`` holds in tensors on a non-CPU device (what offloading to CPU would free)."""
    return sizes(value)[1]


def is_device_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor-like object living on an accelerator (``.device.type != "cpu"``)."""
    device = getattr(value, "device", None)
    return _is_tensor_like(value) and device is not None and getattr(device, "type", "cpu") != "cpu"


def sizes(value: Any) -> tuple[int, int]:
    """``(total bytes, bytes on non-CPU devices)`` in one walk over ``value``."""
    scalar_bytes, held = footprint(value)
    return scalar_bytes + sum(item.nbytes for item in held.values()), sum(item.device_nbytes for item in held.values())


def footprint(value: Any) -> tuple[int, dict[int, Held]]:
    """``(bytes of the scalars, charged per occurrence; the distinct objects by id)`` in one walk."""
    if type(value) is tuple and all(
        type(slot) is list and all(type(item) in _SCALARS for item in slot) for slot in value
    ):
        # The common node result, output slots of plain numbers and strings: no walk, no bookkeeping.
        return sum(_scalar_size(item) for slot in value for item in slot), {}
    # An explicit stack, not recursion: a deeply nested value must not hit the recursion limit.
    scalar_bytes = 0
    held: dict[int, Held] = {}
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) in _SCALARS:
            scalar_bytes += _scalar_size(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            parts = getattr(item, "loom_parts", None)
            if callable(parts):
                stack.extend(parts())
            held[id(item)] = measure(item)
    return scalar_bytes, held


def measure(item: Any) -> Held:
    """What one object that is neither a container nor a scalar weighs now, its parts left out."""
    if _is_tensor_like(item):
        size = int(item.element_size()) * int(item.nelement())
        return Held(item, size, size if is_device_tensor(item) else 0)
    own = getattr(item, "loom_nbytes", None)
    if callable(own):
        return Held(item, int(own()), live=True)
    if callable(getattr(item, "modules", None)) and callable(getattr(item, "parameters", None)):
        return Held(item, _module_nbytes(item), live=True)
    if callable(getattr(item, "loom_parts", None)):
        return Held(item, 0)
    if isinstance(item, (bytes, bytearray)):
        return Held(item, len(item))
    if isinstance(getattr(item, "nbytes", None), int):
        return Held(item, item.nbytes)
    return Held(item, SMALL_OBJECT_BYTES)


def _module_nbytes(module: Any) -> int:
    """A torch module's tensors, layer by layer; a layer with ``loom_nbytes()`` reports its own (a
    oneDNN-packed convolution: its packed copies, held in place of or beside its weight)."""
    total = 0
    for layer in module.modules():
        own = getattr(layer, "loom_nbytes", None)
        if callable(own):
            total += int(own())
        else:
            tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
            total += sum(int(t.element_size()) * int(t.nelement()) for t in tensors)
    return total


def _scalar_size(item: Any) -> int:
    return len(item) if type(item) is str else SMALL_OBJECT_BYTES


def _is_tensor_like(value: Any) -> bool:
    return callable(getattr(value, "element_size", None)) and callable(getattr(value, "nelement", None))
