"""Which device computes, in which dtype, and how much memory it has.

The policy is exactness first: fp32 unless the caller asks for speed. "Fast" means bf16 where the
hardware computes it natively (CUDA GPUs that report bf16 support; CPUs with AVX512_BF16 or AMX, where
oneDNN's bf16 kernels run at about twice the fp32 rate on this project's machines, see bench/RESULTS.md), fp16 on
GPUs without bf16 (its narrow range is why it is the last resort: SDXL's VAE is known to overflow in
fp16), and fp32 everywhere else. Loom computes on CUDA or the CPU; other backends are never picked
automatically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffusion.onednn import onednn_computes

__all__ = [
    "MemoryInfo",
    "compute_device",
    "cpu_computes_bf16_fast",
    "cpu_supports_bf16",
    "memory_info",
    "parse_meminfo",
    "select_device",
    "select_dtype",
]

_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


#: The attribute `ModelMemory` sets on a model it placed: the device the model computes on.
COMPUTE_DEVICE_ATTRIBUTE = "loom_compute_device"


def compute_device(model: nn.Module) -> torch.device:
    """Where ``model`` computes: the device `ModelMemory` placed it on, else where its first parameter is.

    Not simply the first parameter's device: a model placed in part streams some blocks, whose weights rest
    on the offload device between calls (``diffusion.weight_streaming``), so inputs made on "the device of the
    weights" could land on the wrong one."""
    placed = model.__dict__.get(COMPUTE_DEVICE_ATTRIBUTE)
    if placed is not None:
        return placed
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def select_device(force_cpu: bool = False) -> torch.device:
    """The first CUDA device when there is one (and the caller allows it), else the CPU."""
    if not force_cpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bf16 dot products (`/proc/cpuinfo` flags; False where unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(_CPU_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def cpu_computes_bf16_fast() -> bool:
    """Whether bf16 is the faster dtype on this CPU: native bf16 instructions *and* oneDNN kernels that
    use them. Without both, PyTorch computes bf16 by converting in software: on the project's AVX2-only
    machine a 4096x3072x3072 bf16 matmul took 3.78 s against 0.44 s in fp32."""
    return cpu_supports_bf16() and onednn_computes(torch.bfloat16)


def select_dtype(device: torch.device, fast: bool = False) -> torch.dtype:
    """fp32 for exact results; with `fast`, the fastest dtype the device computes natively."""
    if not fast:
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_computes_bf16_fast():
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class MemoryInfo:
    """Bytes of memory on a device: `free` is what can be allocated now without swapping."""

    total: int
    free: int


def parse_meminfo(text: str) -> MemoryInfo:
    """`/proc/meminfo` -> MemoryInfo; MemAvailable (page cache counts as reclaimable) is "free"."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    if "MemTotal" not in fields:
        raise ValueError("no MemTotal line in /proc/meminfo text")
    return MemoryInfo(fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0)))


def _system_memory() -> MemoryInfo:
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        page = os.sysconf("SC_PAGE_SIZE")
        return MemoryInfo(os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page)


def memory_info(device: torch.device | str) -> MemoryInfo:
    """Total and free memory of a CUDA device, or of system RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return MemoryInfo(total, free)
    if device.type == "cpu":
        return _system_memory()
    raise ValueError(f"no memory query for device type {device.type!r} (Loom computes on cuda or cpu)")
