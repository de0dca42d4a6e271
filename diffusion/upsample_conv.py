"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed on the low-resolution input.

Both SD decoders (the VAE's and the UNet's) upsample with ``F.interpolate(x, scale_factor=2,
mode="nearest")`` and then apply a 3x3 convolution with padding 1. After nearest upsampling each
output pixel sees only a 2x2 neighbourhood of the input, several of the nine taps landing on the
same input pixel. In 1-D, with taps w[-1], w[0], w[1]:

    out[2i]     = w[-1] x[i-1] + (w[0] + w[1]) x[i]
    out[2i + 1] = (w[-1] + w[0]) x[i] + w[1] x[i+1]

and the zero padding of the upsampled map is exactly the zero padding of x. In 2-D each of the four
output phases is a 2x2 convolution of x with summed 3x3 taps: 16 instead of 36 multiply-adds per
output pixel and channel pair, and the 4x-sized upsampled input is never materialised.

Four interleaved 2x2 phase convolutions are what a stride-2 transposed convolution with a 4x4 kernel
computes (``out[o] = sum_i x[i] k[o + 1 - 2i]``, padding 1): along each axis
k = (w[1], w[0] + w[1], w[-1] + w[0], w[-1]). So the whole block is one oneDNN deconvolution with
a cached packed weight, writing the 2h x 2w output directly. Min of 6 interleaved calls (nearest +
packed 3x3 conv / one 2x2 conv with 4 C_out outputs over x padded by 1, then one strided copy
interleaving the phases / the packed deconvolution) on the project's 2-core AMD EPYC, bf16
channels-last: [1, 512, 128, 128] 743 / 368 / 379 ms, [1, 256, 256, 256] 793 / 442 / 352 ms,
[2, 640, 32, 32] 143 / 68 / 66 ms; fp32 NCHW [1, 512, 64, 64] 435 / 201 / 180 ms. On an Intel Xeon
with AMX the deconvolution saved 8-9 % of a whole bf16 VAE decode, the phases 3-5 %.

The sums of taps are formed in fp32 and rounded once to the weight's dtype, so in bf16 the result
differs from interpolate-then-conv by that rounding (relative 2**-9 per summed tap) and by the
order of accumulation, not by an approximation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from diffusion.onednn import DerivedWeight, input_layout, records_autograd
from diffusion.packed_conv import PackedConv2d

__all__ = ["NearestUpsampleConv2d", "transposed_kernel"]

# _TAPS[k, s]: which 3x3 taps s (s = 0 is offset -1) sum into tap k of the 4-tap transposed kernel.
_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))
# padding, output_padding, stride, dilation of the equivalent transposed convolution
_PADDING, _OUTPUT_PADDING, _STRIDE, _DILATION = [1, 1], [0, 0], [2, 2], [1, 1]


def transposed_kernel(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[C_out, C_in, 3, 3] conv weight -> the [C_in, C_out, 4, 4] ``conv_transpose2d`` weight that,
    with stride 2 and padding 1, computes nearest 2x upsampling followed by the 3x3 conv; in ``dtype``
    (default the weight's), rounded once from the fp32 sums."""
    taps = torch.tensor(_TAPS, dtype=torch.float32, device=weight.device)
    kernel = torch.einsum("us,oist,vt->iouv", taps, weight.float(), taps)
    return kernel.to(weight.dtype if dtype is None else dtype)


class NearestUpsampleConv2d(PackedConv2d):
    """``conv(F.interpolate(x, size, mode="nearest"))`` for a 3x3, padding-1 ``nn.Conv2d``: same
    parameters, same state-dict keys, so checkpoints load unchanged.

    Inference on an exact 2x upsample (``size`` None or twice the input's sides) runs as one
    stride-2 transposed convolution over the low-resolution input (module docstring). Anything else
    (autograd recording, a size that is not an exact doubling, as the UNet asks for after an odd
    skip size, a conv shape other than 3x3 with padding 1) upsamples and convolves as written. So
    does a CPU whose oneDNN has no kernels for the dtype (bf16 on an AVX2-only CPU): PyTorch's native
    CPU transposed convolution is the slow one there, and in bf16 it sums overlapping taps in bf16
    (with oneDNN off, [1, 128, 64, 64] bf16 channels-last took 1.98 s transposed against 0.14 s for
    interpolate + conv, and was 0.7 % off the fp32 result against 0.3 %). The transposed kernel is a
    ``diffusion.onednn.DerivedWeight``; on the CPU it is packed for oneDNN and also rebuilt for a new
    input shape or memory format. It is 16/9 the weight's size, held beside the weight unless the
    layer computes from the stored weight (``PackedConv2d.compute_from_stored``). Outputs on the CPU
    are channels-last.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transposed = DerivedWeight()

    def _uses_transposed_path(self, x: torch.Tensor, size: Sequence[int] | None) -> bool:
        return (
            x.dim() == 4
            and (size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]))
            and not records_autograd(x, self.weight, self.bias)
            and x.dtype == self.computes_in
            and self.kernel_size == (3, 3)
            and self.padding == (1, 1)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and (x.device.type != "cpu" or self._uses_packed_path(x))
        )

    def _transposed_weight(self, x: torch.Tensor, packed: bool) -> torch.Tensor:
        def derive(weight: torch.Tensor) -> torch.Tensor:
            kernel = transposed_kernel(weight, self.computes_in)
            if not packed:
                return kernel
            return torch.ops.mkldnn._reorder_convolution_transpose_weight(
                kernel, _PADDING, _OUTPUT_PADDING, _STRIDE, _DILATION, 1, list(x.shape)
            )

        # Only the packed copy depends on the input's layout; the plain kernel serves every input.
        context = (self.computes_in, input_layout(x) if packed else None)
        return self._transposed.get(self.weight, context, self._derived_from_stored(derive))

    def _derived_nbytes(self) -> int:
        return super()._derived_nbytes() + self._transposed.nbytes

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        if not self._uses_transposed_path(x, size):
            if size is None:
                return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            return super().forward(F.interpolate(x, size=tuple(size), mode="nearest"))
        if self._uses_packed_path(x):
            return torch.ops.mkldnn._convolution_transpose_pointwise(
                x,
                self._transposed_weight(x, packed=True),
                self.bias,
                _PADDING,
                _OUTPUT_PADDING,
                _STRIDE,
                _DILATION,
                1,
                "none",
                [],
                "",
            )
        return F.conv_transpose2d(x, self._transposed_weight(x, packed=False), self.bias, stride=2, padding=1)
