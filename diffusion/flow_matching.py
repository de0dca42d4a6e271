"""Rectified-flow models (SD3, FLUX, AuraFlow, Z-Image, Chroma): their noise levels, time shifts and prediction.

A flow-matching model is trained on the straight path between data and noise, ``x_sigma = (1 - sigma) x0 +
sigma noise`` with sigma in [0, 1], and predicts the velocity ``v = noise - x0`` (Lipman et al. 2023, Liu et
al. 2023; ComfyUI calls this parametrisation "CONST"). The samplers of ``diffusion.samplers`` want the
denoised estimate, which is ``x0 = x - sigma v``, so the deterministic ones run unchanged on flow models: they
only ever see sigmas and denoised estimates (k-diffusion's contract). Samplers that add fresh noise (ancestral,
SDE, LCM) must also know how a flow model mixes noise in, ``x = (1 - sigma) x0 + sigma noise`` rather than
``x0 + sigma noise``, and branch on it as ComfyUI's do (``diffusion.samplers.snr``). What differs between
families is the time shift, how the uniform training time t maps to sigma:

- SD3 / SD3.5 and AuraFlow-style models (Z-Image): ``sigma = shift t / (1 + (shift - 1) t)`` (Esser et al.
  2024, eq. 23), with t = timestep / multiplier; SD3 conditions on timesteps 0..1000 (multiplier 1000),
  AuraFlow and Z-Image on 0..1 (multiplier 1).
- FLUX: ``sigma = e^mu / (e^mu + 1/t - 1)``, mu the shift, which ``ModelSamplingFlux`` sets from the image's
  token count (``flux_shift_for_size``).

Both keep a table of sigmas at t = 1/N .. 1 (N = 1000 for the first, 10,000 for FLUX) that ComfyUI's
schedulers step through, so "simple", "normal", "beta" ... give ComfyUI's sigmas on a flow model too.
Loom's flow transformers take sigma itself as their time input and scale it as their training did.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion.prediction import expand_per_sample

__all__ = [
    "DiscreteFlow",
    "FlowPrediction",
    "FluxFlow",
    "flux_shift_for_size",
    "flux_time_shift",
    "time_snr_shift",
]


def time_snr_shift(shift: float, t: Tensor) -> Tensor:
    """SD3's shift of the training time t in [0, 1] towards more noise (identity at shift 1)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flux_time_shift(mu: float, t: Tensor) -> Tensor:
    """FLUX's exponential shift ``e^mu / (e^mu + 1/t - 1)`` of the training time t in (0, 1]."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def flux_shift_for_size(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """``ModelSamplingFlux``'s mu: linear in the image's token count (one per 16x16 pixels), from `base_shift`
    at 256 tokens to `max_shift` at 4096 (a 1024² image)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return width * height / (16 * 16) * slope + (base_shift - slope * 256)


class FlowPrediction:
    """The rectified-flow ("CONST") parametrisation over a table of sigmas; subclasses give the time shift."""

    sigma_data = 1.0

    def __init__(self, shift: float, multiplier: float, table_size: int) -> None:
        self.shift = shift
        self.multiplier = multiplier
        times = torch.arange(1, table_size + 1, dtype=torch.float64) / table_size
        self.sigmas = self.sigma(times * multiplier).float()

    def shifted(self, t: Tensor) -> Tensor:
        """Sigma at training time t in [0, 1]."""
        raise NotImplementedError

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """The timestep ComfyUI reports for a sigma: sigma scaled by the multiplier (shift not undone)."""
        return torch.as_tensor(sigma, dtype=torch.float32) * self.multiplier

    def sigma(self, timestep: Tensor) -> Tensor:
        return self.shifted(torch.as_tensor(timestep) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the process (0 the noisy end, 1 clean), on the shifted time axis."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.shifted(torch.tensor(1.0 - percent, dtype=torch.float64)))

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        return x

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        return x - model_output * expand_per_sample(sigma, x)

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False) -> Tensor:
        """``latent`` moved along the straight path to ``sigma``; at sigma 1 it is pure noise, so a full-strength
        start needs no special case (``max_denoise`` is accepted for the common interface)."""
        sigma = expand_per_sample(torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device), noise)
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        """The sampler's final state back to a latent: undo the (1 - sigma) scale of an unfinished path."""
        return latent / (
            1.0 - expand_per_sample(torch.as_tensor(sigma, dtype=latent.dtype, device=latent.device), latent)
        )

    def denoiser(self, model_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """Wrap ``model_fn(x, sigma, **cond)`` (a flow transformer, which takes sigma as its time) as a sampler
        model ``model(x, sigma, **cond) -> x0``."""

        def model(x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
            output = model_fn(self.calculate_input(sigma, x), sigma, **cond)
            return self.calculate_denoised(sigma, output.to(x.dtype), x)

        return model


class DiscreteFlow(FlowPrediction):
    """SD3 / SD3.5 (``ModelSamplingSD3``: multiplier 1000, default shift 3) and AuraFlow-style models
    (``ModelSamplingAuraFlow``: multiplier 1)."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0) -> None:
        super().__init__(shift, multiplier, table_size=1000)

    def shifted(self, t: Tensor) -> Tensor:
        return time_snr_shift(self.shift, t)


class FluxFlow(FlowPrediction):
    """FLUX.1 (``ModelSamplingFlux``): the exponential shift over 10,000 table entries; the timestep is sigma."""

    def __init__(self, shift: float = 1.15) -> None:
        super().__init__(shift, multiplier=1.0, table_size=10_000)

    def shifted(self, t: Tensor) -> Tensor:
        return flux_time_shift(self.shift, t)
