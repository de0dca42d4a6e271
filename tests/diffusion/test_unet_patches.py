"""UNet patches at ComfyUI's patch points: FreeU / FreeU v2, HyperTile's tiled self-attention, Kohya's Deep Shrink.

Each patched forward is checked against the UNet's loop written out here with the published computation done by
hand at the right blocks, and each neutral setting against the unpatched forward, bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from diffusion.controlnet import ControlResiduals
from diffusion.prediction import EpsPrediction
from diffusion.unet import UNetModel, timestep_embedding, unet_from_state_dict
from diffusion.unet_config import UNetConfig
from diffusion.unet_patches import (
    AttentionContext,
    BlockId,
    DownscaleAfterBlock,
    HyperTileAttention,
    PatchContext,
    UNetPatches,
    UpscaleToSkip,
    attend,
    freeu_scaling,
    scale_low_frequencies,
)
from tests.diffusion.reference_models import FAMILIES, tiny_unet

#: SD1.5's scheme at toy size: convolutional projections, 8 heads, widths x1, x2, x4, so FreeU's
#: model_channels x 4 (b1, s1) and x 2 (b2, s2) stages both exist.
SD15_SHAPED = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    channel_mult=(1, 2, 4),
    num_res_blocks=(1, 1, 1),
    transformer_depth=(1, 1, 0),
    transformer_depth_middle=1,
    transformer_depth_output=(0, 0, 1, 1, 1, 1),
    context_dim=32,
    use_linear_in_transformer=False,
    num_heads=8,
)
SAMPLING = EpsPrediction()
NOISY, CLEAN = 900.0, 100.0  # timesteps inside and outside Deep Shrink's default window (0 to 0.35)


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(SD15_SHAPED).eval()


def inputs(t: float = NOISY, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, size, size, generator=g), torch.full((2,), t), torch.randn(2, 5, 32, generator=g)


AfterInput = Callable[[int, torch.Tensor, list[torch.Tensor]], torch.Tensor]
BeforeOutput = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def by_hand(
    unet: UNetModel,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    after_input: AfterInput | None = None,
    before_output: BeforeOutput | None = None,
) -> torch.Tensor:
    """The UNet's loop, with a hook after every input block (it may change the skip list) and before every
    output block's concatenation."""
    emb = unet.time_embed(timestep_embedding(t, unet.config.model_channels))
    h, skips = x, []
    for index, block in enumerate(unet.input_blocks):
        h = block(h, emb, context)
        skips.append(h)
        if after_input is not None:
            h = after_input(index, h, skips)
    h = unet.middle_block(h, emb, context)
    for index, block in enumerate(unet.output_blocks):
        skip = skips.pop()
        if before_output is not None:
            h, skip = before_output(index, h, skip)
        h = block(torch.cat([h, skip], dim=1), emb, context, skips[-1].shape[-2:] if skips else None)
    return unet.out(h)


def run(unet: UNetModel, patches: UNetPatches | None, t: float = NOISY, **kwargs: object) -> torch.Tensor:
    x, timesteps, context = inputs(t)
    with torch.no_grad():
        return unet(x, timesteps, context, patches=patches, **kwargs)


def hand(unet: UNetModel, t: float = NOISY, **hooks: object) -> torch.Tensor:
    x, timesteps, context = inputs(t)
    with torch.no_grad():
        return by_hand(unet, x, timesteps, context, **hooks)


def test_an_empty_patch_set_and_none_compute_the_unpatched_forward(unet: UNetModel) -> None:
    assert UNetPatches().is_empty
    assert torch.equal(run(unet, UNetPatches()), run(unet, None))
    assert torch.allclose(hand(unet), run(unet, None), atol=1e-5)


# FreeU


def centred_low_pass(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The published Fourier filter: shift the spectrum's zero frequency to the centre, scale the 2 x 2 block
    from (H // 2 - 1, W // 2 - 1), shift back, real part of the inverse."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
    mask = torch.ones(spectrum.shape)
    mask[..., rows - 1 : rows + 1, cols - 1 : cols + 1] = scale
    return torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (8, 8), (6, 9)])
