"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, appendix G) in plain torch.

Module names reproduce the `first_stage_model.*` keys of SD checkpoints (prefix stripped): note
that `decoder.up.N` is indexed by resolution level, so `decoder.up.{last}` runs first. Convolutions
and norms compute in the parameters' dtype; inputs are cast at the entry and outputs cast back.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.packed_conv import PackedConv2d
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key
from diffusion.upsample_conv import NearestUpsampleConv2d
from diffusion.vae_tiling import TileSpec, map_or_tile_on_oom, tiled_map

__all__ = [
    "VAEConfig",
    "AutoencoderKL",
    "LatentDistribution",
    "LatentFormat",
    "SD1_LATENT",
    "SD2_LATENT",
    "SDXL_LATENT",
    "SD3_LATENT",
    "FLUX_LATENT",
    "ScaledVAE",
    "detect_vae_config",
    "vae_from_state_dict",
]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = PackedConv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = PackedConv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = PackedConv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place wherever the input is a fresh intermediate: at 512² a decoder activation is
        # 32-64 MB, and each new buffer of that size is fresh pages from the OS (first-touch page
        # faults). Measured: bf16 channels-last decode of a 64x64 latent, 2.09 s -> 1.76 s.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, projections as 1x1 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = PackedConv2d(channels, channels, 1)
        self.k = PackedConv2d(channels, channels, 1)
        self.v = PackedConv2d(channels, channels, 1)
        self.proj_out = PackedConv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(b, 1, height * width, c)

        attended = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        return self.proj_out(attended.reshape(b, height, width, c).permute(0, 3, 1, 2)).add_(x)


class Downsample(nn.Module):
    """Stride-2 conv after padding only right and bottom: the original's asymmetric (0, 1, 0, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = PackedConv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x then a 3x3 conv, computed on the low-resolution input (``NearestUpsampleConv2d``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = NearestUpsampleConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class DownLevel(nn.Module):
    """``encoder.down.N``: the ResNet blocks of one resolution, then a 2x downsample (all but the last level)."""

    def __init__(self, blocks: list[ResnetBlock], downsample: Downsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h)
        return h if self.downsample is None else self.downsample(h)


class UpLevel(nn.Module):
    """``decoder.up.N``: the ResNet blocks of one resolution, then a 2x upsample (all but level 0)."""

    def __init__(self, blocks: list[ResnetBlock], upsample: Upsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h)
        return h if self.upsample is None else self.upsample(h)


@dataclass(frozen=True)
class VAEConfig:
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    in_channels: int = 3
    out_channels: int = 3
    use_quant_conv: bool = True

    @property
    def downscale(self) -> int:
        """Image side / latent side: 8 for the SD autoencoders (four levels)."""
        return 2 ** (len(self.channel_mult) - 1)


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        self.conv_in = PackedConv2d(config.in_channels, config.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        channels = config.base_channels
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(channels, width))
                channels = width
            self.down.append(DownLevel(blocks, Downsample(channels) if level != len(widths) - 1 else None))
        self.mid = MidBlock(channels)
        self.norm_out = _norm(channels)
        self.conv_out = PackedConv2d(channels, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h)), inplace=True))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        channels = widths[-1]
        self.conv_in = PackedConv2d(config.z_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels)
        levels: list[UpLevel] = []
        for level in reversed(range(len(widths))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, widths[level]))
                channels = widths[level]
            levels.insert(0, UpLevel(blocks, Upsample(channels) if level != 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(channels)
        self.conv_out = PackedConv2d(channels, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


@dataclass(frozen=True)
class LatentDistribution:
    """The encoder's diagonal Gaussian posterior q(z|x); log-variance clamped to [-30, 20] as in LDM."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise


