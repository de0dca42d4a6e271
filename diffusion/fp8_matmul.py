"""Linear layers with fp8 weights computed by fp8 matrix multiplication, where the GPU has it.

An fp8 or scaled-fp8 checkpoint (``diffusion.stored_weights``) otherwise upcasts each weight to bf16/fp16
at every call and multiplies in that dtype: the memory is halved, the arithmetic is not. GPUs with fp8
tensor cores (compute capability 8.9 and up: Ada, Hopper) multiply fp8 by fp8 directly through
``torch._scaled_mm``, at twice the bf16 rate on paper (measured by ``bench/models.py --device cuda``,
``flux_full``). The activations are quantised for it, per tensor: scaled
so their largest magnitude lands on e4m3's largest finite value (448), rounded to e4m3. That rounding
(3 mantissa bits) is the cost: measured against the upcast path on random layers, the relative error of the
output stays under 5 % (tests/diffusion/test_fp8_matmul.py), the trade ComfyUI offers as
``--fast fp8_matrix_mult``. Shapes fp8 matmul cannot take (an input or output width that is not a multiple
of 16), e5m2 weights and the UNet's GEGLU projection (split into two halves) keep the upcast path.
"""

from __future__ import annotations

import torch

__all__ = ["E4M3_MAX", "fp8_linear", "fp8_matmul_supported", "takes_fp8_matmul"]

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)


def fp8_matmul_supported(device: torch.device) -> bool:
    """Whether ``device`` multiplies fp8 matrices natively (CUDA compute capability 8.9 or later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def takes_fp8_matmul(weight: torch.Tensor, compute_dtype: torch.dtype) -> bool:
    """Whether a layer storing ``weight`` and computing in ``compute_dtype`` can multiply in fp8."""
    widths_ok = weight.dim() == 2 and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0
    return weight.dtype == torch.float8_e4m3fn and compute_dtype in (torch.bfloat16, torch.float16) and widths_ok


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``x @ (weight * weight_scale).T + bias`` in ``out_dtype``, multiplied in fp8 (module docstring)."""
    rows = x.reshape(-1, x.shape[-1])
    x_scale = (rows.abs().amax().float() / E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    quantised = (rows.float() / x_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    w_scale = torch.ones((), device=weight.device) if weight_scale is None else weight_scale.float().reshape(())
    product = torch._scaled_mm(
        quantised,
        weight.t(),
        scale_a=x_scale,
        scale_b=w_scale,
        bias=None if bias is None else bias.to(out_dtype),
        out_dtype=out_dtype,
    )
    return product.reshape(*x.shape[:-1], weight.shape[0])
