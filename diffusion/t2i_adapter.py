"""T2I-Adapters (Mou et al. 2023) for the SD1.x and SDXL UNets, in plain torch.

An adapter is a small conv net that turns a control image into one feature map per UNet level. Unlike a
ControlNet it sees neither the latent nor the timestep, so it runs once per sampling run on the hint, and its
features are added inside the UNet's encoder (`ControlResiduals.encoder`), where every later block sees them:

- the full adapter (SD1.x): pixel-unshuffle 8, a conv, then per UNet level a few residual blocks (the first
  of a level halving the size and widening the channels); level l's feature joins after level l's last
  ResBlock;
- the light adapter (SD1.x, the "color" adapter): no input conv, per level a 1x1 squeeze, residual blocks at
  a quarter of the width and a 1x1 expansion;
- the full XL adapter (SDXL): pixel-unshuffle 16, so its first feature is half the latent's size and joins
  after level 0's Downsample, the next two after levels 1 and 2, the last after the middle block.

Module names are those of TencentARC's original files (`conv_in`, `body.N.block1` ..., as ComfyUI reads them);
the diffusers layout (`adapter.conv_in`, `adapter.body.L.resnets.M.*`) is renamed onto them. Hints are sized as
ComfyUI sizes them (`fit_adapter_hint`), and an odd size is halved as ComfyUI halves it: average pooling over
zero padding on both sides, counted in the mean (diffusers' pooling rounds up instead; even sizes agree).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.controlnet import ControlResiduals, fit_hint
from diffusion.packed_conv import PackedConv2d
from diffusion.unet_config import CheckpointLayoutError, UNetConfig, load_exact, require_key

__all__ = [
    "AdapterKind",
    "T2IAdapter",
    "T2IAdapterConfig",
    "adapter_mismatch",
    "detect_t2i_adapter_config",
    "fit_adapter_hint",
    "is_t2i_adapter",
    "load_t2i_adapter",
    "t2i_adapter_to_original",
    "tiny_t2i_adapter_tensors",
]

AdapterKind = Literal["full", "full_xl", "light"]

#: Residual blocks per level of TencentARC's full adapters: the original layout numbers blocks straight
#: through (body.0 ... body.7), so the level a block belongs to is only known from this (ComfyUI assumes it too).
ORIGINAL_BLOCKS_PER_LEVEL = 2
#: The adapter block of the XL layout that widens without halving, and the one that halves (diffusers'
#: `FullAdapterXL`): the four features then land after SDXL's level 0 Downsample, levels 1 and 2, and the middle.
_XL_STAGES: tuple[int | None, ...] = (1, 2, 4, None)


@dataclass(frozen=True)
class T2IAdapterConfig:
    """`channels` holds the width of each feature (one per adapter level); `blocks_per_level` residual blocks
    make each level. A full adapter's second conv and squeeze conv have `kernel_size` (1 in every published
    file), and `conv_downsample` halves with a strided conv instead of average pooling (an early variant)."""

    kind: AdapterKind
    hint_channels: int
    channels: tuple[int, ...]
    blocks_per_level: int
    kernel_size: int = 1
    conv_downsample: bool = False

    @property
    def unshuffle(self) -> int:
        """The pixel-unshuffle factor: the hint is this many times the first feature's size."""
        return 16 if self.kind == "full_xl" else 8

    @property
    def stages(self) -> tuple[int | None, ...]:
        """The encoder stage (`ControlResiduals.encoder`) each feature joins; None: after the middle block."""
        return _XL_STAGES if self.kind == "full_xl" else tuple(2 * level for level in range(len(self.channels)))

    @property
    def unet_levels(self) -> int:
        """How many levels the UNet it drives has."""
        return 3 if self.kind == "full_xl" else len(self.channels)

    def halves(self, level: int) -> bool:
        """Whether the level's first block halves the size (the features follow the UNet's downsamplings)."""
        return level == 2 if self.kind == "full_xl" else level > 0


def _halved(x: torch.Tensor) -> torch.Tensor:
    """A 2x average pooling that pads an odd side with one zero on both ends, counted in the mean (ComfyUI's
    adapter `Downsample`): the size comes out as the UNet's strided conv makes it, ceil(n / 2)."""
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[-2] % 2, x.shape[-1] % 2))


