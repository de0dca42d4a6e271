"""Fixtures shared by the model-library tests."""

from __future__ import annotations

import pytest
import torch

from diffusion.onednn import onednn_computes
from tests.diffusion.cpu_paths import onednn_missing_reason


@pytest.fixture(params=["onednn", "plain"])
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through both CPU paths: the oneDNN fast path (skipped where this CPU has no kernels
    for the test's ``dtype`` parameter, fp32 when it has none) and the plain ``torch.nn.functional``
    path. "plain" turns oneDNN off for PyTorch's own operators too, as an AVX2-only CPU has it off for
    bf16, so that their native kernels (which round differently) run here as they run there."""
    callspec = getattr(request.node, "callspec", None)
    dtype = callspec.params.get("dtype", torch.float32) if callspec else torch.float32
    if request.param == "onednn" and not onednn_computes(dtype):
        pytest.skip(onednn_missing_reason(dtype))
    if request.param == "plain":
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    return request.param
