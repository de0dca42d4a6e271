"""Write weights as single-file safetensors checkpoints in the layouts the Stable Diffusion training code used.

Each tensor is a ``PendingTensor``: its shape and dtype, known up front, and how to compute it. The header
of a safetensors file (an 8-byte little-endian length, a JSON table of names, dtypes, shapes and byte
offsets, padded to 8 bytes) needs only the shapes and dtypes, so ``write_safetensors`` writes it first and
then computes and writes one tensor at a time: saving a merged SDXL model holds one patched weight in
memory, never the whole state dict. Tensors are laid out widest dtype first, as safetensors itself orders
them, so every tensor starts at an offset aligned to its element size and can be memory-mapped in place.

``patched_tensors`` gives a module's state dict with LoRA/merge patch sets applied, each weight's real
value (a scaled-fp8 weight times its scale) plus ``sum(strength * delta)`` formed in fp32 and cast once
to the dtype written. ``single_file_tensors`` arranges a family's parts under the keys of its original
single-file checkpoints, which is what ComfyUI's "Save Checkpoint" writes:

- diffusion model: ``model.diffusion_model.``; VAE: ``first_stage_model.`` (every family);
- SD1.x: CLIP-L under ``cond_stage_model.transformer.``;
- SD2.x: OpenCLIP ViT-H under ``cond_stage_model.model.``;
- SDXL: CLIP-L under ``conditioner.embedders.0.transformer.``, OpenCLIP ViT-bigG under
  ``conditioner.embedders.1.model.``;
- SDXL refiner: OpenCLIP ViT-bigG under ``conditioner.embedders.0.model.``.

CLIP-L is written in the transformers layout (``text_model.`` keys) without a projection, as the SD1 and
SDXL releases store it; SDXL's CLIP-L also gets its ``position_ids`` (0..76, int64), which ComfyUI adds
there. OpenCLIP towers are written in OpenCLIP's layout: q, k and v stacked into ``in_proj_weight``, the
projection stored transposed as ``text_projection``. A v-prediction model carries the empty ``v_pred``
marker tensor. The rectified-flow transformers (SD3, FLUX, Z-Image, Chroma) have other layouts and are
not written here.

``low_rank_factors`` is how ComfyUI's "Extract and Save Lora" turns a weight difference into a LoRA's up and
down matrices: a truncated SVD, the singular values folded into ``up``, both clamped to the 99th percentile
of their values.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import BinaryIO

import torch
from torch import nn

from ..lora import WeightDelta
from ..stored_weights import ComputesFromStored, stored_layers
from .detect import UNET_PREFIX, VAE_PREFIX, ModelFamily

__all__ = [
    "PatchSets",
    "PendingTensor",
    "clip_hf_layout",
    "clip_openclip_layout",
    "low_rank_factors",
    "patched_tensors",
    "single_file_tensors",
    "write_safetensors",
]

#: Patch sets as handles keep them: (parameter name -> deltas, strength), applied in order.
PatchSets = Sequence[tuple[Mapping[str, Sequence[WeightDelta]], float]]

# The dtype names of the safetensors specification.
_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class PendingTensor:
    """A tensor to be written: its shape and dtype now, its values when ``produce()`` is called."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> PendingTensor:
        """An already computed tensor."""
        return cls(tuple(tensor.shape), tensor.dtype, lambda: tensor)

    def transposed(self) -> PendingTensor:
        """The 2-D transpose (OpenCLIP's projection is stored as ``[width, dim]``)."""
        rows, columns = self.shape
        return PendingTensor((columns, rows), self.dtype, lambda: self.produce().t())


def _stacked(parts: Sequence[PendingTensor]) -> PendingTensor:
    """``parts`` concatenated along the first dimension, each computed when the stack is."""
    first = parts[0]
    shape = (sum(part.shape[0] for part in parts), *first.shape[1:])
    return PendingTensor(shape, first.dtype, lambda: torch.cat([part.produce() for part in parts]))


def _deltas_by_parameter(patch_sets: PatchSets) -> dict[str, list[tuple[WeightDelta, float]]]:
    by_parameter: dict[str, list[tuple[WeightDelta, float]]] = {}
    for patches, strength in patch_sets:
        if strength == 0.0:
            continue
        for name, deltas in patches.items():
            by_parameter.setdefault(name, []).extend((delta, strength) for delta in deltas)
    return by_parameter


def _real_values(tensor: torch.Tensor, layer: ComputesFromStored | None) -> torch.Tensor:
    """A weight's real values in a new fp32 tensor (never the module's own): a scaled-fp8 weight times its scale."""
    if layer is not None and layer.weight_scale is not None:
        return layer.dequantized_weight(torch.float32)
    return tensor.detach().to(torch.float32, copy=True)


