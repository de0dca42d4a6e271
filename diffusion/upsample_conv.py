"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed on the low-resolution input.

Both SD decoders (the VAE's and the UNet's) upsample with ``F.interpolate(x, scale_factor=2,
mode="nearest")`` and then apply a 3x3 convolution with padding 1. After nearest upsampling each
output pixel sees only a 2x2 neighbourhood of the input, with some of the nine taps landing on the
same input pixel. In 1-D, with taps w[-1], w[0], w[1]:

    out[2i]     = w[-1] x[i-1] + (w[0] + w[1]) x[i]
    out[2i + 1] = (w[-1] + w[0]) x[i] + w[1] x[i+1]

and the zero padding of the upsampled map is exactly the zero padding of x. In 2-D each of the four
output phases (a, b) is a 2x2 convolution of x with a kernel made of summed 3x3 taps. One
convolution with 4*C_out output channels and a 2x2 kernel over x padded by 1 yields, per phase, an
(h+1) x (w+1) map whose window [a:a+h, b:b+w] is phase (a, b); a single strided copy interleaves the
four phases into the 2h x 2w output. That is 16 instead of 36 multiply-adds per output pixel and
channel pair, and the 4x-sized upsampled input is never materialised. The sums of taps are formed
in fp32 and rounded once to the weight's dtype, so in bf16 the result differs from the reference by
that one rounding (relative 2**-9 per summed tap), not by an approximation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from diffusion.packed_conv import PackedConv2d

__all__ = ["NearestUpsampleConv2d", "phase_kernels"]

# _TAPS[a][u, s]: how much 3x3 tap s (0 = offset -1) contributes to tap u of phase a's 2x2 kernel.
_TAPS = ((( 1.0, 0.0, 0.0), (0.0, 1.0, 1.0)),
         (( 1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))  # fmt: skip


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> [4 * C_out, C_in, 2, 2]: the 2x2 kernels of the four output phases,
    phase (a, b) in output channels [(2a + b) * C_out, (2a + b + 1) * C_out)."""
    taps = torch.tensor(_TAPS, dtype=torch.float32, device=weight.device)
    phases = torch.einsum("aus,oist,bvt->aboiuv", taps, weight.float(), taps)
    return phases.reshape(4 * weight.shape[0], weight.shape[1], 2, 2).to(weight.dtype)


class NearestUpsampleConv2d(PackedConv2d):
    """``conv(F.interpolate(x, size, mode="nearest"))`` for a 3x3, padding-1 ``nn.Conv2d``: same
    parameters, same state-dict keys, so checkpoints load unchanged.

    Inference on an exact 2x upsample (``size`` None or twice the input's sides) runs as one 2x2
    convolution over the low-resolution input (module docstring); anything else (autograd
    recording, a size that is not an exact doubling, as the UNet asks for odd skip sizes, a conv
    shape other than 3x3/padding 1) upsamples and convolves as written. The phase kernels are
    cached, keyed like ``PackedConv2d``'s packed weight on the weight's and bias's storage, version
    counter and dtype, and packed for oneDNN on the CPU. Outputs of the phase path are channels-last
    whenever the convolution returns channels-last (always on the CPU).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (key, phase weight or its packed copy, 4x bias, storages the entry was made from)
        self._phases: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor | None, tuple[Any, ...]] | None = None

    def _uses_phase_path(self, x: torch.Tensor, size: Sequence[int] | None) -> bool:
        weight, bias = self.weight, self.bias
        records_graph = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        )
        doubles = size is None or (tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]))
        return (
            doubles
            and not records_graph
            and x.dim() == 4
            and x.dtype == weight.dtype
            and self.kernel_size == (3, 3)
            and self.padding == (1, 1)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
        )

    def _phase_weights(self, x: torch.Tensor, packed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.weight, self.bias
        key: tuple[Any, ...] = (weight.data_ptr(), weight._version, weight.dtype, weight.device, packed)
        if bias is not None:
            key += (bias.data_ptr(), bias._version, bias.dtype)
        if self._phases is None or self._phases[0] != key:
            phases = phase_kernels(weight)
            if packed:
                phases = torch.ops.mkldnn._reorder_convolution_weight(phases, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
            bias4 = None if bias is None else bias.repeat(4)
            # Holding the source storages keeps their addresses from being reused by later weights
            # (another LoRA's patched copy swapped in), which would make a stale entry match.
            storages = (weight.untyped_storage(), None if bias is None else bias.untyped_storage())
            self._phases = (key, phases, bias4, storages)
        return self._phases[1], self._phases[2]

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:  # type: ignore[override]
        if not self._uses_phase_path(x, size):
            upsampled = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else (
                F.interpolate(x, size=tuple(size), mode="nearest")
            )
            return super().forward(upsampled)
        packed = self._uses_packed_path(x)
        weight, bias = self._phase_weights(x, packed)
        if packed:
            phases = torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "none", [], ""
            )
        else:
            phases = F.conv2d(x, weight, bias, padding=1)
        return _interleave_phases(phases, x.shape[-2], x.shape[-1])

    def __getstate__(self) -> dict[str, Any]:
        """Like ``PackedConv2d``'s: copies and pickles drop the cached (maybe oneDNN-packed) phases."""
        state = super().__getstate__()
        state["_phases"] = None
        return state


def _interleave_phases(phases: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[N, 4C, h+1, w+1] phase maps -> [N, C, 2h, 2w] with out[:, c, 2i+a, 2j+b] = phases[:, (2a+b)C + c, i+a, j+b].

    Stepping a (or b) moves the source by one row (column) and 2C (C) channels at once, so all four
    phase windows are one strided view of the phase maps and the interleave is a single copy.
    """
    n, channels = phases.shape[0], phases.shape[1] // 4
    s_n, s_c, s_h, s_w = phases.stride()
    source = phases.as_strided(
        (n, channels, h, 2, w, 2),
        (s_n, s_c, s_h, s_h + 2 * channels * s_c, s_w, s_w + channels * s_c),
        phases.storage_offset(),
    )
    layout = torch.channels_last if phases.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((n, channels, 2 * h, 2 * w), dtype=phases.dtype, device=phases.device, memory_format=layout)
    out.view(n, channels, h, 2, w, 2).copy_(source)
    return out
