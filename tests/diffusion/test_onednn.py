"""The oneDNN fast paths are taken only where this CPU computes them; everything else runs plain torch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from diffusion import onednn
from diffusion.onednn import onednn_computes, runs_on_onednn
from diffusion.packed_conv import PackedConv2d

AVX2_ERROR = (
    "mkldnn_reorder_conv2d_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"
)


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """The probe caches its answer per process; these tests change what it sees."""
    onednn_computes.cache_clear()
    yield
    onednn_computes.cache_clear()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_fp32_runs_on_onednn_on_every_cpu() -> None:
    assert onednn_computes(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.float8_e4m3fn])
def test_dtypes_onednn_has_no_fused_ops_for_never_take_the_fast_path(dtype: torch.dtype) -> None:
    assert not onednn_computes(dtype)


def test_a_cpu_that_pytorch_says_lacks_bf16_kernels_is_not_tried(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(
        onednn, "_trial_calls", lambda dtype: pytest.fail("a bf16 trial call on a CPU without bf16 kernels")
    )
    assert not onednn_computes(torch.bfloat16)


def test_a_cpu_whose_trial_call_raises_gets_the_plain_path(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    """What an AVX2-only AMD EPYC does: PyTorch raises from the weight reorder at the first bf16 call."""

    def avx2_only(dtype: torch.dtype) -> None:
        if dtype == torch.bfloat16:
            raise RuntimeError(AVX2_ERROR)

    monkeypatch.setattr(onednn, "_trial_calls", avx2_only)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert not onednn_computes(torch.bfloat16)
    assert onednn_computes(torch.float32) == torch.backends.mkldnn.is_available()

    conv = PackedConv2d(4, 4, 3, padding=1).eval().to(torch.bfloat16)
    x = torch.randn(1, 4, 6, 6, dtype=torch.bfloat16)
    assert not runs_on_onednn(x, conv.weight, conv.bias)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    assert conv._packed.value is None


def test_the_probe_runs_once_per_dtype(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    calls: list[torch.dtype] = []
    monkeypatch.setattr(onednn, "_trial_calls", calls.append)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for _ in range(3):
        onednn_computes(torch.float32)
        onednn_computes(torch.bfloat16)
    assert calls == ([torch.float32, torch.bfloat16] if torch.backends.mkldnn.is_available() else [])


def test_turning_mkldnn_off_in_torch_turns_the_fast_paths_off(monkeypatch: pytest.MonkeyPatch) -> None:
    x, weight = torch.randn(2, 3), torch.randn(4, 3)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not runs_on_onednn(x, weight, None)
