"""Seeded noise for ancestral and SDE samplers: ``noise_sampler(sigma, sigma_next) -> N(0, 1)``.

Noise is drawn on the CPU in float32 from seeded generators and then moved to the sample's
device and dtype, so a seed gives the same image on any device.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["BrownianTreeNoiseSampler", "NoiseSampler", "gaussian_noise_sampler"]

NoiseSampler = Callable[[Tensor, Tensor], Tensor]

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """SplitMix64 (Steele et al. 2014) folded over the values: decorrelated 63-bit seeds for tree nodes."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def _seeded_normal(like: Tensor, seed: int) -> Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


def gaussian_noise_sampler(x: Tensor, seed: int | None = None) -> NoiseSampler:
    """Independent standard normal draws per call, from one generator seeded with ``seed``.

    Without a seed the global torch RNG is used, as k-diffusion's default does.
    """
    if seed is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)

    return sample


class BrownianTreeNoiseSampler:
    """Normalised Brownian increments ``(W(t1) - W(t0)) / sqrt(|t1 - t0|)`` of one fixed path W.

    SDE solvers need noise that is consistent across step sizes: the increment over [a, c] must
    equal the sum of the increments over [a, b] and [b, c], so refining the schedule refines the
    same sample path instead of drawing a new one (Kidger et al. 2021 build torchsde's Brownian
    tree for this reason). Construction, over ``[sigma_min, sigma_max]``:

    * ``W(sigma_min) = 0`` and ``W(sigma_max) ~ N(0, sigma_max - sigma_min)``;
    * the value at the midpoint ``m`` of a dyadic interval ``[a, b]`` is drawn from the Brownian
      bridge, ``(W(a) + W(b)) / 2 + sqrt((b - a) / 4) * z``, where ``z`` comes from a generator
      seeded by (seed, depth, index) so every node is reproducible without storing the tree;
    * a query descends the dyadic intervals until they are narrower than ``tolerance`` times the
      range and interpolates linearly inside that leaf.

    W(t) is then a deterministic function of t, so increments over any query intervals are
    exactly consistent. Recently visited nodes are cached because a sampler's queries walk
    down the range in order and share most of their paths.
    """

    def __init__(
        self,
        x: Tensor,
        sigma_min: float | Tensor,
        sigma_max: float | Tensor,
        seed: int = 0,
        tolerance: float = 2.0**-20,
        cache_size: int = 256,
    ) -> None:
        low, high = float(sigma_min), float(sigma_max)
        if not 0.0 <= low < high:
            raise ValueError(f"Brownian tree needs 0 <= sigma_min < sigma_max, got {low} and {high}")
        self.low, self.high, self.seed = low, high, int(seed)
        self.like = x
        self.max_depth = max(1, int(torch.tensor(1.0 / tolerance).log2().ceil()))
        self.cache: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.top = _seeded_normal(x, _mix(self.seed, 0, 0)) * (high - low) ** 0.5

    def _node(self, depth: int, index: int, left: Tensor, right: Tensor, width: float) -> Tensor:
        key = (depth, index)
        value = self.cache.get(key)
        if value is None:
            z = _seeded_normal(self.like, _mix(self.seed, depth + 1, index))
            value = (left + right) * 0.5 + z * (width / 4.0) ** 0.5
            self.cache[key] = value
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return value

    def value(self, t: float) -> Tensor:
        """W(t) for t in the range (clamped to it)."""
        t = min(max(t, self.low), self.high)
        a, b = self.low, self.high
        w_a, w_b = torch.zeros_like(self.top), self.top
        index = 0
        for depth in range(self.max_depth):
            m = 0.5 * (a + b)
            w_m = self._node(depth, index, w_a, w_b, b - a)
            if t < m:
                b, w_b, index = m, w_m, 2 * index
            else:
                a, w_a, index = m, w_m, 2 * index + 1
        fraction = (t - a) / (b - a)
        return w_a + (w_b - w_a) * fraction

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = float(sigma), float(sigma_next)
        return (self.value(t1) - self.value(t0)) / abs(t1 - t0) ** 0.5