def test_the_low_frequency_scaling_is_the_published_centred_filter(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(scale_low_frequencies(x, 0.3), centred_low_pass(x, 0.3), atol=1e-5, rtol=1e-5)
    assert scale_low_frequencies(x, 1.0) is x
    half = scale_low_frequencies(x.to(torch.bfloat16), 0.3)
    assert half.dtype == torch.bfloat16


def freeu_by_hand(b1: float, b2: float, s1: float, s2: float, v2: bool, seen: dict[int, list[int]]) -> BeforeOutput:
    """Si et al. 2023 at the decoder stages of 4 x and 2 x model_channels (128 and 64 here)."""
    stages = {128: (b1, s1), 64: (b2, s2)}

    def patch(index: int, h: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = h.shape[1]
        if channels not in stages:
            return h, skip
        seen.setdefault(channels, []).append(index)
        b, s = stages[channels]
        factor: float | torch.Tensor = b
        if v2:
            mean = h.mean(dim=1, keepdim=True)
            low, high = mean.amin(dim=(2, 3), keepdim=True), mean.amax(dim=(2, 3), keepdim=True)
            factor = (b - 1) * (mean - low) / (high - low) + 1
        h = h.clone()
        h[:, : channels // 2] *= factor
        return h, centred_low_pass(skip, s)

    return patch


@pytest.mark.parametrize("v2", [False, True], ids=["FreeU", "FreeU_V2"])
def test_freeu_scales_the_backbone_and_filters_the_skips_at_the_two_deepest_widths(unet: UNetModel, v2: bool) -> None:
    b1, b2, s1, s2 = (1.3, 1.4, 0.9, 0.2) if v2 else (1.1, 1.2, 0.9, 0.2)
    seen: dict[int, list[int]] = {}
    expected = hand(unet, before_output=freeu_by_hand(b1, b2, s1, s2, v2, seen))
    patches = UNetPatches().with_output_block_patch(freeu_scaling(32, b1, b2, s1, s2, mean_normalised=v2))
    actual = run(unet, patches)
    # Output blocks 0-2 take 128-channel features (the deepest level, then its upsampled output), 3-4 take 64.
    assert seen == {128: [0, 1, 2], 64: [3, 4]}
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert (actual - run(unet, None)).abs().max() > 1e-2


@pytest.mark.parametrize("v2", [False, True])
def test_freeu_with_unit_factors_is_no_patch_exactly(unet: UNetModel, v2: bool) -> None:
    patches = UNetPatches().with_output_block_patch(freeu_scaling(32, 1.0, 1.0, 1.0, 1.0, mean_normalised=v2))
    assert torch.equal(run(unet, patches), run(unet, None))


def test_freeu_leaves_other_widths_alone() -> None:
    h, skip = torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4)
    where = PatchContext(BlockId("output", 5), torch.zeros(1), (1, 4, 16, 16))
    out_h, out_skip = freeu_scaling(32, 2.0, 2.0, 0.5, 0.5)(h, skip, where)
    assert out_h is h and out_skip is skip


# The attention replacement point


def test_attend_as_the_replacement_is_the_unpatched_forward_bit_for_bit(unet: UNetModel) -> None:
    calls: list[tuple[str, int, int, int, tuple[int, ...]]] = []

    def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttentionContext) -> torch.Tensor:
        calls.append((where.block.kind, where.block.index, where.transformer_index, where.heads, where.original_shape))
        return attend(q, k, v, where.heads)

    assert torch.equal(run(unet, UNetPatches().with_attn1_replace(plain)), run(unet, None))
    shape = (2, 4, 16, 16)
    places = [("input", 1), ("input", 3), ("middle", 0), ("output", 2), ("output", 3), ("output", 4), ("output", 5)]
    assert calls == [(kind, index, 0, 8, shape) for kind, index in places]


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_the_replacement_point_also_runs_linear_projection_transformers_unchanged(family: str) -> None:
    _, weights = tiny_unet(family)
    model = unet_from_state_dict(weights)
    g = torch.Generator().manual_seed(2)
    x, t, context = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 5, 32, generator=g)
    y = torch.randn(1, FAMILIES[family].expected.adm_in_channels, generator=g) if family == "sdxl" else None
    depths: list[int] = []

    def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttentionContext) -> torch.Tensor:
        depths.append(where.transformer_index)
        return attend(q, k, v, where.heads)

    with torch.no_grad():
        patched = model(x, t, context, y, patches=UNetPatches().with_attn1_replace(plain))
        assert torch.equal(patched, model(x, t, context, y))
    assert max(depths) == (1 if family == "sdxl" else 0)  # SDXL's tiny config stacks two transformer blocks


