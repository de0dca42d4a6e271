"""Load an upscale model from a file, recognising its architecture from the weights alone.

Files come as a PyTorch state dict (``.pth``/``.pt``/``.ckpt``/``.bin``, read with ``weights_only=True``
so a pickle cannot run code), ``.safetensors``, or an ncnn pair (``x.param`` + ``x.bin``, either may be
named; a ``.bin`` with no ``.param`` beside it is a PyTorch file). Real-ESRGAN's own ``.pth`` files
wrap the weights in ``{"params_ema": ...}`` (the EMA weights it evaluates with) or ``{"params": ...}``;
both are unwrapped. Every architecture keeps all its hyper-parameters in tensor shapes, so no config
file is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from diffusion.upscalers.ncnn import OutputResize, map_ncnn, read_ncnn
from diffusion.upscalers.rrdbnet import (
    RRDBNet,
    is_old_esrgan_state_dict,
    is_rrdb_state_dict,
    rename_old_esrgan_keys,
    rrdb_config_from_state_dict,
)
from diffusion.upscalers.srvgg import SRVGGNetCompact, is_srvgg_state_dict, srvgg_config_from_state_dict

__all__ = ["UpscaleModel", "UpscaleModelError", "ResizedOutput", "load_upscale_model", "build_upscale_network"]

TORCH_SUFFIXES = frozenset({".pth", ".pt", ".ckpt", ".bin"})
#: Keys under which training frameworks (BasicSR, Real-ESRGAN) nest the weights, preferred first.
_WRAPPER_KEYS = ("params_ema", "params", "state_dict")


class UpscaleModelError(ValueError):
    """A file that is not a loadable upscale model; says which file and what was found."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ResizedOutput(nn.Module):
    """A network whose output is resized by a fixed factor, as some ncnn files prescribe."""

    def __init__(self, network: nn.Module, resize: OutputResize) -> None:
        super().__init__()
        self.network = network
        self.resize = resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        size = (round(out.shape[-2] * self.resize.factor), round(out.shape[-1] * self.resize.factor))
        return F.interpolate(out, size=size, mode=self.resize.mode)


@dataclass(frozen=True)
class UpscaleModel:
    """A ready network (eval mode, fp32, CPU) and what a caller needs to know to run it."""

    module: nn.Module
    architecture: str
    scale: int
    in_channels: int
    source: Path

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` pixels in [0, 1] → ``[B, C, H·scale, W·scale]`` (not clamped)."""
        with torch.inference_mode():
            return self.module(pixels)


def _unwrap(path: Path, loaded: object) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise UpscaleModelError(path, f"holds a {type(loaded).__name__}, not a state dict")
    for key in _WRAPPER_KEYS:
        if isinstance(loaded.get(key), Mapping):
            return _unwrap(path, loaded[key])
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise UpscaleModelError(path, f"holds no tensors (keys: {', '.join(map(str, list(loaded)[:8]))})")
    return tensors


def build_upscale_network(state_dict: Mapping[str, torch.Tensor], path: Path) -> tuple[nn.Module, str]:
    """The network the keys describe, with the weights loaded; ``path`` names the file in errors."""
    if is_old_esrgan_state_dict(state_dict):
        try:
            state_dict = rename_old_esrgan_keys(state_dict)
        except ValueError as error:
            raise UpscaleModelError(path, str(error)) from None
    network: nn.Module
    try:
        if is_rrdb_state_dict(state_dict):
            network, name = RRDBNet(rrdb_config_from_state_dict(state_dict)), "RRDBNet"
        elif is_srvgg_state_dict(state_dict):
            network, name = SRVGGNetCompact(srvgg_config_from_state_dict(state_dict)), "SRVGGNetCompact"
        else:
            sample = ", ".join(list(state_dict)[:6])
            raise UpscaleModelError(
                path, f"no known upscaler architecture (ESRGAN/RRDBNet, SRVGGNetCompact) matches its keys: {sample}, ..."
            )
        network.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    except (ValueError, RuntimeError) as error:
        if isinstance(error, UpscaleModelError):
            raise
        raise UpscaleModelError(path, f"weights do not fit the detected architecture: {error}") from None
    return network.eval().requires_grad_(False), name


def _is_ncnn(path: Path) -> bool:
    """``.param`` always; ``.bin`` when a ``.param`` of the same name is beside it (else a PyTorch ``.bin``)."""
    suffix = path.suffix.lower()
    return suffix == ".param" or (suffix == ".bin" and path.with_suffix(".param").is_file())


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors have many types; all mean "not a readable torch file"
        raise UpscaleModelError(path, f"cannot be read as a PyTorch file: {error}") from None
    return _unwrap(path, loaded)


def load_upscale_model(path: str | os.PathLike[str]) -> UpscaleModel:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upscale model file {path} does not exist")
    suffix = path.suffix.lower()
    resize: OutputResize | None = None
    if _is_ncnn(path):
        param, weights = path.with_suffix(".param"), path.with_suffix(".bin")
        if not weights.is_file():
            raise UpscaleModelError(path, f"an ncnn model needs both files of its pair, and {weights.name} is not beside it")
        mapping = map_ncnn(read_ncnn(param, weights), param)
        state_dict, resize = mapping.state_dict, mapping.output_resize
    elif suffix == ".safetensors":
        state_dict = load_file(path)
    elif suffix in TORCH_SUFFIXES:
        state_dict = _read_torch(path)
    else:
        raise UpscaleModelError(
            path, f"unsupported file type {suffix!r}; expected .pth, .pt, .ckpt, .bin, .safetensors or an ncnn .param/.bin pair"
        )
    network, architecture = build_upscale_network(state_dict, path)
    in_channels: int = network.config.in_channels  # type: ignore[union-attr]
    scale: float = network.scale  # type: ignore[assignment]
    if resize is not None:
        network, scale = ResizedOutput(network, resize), scale * resize.factor
        if scale != round(scale):
            raise UpscaleModelError(path, f"its final resize by {resize.factor} gives a non-integer scale {scale}")
    return UpscaleModel(module=network, architecture=architecture, scale=round(scale), in_channels=in_channels, source=path)
