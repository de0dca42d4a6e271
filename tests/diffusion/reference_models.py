"""Tiny random diffusers models per SD family, and their weights in the LDM single-file layout.

Parity tests run the same random weights through diffusers (the reference) and through Loom's
modules loaded from the converted state dict. Norm scales and biases are randomised too: left at
their 1/0 defaults, a norm1/norm2 mix-up in a key mapping would go unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers import UNet2DConditionModel

from diffusion.diffusers_layout import unet_to_ldm, vae_to_ldm
from diffusion.unet_config import UNetConfig
from diffusion.vae import VAEConfig

CONTEXT_DIM = 32
POOLED_DIM = 32
TIME_EMBED_DIM = 8  # per size number; 256 in the real models


@dataclass(frozen=True)
class TinyFamily:
    """A family's scheme at toy size: diffusers kwargs and the LDM config they must be detected as."""

    diffusers_config: dict[str, Any]
    expected: UNetConfig
    adm_numbers: int = 0  # SDXL: 6 size numbers (base) or 5 (refiner, aesthetic score)


def _sd1(in_channels: int) -> TinyFamily:
    return TinyFamily(
        diffusers_config=dict(
            in_channels=in_channels,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=8,  # diffusers' historical misnomer: this is the head count
            use_linear_projection=False,
        ),
        expected=UNetConfig(
            in_channels=in_channels,
            out_channels=4,
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=(1, 1),
            transformer_depth=(1, 0),
            transformer_depth_middle=1,
            transformer_depth_output=(0, 0, 1, 1),
            context_dim=CONTEXT_DIM,
            use_linear_in_transformer=False,
            num_heads=8,
        ),
    )


FAMILIES: dict[str, TinyFamily] = {
    "sd1": _sd1(4),
    "sd1_inpaint": _sd1(9),
    "sd2": TinyFamily(
        diffusers_config=dict(
            block_out_channels=(64, 128),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=(1, 2),  # head counts giving 64-wide heads
            use_linear_projection=True,
        ),
        expected=UNetConfig(
            in_channels=4,
            out_channels=4,
            model_channels=64,
            channel_mult=(1, 2),
            num_res_blocks=(1, 1),
            transformer_depth=(1, 0),
            transformer_depth_middle=1,
            transformer_depth_output=(0, 0, 1, 1),
            context_dim=CONTEXT_DIM,
            use_linear_in_transformer=True,
            num_head_channels=64,
        ),
    ),
    "sdxl": TinyFamily(
        diffusers_config=dict(
            block_out_channels=(64, 128),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=(1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=POOLED_DIM + 6 * TIME_EMBED_DIM,
        ),
        expected=UNetConfig(
            in_channels=4,
            out_channels=4,
            model_channels=64,
            channel_mult=(1, 2),
            num_res_blocks=(1, 1),
            transformer_depth=(0, 2),
            transformer_depth_middle=2,
            transformer_depth_output=(2, 2, 0, 0),
            context_dim=CONTEXT_DIM,
            use_linear_in_transformer=True,
            adm_in_channels=POOLED_DIM + 6 * TIME_EMBED_DIM,
            num_head_channels=64,
        ),
        adm_numbers=6,
    ),
    "sdxl_refiner": TinyFamily(
        diffusers_config=dict(
            block_out_channels=(64, 128, 128),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=2,
            cross_attention_dim=CONTEXT_DIM,
            attention_head_dim=(1, 2, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=POOLED_DIM + 5 * TIME_EMBED_DIM,
        ),
        expected=UNetConfig(
            in_channels=4,
            out_channels=4,
            model_channels=64,
            channel_mult=(1, 2, 2),
            num_res_blocks=(1, 1, 1),
            transformer_depth=(0, 2, 0),
            transformer_depth_middle=2,
            transformer_depth_output=(0, 0, 2, 2, 0, 0),
            context_dim=CONTEXT_DIM,
            use_linear_in_transformer=True,
            adm_in_channels=POOLED_DIM + 5 * TIME_EMBED_DIM,
            num_head_channels=64,
        ),
        adm_numbers=5,
    ),
}


def randomize_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every 1-D parameter (norm scales, biases) distinct random values."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                noise = torch.randn(parameter.shape, generator=generator) * 0.2
                parameter.copy_(noise + (1.0 if name.endswith("weight") else 0.0))


def tiny_unet(family: str, seed: int = 0) -> tuple[UNet2DConditionModel, dict[str, torch.Tensor]]:
    """A random diffusers UNet of the family and the same weights under LDM keys."""
    torch.manual_seed(seed)
    model = UNet2DConditionModel(sample_size=8, **FAMILIES[family].diffusers_config).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    return model, unet_to_ldm(model.state_dict(), model.config)


def tiny_vae(seed: int = 0) -> tuple[DiffusersAutoencoderKL, dict[str, torch.Tensor]]:
    """A random diffusers AutoencoderKL (two levels, 32/64 channels) and its LDM-layout weights."""
    torch.manual_seed(seed)
    model = DiffusersAutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
    ).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    return model, vae_to_ldm(model.state_dict())


TINY_VAE_CONFIG = VAEConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4)


