"""What a runtime is built from, and the names its settings accept: plain data, no torch.

Kept apart from ``nodes.runtime`` so that parsing ``loom`` flags, and building a ``ServerConfig``,
import nothing heavy (``loom --help`` stays instant), and so a server can send the options to Ray
workers, which build their own runtime from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["DEVICES", "DTYPE_MODES", "PREVIEW_METHODS", "RuntimeOptions", "option_values"]

#: ``--device`` names besides ``cuda:N`` (and ``mps:N``, ``xpu:N``).
DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``--dtype`` names; ``auto`` is resolved per device (``nodes.compute``).
DTYPE_MODES = ("auto", "fp32", "fp16", "bf16")
#: ``--preview-method`` names (``nodes.previews``).
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")

_INDEXED_DEVICE = re.compile(r"(cuda|mps|xpu):\d+")


@dataclass(frozen=True)
class RuntimeOptions:
    """The options a runtime is built from. Directories left ``None`` live under ``base_dir``;
    ``extra_model_paths`` are ComfyUI ``extra_model_paths.yaml`` files, read in order. Names are
    checked here; whether the machine has the device is checked when the runtime is built."""

    base_dir: Path = Path(".")
    input_dir: Path | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None
    models_dir: Path | None = None
    extra_model_paths: tuple[Path, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    preview_method: str = "auto"
    #: Bytes the models may hold on the device (``--vram-budget``); None: its memory less a reserve. Models
    #: larger than that stream their blocks (``diffusion.weight_streaming``); on the CPU a simulation.
    vram_budget_bytes: int | None = None
    #: Bytes of node outputs the output cache may keep on the device between prompts (``--cache-vram-budget``);
    #: None: 1 GiB on a GPU (left out of the models' default budget), no bound on the CPU, which has no device.
    cache_vram_budget_bytes: int | None = None

    @classmethod
    def of(cls, source: object) -> RuntimeOptions:
        """The options ``source`` holds under the same names: a ``ServerConfig``, or parsed flags."""
        return cls(**option_values(source))

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_model_paths", tuple(self.extra_model_paths))
        if self.preview_method not in PREVIEW_METHODS:
            raise ValueError(f"preview method {self.preview_method!r}: expected one of {', '.join(PREVIEW_METHODS)}")
        if self.device not in DEVICES and not _INDEXED_DEVICE.fullmatch(self.device):
            raise ValueError(f"device {self.device!r}: expected one of {', '.join(DEVICES)} or cuda:N")
        if self.dtype not in DTYPE_MODES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPE_MODES)}")
        if self.vram_budget_bytes is not None and self.vram_budget_bytes <= 0:
            raise ValueError(f"vram budget {self.vram_budget_bytes}: expected a positive size, e.g. 6G")
        if self.cache_vram_budget_bytes is not None and self.cache_vram_budget_bytes < 0:
            raise ValueError(f"cache vram budget {self.cache_vram_budget_bytes}: expected a size, e.g. 2G or 0")


def option_values(source: object) -> dict[str, Any]:
    """``source``'s values of the fields a ``RuntimeOptions`` has, by name."""
    return {field.name: getattr(source, field.name) for field in fields(RuntimeOptions)}
