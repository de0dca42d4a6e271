"""Canny edges: each documented convention on hand-made pictures, and kornia's own output where it is installed.

The hand-made references come from the definitions in ``diffusion/canny.py``'s docstring, not from the
implementation: the step height of a blurred unit edge from the Gaussian's formula, the tie rule on
chosen gradients, hysteresis as reachability by growing one pixel at a time.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion.canny import (
    MAGNITUDE_EPS,
    canny,
    component_roots,
    gaussian_blur,
    gaussian_taps,
    grey,
    sobel_gradients,
    suppress_non_maxima,
    track_hysteresis,
)


def smooth_pictures(batch: int, channels: int, height: int, width: int, cell: int, seed: int = 0) -> torch.Tensor:
    """Random blobs about ``cell`` pixels wide: edges of all directions and strengths, like a photograph's."""
    coarse = torch.rand(
        (batch, channels, height // cell + 2, width // cell + 2), generator=torch.Generator().manual_seed(seed)
    )
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def noise(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, channels, height, width), generator=torch.Generator().manual_seed(seed))


def step_height() -> float:
    """Magnitude at a black-to-white step: 4 (the Sobel column sum) × (w0 + w1) of the σ = 1 taps."""
    weights = [math.exp(-(x**2) / 2) for x in range(-2, 3)]
    return 4 * (weights[2] + weights[3]) / sum(weights)


def draw(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])[None, None]


# --- the steps ------------------------------------------------------------------------------------------


def test_grey_is_bt601_luma_and_one_channel_passes_through() -> None:
    pixels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]).view(3, 3, 1, 1).expand(3, 3, 2, 2)
    assert torch.allclose(grey(pixels)[:, 0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))
    single = noise(2, 1, 4, 4)
    assert grey(single) is single


def test_blur_taps_are_a_normalised_sigma_one_gaussian() -> None:
    taps = gaussian_taps(5, 1.0, dtype=torch.float64)
    expected = torch.tensor([math.exp(-(x**2) / 2) for x in range(-2, 3)], dtype=torch.float64)
    torch.testing.assert_close(taps, expected / expected.sum())


def test_blur_mirrors_the_border_without_repeating_the_edge_pixel() -> None:
    row = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    picture = row.view(1, 1, 1, 6).expand(1, 1, 5, 6).contiguous()
    taps = gaussian_taps(5, 1.0, dtype=torch.float32)
    # Column 5 sees 1 2 3 | 2 1: the edge pixel 3 is not repeated ("reflect", not "symmetric").
    expected = (taps * torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0])).sum()
    torch.testing.assert_close(gaussian_blur(picture)[0, 0, :, 5], expected.expand(5))


def test_the_gradient_is_the_unnormalised_sobel_of_a_ramp() -> None:
    slope = 0.03
    ramp = (torch.arange(20.0) * slope).view(1, 1, 1, 20).expand(1, 1, 12, 20).contiguous()
    gx, gy = sobel_gradients(gaussian_blur(ramp))
    # Away from the borders the blur keeps a ramp a ramp, and Sobel's taps sum to 8 × the slope.
    torch.testing.assert_close(gx[0, 0, 3:-3, 3:-3], torch.full((6, 14), 8 * slope))
    torch.testing.assert_close(gy, torch.zeros_like(gy), atol=1e-6, rtol=0)
    # The border repeats its pixel: the last column's difference spans one step, not two.
    torch.testing.assert_close(sobel_gradients(ramp)[0][0, 0, 5, -1], torch.tensor(4 * slope))


def test_a_blurred_unit_step_measures_the_documented_height() -> None:
    picture = torch.zeros(1, 1, 10, 12)
    picture[..., 6:] = 1
    magnitude = canny(picture, 0.1, 0.2).magnitude
    # One of the two columns beside the step carries the edge, at about 2.59 as documented.
    assert magnitude[0, 0, :, 5:7].max(dim=1).values.tolist() == pytest.approx([step_height()] * 10, rel=1e-6)
    assert step_height() == pytest.approx(2.587, abs=1e-3)


def test_flat_pictures_have_the_eps_magnitude_and_no_edges() -> None:
    gx, gy = sobel_gradients(gaussian_blur(torch.full((1, 1, 8, 8), 0.5)))
    assert torch.equal(suppress_non_maxima(gx, gy), torch.zeros(1, 1, 8, 8))
    assert math.sqrt(MAGNITUDE_EPS) == pytest.approx(1e-3)


