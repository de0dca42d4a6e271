"""ComfyUI's weight patches (``ModelPatcher.add_patches``, ``CLIP.add_patches``) as Loom's LoRA deltas.

A patch dict maps a state-dict name, or ``(name, (dim, start, length))`` for part of a fused weight, to
``(diff,)``, ``("diff", (diff,))`` or ``("lora", (up, down, alpha, mid, dora_scale, reshape))`` (comfy/lora.py);
a bare tensor is read as a diff. Each becomes the ``diffusion.lora`` delta Loom's LoRA loader makes for the
same numbers, so the handles apply it as they apply a LoRA file (``nodes.patched_weights``). What Loom cannot
apply (model-merge patches, DoRA, LoHa, LoKr, a function on the delta, a slice other than rows) raises
``NotImplementedError`` naming the method, the key and why; a malformed or ill-fitting patch, ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from diffusion.dit_diffusers_layout import RowSlice
from diffusion.lora import FullDelta, LowRankDelta, WeightDelta

__all__ = ["PatchTarget", "comfy_patches"]

#: ``name -> (patch group, parameter name, parameter shape)``, or None for a name the handle does not have.
PatchTarget = Callable[[str], tuple[int, str, torch.Size] | None]


def _patch_rows(key: tuple[Any, ...], method: str) -> RowSlice | None:
    """The rows a ``(name, offset[, function])`` key patches; ComfyUI's offset is ``(dim, start, length)``."""
    if len(key) > 2 and key[2] is not None:
        raise NotImplementedError(
            f"{method}: {key[0]!r} carries a function to apply to its delta, which Loom does not support"
        )
    offset = key[1] if len(key) > 1 else None
    if offset is None:
        return None
    dim, start, length = offset
    if dim != 0:
        raise NotImplementedError(
            f"{method}: {key[0]!r} patches a slice along dimension {dim}; Loom patches whole weights or rows"
        )
    return RowSlice(int(start), int(start) + int(length))


def _weight_delta(name: str, value: object, rows: RowSlice | None, method: str) -> WeightDelta:
    """One patch value in ComfyUI's formats as the delta Loom's LoRA loader makes for the same numbers."""
    if isinstance(value, torch.Tensor):
        return FullDelta(value, rows)
    if isinstance(value, list):
        raise NotImplementedError(
            f"{method}: {name!r} is a model-merge patch (a weight and its patches, as get_key_patches gives "
            "them); Loom applies weight differences ('diff') and LoRA ('lora') patches"
        )
    if isinstance(value, tuple) and len(value) == 1:
        kind, args = "diff", value
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], tuple):
        kind, args = value
    else:
        raise ValueError(
            f"{method}: the patch of {name!r} is not (diff,), ('diff', (diff,)) or "
            f"('lora', (up, down, alpha, mid, dora_scale, reshape)): {type(value).__name__}"
        )
    if kind == "diff" and args and isinstance(args[0], torch.Tensor):
        if len(args) > 1 and isinstance(args[1], Mapping) and args[1].get("pad_weight"):
            raise NotImplementedError(f"{method}: {name!r} asks to pad the weight to the diff's shape")
        return FullDelta(args[0], rows)
    if kind == "lora" and len(args) >= 2:
        up, down, alpha, mid, dora_scale, reshape = (*args, None, None, None, None)[:6]
        if dora_scale is not None:
            raise NotImplementedError(f"{method}: {name!r} is a DoRA patch (dora_scale), which Loom does not apply")
        if reshape is not None:
            raise NotImplementedError(f"{method}: {name!r} reshapes the weight, which Loom does not support")
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        return LowRankDelta(up, down, scale, mid, rows)
    raise NotImplementedError(
        f"{method}: {name!r} has a {kind!r} patch; Loom applies 'diff' and 'lora' patches "
        "(not LoHa, LoKr, GLoRA or 'set')"
    )


def _delta_numel(delta: WeightDelta) -> int:
    if isinstance(delta, FullDelta):
        return delta.diff.numel()
    kernel = 1 if delta.mid is None else math.prod(delta.mid.shape[2:])
    return delta.up.shape[0] * delta.down.flatten(1).shape[1] * kernel


def comfy_patches(
    patches: Mapping[Any, Any], target: PatchTarget, method: str
) -> tuple[dict[int, dict[str, list[WeightDelta]]], list[Any]]:
    """(group -> parameter -> deltas, the keys applied) for a ComfyUI patch dict; a name ``target`` does not
    know is skipped, as ComfyUI skips keys its model lacks. Everything is checked before anything is applied."""
    grouped: dict[int, dict[str, list[WeightDelta]]] = {}
    applied = []
    for key, value in patches.items():
        name = key if isinstance(key, str) else key[0] if isinstance(key, tuple) and key else None
        found = target(name) if isinstance(name, str) else None
        if name is None or found is None:
            continue
        group, parameter, shape = found
        rows = None if isinstance(key, str) else _patch_rows(key, method)
        delta = _weight_delta(name, value, rows, method)
        own = shape if rows is None else rows.part_shape(shape)
        if _delta_numel(delta) != own.numel():
            raise ValueError(f"{method}: the patch of {name!r} does not fit its weight of shape {tuple(own)}")
        grouped.setdefault(group, {}).setdefault(parameter, []).append(delta)
        applied.append(key)
    return grouped, applied
