"""Layers that compute in one dtype from a weight kept in another: the dtype of the file it came from.

An fp16 checkpoint computing in fp32 on a CPU need not be cast whole. Upcasting is exact, so a layer
can keep its weight as loaded (a view of the mapped file, at half the bytes) and cast it at each
call, or, for a oneDNN convolution, derive its packed fp32 copy from it once and hold only that.
``diffusion.model_memory.place`` decides per layer, through ``keeps_stored_weight``; every other
tensor is cast as ``.to`` casts. The same mechanism serves files whose weights are narrower still.

The trade is memory for a cast per call: bench/memory.py measures both (bench/RESULTS.md, "Memory").

"Scaled fp8" files (``*_fp8_scaled.safetensors``, ``t5xxl_fp8_e4m3fn_scaled``) store each quantised linear
weight in fp8 with a per-tensor ``scale_weight`` beside it (real weight = fp8 value x scale), an
``scale_input`` for fp8 matrix multiplication on GPUs, and a ``scaled_fp8`` marker tensor. Loaders split
those off (``split_weight_scales``) before matching the layout and hand the weight scales to their layers
(``attach_weight_scales``): such a layer keeps its fp8 weight and multiplies by the scale, in fp32, at each
call. ``scale_input`` matters only to fp8 matmul, which the CPU has not, so it is not kept.

ComfyUI's newer quantised files (its "fp8mixed" releases) name the same per-tensor scale ``weight_scale``
and the activation scale ``input_scale``, and mark each quantised layer with a ``comfy_quant`` tensor: the
bytes of a JSON object whose ``format`` names the layout. Per-tensor fp8 (``float8_e4m3fn``, ``float8_e5m2``)
is the scaled fp8 above; block-wise and 4-bit layouts are refused by name (``WeightScaleError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ComputesFromStored",
    "StoredEmbedding",
    "WeightScaleError",
    "attach_weight_scales",
    "split_weight_scales",
    "store_weights_as",
    "stored_layers",
]

_SCALE_WEIGHT = ".scale_weight"
_SCALE_SUFFIXES = (_SCALE_WEIGHT, ".weight_scale")
_DROPPED_KEY = re.compile(r"\.(scale_input|input_scale)$|^scaled_fp8$")
_QUANT_MARK = ".comfy_quant"
_PER_TENSOR_FP8 = ("float8_e4m3fn", "float8_e5m2")


class ComputesFromStored(nn.Module):
    """Mixin for a layer with a ``weight`` that may compute in ``compute_dtype`` while stored in another.

    ``compute_dtype`` None computes in the weight's own dtype, as a plain layer does. A cast of the
    module (``.half()``, ``.to(dtype)``) casts the compute dtype as it casts every other tensor, so the
    layer keeps computing in the dtype of its neighbours; a move (``.to(device)``) keeps it.
    """

    weight: torch.Tensor
    compute_dtype: torch.dtype | None = None
    #: Multiply by fp8 matmul instead of upcasting (``diffusion.fp8_matmul``); set by ``place`` for the device.
    fp8_matmul: bool = False

    def keeps_stored_weight(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether, placed on ``device`` to compute in ``dtype``, this layer should keep its weight as stored.

        By default where that is an exact upcast from a narrower dtype: memory is halved (fp16 to
        fp32) for a cast per call."""
        stored = self.weight.dtype
        return stored.is_floating_point and stored.itemsize < dtype.itemsize

    def compute_from_stored(self, dtype: torch.dtype) -> None:
        self.compute_dtype = dtype

    @property
    def computes_in(self) -> torch.dtype:
        return self.weight.dtype if self.compute_dtype is None else self.compute_dtype

    @property
    def weight_scale(self) -> torch.Tensor | None:
        """A scaled-fp8 file's per-tensor scale of the stored weight (``attach_weight_scales``), else None."""
        return self._buffers.get("scale_weight")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight's real values in ``dtype``: the stored weight cast, times its scale if it has one."""
        scale = self.weight_scale
        if scale is None:
            return self.weight.to(dtype)
        return (self.weight.to(torch.float32) * scale.to(torch.float32)).to(dtype)

    def stored_form(self, values: torch.Tensor) -> torch.Tensor:
        """What to bind as ``weight`` so that the layer computes with ``values`` (a LoRA-patched weight):
        ``values`` divided by the weight's scale, if it has one."""
        scale = self.weight_scale
        return values if scale is None else values / scale.to(values.dtype)

    def compute_weight(self) -> torch.Tensor:
        """The weight in the compute dtype: itself, or a copy cast (and scaled) for this call."""
        return self.dequantized_weight(self.computes_in)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        if self.compute_dtype is not None:
            self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        return super()._apply(fn, recurse)