# --- non-maximum suppression on chosen gradients ----------------------------------------------------------


def nms(gx_rows: list[list[float]], gy_rows: list[list[float]]) -> torch.Tensor:
    gx, gy = torch.tensor(gx_rows)[None, None], torch.tensor(gy_rows)[None, None]
    return suppress_non_maxima(gx, gy)[0, 0] > 0


def test_of_two_equal_pixels_across_a_horizontal_gradient_the_left_one_survives() -> None:
    kept = nms([[0.0, 1.0, 3.0, 3.0, 1.0, 0.0]], [[0.0] * 6])
    assert kept.tolist() == [[False, False, True, False, False, False]]
    # The rule belongs to the axis, not the gradient's sign.
    assert nms([[0.0, -1.0, -3.0, -3.0, -1.0, 0.0]], [[0.0] * 6]).tolist() == kept.tolist()


def test_of_two_equal_pixels_across_a_vertical_gradient_the_upper_one_survives() -> None:
    column = [[0.0], [1.0], [3.0], [3.0], [1.0], [0.0]]
    kept = nms([[0.0]] * 6, column)
    assert kept[:, 0].tolist() == [False, False, True, False, False, False]


def test_equal_pixels_along_a_diagonal_gradient_both_go() -> None:
    size = 5
    strength = torch.zeros(size, size)
    strength[1, 1], strength[2, 2], strength[3, 3] = 1.0, 3.0, 3.0
    kept = nms(strength.tolist(), strength.tolist())  # gx = gy: 45°, towards lower right
    assert not kept.any()
    strength[3, 3] = 2.0
    assert nms(strength.tolist(), strength.tolist()).nonzero().tolist() == [[2, 2]]


def test_direction_rounds_to_the_nearest_45_degrees() -> None:
    # The centre pixel (3) beats its neighbours along the rows, columns and the 135° diagonal, not along 45°.
    magnitude = torch.tensor([[4.0, 1.0, 2.0], [2.0, 3.0, 2.0], [2.0, 1.0, 4.0]])
    for degrees, kept in [(20.0, True), (25.0, False), (65.0, False), (70.0, True), (115.0, True), (-20.0, True)]:
        angle = math.radians(degrees)
        gx, gy = magnitude * math.cos(angle), magnitude * math.sin(angle)
        assert bool(suppress_non_maxima(gx[None, None], gy[None, None])[0, 0, 1, 1] > 0) is kept, degrees


def test_border_pixels_compare_with_a_flat_pixel_outside() -> None:
    kept = nms([[2.0, 1.0, 0.5]], [[0.0] * 3])
    assert kept.tolist() == [[True, False, False]]
    assert not nms([[0.0]], [[0.0]]).any()


# --- thresholds and hysteresis --------------------------------------------------------------------------


