"""SRVGGNetCompact, the small all-convolutional upscaler of Real-ESRGAN's animevideov3 models.

Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data"
(ICCVW 2021), released it as ``realesr-animevideov3`` and ``realesr-general-x4v3``. The network is a
plain stack ``conv → PReLU → (conv → PReLU) × num_conv → conv`` at low resolution; the last conv emits
``out_ch × upscale²`` channels that a pixel shuffle turns into the high-resolution residual, added to a
nearest-neighbour upscale of the input. Its state dict is the ``body`` Sequential's: ``body.{2k}`` are
convolutions, ``body.{2k+1}.weight`` the PReLU slopes (one per feature), so every hyper-parameter is
readable from shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SRVGGConfig", "SRVGGNetCompact", "srvgg_config_from_state_dict", "is_srvgg_state_dict"]

_BODY_KEY = re.compile(r"^body\.(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class SRVGGConfig:
    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_conv: int = 16
    upscale: int = 4


class SRVGGNetCompact(nn.Module):
    def __init__(self, config: SRVGGConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, config.num_feat, 3, padding=1),
            nn.PReLU(config.num_feat),
        ]
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(config.num_feat, config.num_feat, 3, padding=1), nn.PReLU(config.num_feat)]
        layers.append(nn.Conv2d(config.num_feat, config.out_channels * config.upscale**2, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @property
    def scale(self) -> int:
        return self.config.upscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.pixel_shuffle(self.body(x), self.config.upscale)
        return residual + F.interpolate(x, scale_factor=self.config.upscale, mode="nearest")


def is_srvgg_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Every key is ``body.N.weight``/``body.N.bias`` and ``body.1`` is a PReLU (a 1-D slope vector)."""
    slopes = state_dict.get("body.1.weight")
    return (
        bool(state_dict) and all(_BODY_KEY.match(key) for key in state_dict) and slopes is not None and slopes.ndim == 1
    )


def srvgg_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> SRVGGConfig:
    """Read the hyper-parameters from the shapes; the output has as many channels as the input.

    Only the PReLU variant is recognised: a ReLU/LeakyReLU SRVGG stores no activation keys, so its
    activation cannot be told from its weights, and Real-ESRGAN released PReLU models only.
    """
    indices = sorted({int(match[1]) for key in state_dict if (match := _BODY_KEY.match(key))})
    conv_indices = [index for index in indices if state_dict[f"body.{index}.weight"].ndim == 4]
    first, last = state_dict[f"body.{conv_indices[0]}.weight"], state_dict[f"body.{conv_indices[-1]}.weight"]
    in_channels, num_feat = first.shape[1], first.shape[0]
    upscale = math.isqrt(last.shape[0] // in_channels)
    if upscale * upscale * in_channels != last.shape[0]:
        raise ValueError(
            f"SRVGGNetCompact: the last conv (body.{conv_indices[-1]}) has {last.shape[0]} output channels, "
            f"not {in_channels} x a square upscale factor"
        )
    return SRVGGConfig(
        in_channels=in_channels,
        out_channels=in_channels,
        num_feat=num_feat,
        num_conv=len(conv_indices) - 2,
        upscale=upscale,
    )
