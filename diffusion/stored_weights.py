"""Layers that compute in one dtype from a weight kept in another: the dtype of the file it came from.

An fp16 checkpoint computing in fp32 on a CPU need not be cast whole. Upcasting is exact, so a layer
can keep its weight as loaded (a view of the mapped file, at half the bytes) and cast it at each
call, or, for a oneDNN convolution, derive its packed fp32 copy from it once and hold only that.
``diffusion.model_memory.place`` decides per layer, through ``keeps_stored_weight``; every other
tensor is cast as ``.to`` casts. The same mechanism serves files whose weights are narrower still.

The trade is memory for a cast per call: bench/memory.py measures both (bench/RESULTS.md, "Memory").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ComputesFromStored", "StoredEmbedding", "compute_dtypes"]


class ComputesFromStored(nn.Module):
    """Mixin for a layer with a ``weight`` that may compute in ``compute_dtype`` while stored in another.

    ``compute_dtype`` None computes in the weight's own dtype, as a plain layer does. A cast of the
    module (``.half()``, ``.to(dtype)``) casts the compute dtype as it casts every other tensor, so the
    layer keeps computing in the dtype of its neighbours; a move (``.to(device)``) keeps it.
    """

    weight: torch.Tensor
    compute_dtype: torch.dtype | None = None

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

    def compute_weight(self) -> torch.Tensor:
        """The weight in the compute dtype: itself, or a copy cast for this call."""
        return self.weight.to(self.computes_in)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        if self.compute_dtype is not None:
            self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        return super()._apply(fn, recurse)


class StoredEmbedding(ComputesFromStored, nn.Embedding):
    """An ``nn.Embedding`` that casts the rows it looks up, not the table (49,408 x 768 for CLIP-L)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq)
        return rows.to(self.computes_in)


def compute_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """Parameter name -> the dtype it computes in: its own, or its layer's ``compute_dtype``."""
    dtypes = {name: tensor.dtype for name, tensor in module.named_parameters()}
    for prefix, layer in module.named_modules():
        if isinstance(layer, ComputesFromStored):
            dtypes[f"{prefix}.weight" if prefix else "weight"] = layer.computes_in
    return dtypes