def patched_tensors(
    module: nn.Module, patch_sets: PatchSets = (), dtype: torch.dtype | None = None
) -> dict[str, PendingTensor]:
    """``module``'s state dict, each entry computed when written: patched as ``apply_lora_patches`` patches it
    (``W + sum(strength * delta)`` in fp32) and cast to ``dtype`` (floating-point entries; None keeps each
    entry's own dtype). A scaled-fp8 weight is written with its scale applied, and the scale is left out.
    Raises ``KeyError`` for a patch naming no parameter of the module."""
    deltas = _deltas_by_parameter(patch_sets)
    state = module.state_dict(keep_vars=True)
    unknown = sorted(set(deltas) - set(state))
    if unknown:
        raise KeyError(f"patches target {', '.join(unknown[:4])}, which this module does not have")
    layers = stored_layers(module)
    scales = {
        name.removesuffix("weight") + "scale_weight" for name, layer in layers.items() if layer.weight_scale is not None
    }
    pending: dict[str, PendingTensor] = {}
    for name, tensor in state.items():
        if name in scales:
            continue
        layer = layers.get(name)
        scaled = layer is not None and layer.weight_scale is not None
        if dtype is not None and tensor.is_floating_point():
            target = dtype
        else:  # a scaled-fp8 weight's real values do not fit its fp8 dtype
            target = torch.float32 if scaled else tensor.dtype
        own = deltas.get(name, [])
        produce = _patch(tensor, layer, own, target) if own or scaled else _cast(tensor, target)
        pending[name] = PendingTensor(tuple(tensor.shape), target, produce)
    return pending


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: tensor.detach().to(dtype)


def _patch(
    tensor: torch.Tensor, layer: ComputesFromStored | None, deltas: list[tuple[WeightDelta, float]], dtype: torch.dtype
) -> Callable[[], torch.Tensor]:
    def produce() -> torch.Tensor:
        with torch.no_grad():
            values = _real_values(tensor, layer)
            for delta, strength in deltas:
                values += strength * delta.compute(tensor.shape).to(values.device)
            return values.to(dtype)

    return produce


def clip_hf_layout(tensors: Mapping[str, PendingTensor], projection: bool = True) -> dict[str, PendingTensor]:
    """A CLIP text encoder's tensors (``diffusion.text_encoders.ClipTextModel`` names) in the transformers
    layout: ``text_model.<name>``, ``text_projection.weight`` beside it (left out without ``projection``)."""
    laid_out = {}
    for name, tensor in tensors.items():
        if name == "text_projection.weight":
            if projection:
                laid_out[name] = tensor
        else:
            laid_out[f"text_model.{name}"] = tensor
    return laid_out


_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = re.compile(r"^self_attn\.([qkv])_proj$")