# HyperTile


def comfy_grid_index(tile_row: int, tile_col: int, rows: int, cols: int, tiles: tuple[int, int]) -> list[int]:
    """Token indices of one query tile as ComfyUI's ``b (nh h nw w) c -> (b nh nw) (h w) c`` reads them."""
    tile_h, tile_w = rows // tiles[0], cols // tiles[1]
    return [((tile_row * tile_h + r) * tiles[1] + tile_col) * tile_w + s for r in range(tile_h) for s in range(tile_w)]


def tiled_attention_by_hand(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, rows: int, cols: int, tiles: tuple[int, int]
) -> torch.Tensor:
    """Each query tile (row-major order j) attends to the j-th run of consecutive keys and values, per head."""
    batch, tokens, width = q.shape
    count = tiles[0] * tiles[1]
    run_length = tokens // count
    d = width // heads
    out = torch.zeros_like(q)
    for b in range(batch):
        for j in range(count):
            queries = comfy_grid_index(j // tiles[1], j % tiles[1], rows, cols, tiles)
            keys = list(range(j * run_length, (j + 1) * run_length))
            for head in range(heads):
                channels = slice(head * d, (head + 1) * d)
                qh, kh, vh = q[b, queries, channels], k[b, keys, channels], v[b, keys, channels]
                weights = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
                out[b, queries, channels] = weights @ vh
    return out


def attention_at(original: tuple[int, ...], heads: int = 2, t: float = 500.0) -> AttentionContext:
    return AttentionContext(BlockId("input", 1), torch.tensor([t]), original, 0, heads)


def qkv(tokens: int, batch: int = 2, width: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return tuple(torch.randn(batch, tokens, width, generator=g) for _ in range(3))


def test_hypertile_attends_over_tiles_of_a_square_map_by_hand() -> None:
    q, k, v = qkv(64)
    where = attention_at((2, 4, 8, 8))
    hypertile = HyperTileAttention(tile_size=32)  # tiles of at least 32 // 8 = 4 cells: 2 x 2 tiles of 4 x 4
    assert hypertile.tiling(64, where) == (2, 2, 8, 8)
    # On a square map ComfyUI's grid is the map: tile (1, 0) is rows 4-7, columns 0-3.
    assert comfy_grid_index(1, 0, 8, 8, (2, 2)) == [row * 8 + col for row in range(4, 8) for col in range(4)]
    expected = tiled_attention_by_hand(q, k, v, 2, 8, 8, (2, 2))
    torch.testing.assert_close(hypertile(q, k, v, where), expected, atol=1e-5, rtol=1e-5)
    assert (expected - attend(q, k, v, 2)).abs().max() > 1e-2


def test_hypertile_on_a_wide_map_tiles_comfyuis_width_first_grid() -> None:
    q, k, v = qkv(128)
    where = attention_at((1, 4, 8, 16))  # 8 rows, 16 columns: ComfyUI reads a 16 x 8 grid
    hypertile = HyperTileAttention(tile_size=32)
    assert hypertile.tiling(128, where) == (4, 2, 16, 8)
    expected = tiled_attention_by_hand(q, k, v, 2, 16, 8, (4, 2))
    torch.testing.assert_close(hypertile(q, k, v, where), expected, atol=1e-5, rtol=1e-5)


def test_hypertile_tiles_only_the_first_max_depth_plus_one_resolutions() -> None:
    where = attention_at((1, 4, 128, 128))
    plain, deeper, scaled = HyperTileAttention(), HyperTileAttention(max_depth=1), HyperTileAttention(256, 2, 1, True)
    assert plain.tiling(128 * 128, where) == (4, 4, 128, 128)  # 32-cell tiles
    assert plain.tiling(64 * 64, where) is None
    assert deeper.tiling(64 * 64, where) == (2, 2, 64, 64)
    assert scaled.tiling(64 * 64, where) is None  # at depth 1 the tiles are at least 64 cells
    assert deeper.tiling(100, where) is None  # no depth has 100 tokens


def test_hypertile_draws_a_tile_count_among_all_but_the_last_candidate_reproducibly() -> None:
    # Side 64, tiles of at least 8: candidates 8, 4, 2 tiles (swap_size 3); ComfyUI's randint never draws 2.
    hypertile = HyperTileAttention(tile_size=64, swap_size=3)
    draws = set()
    for t in range(40):
        where = AttentionContext(BlockId("output", t % 4), torch.tensor([float(t * 25)]), (1, 4, 64, 64), 0, 8)
        tiling = hypertile.tiling(64 * 64, where)
        assert tiling == hypertile.tiling(64 * 64, where)
        assert tiling is not None
        draws.add(tiling[:2])
    assert {count for pair in draws for count in pair} == {8, 4}
    # swap_size 2: randint(0, 1) is always 0, so the most tiles, as in ComfyUI.
    assert HyperTileAttention(tile_size=64, swap_size=2).tiling(64 * 64, attention_at((1, 4, 64, 64))) == (
        8,
        8,
        64,
        64,
    )


def test_hypertile_with_tiles_larger_than_the_map_is_no_patch(unet: UNetModel) -> None:
    assert HyperTileAttention(tile_size=2048).tiling(256, attention_at((2, 4, 16, 16))) is None
    patched = run(unet, UNetPatches().with_attn1_replace(HyperTileAttention(tile_size=2048)))
    assert torch.equal(patched, run(unet, None))


def test_hypertile_changes_the_unet_where_it_tiles(unet: UNetModel) -> None:
    patched = run(unet, UNetPatches().with_attn1_replace(HyperTileAttention(tile_size=64)))  # 8-cell tiles on 16
    assert bool(torch.isfinite(patched).all()) and (patched - run(unet, None)).abs().max() > 1e-3


# Deep Shrink (PatchModelAddDownscale)


def bicubic(h: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return F.interpolate(h, size=(height, width), mode="bicubic")


def deep_shrink(block: int, factor: float, after_skip: bool, end_percent: float = 0.35) -> UNetPatches:
    downscale = DownscaleAfterBlock(
        block,
        factor,
        sigma_start=SAMPLING.percent_to_sigma(0.0),
        sigma_end=SAMPLING.percent_to_sigma(end_percent),
        sigma_of_timestep=SAMPLING.sigma,
        resize=bicubic,
    )
    return UNetPatches().with_input_block_patch(downscale, after_skip).with_output_block_patch(UpscaleToSkip(bicubic))


def shrink_by_hand(block: int, size: tuple[int, int], after_skip: bool, grown: list[int]) -> dict[str, object]:
    def after_input(index: int, h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        if index != block:
            return h
        small = F.interpolate(h, size=size, mode="bicubic")
        if not after_skip:
            skips[-1] = small
        return small

    def before_output(index: int, h: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[-2:] != skip.shape[-2:]:
            grown.append(index)
            h = F.interpolate(h, size=skip.shape[-2:], mode="bicubic")
        return h, skip

    return {"after_input": after_input, "before_output": before_output}


@pytest.mark.parametrize("after_skip", [True, False])
def test_deep_shrink_downscales_after_block_n_and_grows_back_at_its_skip(unet: UNetModel, after_skip: bool) -> None:
    # Input block 2 is level 0's downsampler (16 -> 8); shrunk by 2 its output is 4 x 4.
    grown: list[int] = []
    expected = hand(unet, **shrink_by_hand(2, (4, 4), after_skip, grown))
    torch.testing.assert_close(run(unet, deep_shrink(2, 2.0, after_skip)), expected, atol=1e-5, rtol=1e-5)
    # After the skip, output block 3 meets block 2's full-size skip; before it, block 3's own upsampler grows
    # the features to block 1's skip (16 x 16) and nothing else differs.
    assert grown == ([3] if after_skip else [])
    assert (expected - run(unet, None)).abs().max() > 1e-2


def test_deep_shrink_rounds_each_side(unet: UNetModel) -> None:
    grown: list[int] = []
    expected = hand(unet, **shrink_by_hand(2, (3, 3), True, grown))  # 8 / 2.5 = 3.2 -> 3
    torch.testing.assert_close(run(unet, deep_shrink(2, 2.5, True)), expected, atol=1e-5, rtol=1e-5)


def test_deep_shrink_outside_its_sigma_window_is_no_patch(unet: UNetModel) -> None:
    assert torch.equal(run(unet, deep_shrink(2, 2.0, True), t=CLEAN), run(unet, None, t=CLEAN))
    # The window's end: sigma at 35 % of the way is timestep 0.65 x 999 of the model's table.
    edge = 0.65 * 999
    assert torch.equal(run(unet, deep_shrink(2, 2.0, True), t=edge - 1), run(unet, None, t=edge - 1))
    assert not torch.equal(run(unet, deep_shrink(2, 2.0, True), t=edge + 1), run(unet, None, t=edge + 1))


def test_deep_shrink_reads_the_first_timestep_of_the_batch() -> None:
    patch = DownscaleAfterBlock(1, 2.0, math.inf, 1.0, SAMPLING.sigma, bicubic)
    h = torch.randn(2, 4, 8, 8)
    at = PatchContext(BlockId("input", 1), torch.tensor([NOISY, CLEAN]), (2, 4, 8, 8))
    assert patch(h, at).shape == (2, 4, 4, 4)
    at = PatchContext(BlockId("input", 1), torch.tensor([CLEAN, NOISY]), (2, 4, 8, 8))
    assert patch(h, at) is h
    assert patch(h, PatchContext(BlockId("input", 2), torch.tensor([NOISY]), (2, 4, 8, 8))) is h


def test_a_control_residual_that_no_longer_fits_is_left_out_with_a_warning(
    unet: UNetModel, caplog: pytest.LogCaptureFixture
) -> None:
    x, t, context = inputs()
    with torch.no_grad():
        skips = []
        emb = unet.time_embed(timestep_embedding(t, 32))
        h = x
        for block in unet.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
    g = torch.Generator().manual_seed(9)
    residuals = [torch.randn(skip.shape, generator=g) for skip in skips]
    middle = torch.randn(h.shape, generator=g)
    control = ControlResiduals(tuple(residuals), middle)
    shrunk = deep_shrink(2, 2.0, True)
    with pytest.raises(ValueError, match="has shape"):
        run(unet, None, control=ControlResiduals(tuple(residuals), torch.zeros(1, 1)))
    with caplog.at_level(logging.WARNING, logger="diffusion.unet"):
        actual = run(unet, shrunk, control=control)
    # Blocks 0-2 keep their full-size skips, so their residuals join; the rest (and the middle) are left out.
    assert sum("left out" in record.getMessage() for record in caplog.records) == 4
    fitting = {0: residuals[0], 1: residuals[1], 2: residuals[2]}
    base = shrink_by_hand(2, (4, 4), True, [])
    grow = base["before_output"]

    def before_output(index: int, h: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip_index = len(unet.output_blocks) - 1 - index
        if skip_index in fitting:
            skip = skip + fitting[skip_index]
        return grow(index, h, skip)

    expected = hand(unet, after_input=base["after_input"], before_output=before_output)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
