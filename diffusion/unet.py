"""The LDM/SGM denoising UNet (Rombach et al. 2022; SDXL: Podell et al. 2023) in plain torch.

Module names reproduce the `model.diffusion_model.*` keys of SD1.x, SD2.x, SDXL and SDXL-refiner
single-file checkpoints, so their weights load with `strict=True` and no renaming.

Precision and layout. The network computes in the dtype of its parameters: convert the module
with `unet.to(torch.bfloat16)` (optionally also `.to(memory_format=torch.channels_last)`) and keep
calling it with fp32 tensors; inputs are cast at the entry and the output is cast back to the
input's dtype. No autocast context is involved, so no per-op dtype dispatch is paid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import SpatialTransformer
from diffusion.fused_linear import FusedLinear
from diffusion.packed_conv import PackedConv2d
from diffusion.unet_config import UNetConfig, detect_unet_config, load_exact
from diffusion.unet_patches import BlockId, PatchContext, TransformerRunner, UNetPatches
from diffusion.upsample_conv import NearestUpsampleConv2d

if TYPE_CHECKING:
    from diffusion.controlnet import ControlResiduals

__all__ = [
    "UNetModel",
    "timestep_embedding",
    "sdxl_adm_vector",
    "sdxl_refiner_adm_vector",
    "unet_from_state_dict",
]

_log = logging.getLogger(__name__)


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids of scalar values, cosines first (the LDM order).

    Frequencies are `max_period ** (-i / half)` for i in [0, half), i.e. diffusers'
    `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`. Computed in fp32 whatever the model
    dtype: timesteps up to 1000 lose their fractional part in bf16.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.to(torch.float32).reshape(-1, 1) * freqs
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def _size_conditioning(pooled: torch.Tensor, numbers: Sequence[float], embed_dim: int) -> torch.Tensor:
    """SDXL "micro-conditioning": each number through its own sinusoid, then concatenated after `pooled`.

    Matches sgm's ConcatTimestepEmbedderND and diffusers' `text_time` add-embedding input.
    """
    values = torch.tensor(numbers, dtype=torch.float32, device=pooled.device)
    per_number = timestep_embedding(values, embed_dim).reshape(1, -1).expand(pooled.shape[0], -1)
    return torch.cat([pooled.to(torch.float32), per_number], dim=-1)


def sdxl_adm_vector(
    pooled: torch.Tensor,
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    target_size: tuple[int, int],
    embed_dim: int = 256,
) -> torch.Tensor:
    """SDXL base `y`: pooled CLIP-G text embedding + (orig h, w, crop top, left, target h, w) sinusoids."""
    return _size_conditioning(pooled, [*original_size, *crop_top_left, *target_size], embed_dim)


def sdxl_refiner_adm_vector(
    pooled: torch.Tensor,
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    aesthetic_score: float,
    embed_dim: int = 256,
) -> torch.Tensor:
    """SDXL refiner `y`: like the base but the aesthetic score replaces the target size."""
    return _size_conditioning(pooled, [*original_size, *crop_top_left, aesthetic_score], embed_dim)


class ResBlock(nn.Module):
    """Two 3x3 convs with the timestep embedding added in between (no scale-shift norm in SD)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        # SiLU in place on the fresh GroupNorm output: one activation-sized allocation fewer.
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(inplace=True), PackedConv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), FusedLinear(emb_channels, out_channels))
        # Index 2 held a Dropout in the original; the checkpoint's conv therefore sits at index 3.
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels),
            nn.SiLU(inplace=True),
            nn.Identity(),
            PackedConv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if channels == out_channels else PackedConv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x).add_(self.emb_layers(emb)[:, :, None, None])
        return self.out_layers(h).add_(self.skip_connection(x))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = PackedConv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x then 3x3 conv. The target size comes from the matching skip tensor, so latents
    whose sides are not multiples of 8 come back to the size they went down from."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = NearestUpsampleConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
        return self.conv(x, size)