def clip_openclip_layout(tensors: Mapping[str, PendingTensor]) -> dict[str, PendingTensor]:
    """A CLIP text encoder's tensors in OpenCLIP's layout (SD2's ViT-H, SDXL's ViT-bigG): q/k/v stacked into
    ``transformer.resblocks.N.attn.in_proj_*``, the projection transposed to ``text_projection``."""
    laid_out: dict[str, PendingTensor] = {}
    qkv: dict[tuple[str, str], dict[str, PendingTensor]] = {}
    for name, tensor in tensors.items():
        if name in _OPENCLIP_TOP:
            laid_out[_OPENCLIP_TOP[name]] = tensor
            continue
        if name == "text_projection.weight":
            laid_out["text_projection"] = tensor.transposed()
            continue
        match = _LAYER_KEY.match(name)
        if match is None:
            raise ValueError(f"{name!r} has no place in OpenCLIP's text-tower layout")
        index, module, kind = match.groups()
        projection = _QKV.match(module)
        if projection is not None:
            qkv.setdefault((index, kind), {})[projection[1]] = tensor
        elif module in _OPENCLIP_PARTS:
            laid_out[f"transformer.resblocks.{index}.{_OPENCLIP_PARTS[module]}.{kind}"] = tensor
        else:
            raise ValueError(f"{name!r} has no place in OpenCLIP's text-tower layout")
    for (index, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {index} lacks some of its q, k and v projections ({sorted(parts)})")
        laid_out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = _stacked([parts[p] for p in "qkv"])
    return laid_out


def _prefixed(prefix: str, tensors: Mapping[str, PendingTensor]) -> dict[str, PendingTensor]:
    return {prefix + name: tensor for name, tensor in tensors.items()}


def _position_ids(encoder: Mapping[str, PendingTensor]) -> PendingTensor:
    positions = encoder["embeddings.position_embedding.weight"].shape[0]
    return PendingTensor.of(torch.arange(positions, dtype=torch.int64)[None])


#: Per family: (encoder name, container prefix, layout) of each text encoder in its single-file checkpoint.
_TEXT_ENCODER_SLOTS: dict[ModelFamily, tuple[tuple[str, str, str], ...]] = {
    ModelFamily.SD15: (("clip_l", "cond_stage_model.transformer.", "hf"),),
    ModelFamily.SD2: (("clip_h", "cond_stage_model.model.", "openclip"),),
    ModelFamily.SDXL: (
        ("clip_l", "conditioner.embedders.0.transformer.", "hf"),
        ("clip_g", "conditioner.embedders.1.model.", "openclip"),
    ),
    ModelFamily.SDXL_REFINER: (("clip_g", "conditioner.embedders.0.model.", "openclip"),),
}


def single_file_tensors(
    family: ModelFamily,
    unet: Mapping[str, PendingTensor],
    vae: Mapping[str, PendingTensor] | None = None,
    text_encoders: Mapping[str, Mapping[str, PendingTensor]] | None = None,
    v_prediction: bool = False,
) -> dict[str, PendingTensor]:
    """A family's parts under the keys of its single-file checkpoint (module docstring). ``text_encoders`` maps
    encoder names (``clip_l``, ``clip_h``, ``clip_g``) to ``ClipTextModel`` tensors; each the family has must
    be given. Raises ``NotImplementedError`` for the rectified-flow families."""
    slots = _TEXT_ENCODER_SLOTS.get(family)
    if slots is None:
        raise NotImplementedError(
            f"{family.value} checkpoints are not written: Loom writes the LDM/SGM single-file layout of the "
            "SD1.x, SD2.x and SDXL UNets; the rectified-flow transformers keep other layouts"
        )
    tensors = _prefixed(UNET_PREFIX, unet)
    if vae is not None:
        tensors.update(_prefixed(VAE_PREFIX, vae))
    if text_encoders is not None:
        missing = [name for name, _, _ in slots if name not in text_encoders]
        if missing:
            raise ValueError(f"a {family.value} checkpoint needs the text encoders {missing}")
        for name, prefix, layout in slots:
            encoder = text_encoders[name]
            if layout == "openclip":
                tensors.update(_prefixed(prefix, clip_openclip_layout(encoder)))
                continue
            # CLIP-L's projection is not part of SD1's or SDXL's checkpoints (ComfyUI drops it on saving).
            tensors.update(_prefixed(prefix, clip_hf_layout(encoder, projection=False)))
            if family is ModelFamily.SDXL:
                tensors[f"{prefix}text_model.embeddings.position_ids"] = _position_ids(encoder)
    if v_prediction:
        tensors["v_pred"] = PendingTensor.of(torch.tensor([]))
    return tensors


def write_safetensors(
    file: BinaryIO,
    tensors: Mapping[str, PendingTensor],
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``tensors`` (and ``metadata``, string to string) as a safetensors file, computing one tensor at a
    time; ``progress(written, total)`` after each. Raises ``ValueError`` for a dtype safetensors cannot hold
    or a tensor that is not what it promised."""
    order = sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(key): str(value) for key, value in metadata.items()}
    offset = 0
    for name in order:
        pending = tensors[name]
        if pending.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{name}: safetensors has no dtype for {pending.dtype}")
        size = prod(pending.shape) * pending.dtype.itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[pending.dtype],
            "shape": list(pending.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % _HEADER_ALIGNMENT)
    file.write(struct.pack("<Q", len(encoded)))
    file.write(encoded)
    for written, name in enumerate(order, start=1):
        pending = tensors[name]
        tensor = pending.produce()
        if tuple(tensor.shape) != pending.shape or tensor.dtype != pending.dtype:
            raise ValueError(
                f"{name}: computed {tuple(tensor.shape)} {tensor.dtype}, announced {pending.shape} {pending.dtype}"
            )
        file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        if progress is not None:
            progress(written, len(order))


#: ComfyUI clamps extracted LoRA factors to this quantile of their values (outliers from the SVD).
LORA_CLAMP_QUANTILE = 0.99


def low_rank_factors(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with ``up @ down`` close to ``diff`` (a linear ``[out, in]`` or convolution ``[out, in, kh, kw]``
    weight difference), at rank ``min(rank, out, in)``, in fp32. A convolution's ``down`` keeps its kernel and
    ``up`` is ``[out, rank, 1, 1]`` (LoCon's layout), so a 3 x 3 kernel is cut to at most ``in`` ranks, as
    ComfyUI cuts it. Raises ``ValueError`` for other shapes and whatever torch raises on failing
    (``torch.quantile`` takes at most 16M values)."""
    if diff.ndim not in (2, 4):
        raise ValueError(f"a {diff.ndim}-D weight difference {tuple(diff.shape)} has no LoRA form")
    out_dim, in_dim = diff.shape[:2]
    rank = min(rank, out_dim, in_dim)
    matrix = diff.float().flatten(1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up = u[:, :rank] * s[:rank]
    down = vh[:rank]
    limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), LORA_CLAMP_QUANTILE)
    up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    if diff.ndim == 4:
        up = up.reshape(out_dim, rank, 1, 1)
        down = down.reshape(rank, in_dim, *diff.shape[2:])
    return up, down
