"""When a layer may call PyTorch's oneDNN inference ops (``torch.ops.mkldnn.*_pointwise``) directly.

Those ops are what PyTorch's own CPU compiler emits for frozen models: they take fused epilogues
and (for convolutions) pre-packed weights, but they have no backward and exist only for CPU tensors
of the dtypes oneDNN computes in. Every layer that uses them asks this one predicate first and
otherwise runs the plain ``torch.nn.functional`` path.
"""

from __future__ import annotations

import torch

__all__ = ["records_autograd", "runs_on_onednn"]

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
