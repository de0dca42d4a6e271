"""Canny edge detection in plain torch, step for step as ``kornia.filters.canny`` (kornia 0.9) computes it.

ComfyUI's ``Canny`` node calls kornia's ``canny`` with its default blur, so workflows that feed edges to a
ControlNet need the same pixels here. Each step and its convention, with where the fact comes from
(kornia 0.9.0's ``filters/canny.py``, ``filters/gaussian.py``, ``filters/kernels.py``, ``filters/sobel.py``
and ``color/gray.py``, whose "Convention" blocks state them):

1. Grey: three channels become ``0.299 R + 0.587 G + 0.114 B`` (the ITU-R BT.601 luma weights of
   ``rgb_to_grayscale``), summed red, green, blue in that order; one channel is used as it is.
2. Blur: a 5 × 5 Gaussian of σ = 1 in both directions (``canny``'s defaults ``kernel_size=(5, 5)``,
   ``sigma=(1, 1)``), applied separably, along rows first, then along columns. Its taps are
   ``exp(-x² / 2σ²)`` for x = -2..2, divided by their sum. Borders are mirrored without repeating the edge
   pixel (``d c b | a b c d``: ``gaussian_blur2d``'s default ``border_type="reflect"``), so a side needs at
   least three pixels.
3. Gradient: the 3 × 3 Sobel kernels, not normalised (``spatial_gradient(normalized=False)``): a ramp
   rising by s per pixel gives 8·s. Borders repeat the edge pixel (``spatial_gradient`` always
   replicates). ``gx`` grows to the right and ``gy`` downwards.
4. Magnitude: ``sqrt(gx² + gy² + 1e-6)`` (``canny``'s ``eps``); so a flat area has 1e-3, not 0, and the
   thresholds are in these unnormalised units: an ideal black-to-white step reaches about 2.59.
5. Direction: ``atan2(gy, gx)`` rounded to the nearest multiple of 45° (``torch.round``: halves to
   even), which picks one of four axes through the pixel.
6. Non-maximum suppression: a pixel is kept when its magnitude beats both neighbours along that axis.
   It must be strictly larger than the left neighbour and at least the right one along a horizontal
   axis (upper and lower along a vertical one), so of two equal pixels across a step the left (upper)
   one survives, as in OpenCV; along a diagonal it must be strictly larger than both. Outside the
   picture the magnitude is that of a flat pixel, and a pixel no larger than it is never kept
   (kornia 0.9 ``canny``'s "Convention"; kornia 0.8 and older required strictly larger on both sides,
   which drops both pixels of a tie).
7. Double threshold: weak where the kept magnitude is strictly above ``low_threshold``, strong where it
   is strictly above ``high_threshold``.
8. Hysteresis: a weak pixel becomes an edge when a chain of weak pixels, each touching the next through
   any of its 8 neighbours, leads to a strong one; it grows one pixel per round until a round changes
   nothing, which is kornia's loop. Edges are 1, everything else 0.

Floating inputs are computed in their own dtype, half precision in float32, as kornia does. Each step
also rounds as kornia's does (the grey sum's order, the blur's summation, which kornia picks by picture
size, Sobel as one convolution, the magnitude's expression): the last bit of a magnitude decides which
of two equal pixels across a symmetric edge survives step 6, so matching to float rounding would not
give the same edges. On the CPU the magnitude and edges equal kornia 0.9's bit for bit (the tests check
this where kornia is installed); on a GPU the convolutions' rounding is the backend's.

Hysteresis is computed as labelled connected components rather than kornia's one-pixel-per-round
loop: the same fixed point, reached in a few rounds instead of one per pixel of the longest chain.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "BLUR_SIGMA",
    "BLUR_SIZE",
    "CannyEdges",
    "LUMA_WEIGHTS",
    "MAGNITUDE_EPS",
    "canny",
    "component_roots",
    "gaussian_blur",
    "gaussian_taps",
    "grey",
    "sobel_gradients",
    "suppress_non_maxima",
    "track_hysteresis",
]

#: kornia's ``canny`` defaults, which ComfyUI's node never changes.
BLUR_SIZE = 5
BLUR_SIGMA = 1.0
MAGNITUDE_EPS = 1e-6
#: ITU-R BT.601 luma, red, green, blue.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: (dy, dx) of the two neighbours along each axis, indexed by the gradient direction in multiples of 45°
#: modulo 4, measured from +x towards +y (downwards). The first neighbour of axes 0 and 2 (right, below)
#: may tie with the pixel; every other comparison is strict.
_AXIS_NEIGHBOURS = (
    ((0, 1), (0, -1)),
    ((1, 1), (-1, -1)),
    ((1, 0), (-1, 0)),
    ((1, -1), (-1, 1)),
)
_TIE_ALLOWED = (True, False, True, False)


class CannyEdges(NamedTuple):
    """Both of kornia's outputs, each ``[B, 1, H, W]``."""

    #: The gradient magnitude where non-maximum suppression kept the pixel, 0 elsewhere.
    magnitude: torch.Tensor
    #: 1 on edges, 0 elsewhere; with ``hysteresis=False``, 1 for strong, 0.5 for weak pixels.
    edges: torch.Tensor


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def grey(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB to ``[B, 1, H, W]`` luma; a ``[B, 1, H, W]`` picture is returned as it is."""
    if pixels.shape[1] == 1:
        return pixels
    red, green, blue = pixels.unbind(1)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=pixels.dtype, device=pixels.device)
    luma = red * weights[0]
    luma = torch.addcmul(luma, green, weights[1])
    return torch.addcmul(luma, blue, weights[2]).unsqueeze(1)


def gaussian_taps(size: int, sigma: float, *, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """The ``size`` normalised taps ``exp(-x² / 2σ²)`` centred on the middle one (``size`` odd)."""
    offsets = torch.arange(size, dtype=dtype, device=device) - size // 2
    weights = torch.exp(-offsets.pow(2) / (2 * torch.tensor(sigma, dtype=dtype, device=device).pow(2)))
    return weights / weights.sum()


def _mirrored(image: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """``image`` mirrored ``radius`` pixels past both ends of ``dim`` (-1 rows, -2 columns), edge pixel once."""
    return F.pad(image, (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius), mode="reflect")


def _shifted_copies_pass(image: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """One blur pass along ``dim`` (-1 along rows, -2 along columns) as a sum of shifted, weighted copies."""
    padded = _mirrored(image, taps.numel() // 2, dim)
    length = image.shape[dim]
    total = padded.narrow(dim, 0, length) * taps[0]
    for tap in range(1, taps.numel()):
        total = torch.addcmul(total, padded.narrow(dim, tap, length), taps[tap])
    return total


def _convolution_pass(image: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """The same pass as one convolution over a single-channel ``[B, 1, H, W]`` picture."""
    padded = _mirrored(image, taps.numel() // 2, dim)
    weight = taps.view(1, 1, 1, -1) if dim == -1 else taps.view(1, 1, -1, 1)
    return F.conv2d(padded, weight)


def _sums_shifted_copies(image: torch.Tensor) -> bool:
    """Whether kornia 0.9 blurs this picture by summing shifted copies rather than by convolution.

    Both give the same blur up to the last bit, but that bit decides which of two equal pixels across a
    symmetric edge survives non-maximum suppression, so the choice follows kornia's (``gaussian_blur2d``
    sums copies for contiguous float32/float64 CPU pictures of at least 256 × 256 pixels and 128 Ki values).
    """
    height, width = image.shape[-2:]
    return (
        image.device.type == "cpu"
        and image.dtype in (torch.float32, torch.float64)
        and image.is_contiguous()
        and height * width >= 256 * 256
        and image.numel() >= 128 * 1024
    )


def gaussian_blur(image: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]``: along rows first, then along columns, mirrored borders."""
    height, width = image.shape[-2:]
    if min(height, width) <= size // 2:
        raise ValueError(
            f"canny: a {width}x{height} picture is too small for its {size}x{size} blur, whose mirrored border "
            f"needs at least {size // 2 + 1} pixels on each side"
        )
    taps = gaussian_taps(size, sigma, dtype=image.dtype, device=image.device)
    one_pass = _shifted_copies_pass if _sums_shifted_copies(image) else _convolution_pass
    return one_pass(one_pass(image, taps, -1), taps, -2)