class TimestepEmbedSequential(nn.Sequential):
    """A UNet stage: routes the embedding to ResBlocks, the context to transformers, the skip
    size to the upsampler. ``transformer``, when given, runs the stage's transformers in place of
    their own forward (an attention replacement, ``diffusion.unet_patches``)."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        size: Sequence[int] | None = None,
        transformer: TransformerRunner | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context) if transformer is None else transformer(layer, x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """`unet(x, timesteps, context, y=None)` -> the model output (eps or v, per the checkpoint).

    x: [B, in_channels, H, W] latents; timesteps: [B] or scalar (DDPM step index, may be
    fractional); context: [B, tokens, context_dim]; y: [B, adm_in_channels] for SDXL-style models
    (see `sdxl_adm_vector`), None otherwise. control: residuals of ControlNets
    and T2I-Adapters (`diffusion.controlnet.ControlResiduals`): `input` added to the skip connections as
    the decoder takes them, `middle` to the middle block's output, `encoder` to the output of the block
    ending each encoder stage, before the skip is pushed; None computes exactly as without. patches: `UNetPatches`
    (`diffusion.unet_patches`: FreeU, HyperTile, Deep Shrink ...) run at ComfyUI's patch points; None
    computes exactly as without. With patches, a control residual whose shape no longer fits its skip
    (a patch resized the features) is left out with a warning, as ComfyUI leaves it out.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.model_channels
        emb_dim = config.time_embed_dim
        self.time_embed = nn.Sequential(FusedLinear(ch, emb_dim), nn.SiLU(), FusedLinear(emb_dim, emb_dim))
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(FusedLinear(config.adm_in_channels, emb_dim), nn.SiLU(), FusedLinear(emb_dim, emb_dim))
            )

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(PackedConv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        #: Input block index -> the encoder stage it ends (`ControlResiduals.encoder`).
        self.stage_ends: dict[int, int] = {}
        depths = iter(config.transformer_depth)
        for level, (mult, blocks) in enumerate(zip(config.channel_mult, config.num_res_blocks)):
            for _ in range(blocks):
                out = config.model_channels * mult
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, out)]
                ch = out
                self._add_transformer(layers, ch, next(depths))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            self.stage_ends[len(self.input_blocks) - 1] = 2 * level
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                self.stage_ends[len(self.input_blocks) - 1] = 2 * level + 1

        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch)]
        self._add_transformer(middle, ch, config.transformer_depth_middle)
        middle.append(ResBlock(ch, emb_dim, ch))
        self.middle_block = TimestepEmbedSequential(*middle)

        self.output_blocks = nn.ModuleList()
        depths = iter(config.transformer_depth_output)
        levels = list(enumerate(zip(config.channel_mult, config.num_res_blocks)))
        for level, (mult, blocks) in reversed(levels):
            for i in range(blocks + 1):
                out = config.model_channels * mult
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, out)]
                ch = out
                self._add_transformer(layers, ch, next(depths))
                if level and i == blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(32, ch), nn.SiLU(inplace=True), PackedConv2d(ch, config.out_channels, 3, padding=1)
        )

    def _add_transformer(self, layers: list[nn.Module], channels: int, depth: int) -> None:
        if depth:
            heads, dim_head = self.config.heads_for(channels)
            layers.append(
                SpatialTransformer(
                    channels, heads, dim_head, depth, self.config.context_dim, self.config.use_linear_in_transformer
                )
            )

    @property
    def dtype(self) -> torch.dtype:
        first = self.time_embed[0]
        assert isinstance(first, FusedLinear)  # __init__ builds time_embed as Linear, SiLU, Linear
        return first.computes_in

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        control: ControlResiduals | None = None,
        patches: UNetPatches | None = None,
    ) -> torch.Tensor:
        has_adm = self.config.adm_in_channels is not None
        if has_adm and y is None:
            raise ValueError(f"this UNet needs y: [B, {self.config.adm_in_channels}] (SDXL size/pooled conditioning)")
        if not has_adm and y is not None:
            raise ValueError("this UNet takes no y (it has no label_emb)")
        out_dtype, dtype = x.dtype, self.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(t_emb.to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))
        context = context.to(dtype)

        # No explicit layout conversion: with channels_last weights the first convolution already
        # returns channels_last activations, and every later op keeps that layout.
        h = x.to(dtype)
        skips = []
        shape = tuple(x.shape)
        additions = self._encoder_additions(control)
        for index, block in enumerate(self.input_blocks):
            if patches is None:
                h = _added(block(h, emb, context), additions.get(index), self.stage_ends.get(index))
                skips.append(h)
                continue
            where = PatchContext(BlockId("input", index), timesteps, shape)
            # ComfyUI adds control["input"] before its input_block_patch runs.
            h = block(h, emb, context, transformer=patches.transformer(where))
            h = _added(h, additions.get(index), self.stage_ends.get(index), lenient=True)
            h = patches.apply_input_block(h, where)
            skips.append(h)
            h = patches.apply_input_block_after_skip(h, where)
        middle = None if patches is None else patches.transformer(PatchContext(BlockId("middle", 0), timesteps, shape))
        h = self.middle_block(h, emb, context, transformer=middle)
        residuals = self._control_residuals(control, skips, h, lenient=patches is not None)
        if control is not None and control.middle is not None and control.middle.shape == h.shape:
            h = h + control.middle.to(dtype)
        for index, block in enumerate(self.output_blocks):
            skip = skips.pop()
            residual = residuals.pop() if residuals else None
            if residual is not None:
                skip = skip + residual.to(dtype)
            transformer = None
            if patches is not None:
                where = PatchContext(BlockId("output", index), timesteps, shape)
                h, skip = patches.apply_output_block(h, skip, where)
                transformer = patches.transformer(where)
            h = torch.cat([h, skip], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None, transformer)
        return self.out(h).to(out_dtype)

    def _encoder_additions(self, control: ControlResiduals | None) -> dict[int, torch.Tensor]:
        """The control's encoder additions by the input block after which each is added."""
        if control is None or not control.encoder:
            return {}
        stages = 2 * len(self.config.channel_mult) - 1
        if len(control.encoder) != stages:
            raise ValueError(f"control has {len(control.encoder)} encoder additions, this UNet has {stages} stages")
        additions = {block: control.encoder[stage] for block, stage in self.stage_ends.items()}
        return {block: addition for block, addition in additions.items() if addition is not None}

    @staticmethod
    def _control_residuals(
        control: ControlResiduals | None,
        skips: Sequence[torch.Tensor],
        middle: torch.Tensor,
        lenient: bool = False,
    ) -> list[torch.Tensor | None]:
        """The control's skip residuals, checked against the skips they join.

        Added to the skips only, after the whole encoder has run, as diffusers adds
        `down_block_additional_residuals` and ComfyUI adds `control["output"]` when it pops each skip:
        the encoder's own path never sees them. `lenient` (a patched call, whose patches may resize
        the features) leaves out a residual that does not fit, with a warning, instead of raising.
        """
        if control is None:
            return []
        if control.input and len(control.input) != len(skips):
            raise ValueError(f"control has {len(control.input)} input residuals, this UNet has {len(skips)} skips")
        residuals = list(control.input)
        pairs = [*zip(control.input, skips), (control.middle, middle)]
        for index, (residual, target) in enumerate(pairs):
            if residual is not None and residual.shape != target.shape:
                where = "middle" if index == len(pairs) - 1 else f"input {index}"
                shapes = f"{tuple(residual.shape)}, the UNet {tuple(target.shape)}"
                message = f"control residual ({where}) has shape {shapes}"
                if not lenient:
                    raise ValueError(message)
                _log.warning("%s: left out (a UNet patch resized the features)", message)
                if index < len(residuals):
                    residuals[index] = None
        return residuals


def _added(h: torch.Tensor, addition: torch.Tensor | None, stage: int | None, lenient: bool = False) -> torch.Tensor:
    """`h` plus a control's encoder addition (None: `h` itself). One whose shape does not fit is an error, or
    with `lenient` (a patched call, whose patches may resize the features) left out with a warning, as ComfyUI
    leaves it out."""
    if addition is None:
        return h
    if addition.shape != h.shape:
        message = (
            f"control addition (encoder stage {stage}) has shape {tuple(addition.shape)}, the UNet {tuple(h.shape)}"
        )
        if not lenient:
            raise ValueError(message)
        _log.warning("%s: left out (a UNet patch resized the features)", message)
        return h
    return h + addition.to(h.dtype)


def unet_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: UNetConfig | None = None) -> UNetModel:
    """Build a UNet around LDM-layout weights (prefix `model.diffusion_model.` stripped).

    The config is detected from the weights unless given. The module adopts the tensors as they
    are (their dtype included), without a random initialisation first.
    """
    config = detect_unet_config(state_dict) if config is None else config
    with torch.device("meta"):
        model = UNetModel(config)
    load_exact(model, state_dict, "UNet")
    return model
