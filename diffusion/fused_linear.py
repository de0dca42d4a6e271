"""Linear layer whose CPU inference runs on oneDNN's matmul, with the activation or product fused in.

``F.linear`` on the CPU is MKL's GEMM: with a bias it first fills the output with the broadcast bias
(a full pass over a fresh buffer) and then accumulates into it, and any activation that follows is
another pass. oneDNN's matmul adds the bias and applies a GELU or a multiplication by another tensor
while the output tile is still in registers. Measured on the project's 2-core AMD EPYC, min of 8,
the UNet's transformer shapes at 64x64 (token rows x in x out): [8192 x 1280 x 320] fp32 56 -> 32 ms,
[2048 x 640 x 2560] 46 -> 32 ms; summed over the SD1.5 shapes fp32 309 -> 230 ms and bf16 114 ->
108 ms. The GEGLU feed-forward (two projections, GELU, product) at 8192 x 320 fp32 went from 163 to
93 ms. The weight is passed unpacked: oneDNN's per-call reorder of a linear weight is cheap (packing
it once saved a further 3 % for twice the memory), so no cached copy is kept.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.fp8_matmul import fp8_linear
from diffusion.onednn import runs_on_onednn
from diffusion.stored_weights import ComputesFromStored

__all__ = ["FusedLinear", "linear_gelu", "linear_times"]


def linear_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: Literal["none", "tanh"] = "none"
) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` in one oneDNN call when it can run there: the exact erf GELU, or the tanh
    approximation that SD3's and FLUX's MLPs were trained with (``approximate="tanh"``)."""
    if runs_on_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)


def linear_times(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
    """``(x @ weight.T + bias) * other``, the product fused into the matmul when it can run on oneDNN."""
    fusable = (
        other.dtype == x.dtype
        and other.shape == (*x.shape[:-1], weight.shape[0])
        and other.is_contiguous()
        and not (torch.is_grad_enabled() and other.requires_grad)
    )
    if fusable and runs_on_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, "mul")
    return F.linear(x, weight, bias).mul_(other)


class FusedLinear(ComputesFromStored, nn.Linear):
    """An ``nn.Linear`` (same parameters, same state-dict keys) that runs CPU inference on oneDNN, and
    may compute from a narrower stored weight (``diffusion.stored_weights``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_matmul:
            return fp8_linear(x, self.weight, self.weight_scale, self.bias, self.computes_in)
        weight = self.compute_weight()
        if runs_on_onednn(x, weight, self.bias):
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")
        return F.linear(x, weight, self.bias)

    def gelu(self, x: torch.Tensor, approximate: Literal["none", "tanh"] = "none") -> torch.Tensor:
        """``gelu(self(x))``: fused on oneDNN (``linear_gelu``), or after an fp8 matmul, which has no such epilogue."""
        if self.fp8_matmul:
            return F.gelu(self.forward(x), approximate=approximate)
        return linear_gelu(x, self.compute_weight(), self.bias, approximate)

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``self(x) * other``: fused on oneDNN (``linear_times``), or after an fp8 matmul."""
        if self.fp8_matmul:
            return self.forward(x).mul_(other)
        return linear_times(x, self.compute_weight(), self.bias, other)
