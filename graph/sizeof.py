"""How many bytes a cached value holds, without importing torch.

The output cache enforces a byte budget, so it has to size arbitrary node outputs: tensors (a
LATENT is a dict holding one, CONDITIONING a list of ``[tensor, {...}]`` pairs), plain Python
values, and model objects that know their own size. Everything is duck-typed so ``graph/`` stays
importable without torch (docs/architecture.md):

- an object with ``loom_nbytes()`` reports its own size (a model wrapper counting its weights);
- a tensor-like object with ``element_size()`` and ``nelement()`` holds their product (torch);
- an object with an integer ``nbytes`` holds that many (numpy arrays);
- dicts, lists and tuples hold the sum of their items (each container, tensor and object counted
  once, so a tensor shared by two outputs is not charged twice);
- strings are charged their length and numbers a small constant, per occurrence;
- anything else is charged that small constant too: its bookkeeping is not what exhausts memory.
"""

from __future__ import annotations

from typing import Any

#: What an opaque scalar or small object is charged; it keeps empty entries from being free.
SMALL_OBJECT_BYTES = 64


#: Values charged per occurrence, never walked: numbers and ``None`` a constant, strings their length.
_SCALARS = frozenset({int, float, bool, type(None), str})


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
    if type(value) is tuple and all(
        type(slot) is list and all(type(item) in _SCALARS for item in slot) for slot in value
    ):
        # The common node result, output slots of plain numbers and strings: no walk, no bookkeeping.
        return sum(_scalar_size(item) for slot in value for item in slot), 0
    # An explicit stack, not recursion: a deeply nested value must not hit the recursion limit.
    total = device = 0
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) in _SCALARS:
            total += _scalar_size(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif _is_tensor_like(item):
            held = int(item.element_size()) * int(item.nelement())
            total += held
            if is_device_tensor(item):
                device += held
        elif callable(getattr(item, "loom_nbytes", None)):
            total += int(item.loom_nbytes())
        elif isinstance(item, (bytes, bytearray)):
            total += len(item)
        elif isinstance(getattr(item, "nbytes", None), int):
            total += item.nbytes
        else:
            total += SMALL_OBJECT_BYTES
    return total, device


def _scalar_size(item: Any) -> int:
    return len(item) if type(item) is str else SMALL_OBJECT_BYTES


def _is_tensor_like(value: Any) -> bool:
    return callable(getattr(value, "element_size", None)) and callable(getattr(value, "nelement", None))
