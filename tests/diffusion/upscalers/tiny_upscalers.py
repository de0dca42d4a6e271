"""Tiny random upscalers in the standard key layouts, and the names of the real ncnn files."""

from __future__ import annotations

import torch

from diffusion.upscalers.rrdbnet import RRDBConfig, RRDBNet
from diffusion.upscalers.srvgg import SRVGGConfig, SRVGGNetCompact

X4PLUS = "REALESRGAN_X4PLUS_UP4X"
X4PLUS_ANIME = "REALESRGAN_X4PLUSANIME_UP4X"
ANIMEVIDEO = {2: "REALESRGAN_ANIMAVIDEOV3_UP2X", 3: "REALESRGAN_ANIMAVIDEOV3_UP3X", 4: "REALESRGAN_ANIMAVIDEOV3_UP4X"}


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights large enough that every layer visibly matters (default inits shrink deep residual trunks)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module.eval()


def tiny_rrdb(unshuffle: int = 1, seed: int = 0) -> RRDBNet:
    return randomised(RRDBNet(RRDBConfig(num_feat=8, num_block=2, num_grow=4, unshuffle=unshuffle)), seed)  # type: ignore[return-value]


def tiny_srvgg(upscale: int = 2, seed: int = 0) -> SRVGGNetCompact:
    return randomised(SRVGGNetCompact(SRVGGConfig(num_feat=8, num_conv=2, upscale=upscale)), seed)  # type: ignore[return-value]


def old_esrgan_layout(new: dict[str, torch.Tensor], num_block: int) -> dict[str, torch.Tensor]:
    """The original ESRGAN repository's keys for a x4 RRDBNet, written from its Sequential's layout."""
    old = {}
    for key, value in new.items():
        name, kind = key.rsplit(".", 1)
        if name.startswith("body."):
            _, block, rdb, conv = name.split(".")
            old[f"model.1.sub.{block}.RDB{rdb[-1]}.{conv}.0.{kind}"] = value
        else:
            index = {
                "conv_first": "0",
                "conv_body": f"1.sub.{num_block}",
                "conv_up1": "3",
                "conv_up2": "6",
                "conv_hr": "8",
                "conv_last": "10",
            }[name]
            old[f"model.{index}.{kind}"] = value
    return old
