"""Where the built-in nodes compute: one device and one weight dtype per process.

``loom serve --device/--dtype`` (and each Ray worker, with the server's settings) call
``configure_compute`` once at start; every model node then places its modules through
``model_memory()``, which keeps them on that device within its memory budget and casts their
floating-point weights to the chosen dtype on first use.

``auto`` picks the device ``diffusion.devices.select_device`` picks (the first CUDA GPU, else the
CPU) and the dtype ``select_dtype`` gives it: fp32 on the CPU, where most checkpoints' fp16 weights
would otherwise compute without native kernels, and the GPU's fast dtype there (bf16 where the card
has it, since fp16 overflows in SDXL's VAE).
"""

from __future__ import annotations

import logging
import threading

import torch

from diffusion.devices import cpu_computes_bf16_fast, select_device, select_dtype
from diffusion.model_memory import ModelMemory

__all__ = ["DTYPES", "ComputeSettingsError", "compute_device", "compute_dtype", "configure_compute", "model_memory"]

#: ``--dtype`` names and what they mean; ``auto`` is resolved per device.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ComputeSettingsError(ValueError):
    """A ``--device`` or ``--dtype`` this process cannot compute with."""


_log = logging.getLogger(__name__)
_lock = threading.Lock()
_device_setting = "auto"
_dtype_setting = "auto"
_memory: ModelMemory | None = None


def configure_compute(device: str = "auto", dtype: str = "auto") -> None:
    """Set the process's device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and dtype mode.

    Models placed under the previous settings are forgotten with the old memory manager; call this
    before the first prompt runs.
    """
    global _device_setting, _dtype_setting, _memory
    resolved = _resolve_device(device)
    if dtype != "auto" and dtype not in DTYPES:
        raise ComputeSettingsError(f"dtype {dtype!r}: expected auto or one of {', '.join(DTYPES)}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ComputeSettingsError(f"device {device!r}: this torch build or machine has no CUDA device")
    if resolved.type == "cpu" and dtype == "bf16" and not cpu_computes_bf16_fast():
        _log.warning(
            "--dtype bf16: this CPU has no native bf16 kernels (no AVX512_BF16/AMX with oneDNN support), so "
            "bf16 is computed in software, several times slower than fp32; --dtype auto picks fp32 here"
        )
    with _lock:
        _device_setting, _dtype_setting, _memory = device, dtype, None


def _resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return select_device()
    try:
        return torch.device(setting)
    except RuntimeError as error:
        raise ComputeSettingsError(f"device {setting!r}: {error}") from None


def compute_device() -> torch.device:
    return _resolve_device(_device_setting)


def compute_dtype() -> torch.dtype:
    if _dtype_setting == "auto":
        device = compute_device()
        return select_dtype(device, fast=device.type != "cpu")
    return DTYPES[_dtype_setting]


def model_memory() -> ModelMemory:
    """The process's placement of models on the compute device (created on first use)."""
    global _memory
    with _lock:
        if _memory is None:
            _memory = ModelMemory.for_device(compute_device(), dtype=compute_dtype())
        return _memory
