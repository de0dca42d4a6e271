"""When a layer may call PyTorch's oneDNN inference ops (``torch.ops.mkldnn.*_pointwise``) directly.

Those ops are what PyTorch's own CPU compiler emits for frozen models: they take fused epilogues
and (for convolutions) pre-packed weights, but they have no backward and exist only for CPU tensors
of the dtypes oneDNN computes in. Every layer that uses them asks this one predicate first and
otherwise runs the plain ``torch.nn.functional`` path.

Which dtypes oneDNN computes in depends on the CPU, and machines of this project's kind differ: an
AMD EPYC with AVX2 only has no bf16 kernels at all (PyTorch raises "bf16 path needs the cpu support
avx_ne_convert or avx512bw, avx512vl and avx512dq" from the weight reorder), while AVX-512 and AMX
machines have them. So the answer is probed once per dtype at run time, by PyTorch's own check and
a trial call of every op the layers use, never assumed from the build.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import torch

__all__ = ["DerivedWeight", "input_layout", "onednn_computes", "records_autograd", "runs_on_onednn"]

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def onednn_computes(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN runs the fused inference ops in ``dtype`` (probed once per dtype)."""
    if dtype not in _ONEDNN_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        _trial_calls(dtype)
    except RuntimeError:
        return False
    return True


def _trial_calls(dtype: torch.dtype) -> None:
    """One tiny call of each oneDNN op the layers use: a packed convolution, a packed transposed
    convolution and a fused linear. Raises the RuntimeError PyTorch raises where the CPU lacks them."""
    x = torch.ones(1, 2, 3, 3, dtype=dtype)
    weight = torch.ones(2, 2, 3, 3, dtype=dtype)
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
    torch.ops.mkldnn._convolution_pointwise(x, packed, None, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
    transposed = torch.ops.mkldnn._reorder_convolution_transpose_weight(
        weight, [1, 1], [0, 0], [2, 2], [1, 1], 1, list(x.shape)
    )
    torch.ops.mkldnn._convolution_transpose_pointwise(
        x, transposed, None, [1, 1], [0, 0], [2, 2], [1, 1], 1, "none", [], ""
    )
    torch.ops.mkldnn._linear_pointwise(
        torch.ones(2, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype), None, "gelu", [], "none"
    )


def records_autograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a call on these tensors would be recorded for backward (fused inference ops have none)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def runs_on_onednn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, compute_dtype: torch.dtype | None = None
) -> bool:
    """True for inference (autograd records nothing) on CPU tensors of one dtype this CPU's oneDNN
    computes in (fp32 everywhere, bf16 where the CPU has the instructions). With `compute_dtype`, the
    weight may be stored in another dtype: the caller computes from a copy of it in `compute_dtype`."""
    dtype = weight.dtype if compute_dtype is None else compute_dtype
    return (
        not records_autograd(x, weight, bias)
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == dtype
        and (bias is None or bias.dtype == dtype)
        and cast(bool, torch.backends.mkldnn.enabled)  # torch annotates its descriptor; the value read is a bool
        and onednn_computes(dtype)
    )


def input_layout(x: torch.Tensor) -> tuple[Any, ...]:
    """What oneDNN picks a packed weight layout from: the input's shape and memory format. A weight
    packed for one layout and used with another is reordered again on every call; bench/models.py,
    which runs the 32x32 UNet case after the 64x64 one on the same fp32 model, measured Loom at
    2.27-2.45 s per 32x32 call before packed weights were keyed on it and 1.92 s after."""
    return tuple(x.shape), x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


class DerivedWeight:
    """One tensor derived from a parameter (a oneDNN-packed copy, a rearranged kernel), rebuilt when
    the parameter or the context it was derived for changes.

    The parameter is recognised by address, version counter, dtype and device, so ``.to(dtype)``,
    ``load_state_dict``, in-place patches and weights rebound through ``param.data = tensor`` (LoRA)
    all rebuild; writes through ``param.data.copy_(...)`` bypass the version counter and are not
    seen. Copies and pickles of the owner start empty: oneDNN tensors cannot be serialised, and a
    copy rebuilds on its first call.
    """

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self._key: tuple[Any, ...] | None = None
        self._source: torch.UntypedStorage | None = None

    def get(self, weight: torch.Tensor, context: Any, derive: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, context)
        if self.value is None or self._key != key:
            self.value = None  # the old copy goes before the new one is made, not after
            self.value, self._key = derive(weight), key
            # Holding the source storage keeps its address from being reused by a later weight
            # (say, another LoRA's patched copy swapped in), which would make a stale entry match.
            self._source = weight.untyped_storage()
        return self.value

    @property
    def nbytes(self) -> int:
        """Bytes of the derived copy held now (0 before the first call)."""
        return 0 if self.value is None else self.value.numel() * self.value.element_size()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
