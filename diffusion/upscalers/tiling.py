"""Upscale an image tile by tile, halving the tile on out-of-memory.

An upscaler's activations grow with the tile's area times its feature width (RRDBNet holds 64+
channels at full input resolution and at 2x/4x for its last convs), so a 4K input does not fit a
consumer GPU in one piece. Tiles overlap and are blended with linear feathering (the VAE's tiling,
``diffusion.vae_tiling``), so a tile's border, which lacks the context beyond it, never decides an
output pixel alone and leaves no seam. When a tile still does not fit, the whole image is redone at
half the tile size, down to a floor below which the error is passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import torch

from diffusion.vae_tiling import is_out_of_memory, tile_starts, tiled_map

__all__ = ["TILE", "OVERLAP", "MIN_TILE", "upscale_tiled"]

TILE = 512
OVERLAP = 32
MIN_TILE = 128

ProgressCallback = Callable[[int, int], None]


def _upscale_at_tile(
    model: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    on_progress: ProgressCallback | None,
) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    total = len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))
    done = 0

    def upscale_tile(piece: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = model(piece)
        done += 1
        if on_progress is not None:
            on_progress(done, total)
        return out

    return tiled_map(upscale_tile, pixels, tile, overlap, Fraction(scale))


def upscale_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    scale: int,
    *,
    tile: int = TILE,
    overlap: int = OVERLAP,
    min_tile: int = MIN_TILE,
    on_progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """``model`` maps ``[B, C, h, w]`` to ``[B, C, h·scale, w·scale]``; apply it to ``pixels`` in tiles.

    ``on_progress(done, total)`` follows the tiles of the current attempt; after an out-of-memory
    retry the count starts again with the new, larger total.
    """
    if not 0 <= overlap < min_tile <= tile:
        raise ValueError(
            f"tiling needs 0 <= overlap < min_tile <= tile, got overlap={overlap} min_tile={min_tile} tile={tile}"
        )
    while True:
        try:
            return _upscale_at_tile(model, pixels, scale, tile, overlap, on_progress)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error) or tile // 2 < min_tile:
                raise
        tile //= 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
