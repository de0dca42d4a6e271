"""The process's compute settings: what ``--device`` and ``--dtype`` mean for the model nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from nodes.compute import compute_device, compute_dtype, configure_compute, model_memory


@pytest.fixture(autouse=True)
def default_settings_afterwards() -> Iterator[None]:
    yield
    configure_compute()


def test_auto_computes_in_fp32_on_a_cpu_only_machine() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where auto picks its fast dtype")
    configure_compute("auto", "auto")
    assert compute_device() == torch.device("cpu") and compute_dtype() == torch.float32


def test_an_explicit_dtype_reaches_the_model_memory_that_places_models() -> None:
    configure_compute("cpu", "bf16")
    memory = model_memory()
    assert memory.device == torch.device("cpu") and memory.dtype == torch.bfloat16
    layer = torch.nn.Linear(4, 4)
    memory.use(layer)
    assert layer.weight.dtype == torch.bfloat16


def test_reconfiguring_replaces_the_memory_manager() -> None:
    configure_compute("cpu", "fp32")
    first = model_memory()
    configure_compute("cpu", "fp16")
    assert model_memory() is not first and model_memory().dtype == torch.float16


@pytest.mark.parametrize(("device", "dtype", "reason"), [
    ("cpu", "fp8", "dtype 'fp8'"),
    ("tpu:x", "auto", "device 'tpu:x'"),
])  # fmt: skip
def test_bad_settings_are_refused_with_the_setting_named(device: str, dtype: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        configure_compute(device, dtype)


@pytest.mark.parametrize(("fast_bf16", "warned"), [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_native_bf16_runs_but_warns_that_it_is_slow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fast_bf16: bool, warned: bool
) -> None:
    monkeypatch.setattr("nodes.compute.cpu_computes_bf16_fast", lambda: fast_bf16)
    with caplog.at_level("WARNING", logger="nodes.compute"):
        configure_compute("cpu", "bf16")
    assert compute_dtype() == torch.bfloat16
    assert ("no native bf16 kernels" in caplog.text) is warned
