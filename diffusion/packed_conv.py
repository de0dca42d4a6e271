"""2-D convolution that packs its weight into oneDNN's blocked layout once, not on every call.

PyTorch's CPU convolution (oneDNN) keeps a weight in the plain OIHW layout and reorders it into the
kernel's blocked layout on every call. At the UNet's low-resolution levels (1280-2560 channels on
8x8 and 16x16 maps) that reorder costs as much as the arithmetic. Measured on a 2-core Intel Xeon
machine: a [2, 2560, 8, 8] x [1280, 2560, 3, 3] bf16 channels-last conv takes 22 ms plain and 5.9 ms
with its weight packed once (bit-identical output); fp32 NCHW at 8x8 goes from 27 to 11 ms (same
values to ~1e-7 relative: oneDNN picks its channels-last algorithm). At 64x64 and larger the two
are within a few percent. The packed path is the op PyTorch's own CPU compiler emits for frozen
convolutions (``mkldnn::_convolution_pointwise`` over ``_reorder_convolution_weight``).

The packed copy is the only copy that computes, so it is the only one worth keeping in RAM: a model
placed by ``diffusion.model_memory.place`` leaves these weights as loaded (views of the mapped file,
in the file's dtype) and records the dtype to compute in; the packed copy is made in that dtype and
the file pages are dropped once it exists. Keeping the plain fp32 weight beside it, as a plain
``.to(torch.float32)`` would, held every UNet convolution weight twice: 2.3 GB of an SD1.5 run
(bench/RESULTS.md, "Memory").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusion.checkpoint.files import release_file_pages
from diffusion.onednn import DerivedWeight, input_layout, runs_on_onednn
from diffusion.stored_weights import ComputesFromStored

__all__ = ["PackedConv2d"]


class PackedConv2d(ComputesFromStored, nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same state-dict keys) that runs inference on the CPU
    through a cached packed copy of its weight.

    The packed path is taken only when autograd records nothing (the fused op has no backward), on CPU
    tensors of the compute dtype (fp32 or bf16) with zero padding. The packed copy is a
    ``diffusion.onednn.DerivedWeight``, rebuilt when the weight changes or a new input shape or
    memory format arrives. Outputs of the packed path are channels-last.

    ``compute_dtype`` None (``diffusion.stored_weights.ComputesFromStored``) computes in the weight's
    dtype, holding the weight twice while the packed copy is cached. Computing from the stored weight,
    every path computes from a copy in ``compute_dtype``: the packed copy, or a cast per call where
    the packed path does not apply.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._packed = DerivedWeight()
        self._weight_released = False  # the last derived copy came from a mapped weight whose pages it dropped

    def keeps_stored_weight(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Where it computes from a packed copy alone, whatever the stored dtype: on oneDNN."""
        return (
            device.type == "cpu"
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and (runs_on_onednn(torch.empty(0, dtype=dtype), self.weight.detach(), None, dtype))
        )

    def loom_nbytes(self) -> int:
        """What this layer holds computing (``graph.sizeof``, ``module_bytes``): its tensors and derived
        copies, less a stored weight whose file pages were dropped. Computing from the stored weight
        and not yet called, it reports the weight's size in the compute dtype, what its packed copy
        will hold."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        derived = self._derived_nbytes()
        if self.compute_dtype is not None and not derived:
            return bias + self.weight.numel() * self.compute_dtype.itemsize
        weight = 0 if self._weight_released else self.weight.numel() * self.weight.element_size()
        return bias + weight + derived

    def _derived_nbytes(self) -> int:
        return self._packed.nbytes

    def _derived_from_stored(self, derive: Any) -> Any:
        """``derive`` over the weight in the compute dtype; the stored weight's file pages are dropped
        after, as nothing else reads them (``compute_from_stored``)."""

        def derive_and_release(weight: torch.Tensor) -> torch.Tensor:
            derived = derive(self.dequantized_weight(self.computes_in))
            self._weight_released = self.compute_dtype is not None and release_file_pages(weight)
            return derived

        return derive_and_release

    def _uses_packed_path(self, x: torch.Tensor) -> bool:
        return (
            x.dim() == 4
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and runs_on_onednn(x, self.weight, self.bias, self.computes_in)
        )

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        def pack(weight: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._reorder_convolution_weight(
                weight, list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape)
            )

        return self._packed.get(self.weight, (self.computes_in, input_layout(x)), self._derived_from_stored(pack))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._uses_packed_path(x):
            return self._conv_forward(x, self.compute_weight(), self.bias)
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self._packed_weight(x),
            self.bias,
            list(self.padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            "none",
            [],
            "",
        )