def reference_hysteresis(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Grow the strong pixels into weak 8-neighbours, one pixel per round, until nothing changes."""
    edges = strong.clone()
    while True:
        grown = edges.clone()
        height, width = edges.shape[-2:]
        for b, c, y, x in edges.nonzero().tolist():
            rows, cols = slice(max(0, y - 1), min(height, y + 2)), slice(max(0, x - 1), min(width, x + 2))
            grown[b, c, rows, cols] |= weak[b, c, rows, cols]
        if torch.equal(grown, edges):
            return edges
        edges = grown


def test_a_weak_chain_touching_a_strong_pixel_survives_and_a_loose_one_does_not() -> None:
    weak = draw(
        [
            "#.........",
            ".#..####..",
            "..#.....#.",
            "...##...#.",
            ".....#....",
            "..........",
            "...####...",
        ]
    )
    strong = torch.zeros_like(weak)
    strong[0, 0, 0, 0] = True
    edges = track_hysteresis(weak, strong)
    # The diagonal chain from the corner is 8-connected; the run at row 1 is separated by a gap, and the
    # bottom run touches nothing.
    assert edges[0, 0].nonzero().tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [3, 4], [4, 5]]
    assert torch.equal(edges, reference_hysteresis(weak, strong))


def test_hysteresis_matches_growing_one_pixel_at_a_time_on_random_masks() -> None:
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        weak = torch.rand((2, 1, 24, 31), generator=generator) < 0.45
        strong = weak & (torch.rand((2, 1, 24, 31), generator=generator) < 0.02)
        assert torch.equal(track_hysteresis(weak, strong), reference_hysteresis(weak, strong))


def test_a_long_winding_chain_is_followed_to_its_end() -> None:
    # A serpentine of 20 rows joined at alternate ends: one component of 20 × 40 pixels whose far end is
    # hundreds of steps from the strong pixel, and whose flat indices run against the path half the time.
    weak = torch.zeros(1, 1, 39, 40, dtype=torch.bool)
    weak[0, 0, ::2] = True
    for row in range(1, 39, 2):
        weak[0, 0, row, 39 if row % 4 == 1 else 0] = True
    strong = torch.zeros_like(weak)
    strong[0, 0, 38, 0] = True
    assert torch.equal(track_hysteresis(weak, strong), weak)
    roots = component_roots(weak)
    assert torch.equal(roots[weak], torch.zeros(int(weak.sum()), dtype=torch.long))


def test_components_never_join_across_pictures_of_a_batch() -> None:
    weak = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    weak[0, 0, 3, :] = True  # last row of picture 0 sits next to the first row of picture 1 in memory
    weak[1, 0, 0, :] = True
    strong = torch.zeros_like(weak)
    strong[0, 0, 3, 0] = True
    assert torch.equal(track_hysteresis(weak, strong), strong | (weak & (torch.arange(2) == 0).view(2, 1, 1, 1)))


def test_thresholds_are_strict() -> None:
    picture = torch.zeros(1, 1, 10, 12)
    picture[..., 6:] = 1
    peak = float(canny(picture, 0.1, 0.2).magnitude.max())
    below = float(torch.nextafter(torch.tensor(peak), torch.tensor(0.0)))  # the float32 just below
    assert not canny(picture, 0.1, peak).edges.any()
    assert canny(picture, 0.1, below).edges.any()
    assert not canny(picture, peak, peak, hysteresis=False).edges.any()


# --- whole pictures -------------------------------------------------------------------------------------


def test_a_white_square_gives_its_one_pixel_outline() -> None:
    picture = torch.zeros(1, 3, 32, 32)
    picture[..., 8:24, 8:24] = 1
    edges = canny(picture, 0.4, 0.8).edges[0, 0].bool()
    # Along each side, away from the rounded corners, exactly one of the two pixels beside the border.
    for index in range(11, 21):
        assert int(edges[7:9, index].sum()) == 1 and int(edges[23:25, index].sum()) == 1, index
        assert int(edges[index, 7:9].sum()) == 1 and int(edges[index, 23:25].sum()) == 1, index
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[5:27, 5:27] = True
    ring[11:21, 11:21] = False
    assert not (edges & ~ring).any()
    # One closed outline: a single 8-connected component.
    roots = component_roots(edges[None, None])[0, 0]
    assert roots[edges].unique().numel() == 1


def test_a_gentle_ramp_has_no_edges() -> None:
    slope = 0.04  # 8 × 0.04 = 0.32 in Sobel units, below the low threshold 0.4
    ramp = (torch.arange(24.0) * slope).view(1, 1, 1, 24).expand(1, 3, 16, 24).contiguous()
    result = canny(ramp, 0.4, 0.8, hysteresis=False)
    assert not result.edges.any()
    assert float(result.magnitude.max()) < 0.4


def band_pictures() -> torch.Tensor:
    """A band whose brightness fades from 0.5 to 0.2 (strong edge to weak), and a dim 0.25 rectangle."""
    picture = torch.zeros(1, 1, 40, 48)
    picture[..., 8:16, :] = torch.linspace(0.5, 0.2, 48)
    picture[..., 26:34, 10:38] = 0.25
    return picture


def test_hysteresis_keeps_a_fading_edge_and_drops_a_faint_one() -> None:
    picture = band_pictures()
    kept = canny(picture, 0.4, 0.8).edges[0, 0].bool()
    marked = canny(picture, 0.4, 0.8, hysteresis=False).edges[0, 0]
    # The fading band's top edge: one pixel per column, strong on the left, weak but kept on the right.
    assert kept[7:9].sum(dim=0).tolist() == [1] * 48
    top = marked[7:9].max(dim=0).values
    assert top[:10].tolist() == [1.0] * 10 and top[-10:].tolist() == [0.5] * 10
    # The faint rectangle is all weak, touches no strong pixel, and disappears.
    assert set(marked[20:].unique().tolist()) == {0.0, 0.5}
    assert not kept[20:].any()


def test_pictures_of_a_batch_are_independent() -> None:
    pictures = smooth_pictures(3, 3, 40, 36, 6)
    together = canny(pictures, 0.3, 0.6)
    for index in range(3):
        alone = canny(pictures[index : index + 1], 0.3, 0.6)
        assert torch.equal(together.edges[index], alone.edges[0])
        # The convolutions may round differently for another batch size, as kornia's do.
        torch.testing.assert_close(together.magnitude[index], alone.magnitude[0], rtol=1e-6, atol=1e-6)


def test_outputs_are_binary_in_the_input_dtype() -> None:
    for dtype in (torch.float32, torch.float64, torch.float16):
        result = canny(smooth_pictures(1, 3, 24, 24, 4).to(dtype), 0.2, 0.5)
        assert result.edges.dtype == dtype and result.magnitude.dtype == dtype
        assert set(result.edges.unique().tolist()) <= {0.0, 1.0}
    assert canny((noise(1, 3, 8, 8) * 255).to(torch.uint8), 10.0, 20.0).edges.dtype == torch.float32


def test_bad_inputs_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"expected pixels \[B, 1 or 3, H, W\]"):
        canny(torch.zeros(1, 4, 8, 8), 0.1, 0.2)
    with pytest.raises(ValueError, match="0 < low <= high"):
        canny(torch.zeros(1, 3, 8, 8), 0.5, 0.2)
    with pytest.raises(ValueError, match="0 < low <= high"):
        canny(torch.zeros(1, 3, 8, 8), 0.0, 0.2)
    with pytest.raises(ValueError, match="too small"):
        canny(torch.zeros(1, 3, 2, 8), 0.1, 0.2)


# --- kornia ---------------------------------------------------------------------------------------------

PARITY_CASES = [
    pytest.param(lambda: noise(2, 3, 32, 40), id="noise-small"),
    pytest.param(lambda: smooth_pictures(2, 3, 64, 64, 4), id="blobs-64"),
    pytest.param(lambda: smooth_pictures(1, 3, 300, 280, 8), id="blobs-300x280"),  # kornia blurs by convolution
    pytest.param(lambda: smooth_pictures(2, 3, 256, 256, 16), id="blobs-2x256"),  # kornia sums shifted copies
    pytest.param(lambda: smooth_pictures(1, 1, 384, 400, 8), id="grey-384x400"),
    pytest.param(lambda: noise(1, 3, 64, 80, seed=1), id="noise-64x80"),
    pytest.param(lambda: band_pictures(), id="bands"),
]


@pytest.mark.parametrize("make", PARITY_CASES)
@pytest.mark.parametrize(("low", "high"), [(0.4, 0.8), (0.1, 0.2), (0.05, 0.9), (0.5, 0.5)])
def test_equals_kornia_bit_for_bit(make, low: float, high: float) -> None:
    kornia_filters = pytest.importorskip("kornia.filters")
    pictures = make()
    expected_magnitude, expected_edges = kornia_filters.canny(pictures, low, high)
    result = canny(pictures, low, high)
    assert torch.equal(result.magnitude, expected_magnitude)
    assert torch.equal(result.edges, expected_edges)


@pytest.mark.parametrize("square_at", [8, 9])
@pytest.mark.parametrize("size", [32, 256])
def test_equals_kornia_on_symmetric_edges_where_ties_decide(square_at: int, size: int) -> None:
    kornia_filters = pytest.importorskip("kornia.filters")
    picture = torch.zeros(2, 3, size, size)
    picture[..., square_at : square_at + 16, square_at : square_at + 16] = 1
    picture[1, :, :, size // 2 :] = 1
    for hysteresis in (True, False):
        expected = kornia_filters.canny(picture, 0.4, 0.8, hysteresis=hysteresis)
        result = canny(picture, 0.4, 0.8, hysteresis=hysteresis)
        assert torch.equal(result.magnitude, expected[0]) and torch.equal(result.edges, expected[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8])
def test_equals_kornia_in_other_dtypes(dtype: torch.dtype) -> None:
    kornia_filters = pytest.importorskip("kornia.filters")
    pictures = smooth_pictures(1, 3, 48, 48, 4)
    pictures = (pictures * 255).to(dtype) if dtype == torch.uint8 else pictures.to(dtype)
    low, high = (20.0, 40.0) if dtype == torch.uint8 else (0.2, 0.4)
    expected_magnitude, expected_edges = kornia_filters.canny(pictures, low, high)
    result = canny(pictures, low, high)
    assert result.edges.dtype == expected_edges.dtype
    assert torch.equal(result.magnitude, expected_magnitude) and torch.equal(result.edges, expected_edges)
