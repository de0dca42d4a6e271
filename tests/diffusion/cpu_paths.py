"""Which CPU paths a model-library test can take on this machine (see ``diffusion.onednn``)."""

from __future__ import annotations

import pytest
import torch

from diffusion.onednn import onednn_computes

__all__ = ["onednn_missing_reason", "requires_onednn"]


def onednn_missing_reason(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return (
        f"this CPU's oneDNN has no {name} kernels (bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT; an "
        "AVX2-only CPU has none): the 'plain' variants of these tests cover the path such a CPU takes"
    )


def requires_onednn(dtype: torch.dtype) -> pytest.MarkDecorator:
    """Skip a test of the oneDNN fast path itself where this CPU cannot run it in ``dtype``."""
    return pytest.mark.skipif(not onednn_computes(dtype), reason=onednn_missing_reason(dtype))