class _Downsample(nn.Module):
    """The strided 3x3 conv of the early adapters that halve by convolution (`down_opt.op`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = PackedConv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _ResBlock(nn.Module):
    """A full adapter's residual block: optional halving, optional widening conv, then x + conv(relu(conv(x)))."""

    def __init__(self, in_channels: int, out_channels: int, halves: bool, config: T2IAdapterConfig) -> None:
        super().__init__()
        k = config.kernel_size
        self.halves = halves
        self.down_opt = _Downsample(in_channels) if halves and config.conv_downsample else None
        self.in_conv = (
            PackedConv2d(in_channels, out_channels, k, padding=k // 2) if in_channels != out_channels else None
        )
        self.block1 = PackedConv2d(out_channels, out_channels, 3, padding=1)
        self.block2 = PackedConv2d(out_channels, out_channels, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.halves:
            x = _halved(x) if self.down_opt is None else self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class _LightResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = PackedConv2d(channels, channels, 3, padding=1)
        self.block2 = PackedConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class _LightLevel(nn.Module):
    """A light adapter's level: optional halving, a 1x1 squeeze to a quarter width, residual blocks, a 1x1 expansion."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, halves: bool) -> None:
        super().__init__()
        inner = out_channels // 4
        self.halves = halves
        self.in_conv = PackedConv2d(in_channels, inner, 1)
        self.body = nn.Sequential(*(_LightResBlock(inner) for _ in range(blocks)))
        self.out_conv = PackedConv2d(inner, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.body(self.in_conv(_halved(x) if self.halves else x)))


class T2IAdapter(nn.Module):
    """`adapter(hint)` -> the `ControlResiduals` (encoder additions, and the middle for XL) of a control image.

    hint: [B, hint_channels, H, W] in 0..1, H and W multiples of `config.unshuffle` (`fit_adapter_hint`
    prepares it for a latent). Computes in its parameters' dtype; the features come back in the hint's dtype.
    """

    def __init__(self, config: T2IAdapterConfig) -> None:
        super().__init__()
        self.config = config
        unshuffled = config.hint_channels * config.unshuffle**2
        if config.kind == "light":
            widths = (unshuffled, *config.channels)
            self.body = nn.ModuleList(
                _LightLevel(widths[i], widths[i + 1], config.blocks_per_level, config.halves(i))
                for i in range(len(config.channels))
            )
            return
        self.conv_in = PackedConv2d(unshuffled, config.channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        previous = config.channels[0]
        for level, width in enumerate(config.channels):
            for index in range(config.blocks_per_level):
                first = index == 0
                blocks.append(_ResBlock(previous if first else width, width, first and config.halves(level), config))
            previous = width
        self.body = nn.ModuleList(blocks)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check_hint(self, hint: torch.Tensor) -> None:
        factor = self.config.unshuffle
        channels = self.config.hint_channels
        if hint.ndim != 4 or hint.shape[1] != channels or hint.shape[-2] % factor or hint.shape[-1] % factor:
            raise ValueError(
                f"T2I-Adapter hint must be [B, {channels}, H, W] with H and W multiples of {factor}, got "
                f"{tuple(hint.shape)} (see fit_adapter_hint)"
            )

    def features(self, hint: torch.Tensor) -> list[torch.Tensor]:
        """One feature map per adapter level, in the hint's dtype."""
        self._check_hint(hint)
        x = F.pixel_unshuffle(hint.to(self.dtype), self.config.unshuffle)
        found = []
        if self.config.kind == "light":
            for level in self.body:
                x = level(x)
                found.append(x)
        else:
            x = self.conv_in(x)
            per_level = self.config.blocks_per_level
            for start in range(0, len(self.body), per_level):
                for block in self.body[start : start + per_level]:
                    x = block(x)
                found.append(x)
        return [feature.to(hint.dtype) for feature in found]

    def forward(self, hint: torch.Tensor) -> ControlResiduals:
        encoder: list[torch.Tensor | None] = [None] * (2 * self.config.unet_levels - 1)
        middle = None
        for feature, stage in zip(self.features(hint), self.config.stages):
            if stage is None:
                middle = feature
            else:
                encoder[stage] = feature
        return ControlResiduals((), middle, tuple(encoder))


def fit_adapter_hint(image: torch.Tensor, height: int, width: int, config: T2IAdapterConfig) -> torch.Tensor:
    """A control image [B, C, h, w] as an adapter takes it for a latent of `height` x `width`, the way ComfyUI
    prepares T2I-Adapter hints: 8x the latent rounded up to a multiple of the unshuffle factor, centre-cropped
    and resized nearest-exact (`fit_hint`), and averaged to one channel for an adapter that takes one."""
    factor = config.unshuffle
    target = (math.ceil(8 * height / factor) * factor, math.ceil(8 * width / factor) * factor)
    fitted = fit_hint(image, *target)
    if config.hint_channels == 1 and fitted.shape[1] > 1:
        fitted = fitted.mean(dim=1, keepdim=True)
    return fitted


def adapter_mismatch(config: T2IAdapterConfig, unet: UNetConfig) -> str | None:
    """Why an adapter's features cannot join `unet`'s encoder (None when they can): its level widths differ."""
    widths = tuple(unet.model_channels * mult for mult in unet.channel_mult)
    expected = (*widths, widths[-1]) if config.kind == "full_xl" else widths
    if config.channels != expected:
        return f"its feature widths are {config.channels}, the UNet's {expected}"
    return None


# --- layouts and loading ----------------------------------------------------------------------------

_DIFFUSERS_BLOCK = re.compile(r"^adapter\.body\.(\d+)\.(resnets\.(\d+)\.)?(.+)$")
_ORIGINAL_BODY = re.compile(r"^body\.(\d+)\.")
_LAYOUT = "a T2I-Adapter (TencentARC's original layout, or diffusers' adapter.*)"


def is_t2i_adapter(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the weights are a T2I-Adapter in either layout (an upscaler also has body.N, never with conv_in)."""
    keys = state_dict.keys()
    return (
        "adapter.conv_in.weight" in keys
        or "adapter.body.0.in_conv.weight" in keys
        or ("conv_in.weight" in keys and "body.0.block1.weight" in keys)
        or ("body.0.in_conv.weight" in keys and "body.0.body.0.block1.weight" in keys)
    )


def t2i_adapter_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `T2IAdapter` weights -> TencentARC's layout. Full adapters number their residual blocks straight
    through (level L's block M is body.{L x blocks + M}, its widening conv on the level's first block); light
    adapters keep a body per level (`resnets` becomes `body`). Weights already in the original layout pass."""
    if not any(key.startswith("adapter.") for key in state_dict):
        return dict(state_dict)
    light = "adapter.conv_in.weight" not in state_dict
    per_level = 1 + max(
        (int(m.group(3)) for k in state_dict if (m := _DIFFUSERS_BLOCK.match(k)) and m.group(3) is not None),
        default=0,
    )
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _DIFFUSERS_BLOCK.match(key)
        if match is None:
            renamed[key.removeprefix("adapter.")] = tensor
            continue
        level, resnet, rest = int(match.group(1)), match.group(3), match.group(4)
        if light:
            renamed[f"body.{level}." + (rest if resnet is None else f"body.{resnet}.{rest}")] = tensor
        else:
            renamed[f"body.{level * per_level + int(resnet or 0)}.{rest}"] = tensor
    return renamed


def _kind(unshuffled: int, light: bool) -> tuple[AdapterKind, int]:
    """The adapter kind and hint channels from the width of the unshuffled hint, as ComfyUI tells XL apart: a 1-
    or 3-channel hint unshuffled 16x is 256 or 768 wide, unshuffled 8x 64 or 192 (light adapters are all 8x)."""
    factors: tuple[tuple[AdapterKind, int], ...] = (("light", 8),) if light else (("full_xl", 16), ("full", 8))
    for kind, factor in factors:
        channels, rest = divmod(unshuffled, factor**2)
        if not rest and channels in (1, 3):
            return kind, channels
    key = "body.0.in_conv.weight" if light else "conv_in.weight"
    raise CheckpointLayoutError("T2I-Adapter", key, f"takes {unshuffled} channels: no 1- or 3-channel hint unshuffled")


def detect_t2i_adapter_config(state_dict: Mapping[str, torch.Tensor]) -> T2IAdapterConfig:
    """The config of original-layout adapter weights, from keys and shapes alone."""
    bodies = sorted({int(m.group(1)) for k in state_dict if (m := _ORIGINAL_BODY.match(k))})
    if not bodies or bodies != list(range(len(bodies))):
        raise CheckpointLayoutError("T2I-Adapter", "body.0", f"unexpected block indices {bodies}")
    if "conv_in.weight" not in state_dict:
        first = require_key(state_dict, "body.0.in_conv.weight", "T2I-Adapter", _LAYOUT)
        kind, hint_channels = _kind(int(first.shape[1]), light=True)
        blocks = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("body.0.body."))
        channels = tuple(
            int(require_key(state_dict, f"body.{i}.out_conv.weight", "T2I-Adapter", _LAYOUT).shape[0]) for i in bodies
        )
        return T2IAdapterConfig(kind, hint_channels, channels, blocks)
    conv_in = state_dict["conv_in.weight"]
    kind, hint_channels = _kind(int(conv_in.shape[1]), light=False)
    per_level = ORIGINAL_BLOCKS_PER_LEVEL
    if len(bodies) % per_level:
        raise CheckpointLayoutError("T2I-Adapter", "body", f"{len(bodies)} blocks: not {per_level} per level")
    channels = tuple(
        int(require_key(state_dict, f"body.{i}.block1.weight", "T2I-Adapter", _LAYOUT).shape[0])
        for i in bodies[::per_level]
    )
    kernel = int(require_key(state_dict, "body.0.block2.weight", "T2I-Adapter", _LAYOUT).shape[-1])
    halving_convs = any(k.endswith("down_opt.op.weight") for k in state_dict)
    return T2IAdapterConfig(kind, hint_channels, channels, per_level, kernel, halving_convs)


def load_t2i_adapter(state_dict: Mapping[str, torch.Tensor]) -> T2IAdapter:
    """A T2I-Adapter around weights in either layout; the module adopts the tensors as they are. Raises
    `CheckpointLayoutError` naming the first key at fault (an XL adapter must have four levels)."""
    weights = t2i_adapter_to_original(state_dict)
    config = detect_t2i_adapter_config(weights)
    if config.kind == "full_xl" and len(config.channels) != len(_XL_STAGES):
        raise CheckpointLayoutError(
            "T2I-Adapter", "body", f"an XL adapter has {len(_XL_STAGES)} levels, this one {len(config.channels)}"
        )
    with torch.device("meta"):
        model = T2IAdapter(config)
    load_exact(model, weights, "T2I-Adapter")
    return model


def tiny_t2i_adapter_tensors(unet: UNetConfig, seed: int = 0, light: bool = False) -> dict[str, torch.Tensor]:
    """A random adapter for `unet` (a tiny config of `diffusion.tiny`) in the layout such adapters are published
    in: an SDXL-style UNet (one with `adm_in_channels`) gets a full XL adapter in the diffusers layout (TencentARC
    publishes SDXL adapters only so), any other a full adapter, or with `light` a light one, in TencentARC's
    original layout. Biases are random too: zero ones would hide layout mistakes."""
    from diffusion.tiny import seeded_rng

    widths = tuple(unet.model_channels * mult for mult in unet.channel_mult)
    xl = unet.adm_in_channels is not None
    kind: AdapterKind = "full_xl" if xl else "light" if light else "full"
    blocks = 4 if light else ORIGINAL_BLOCKS_PER_LEVEL
    config = T2IAdapterConfig(kind, 3, (*widths, widths[-1]) if xl else widths, blocks)
    with seeded_rng(seed):
        model = T2IAdapter(config)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.normal_(0.0, 0.05)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return _to_diffusers(tensors, blocks) if xl else tensors


def _to_diffusers(tensors: Mapping[str, torch.Tensor], per_level: int) -> dict[str, torch.Tensor]:
    """Original full-adapter names -> diffusers' (`adapter.body.L.resnets.M.*`, widening convs on the level)."""
    renamed = {}
    for key, tensor in tensors.items():
        match = _ORIGINAL_BODY.match(key)
        if match is None:
            renamed[f"adapter.{key}"] = tensor
            continue
        level, index = divmod(int(match.group(1)), per_level)
        rest = key[match.end() :]
        inner = rest if rest.startswith("in_conv.") else f"resnets.{index}.{rest}"
        renamed[f"adapter.body.{level}.{inner}"] = tensor
    return renamed