def sobel_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised Sobel ``(gx, gy)`` of ``[B, 1, H, W]``, with the edge pixels repeated past the border."""
    kernels = torch.tensor(
        [
            [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
            [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],
        ],
        dtype=image.dtype,
        device=image.device,
    )[:, None]
    gradients = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradients[:, :1], gradients[:, 1:]


def suppress_non_maxima(gx: torch.Tensor, gy: torch.Tensor, eps: float = MAGNITUDE_EPS) -> torch.Tensor:
    """The magnitude ``sqrt(gx² + gy² + eps)`` where it is a maximum along the gradient, 0 elsewhere."""
    # Computed one pixel past the picture, where there is no gradient: the border is a flat pixel.
    gx_out, gy_out = F.pad(gx, (1, 1, 1, 1)), F.pad(gy, (1, 1, 1, 1))
    padded = torch.sqrt(gx_out * gx_out + gy_out * gy_out + eps)
    height, width = gx.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    magnitude = shifted(0, 0)
    # atan2 is NaN-free in eager torch, but a NaN would turn into an arbitrary axis.
    octant = torch.round(torch.nan_to_num(torch.atan2(gy, gx)) * (4 / math.pi))
    axis = torch.remainder(octant, 4).long()
    kept = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (first, second) in enumerate(_AXIS_NEIGHBOURS):
        beats_first = magnitude >= shifted(*first) if _TIE_ALLOWED[index] else magnitude > shifted(*first)
        kept |= (axis == index) & beats_first & (magnitude > shifted(*second))
    kept &= magnitude > padded[..., :1, :1]
    return magnitude * kept


#: Half of the 8 neighbour offsets (dy, dx); each link between neighbours is listed once.
_LINK_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))


def _links(member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(a, b)`` of every pair of 8-neighbouring ``member`` pixels in ``[B, 1, H, W]``."""
    height, width = member.shape[-2:]
    index = torch.arange(member.numel(), device=member.device).view(member.shape)
    firsts, seconds = [], []
    for dy, dx in _LINK_OFFSETS:
        here = (..., slice(0, height - dy), slice(max(0, -dx), width - max(0, dx)))
        there = (..., slice(dy, height), slice(max(0, dx), width - max(0, -dx)))
        both = member[here] & member[there]
        firsts.append(index[here][both])
        seconds.append(index[there][both])
    return torch.cat(firsts), torch.cat(seconds)