class StoredEmbedding(ComputesFromStored, nn.Embedding):
    """An ``nn.Embedding`` that casts the rows it looks up, not the table (49,408 x 768 for CLIP-L)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq)
        return rows.to(self.computes_in)


def stored_layers(module: nn.Module) -> dict[str, ComputesFromStored]:
    """Weight parameter name (``blocks.0.proj.weight``) -> its layer, for every ``ComputesFromStored`` layer."""
    return {
        f"{prefix}.weight" if prefix else "weight": layer
        for prefix, layer in module.named_modules()
        if isinstance(layer, ComputesFromStored)
    }


def store_weights_as(module: nn.Module, dtype: torch.dtype) -> None:
    """Keep every linear and convolution weight of ``module`` in ``dtype`` (ComfyUI's ``weight_dtype`` of a
    diffusion model: fp8 halves an fp16 file's memory); each layer casts back at compute. A weight that has a
    scale is already quantised and is left as it is."""
    for layer in stored_layers(module).values():
        if layer.weight_scale is None and layer.weight.is_floating_point():
            layer.weight.data = layer.weight.data.to(dtype)


def split_weight_scales(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the weights without a scaled-fp8 file's extra tensors, layer prefix -> weight scale); a layer quantised
    in a layout other than per-tensor fp8 raises ``WeightScaleError``."""
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        suffix = next((suffix for suffix in _SCALE_SUFFIXES if key.endswith(suffix)), None)
        if suffix is not None:
            scales[key.removesuffix(suffix)] = tensor
        elif key.endswith(_QUANT_MARK):
            _check_quant_format(key, tensor)
        elif not _DROPPED_KEY.search(key):
            weights[key] = tensor
    return weights, scales


def _check_quant_format(key: str, mark: torch.Tensor) -> None:
    try:
        layout = json.loads(bytes(mark.to(torch.uint8).tolist()).decode("utf-8")).get("format")
    except (ValueError, AttributeError):
        raise WeightScaleError(key, "a quantisation mark that is not a JSON object") from None
    if layout not in _PER_TENSOR_FP8:
        raise WeightScaleError(
            key, f"quantised as {layout!r}; Loom reads per-tensor fp8 ({', '.join(_PER_TENSOR_FP8)}) and plain weights"
        )


def attach_weight_scales(module: nn.Module, scales: Mapping[str, torch.Tensor]) -> None:
    """Give each layer named in ``scales`` its weight scale, kept in fp32 (a bf16 scale would be off by 0.4 %).

    Raises ``WeightScaleError`` naming the key when a scale belongs to no layer that computes from a
    stored weight or is not one number.
    """
    layers = stored_layers(module)
    for prefix, scale in scales.items():
        layer = layers.get(f"{prefix}.weight")
        if layer is None:
            raise WeightScaleError(prefix + _SCALE_WEIGHT, "a weight scale for no linear or convolution layer")
        if scale.numel() != 1:
            raise WeightScaleError(prefix + _SCALE_WEIGHT, f"{scale.numel()} values where a per-tensor scale has one")
        layer.register_buffer("scale_weight", scale.detach().to(torch.float32).reshape(()))


class WeightScaleError(ValueError):
    """A scaled-fp8 weight scale that fits no layer of the model."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
