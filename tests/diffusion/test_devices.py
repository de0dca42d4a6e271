"""Device, dtype and memory queries."""

from __future__ import annotations

import pytest
import torch

from diffusion.devices import MemoryInfo, cpu_supports_bf16, memory_info, parse_meminfo, select_device, select_dtype

ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
SAPPHIRE_RAPIDS_FLAGS = "flags\t\t: avx512f amx_tile amx_bf16 amx_int8\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"), [(ZEN4_FLAGS, True), (SAPPHIRE_RAPIDS_FLAGS, True), (OLD_FLAGS, False), ("", False)]
)
def test_cpu_bf16_needs_native_bf16_instructions(cpuinfo: str, expected: bool) -> None:
    assert cpu_supports_bf16(cpuinfo) is expected


def test_exact_mode_is_fp32_everywhere() -> None:
    assert select_dtype(torch.device("cpu")) is torch.float32


def test_fast_mode_on_cpu_follows_the_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("diffusion.devices.cpu_computes_bf16_fast", lambda: True)
    assert select_dtype(torch.device("cpu"), fast=True) is torch.bfloat16
    monkeypatch.setattr("diffusion.devices.cpu_computes_bf16_fast", lambda: False)
    assert select_dtype(torch.device("cpu"), fast=True) is torch.float32


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_fast_mode_on_cuda_prefers_bf16_then_fp16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert select_dtype(torch.device("cuda"), fast=True) is expected


def test_cuda_is_chosen_when_present_unless_forced_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert select_device() == torch.device("cuda", 0)
    assert select_device(force_cpu=True) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")


def test_meminfo_uses_available_not_free_memory() -> None:
    text = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"
    assert parse_meminfo(text) == MemoryInfo(total=24576000 * 1024, free=20000000 * 1024)


def test_meminfo_without_total_is_an_error() -> None:
    with pytest.raises(ValueError, match="MemTotal"):
        parse_meminfo("MemFree: 3 kB\n")


def test_system_memory_is_reported() -> None:
    info = memory_info("cpu")
    assert 0 < info.free <= info.total


def test_cuda_memory_comes_from_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 << 30, 8 << 30))
    assert memory_info("cuda:0") == MemoryInfo(total=8 << 30, free=3 << 30)


def test_unsupported_device_types_are_refused() -> None:
    with pytest.raises(ValueError, match="'meta'"):
        memory_info("meta")
