"""Load an upscale model from a file, recognising its architecture from the weights alone.

Files come as a weight file that `open_state_dict` reads like every other (safetensors or a pickled
PyTorch state dict, recognised by content whatever the suffix; Real-ESRGAN's ``{"params_ema": ...}``
wrapper removed there), or as an ncnn pair (``x.param`` + ``x.bin``, either may be named). Every
architecture keeps all its hyper-parameters in tensor shapes, so no config file is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.checkpoint.errors import CheckpointError, CheckpointFormatError
from diffusion.checkpoint.files import open_state_dict
from diffusion.checkpoint.sniff import WeightFormat, sniff_weight_format
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


class UpscaleModelError(CheckpointError):
    """A readable file that is not a loadable upscale model; says which file and what was found."""


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

    def loom_parts(self) -> list[nn.Module]:
        """What a cache holding this value keeps alive (the ``graph.sizeof`` protocol): the network."""
        return [self.module]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` pixels in [0, 1] → ``[B, C, H·scale, W·scale]`` (not clamped)."""
        with torch.inference_mode():
            return self.module(pixels)


def build_upscale_network(state_dict: Mapping[str, torch.Tensor], path: Path) -> tuple[RRDBNet | SRVGGNetCompact, str]:
    """The network the keys describe, with the weights loaded; ``path`` names the file in errors."""
    if is_old_esrgan_state_dict(state_dict):
        try:
            state_dict = rename_old_esrgan_keys(state_dict)
        except ValueError as error:
            raise UpscaleModelError(path, str(error)) from None
    network: RRDBNet | SRVGGNetCompact
    try:
        if is_rrdb_state_dict(state_dict):
            network, name = RRDBNet(rrdb_config_from_state_dict(state_dict)), "RRDBNet"
        elif is_srvgg_state_dict(state_dict):
            network, name = SRVGGNetCompact(srvgg_config_from_state_dict(state_dict)), "SRVGGNetCompact"
        else:
            sample = ", ".join(list(state_dict)[:6])
            raise UpscaleModelError(
                path,
                f"no known upscaler architecture (ESRGAN/RRDBNet, SRVGGNetCompact) matches its keys: {sample}, ...",
            )
        network.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    except (ValueError, RuntimeError) as error:
        raise UpscaleModelError(path, f"weights do not fit the detected architecture: {error}") from None
    return network.eval().requires_grad_(False), name


def _ncnn_param_of(path: Path) -> Path | None:
    """The ``.param`` of the ncnn pair ``path`` belongs to, or None when it is a weight file of its own.

    A ``.param`` is known by its magic line, whatever its name. An ncnn ``.bin`` is raw numbers with no
    magic, so a ``.bin`` whose content is no weight format belongs to the ncnn ``.param`` of its name.
    """
    own = _weight_format(path)
    if own is WeightFormat.NCNN_PARAM:
        return path
    param = path.with_suffix(".param")
    if own is None and path.suffix.lower() == ".bin" and _weight_format(param) is WeightFormat.NCNN_PARAM:
        return param
    return None


def _weight_format(path: Path) -> WeightFormat | None:
    try:
        return sniff_weight_format(path)
    except CheckpointFormatError:
        return None


def load_upscale_model(path: str | os.PathLike[str]) -> UpscaleModel:
    """The upscaler in ``path``, ready to run; unreadable files raise `CheckpointFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upscale model file {path} does not exist")
    resize: OutputResize | None = None
    state_dict: Mapping[str, torch.Tensor]
    param = _ncnn_param_of(path)
    if param is not None:
        weights = param.with_suffix(".bin")
        if not weights.is_file():
            raise UpscaleModelError(
                path, f"an ncnn model needs both files of its pair, and {weights.name} is not beside it"
            )
        mapping = map_ncnn(read_ncnn(param, weights), param)
        state_dict, resize = mapping.state_dict, mapping.output_resize
    else:
        state_dict = open_state_dict(path)
    network, architecture = build_upscale_network(state_dict, path)
    in_channels = network.config.in_channels
    scale: float = network.scale
    module: nn.Module = network
    if resize is not None:
        module, scale = ResizedOutput(network, resize), scale * resize.factor
        if scale != round(scale):
            raise UpscaleModelError(path, f"its final resize by {resize.factor} gives a non-integer scale {scale}")
    return UpscaleModel(
        module=module, architecture=architecture, scale=round(scale), in_channels=in_channels, source=path
    )
