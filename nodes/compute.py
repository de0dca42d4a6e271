"""Where the built-in nodes compute: one device and one weight dtype per runtime (``nodes.runtime``).

``--device``/``--dtype`` become a ``Compute`` when the runtime is built, so a bad setting is refused
before the first prompt; every model node then places its modules through the runtime's
``ModelMemory``, which keeps them on that device within its memory budget and casts their
floating-point weights to the chosen dtype on first use.

``auto`` picks the device ``diffusion.devices.select_device`` picks (the first CUDA GPU, else the
CPU) and the dtype ``select_dtype`` gives it: fp32 on the CPU, where most checkpoints' fp16 weights
would otherwise compute without native kernels, and the GPU's fast dtype there (bf16 where the card
has it, since fp16 overflows in SDXL's VAE).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from diffusion.devices import cpu_computes_bf16_fast, select_device, select_dtype

__all__ = ["DTYPES", "Compute", "ComputeSettingsError"]

#: What the ``--dtype`` names other than ``auto`` mean (``nodes.runtime_options.DTYPE_MODES``).
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_log = logging.getLogger(__name__)


class ComputeSettingsError(ValueError):
    """A ``--device`` or ``--dtype`` this process cannot compute with."""


@dataclass(frozen=True)
class Compute:
    """A resolved ``--device``/``--dtype`` pair; build it with ``Compute.from_settings``."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def from_settings(cls, device: str = "auto", dtype: str = "auto") -> Compute:
        """Resolve ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` and a dtype mode; refuse what
        this machine cannot do, and warn where it can but slowly (bf16 on a CPU without native bf16)."""
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
        chosen = select_dtype(resolved, fast=resolved.type != "cpu") if dtype == "auto" else DTYPES[dtype]
        return cls(resolved, chosen)


def _resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return select_device()
    try:
        return torch.device(setting)
    except RuntimeError as error:
        raise ComputeSettingsError(f"device {setting!r}: {error}") from None