def _real(
    blocks: tuple[int, ...],
    attention: tuple[bool, ...],
    depth: int | tuple[int, ...],
    context: int,
    linear: bool,
    adm_numbers: int = 0,
    in_channels: int = 4,
) -> dict[str, Any]:
    """diffusers kwargs of a published UNet (the `unet/config.json` of the official repositories)."""
    config: dict[str, Any] = dict(
        sample_size=64,
        in_channels=in_channels,
        block_out_channels=blocks,
        layers_per_block=2,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        transformer_layers_per_block=depth,
        cross_attention_dim=context,
        attention_head_dim=8 if not linear else tuple(b // 64 for b in blocks),
        use_linear_projection=linear,
    )
    if adm_numbers:
        pooled = 1280
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=pooled + adm_numbers * 256,
        )
    return config


def _expected(
    channels: int,
    mult: tuple[int, ...],
    depth: tuple[int, ...],
    middle: int,
    context: int,
    adm: int | None = None,
    in_channels: int = 4,
) -> UNetConfig:
    """The LDM config of a published UNet: depth per level, two ResBlocks per level."""
    linear = context != 768
    return UNetConfig(
        in_channels=in_channels,
        out_channels=4,
        model_channels=channels,
        channel_mult=mult,
        num_res_blocks=(2,) * len(mult),
        transformer_depth=tuple(d for d in depth for _ in range(2)),
        transformer_depth_middle=middle,
        transformer_depth_output=tuple(d for d in reversed(depth) for _ in range(3)),
        context_dim=context,
        use_linear_in_transformer=linear,
        adm_in_channels=adm,
        num_heads=None if linear else 8,
        num_head_channels=64 if linear else None,
    )


REAL_FAMILIES: dict[str, tuple[dict[str, Any], UNetConfig]] = {
    "sd15": (
        _real((320, 640, 1280, 1280), (True, True, True, False), 1, 768, linear=False),
        _expected(320, (1, 2, 4, 4), (1, 1, 1, 0), 1, 768),
    ),
    "sd15_inpaint": (
        _real((320, 640, 1280, 1280), (True, True, True, False), 1, 768, linear=False, in_channels=9),
        _expected(320, (1, 2, 4, 4), (1, 1, 1, 0), 1, 768, in_channels=9),
    ),
    "sd21": (
        _real((320, 640, 1280, 1280), (True, True, True, False), 1, 1024, linear=True),
        _expected(320, (1, 2, 4, 4), (1, 1, 1, 0), 1, 1024),
    ),
    "sdxl": (
        _real((320, 640, 1280), (False, True, True), (1, 2, 10), 2048, linear=True, adm_numbers=6),
        _expected(320, (1, 2, 4), (0, 2, 10), 10, 2048, adm=2816),
    ),
    "sdxl_refiner": (
        _real((384, 768, 1536, 1536), (False, True, True, False), 4, 1280, linear=True, adm_numbers=5),
        _expected(384, (1, 2, 4, 4), (0, 4, 4, 0), 4, 1280, adm=2560),
    ),
}
