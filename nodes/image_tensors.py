"""Conversions between Pillow images and the tensors that flow between nodes.

The wire contract (docs/compatibility.md §3.1): IMAGE is float32 ``[B, H, W, C]`` in 0..1, channels last so a batch of
pixels reads like an array of pictures; MASK is float32 ``[B, H, W]``, where 1 marks the area to change.
A picture's alpha is opacity, so its mask is ``1 - alpha``: transparent pixels are the ones to paint.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: Pillow modes that hold more than 8 bits per sample (16-bit PNG and TIFF greyscale).
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_BAND_ORDER = "RGBA"


def _float_bands(picture: Image.Image, mode: str) -> np.ndarray:
    """``picture`` as ``[H, W, len(mode)]`` float32 in 0..1, for ``mode`` ``"RGB"`` or ``"RGBA"``.

    High-depth greyscale is scaled by its full 16-bit range. ComfyUI divides such pixels by 255 and then
    clips them to 8 bits, which turns most of a 16-bit picture white; the full range keeps its detail.
    """
    if picture.mode in _HIGH_DEPTH_MODES:
        grey = np.clip(np.asarray(picture, dtype=np.float32) / 65535.0, 0.0, 1.0)
        bands = [grey] * 3 + ([np.ones_like(grey)] if mode == "RGBA" else [])
        return np.stack(bands, axis=-1)
    return np.asarray(picture.convert(mode), dtype=np.float32) / 255.0


def has_alpha(picture: Image.Image) -> bool:
    """Whether the picture carries transparency, as a band or as a palette's transparent index."""
    return "A" in picture.getbands() or (picture.mode == "P" and "transparency" in picture.info)


def pil_to_image(picture: Image.Image) -> torch.Tensor:
    """One picture as an RGB IMAGE batch of one, ``[1, H, W, 3]``."""
    return torch.from_numpy(_float_bands(picture, "RGB"))[None]


def alpha_to_mask(picture: Image.Image) -> torch.Tensor:
    """``1 - alpha`` as ``[1, H, W]``; a picture without alpha masks nothing (all zeros, full size)."""
    if not has_alpha(picture):
        return torch.zeros((1, picture.height, picture.width), dtype=torch.float32)
    return channel_to_mask(picture, "alpha")


def channel_to_mask(picture: Image.Image, channel: str) -> torch.Tensor:
    """One of ``alpha``/``red``/``green``/``blue`` as a ``[1, H, W]`` mask; alpha is inverted (see module doc)."""
    band = channel[:1].upper()
    if band not in _BAND_ORDER:
        raise ValueError(f"unknown mask channel {channel!r}; expected alpha, red, green or blue")
    values = torch.from_numpy(np.ascontiguousarray(_float_bands(picture, _BAND_ORDER)[..., _BAND_ORDER.index(band)]))
    return (1.0 - values if band == "A" else values)[None]


def image_to_pil(image: torch.Tensor) -> Image.Image:
    """One ``[H, W, C]`` picture (C = 1, 3 or 4) as an 8-bit Pillow image.

    Values are truncated, not rounded, after scaling by 255: ComfyUI writes files that way, and equal
    bytes on disk let users diff outputs between the two engines.
    """
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected one picture [H, W, C] with 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    scaled = np.nan_to_num(255.0 * image.detach().to("cpu", torch.float32).numpy())
    pixels = np.clip(scaled, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
