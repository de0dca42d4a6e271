"""Tiled upscaling: blending leaves no seams, tiles agree with one-piece upscaling, and an
out-of-memory tile is retried at half the size down to the floor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion.upscalers.tiling import upscale_tiled
from tests.diffusion.upscalers.tiny_upscalers import tiny_srvgg

IMAGE = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(5))


def pointwise_x2(x: torch.Tensor) -> torch.Tensor:
    """A model whose every output pixel depends on one input pixel: tiling must not change it at all."""
    return F.interpolate(x, scale_factor=2, mode="nearest") ** 2


def test_blending_is_exact_for_a_pointwise_model():
    tiled = upscale_tiled(pointwise_x2, IMAGE, 2, tile=32, overlap=8, min_tile=16)
    torch.testing.assert_close(tiled, pointwise_x2(IMAGE), rtol=0, atol=1e-6)


def test_tiles_agree_with_one_piece():
    model = tiny_srvgg(upscale=2)
    with torch.no_grad():
        whole = model(IMAGE)
        tiled = upscale_tiled(model, IMAGE, 2, tile=32, overlap=16, min_tile=32)
    error = (tiled - whole).abs()
    # Four 3x3 convs see 4 input pixels around them, so only the outermost 4 of a tile's 16 overlap
    # pixels lack context, and the feathering gives them the smallest weights. Measured: max 0.018,
    # mean 0.0012 for outputs up to 1.24 (abutting tiles, overlap 0: max 0.23).
    assert error.max() < 0.025
    assert error.mean() < 0.002


def test_progress_counts_the_tiles():
    calls = []
    upscale_tiled(
        pointwise_x2,
        IMAGE,
        2,
        tile=32,
        overlap=8,
        min_tile=16,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    # Starts per side: 70 → 0, 24, 38; 90 → 0, 24, 48, 58.
    assert calls == [(n, 12) for n in range(1, 13)]


class OutOfMemoryAbove:
    """Fails like a GPU allocation for tiles wider than ``limit``; records the tile sizes it saw."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[-1])
        if x.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return pointwise_x2(x)


def test_out_of_memory_halves_the_tile_until_it_fits():
    image = torch.rand(1, 3, 300, 300)
    model = OutOfMemoryAbove(limit=128)
    calls = []
    result = upscale_tiled(model, image, 2, on_progress=lambda done, total: calls.append(total))
    assert model.sizes[:2] == [300, 256]
    assert max(model.sizes[2:]) == 128
    assert set(calls) == {9}
    torch.testing.assert_close(result, pointwise_x2(image), rtol=0, atol=1e-6)


def test_out_of_memory_at_the_smallest_tile_is_passed_on():
    with pytest.raises(torch.OutOfMemoryError):
        upscale_tiled(OutOfMemoryAbove(limit=64), torch.rand(1, 3, 300, 300), 2)


def test_other_errors_are_not_retried():
    seen = []

    def broken(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        upscale_tiled(broken, IMAGE, 2)
    assert len(seen) == 1