def _flatten_to_roots(parent: torch.Tensor) -> torch.Tensor:
    """Follow parents of parents until every entry names its tree's root (pointer jumping)."""
    while True:
        grandparent = parent[parent]
        if torch.equal(grandparent, parent):
            return parent
        parent = grandparent


def component_roots(member: torch.Tensor) -> torch.Tensor:
    """For each pixel the smallest flat index of its 8-connected ``member`` component (itself outside them).

    Union by hooking: each round, the root of every link's larger end is hung under the smallest root it
    links to, then the trees are flattened; parents only ever point to smaller indices, so no cycle can
    form, and it ends when both ends of every link share a root, after a few rounds even for long chains.
    """
    first, second = _links(member)
    parent = torch.arange(member.numel(), device=member.device)
    while True:
        root_first, root_second = parent[first], parent[second]
        split = root_first != root_second
        if not bool(split.any()):
            return parent.view(member.shape)
        high = torch.maximum(root_first[split], root_second[split])
        low = torch.minimum(root_first[split], root_second[split])
        parent = _flatten_to_roots(parent.scatter_reduce(0, high, low, reduce="amin"))


def track_hysteresis(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """The weak pixels 8-connected to a strong one through weak pixels (``strong`` must lie within ``weak``).

    kornia grows the strong pixels into weak neighbours one pixel per round until a round changes
    nothing; that fixed point is exactly the set of weak components holding a strong pixel, found here
    by labelling the components, in a few rounds however long the chains are.
    """
    if not bool(strong.any()):
        return strong
    roots = component_roots(weak)
    has_strong = torch.zeros(weak.numel(), dtype=torch.bool, device=weak.device)
    has_strong[roots[strong]] = True
    return has_strong[roots] & weak


def canny(pixels: torch.Tensor, low_threshold: float, high_threshold: float, *, hysteresis: bool = True) -> CannyEdges:
    """kornia's ``canny`` with its default blur on ``[B, 1 or 3, H, W]`` pixels (module docstring: each step).

    The thresholds are in unnormalised Sobel units (about 8 × the brightness change per pixel) and must
    satisfy ``0 < low_threshold <= high_threshold``, as kornia requires.
    """
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"canny: expected pixels [B, 1 or 3, H, W], got shape {tuple(pixels.shape)}")
    if not 0 < low_threshold <= high_threshold:
        raise ValueError(
            f"canny: thresholds must satisfy 0 < low <= high, got low {low_threshold} and high {high_threshold}"
        )
    output_dtype = pixels.dtype if pixels.is_floating_point() else torch.float32
    working = pixels.to(_working_dtype(output_dtype))
    gx, gy = sobel_gradients(gaussian_blur(grey(working)))
    magnitude = suppress_non_maxima(gx, gy)
    weak, strong = magnitude > low_threshold, magnitude > high_threshold
    if hysteresis:
        edges = track_hysteresis(weak, strong).to(magnitude.dtype)
    else:
        edges = (weak.to(magnitude.dtype) + strong.to(magnitude.dtype)) * 0.5
    return CannyEdges(magnitude.to(output_dtype), edges.to(output_dtype))
