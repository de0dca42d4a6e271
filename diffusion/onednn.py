"""When a layer may call PyTorch's oneDNN inference ops (``torch.ops.mkldnn.*_pointwise``) directly.

Those ops are what PyTorch's own CPU compiler emits for frozen models: they take fused epilogues
and (for convolutions) pre-packed weights, but they have no backward and exist only for CPU tensors
of the dtypes oneDNN computes in. Every layer that uses them asks this one predicate first and
otherwise runs the plain ``torch.nn.functional`` path.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["derived_weight_key", "records_autograd", "runs_on_onednn"]

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def records_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a call on these tensors would be recorded for backward (fused inference ops have none)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def runs_on_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True for inference (autograd records nothing) on CPU tensors of the weight's fp32/bf16 dtype."""
    return (
        not records_autograd(x, weight, bias)
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == weight.dtype
        and weight.dtype in _ONEDNN_DTYPES
        and (bias is None or bias.dtype == weight.dtype)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def derived_weight_key(weight: torch.Tensor, x: torch.Tensor) -> tuple[Any, ...]:
    """What a weight derived for input ``x`` (a oneDNN-packed copy, a rearranged kernel) must match to
    be reused: the weight itself (address, version counter, dtype, device) and the input's shape and
    memory format. oneDNN picks the packed layout from the input's shape; a weight packed for one shape
    and used with another is reordered again on every call (SD1.5 UNet at 32x32 in fp32 after a
    64x64 call: 2.46 s instead of 1.92 s per call on the project machine)."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(x.shape), channels_last)
