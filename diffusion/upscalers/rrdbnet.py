"""RRDBNet, the generator of ESRGAN and Real-ESRGAN, in both of its state-dict key layouts.

Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks" (ECCV workshops
2018): a trunk of Residual-in-Residual Dense Blocks at low resolution, each three dense blocks of five
3x3 convs whose output is scaled by 0.2 before the skip (the paper's residual scaling), then nearest
×2 upsampling stages each followed by a conv and LeakyReLU(0.2). Real-ESRGAN (Wang et al., ICCVW 2021)
kept the network and added x2/x1 models that pixel-unshuffle the input by 2/4 first, so the same
×4 trunk produces a ×2/×1 result at a quarter/sixteenth of the cost.

Two key layouts exist for the same weights: the original ESRGAN repository's ``nn.Sequential`` one
(``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ``model.1.sub.{nb}``, then the tail convs at
``model.3/6/8/10``) and BasicSR's named one (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``,
``conv_up1/2``, ``conv_hr``, ``conv_last``). The module uses BasicSR's names; old files are renamed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RRDBConfig",
    "RRDBNet",
    "is_rrdb_state_dict",
    "is_old_esrgan_state_dict",
    "rename_old_esrgan_keys",
    "rrdb_config_from_state_dict",
]

#: ESRGAN's residual scaling: a block's output is damped before the skip so deep trunks train stably.
RESIDUAL_SCALE = 0.2
_NEGATIVE_SLOPE = 0.2


@dataclass(frozen=True)
class RRDBConfig:
    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow: int = 32
    num_upsamples: int = 2
    #: Pixel-unshuffle factor applied to the input (1 = none; Real-ESRGAN x2 uses 2, x1 uses 4).
    unshuffle: int = 1

    @property
    def scale(self) -> int:
        return 2**self.num_upsamples // self.unshuffle


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs: each sees the block input and every earlier conv's output."""

    def __init__(self, num_feat: int, num_grow: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow, 3, padding=1)
        self.conv2 = nn.Conv2d(num_feat + num_grow, num_grow, 3, padding=1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow, num_grow, 3, padding=1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow, num_grow, 3, padding=1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow, num_feat, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), _NEGATIVE_SLOPE))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        self.config = config
        feat = config.num_feat
        self.conv_first = nn.Conv2d(config.in_channels * config.unshuffle**2, feat, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(feat, config.num_grow) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(feat, feat, 3, padding=1)
        for index in range(1, config.num_upsamples + 1):
            self.add_module(f"conv_up{index}", nn.Conv2d(feat, feat, 3, padding=1))
        self.conv_hr = nn.Conv2d(feat, feat, 3, padding=1)
        self.conv_last = nn.Conv2d(feat, config.out_channels, 3, padding=1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.config.unshuffle
        height, width = x.shape[-2:]
        if factor > 1:
            # Unshuffling needs sides divisible by the factor; reflect-pad and crop the padding off the result.
            x = F.pad(x, (0, -width % factor, 0, -height % factor), mode="reflect")
            x = F.pixel_unshuffle(x, factor)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for index in range(1, self.config.num_upsamples + 1):
            conv = getattr(self, f"conv_up{index}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), _NEGATIVE_SLOPE)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), _NEGATIVE_SLOPE))
        return out[..., : height * self.scale, : width * self.scale]


_OLD_BLOCK_KEY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OLD_TRUNK_END_KEY = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_OLD_TAIL_KEY = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_UP_KEY = re.compile(r"^conv_up(\d+)\.weight$")
_BLOCK_KEY = re.compile(r"^body\.(\d+)\.rdb1\.conv1\.weight$")


def is_rrdb_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "conv_first.weight" in state_dict and "body.0.rdb1.conv1.weight" in state_dict


def is_old_esrgan_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "model.0.weight" in state_dict and "model.1.sub.0.RDB1.conv1.0.weight" in state_dict


def rename_old_esrgan_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN's ``model.*`` Sequential keys → BasicSR names.

    In the Sequential, ``model.1`` is the shortcut around the trunk whose last entry is the trunk
    conv; after it come upsample/LeakyReLU entries without weights and the convs. The convs' indices
    differ with the number of upsampling stages (x4: 3, 6, 8, 10), so they are taken in order: the
    last two are ``conv_hr`` and ``conv_last``, the ones before them the ``conv_up`` stages.
    """
    renamed: dict[str, torch.Tensor] = {}
    tail: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if block := _OLD_BLOCK_KEY.match(key):
            index, rdb, conv, kind = block.groups()
            renamed[f"body.{index}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif trunk_end := _OLD_TRUNK_END_KEY.match(key):
            renamed[f"conv_body.{trunk_end[2]}"] = value
        elif tail_key := _OLD_TAIL_KEY.match(key):
            tail.setdefault(int(tail_key[1]), {})[tail_key[2]] = value
        else:
            raise ValueError(f"ESRGAN state dict: unexpected key {key!r} in the old 'model.N' layout")
    if 0 not in tail or len(tail) < 3:
        raise ValueError(f"ESRGAN state dict: expected model.0 and at least two tail convs, found model.{sorted(tail)}")
    ordered = [tail[index] for index in sorted(tail)]
    names = ["conv_first", *(f"conv_up{n}" for n in range(1, len(ordered) - 2)), "conv_hr", "conv_last"]
    for name, params in zip(names, ordered, strict=True):
        renamed.update({f"{name}.{kind}": value for kind, value in params.items()})
    return renamed


def rrdb_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> RRDBConfig:
    """Hyper-parameters from BasicSR-named weights; the unshuffle factor from ``conv_first``'s inputs.

    ``conv_first`` takes ``in_channels × unshuffle²`` channels and, as in every released model, the
    network outputs as many channels as an unshuffled pixel has, so the ratio of the two gives the factor.
    """
    first, last = state_dict["conv_first.weight"], state_dict["conv_last.weight"]
    out_channels = last.shape[0]
    unshuffle = math.isqrt(first.shape[1] // out_channels)
    num_upsamples = sum(1 for key in state_dict if _UP_KEY.match(key))
    if unshuffle * unshuffle * out_channels != first.shape[1] or 2**num_upsamples % unshuffle:
        raise ValueError(
            f"RRDBNet: conv_first takes {first.shape[1]} channels and conv_last gives {out_channels} with "
            f"{num_upsamples} upsampling stages; no pixel-unshuffle factor fits"
        )
    return RRDBConfig(
        in_channels=out_channels,
        out_channels=out_channels,
        num_feat=first.shape[0],
        num_block=sum(1 for key in state_dict if _BLOCK_KEY.match(key)),
        num_grow=state_dict["body.0.rdb1.conv1.weight"].shape[0],
        num_upsamples=num_upsamples,
        unshuffle=unshuffle,
    )
