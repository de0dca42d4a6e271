"""What ``--device`` and ``--dtype`` mean for the model nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes.compute import Compute
from nodes.runtime import RuntimeOptions, build_runtime


def test_auto_computes_in_fp32_on_a_cpu_only_machine() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where auto picks its fast dtype")
    assert Compute.from_settings("auto", "auto") == Compute(torch.device("cpu"), torch.float32)


def test_an_explicit_dtype_reaches_the_model_memory_that_places_models(tmp_path: Path) -> None:
    runtime = build_runtime(RuntimeOptions(base_dir=tmp_path, device="cpu", dtype="bf16"))
    memory = runtime.memory
    assert memory.device == torch.device("cpu") and memory.dtype == torch.bfloat16
    layer = torch.nn.Linear(4, 4)
    memory.use(layer)
    assert layer.weight.dtype == torch.bfloat16


def test_each_runtime_has_its_own_model_memory(tmp_path: Path) -> None:
    first = build_runtime(RuntimeOptions(base_dir=tmp_path, device="cpu", dtype="fp32"))
    second = build_runtime(RuntimeOptions(base_dir=tmp_path, device="cpu", dtype="fp16"))
    assert first.memory is not second.memory and second.memory.dtype == torch.float16


@pytest.mark.parametrize(("device", "dtype", "reason"), [
    ("cpu", "fp8", "dtype 'fp8'"),
    ("tpu:x", "auto", "device 'tpu:x'"),
])  # fmt: skip
def test_bad_settings_are_refused_with_the_setting_named(device: str, dtype: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Compute.from_settings(device, dtype)


@pytest.mark.parametrize(("fast_bf16", "warned"), [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_native_bf16_runs_but_warns_that_it_is_slow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast_bf16: bool, warned: bool
) -> None:
    monkeypatch.setattr("nodes.compute.cpu_computes_bf16_fast", lambda: fast_bf16)
    with caplog.at_level("WARNING", logger="nodes.compute"):
        compute = Compute.from_settings("cpu", "bf16")
    assert compute.dtype == torch.bfloat16
    assert ("no native bf16 kernels" in caplog.text) is warned
