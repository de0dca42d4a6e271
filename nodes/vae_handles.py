"""VAE, the autoencoder value that flows between nodes: IMAGE <-> LATENT through a shared, loaded VAE.

Latents between nodes are the VAE's own, unscaled, as in ComfyUI (so LATENT values and ``.latent`` files
mean the same thing in both engines); the MODEL handle's ``latent_format`` scales them into the diffusion
model's space for sampling and back (``nodes.model_handles``).

The handle also answers what ComfyUI node packs call on a VAE value, under ComfyUI's names, arguments and
tensor layouts (``decode_tiled``, ``encode_tiled``, ``spacial_compression_*`` ...; docs/plugins.md, "MODEL,
CLIP and VAE values").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.checkpoint import LoadedCheckpoint
from diffusion.devices import compute_device
from diffusion.vae import AutoencoderKL, LatentFormat, ScaledVAE
from diffusion.vae_tiling import TileSpec
from nodes.runtime import current_runtime
from nodes.shared_models import modules_of

__all__ = ["VaeHandle"]

#: Latents between nodes are unscaled (module docstring); the VAE handle maps with factor 1.
_UNSCALED = LatentFormat("unscaled", 1.0)


class VaeHandle:
    """VAE: IMAGE ``[B, H, W, C]`` in 0..1 <-> unscaled LATENT ``[B, C, H/8, W/8]``.

    ``checkpoint`` is the loaded file ``model`` belongs to, if any: the handle keeps it alive, so the
    file's shared load lives as long as its VAE does (``nodes.shared_models``).

    ``encode``/``decode`` are also ComfyUI's ``VAE.encode(pixels)`` / ``VAE.decode(samples)``; with
    ``decode_tiled``, ``encode_tiled``, ``spacial_compression_*``, ``downscale_ratio`` ... the handle answers
    what packs call on ComfyUI's ``VAE``.
    """

    #: ComfyUI's ``VAE.latent_dim`` (2: images, not video) and ``output_channels`` (RGB).
    latent_dim = 2
    output_channels = 3

    def __init__(
        self, model: AutoencoderKL, source: Path | None = None, checkpoint: LoadedCheckpoint | None = None
    ) -> None:
        self.model = model
        self.source = source
        self.checkpoint = checkpoint
        self._scaled = ScaledVAE(model, _UNSCALED)

    def loom_parts(self) -> list[nn.Module]:
        """What this handle keeps alive, for ``graph.sizeof``: its file's modules, or its own VAE."""
        return modules_of(self.checkpoint) if self.checkpoint is not None else [self.model]

    @property
    def latent_channels(self) -> int:
        config = self.model.config
        return config.embed_dim if config.use_quant_conv else config.z_channels

    @property
    def downscale(self) -> int:
        return self.model.config.downscale

    def check_latent(self, latent: torch.Tensor) -> None:
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"the latent has shape {tuple(latent.shape)} but this VAE ({self.source or 'checkpoint'}) "
                f"works on {self.latent_channels}-channel latents: the latent comes from another model family"
            )

    def crop_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """Trim ``[B, H, W, C]`` to multiples of the VAE's factor, centred, as ComfyUI does before encoding."""
        factor = self.downscale
        height, width = image.shape[1] // factor * factor, image.shape[2] // factor * factor
        top, left = (image.shape[1] % factor) // 2, (image.shape[2] % factor) // 2
        return image[:, top : top + height, left : left + width]

    def _to_pixels(self, image: torch.Tensor) -> torch.Tensor:
        pixels = self.crop_pixels(image)[..., :3].movedim(-1, 1) * 2.0 - 1.0
        return pixels.to(compute_device(self.model))

    @staticmethod
    def _to_image(pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()

    def encode(self, image: torch.Tensor, tiles: TileSpec | None = None) -> torch.Tensor:
        current_runtime().memory.use(self.model)
        with torch.no_grad():
            pixels = self._to_pixels(image)
            latent = self._scaled.encode(pixels) if tiles is None else self._scaled.encode_tiled(pixels, tiles)
        return latent.float().cpu()

    def decode(
        self, latent: torch.Tensor, tiles: TileSpec | None = None, *, vae_options: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        if vae_options:
            raise NotImplementedError(f"VAE.decode(vae_options={dict(vae_options)!r}) is not supported in Loom")
        self.check_latent(latent)
        current_runtime().memory.use(self.model)
        with torch.no_grad():
            z = latent.to(compute_device(self.model))
            pixels = self._scaled.decode(z) if tiles is None else self._scaled.decode_tiled(z, tiles)
        return self._to_image(pixels)

    # ComfyUI's VAE, for packs (comfy/sd.py).

    @property
    def first_stage_model(self) -> AutoencoderKL:
        return self.model

    @property
    def downscale_ratio(self) -> int:
        return self.downscale

    @property
    def upscale_ratio(self) -> int:
        return self.downscale

    def spacial_compression_encode(self) -> int:
        return self.downscale

    def spacial_compression_decode(self) -> int:
        return self.downscale

    def temporal_compression_decode(self) -> None:
        """None: an image VAE has no time axis."""
        return None

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.crop_pixels(pixels)

    def decode_tiled(
        self,
        samples: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """Decode in tiles given in latent cells, ComfyUI's defaults 64 x 64 overlapping by 16: VAEDecodeTiled with
        ``tile_size = tile * 8`` and ``overlap = overlap * 8``. Loom's tiles are square: ``min(tile_x, tile_y)``;
        ``tile_t``/``overlap_t`` are for video and unused, as ComfyUI leaves them for images."""
        tile = min(64 if tile_x is None else tile_x, 64 if tile_y is None else tile_y)
        factor = self.downscale
        return self.decode(samples, TileSpec(tile * factor, (16 if overlap is None else overlap) * factor))

    def encode_tiled(
        self,
        pixel_samples: torch.Tensor,
        tile_x: int | None = None,
        tile_y: int | None = None,
        overlap: int | None = None,
        tile_t: int | None = None,
        overlap_t: int | None = None,
    ) -> torch.Tensor:
        """Encode in tiles given in pixels, ComfyUI's defaults 512 x 512 overlapping by 64: VAEEncodeTiled's
        numbers; square tiles of ``min(tile_x, tile_y)`` as for ``decode_tiled``."""
        tile = min(512 if tile_x is None else tile_x, 512 if tile_y is None else tile_y)
        return self.encode(pixel_samples, TileSpec(tile, 64 if overlap is None else overlap))