class AutoencoderKL(nn.Module):
    """Pixels in [-1, 1] (NCHW) <-> unscaled latents (`config.downscale` times smaller per side)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = PackedConv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = PackedConv2d(config.embed_dim, config.z_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.computes_in

    def encode_distribution(self, pixels: torch.Tensor) -> LatentDistribution:
        moments = self.encoder(pixels.to(self.dtype))
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = moments.to(pixels.dtype).chunk(2, dim=1)
        return LatentDistribution(mean, logvar.clamp(-30.0, 20.0))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The posterior mean: deterministic, what img2img and inpainting workflows encode with.
        Use `encode_distribution(...).sample()` for a stochastic latent."""
        return self.encode_distribution(pixels).mean

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> pixels, roughly in [-1, 1] and not clamped."""
        z = latent.to(self.dtype)
        if self.config.use_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).to(latent.dtype)


_ENCODER_LEVEL = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.")
_ATTENTION_WEIGHT = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


_require = functools.partial(require_key, component="VAE", layout="an LDM AutoencoderKL state dict (prefix stripped?)")


def detect_vae_config(state_dict: Mapping[str, torch.Tensor]) -> VAEConfig:
    """Derive the autoencoder config from an LDM-layout state dict (keys without `first_stage_model.`)."""
    conv_in = _require(state_dict, "encoder.conv_in.weight")
    levels: dict[int, int] = {}
    for key in state_dict:
        match = _ENCODER_LEVEL.match(key)
        if match:
            level, block = int(match.group(1)), int(match.group(2))
            levels[level] = max(levels.get(level, 0), block + 1)
    if not levels:
        raise CheckpointLayoutError("VAE", "encoder.down.0.block.0.conv1.weight", "missing")
    base = int(conv_in.shape[0])
    mult = tuple(
        int(_require(state_dict, f"encoder.down.{level}.block.0.conv1.weight").shape[0]) // base
        for level in range(len(levels))
    )
    z_channels = int(_require(state_dict, "decoder.conv_in.weight").shape[1])
    post_quant = state_dict.get("post_quant_conv.weight")
    return VAEConfig(
        base_channels=base,
        channel_mult=mult,
        num_res_blocks=levels[0],
        z_channels=z_channels,
        embed_dim=z_channels if post_quant is None else int(post_quant.shape[1]),
        in_channels=int(conv_in.shape[1]),
        out_channels=int(_require(state_dict, "decoder.conv_out.weight").shape[0]),
        use_quant_conv=post_quant is not None,
    )


def vae_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: VAEConfig | None = None) -> AutoencoderKL:
    """Build the autoencoder around LDM-layout weights, adopting the tensors as they are.

    Mid-block attention projections stored as 2-D [C, C] matrices (written by some diffusers
    exports) are viewed as the 1x1 conv kernels [C, C, 1, 1] that the original stores.
    """
    weights = {
        key: tensor[:, :, None, None] if tensor.ndim == 2 and _ATTENTION_WEIGHT.match(key) else tensor
        for key, tensor in state_dict.items()
    }
    config = detect_vae_config(weights) if config is None else config
    with torch.device("meta"):
        model = AutoencoderKL(config)
    load_exact(model, weights, "VAE")
    return model


@dataclass(frozen=True)
class LatentFormat:
    """How a family's latents are normalised for the diffusion model: zero mean and unit variance over the
    training set, ``(latent - shift_factor) * scale_factor`` (the SD1/SD2/SDXL VAEs needed no shift; the
    16-channel VAEs of SD3 and FLUX do)."""

    name: str
    scale_factor: float
    shift_factor: float = 0.0

    def to_model(self, latent: torch.Tensor) -> torch.Tensor:
        """A VAE latent in the diffusion model's space."""
        return (latent - self.shift_factor) * self.scale_factor

    def from_model(self, latent: torch.Tensor) -> torch.Tensor:
        """A diffusion model's latent back in the VAE's space."""
        return latent / self.scale_factor + self.shift_factor


SD1_LATENT = LatentFormat("sd1", 0.18215)
SD2_LATENT = LatentFormat("sd2", 0.18215)
SDXL_LATENT = LatentFormat("sdxl", 0.13025)
# The 16-channel VAEs' statistics, as their model cards and diffusers' configs give them.
SD3_LATENT = LatentFormat("sd3", 1.5305, 0.0609)
FLUX_LATENT = LatentFormat("flux", 0.3611, 0.1159)


class ScaledVAE:
    """The autoencoder as the sampler sees it: latents in the diffusion model's scale.

    Whole-image calls fall back to tiles when they run out of memory; `*_tiled` force tiling.
    """

    def __init__(self, model: AutoencoderKL, latent_format: LatentFormat, tiles: TileSpec = TileSpec()) -> None:
        self.model = model
        self.latent_format = latent_format
        self.tiles = tiles

    def _encode_scaled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.latent_format.to_model(self.model.encode(pixels))

    def _decode_scaled(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.latent_format.from_model(latent))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        factor = self.model.config.downscale
        return map_or_tile_on_oom(self._encode_scaled, pixels, self.tiles.tile, self.tiles.overlap, Fraction(1, factor))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        factor = self.model.config.downscale
        tile, overlap = self.tiles.tile // factor, self.tiles.overlap // factor
        return map_or_tile_on_oom(self._decode_scaled, latent, tile, overlap, Fraction(factor))

    def encode_tiled(self, pixels: torch.Tensor, tiles: TileSpec) -> torch.Tensor:
        factor = self.model.config.downscale
        return tiled_map(self._encode_scaled, pixels, tiles.tile, tiles.overlap, Fraction(1, factor))

    def decode_tiled(self, latent: torch.Tensor, tiles: TileSpec) -> torch.Tensor:
        factor = self.model.config.downscale
        return tiled_map(self._decode_scaled, latent, tiles.tile // factor, tiles.overlap // factor, Fraction(factor))
