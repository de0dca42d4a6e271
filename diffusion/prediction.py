"""Model wrappers: from a UNet's raw output to the denoised estimate the samplers work with.

Stable Diffusion UNets were trained as discrete DDPMs (Ho et al. 2020) on 1000 timesteps; the
samplers instead work in the variance-exploding parametrisation of Karras et al. 2022, where
``x = x0 + sigma * noise`` and ``model(x, sigma)`` returns an estimate of ``x0``. The two views are
the same process rescaled: a DDPM state ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` divided by
``sqrt(a_t)`` is ``x0 + sigma_t noise`` with ``sigma_t = sqrt((1 - a_t) / a_t)`` (``a`` =
alphas_cumprod). So the wrapper owns two things: the table of the 1000 training sigmas (to turn a
continuous sigma back into the timestep the UNet was conditioned on) and the output
parametrisation (epsilon or v, Salimans & Ho 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "DiscreteSchedule",
    "EpsPrediction",
    "ModelSampling",
    "UNetFn",
    "VPrediction",
    "expand_per_sample",
    "scaled_linear_schedule",
]


class UNetFn(Protocol):
    """A diffusion model's forward: ``(x_in, timesteps, context, **cond) -> raw output`` (eps, v or flow);
    ``cond`` holds tensors (``y``, ``concat``, ``guidance``) and lists of them (``reference_latents``)."""

    def __call__(
        self, x_in: Tensor, timesteps: Tensor, context: Tensor, **cond: Tensor | Sequence[Tensor]
    ) -> Tensor: ...


def expand_per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Per-batch scalars ``[B]`` (or a 0-d scalar) broadcast over a ``[B, C, H, W]`` tensor."""
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


class DiscreteSchedule:
    """The noise levels a discrete-time model was trained on, indexed by timestep 0..N-1.

    Conversions interpolate linearly in log-sigma between neighbouring table entries, as
    k-diffusion's ``DiscreteSchedule`` does: samplers ask for sigmas between the trained ones
    (Karras schedules, Heun midpoints), and the UNet's sinusoidal timestep embedding accepts a
    fractional timestep, so rounding would add error for no gain.
    """

    def __init__(self, sigmas: Tensor) -> None:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError(
                f"a discrete schedule needs a 1-D table of at least 2 sigmas, got shape {tuple(sigmas.shape)}"
            )
        if not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ValueError("the sigma table must increase strictly with the timestep")
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log()

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose interpolated sigma equals ``sigma`` (clamped to the table)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log().reshape(-1)
        low = torch.searchsorted(log_sigmas, log_sigma, right=True).sub(1).clamp(0, self.num_timesteps - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        weight = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (low + weight).reshape(sigma.shape)

    def sigma(self, timestep: Tensor) -> Tensor:
        """Sigma at a (possibly fractional) timestep, log-linear between table entries."""
        timestep = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, self.num_timesteps - 1)
        log_sigmas = self.log_sigmas.to(timestep.device)
        low = timestep.floor().long().clamp(max=self.num_timesteps - 2)
        weight = timestep - low
        return torch.lerp(log_sigmas[low], log_sigmas[low + 1], weight).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the sampling process: 0 is the noisiest end, 1 is clean.

        ComfyUI's timestep ranges (``ConditioningSetTimestepRange``, ControlNet start/end) are
        expressed this way; the ends map outside the table so that 0 admits every sigma and 1
        admits none but zero.
        """
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))))


def scaled_linear_schedule(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000
) -> DiscreteSchedule:
    """The Latent Diffusion training schedule (SD1.x, SD2.x, SDXL): betas linear in sqrt(beta).

    Computed in float64 and rounded once; diffusers accumulates the product in float32, so its
    table differs from this one by up to ~1.3e-5 relative (measured), far below sampling error.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return DiscreteSchedule((((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float())


class EpsPrediction:
    """A discrete-time model that predicts the added noise (epsilon).

    The UNet sees ``x / sqrt(sigma^2 + 1)``: the DDPM-scaled state it was trained on. With
    ``x = x0 + sigma * eps`` the denoised estimate is ``x - sigma * eps``.
    """

    sigma_data = 1.0

    def __init__(self, schedule: DiscreteSchedule | None = None) -> None:
        self.schedule = schedule if schedule is not None else scaled_linear_schedule()

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    @property
    def sigmas(self) -> Tensor:
        return self.schedule.sigmas

    def timestep(self, sigma: Tensor) -> Tensor:
        return self.schedule.timestep(sigma)

    def sigma(self, timestep: Tensor) -> Tensor:
        return self.schedule.sigma(timestep)

    def percent_to_sigma(self, percent: float) -> float:
        return self.schedule.percent_to_sigma(percent)

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        return x / expand_per_sample((sigma**2 + self.sigma_data**2) ** 0.5, x)

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        return x - model_output * expand_per_sample(sigma, x)

    def noise_scaling(self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False) -> Tensor:
        """The sampler's starting point: ``latent`` noised to ``sigma``.

        A full-strength start (``max_denoise``) treats the latent as carrying no signal: the DDPM
        prior ``x_T ~ N(0, 1)`` rescaled by ``1/sqrt(a_T)`` has variance ``sigma^2 + 1``, not
        ``sigma^2``. diffusers' ``init_noise_sigma`` uses the same ``sqrt(sigma_max^2 + 1)``.
        """
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        scale = (sigma**2 + 1.0) ** 0.5 if max_denoise else sigma
        return latent + noise * expand_per_sample(scale, noise)

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor:
        """The sampler's final state back to a latent: the identity for VE-style models."""
        return latent

    def denoiser(self, unet_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """Wrap ``unet_fn(x_in, timesteps, **cond)`` as a sampler model ``model(x, sigma, **cond) -> x0``."""

        def model(x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
            output = unet_fn(self.calculate_input(sigma, x), self.timestep(sigma), **cond)
            return self.calculate_denoised(sigma, output.to(x.dtype), x)

        return model


class VPrediction(EpsPrediction):
    """A discrete-time model that predicts velocity ``v = alpha * eps - sigma_vp * x0`` (SD2 768-v).

    In the VE view (Salimans & Ho 2022, with sigma_data = 1) this gives
    ``x0 = x * sd^2 / (sigma^2 + sd^2) - v * sigma * sd / sqrt(sigma^2 + sd^2)``.
    """

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        sigma = expand_per_sample(sigma, x)
        total = sigma**2 + self.sigma_data**2
        return x * (self.sigma_data**2 / total) - model_output * (sigma * self.sigma_data / total**0.5)


class ModelSampling(Protocol):
    """What schedules and the sampling pipeline need from a model wrapper (read-only: a schedule is
    fixed once the model is loaded)."""

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    @property
    def sigmas(self) -> Tensor: ...

    def timestep(self, sigma: Tensor) -> Tensor: ...

    def sigma(self, timestep: Tensor) -> Tensor: ...

    def percent_to_sigma(self, percent: float) -> float: ...

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor: ...

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor: ...

    def noise_scaling(
        self, sigma: Tensor | float, noise: Tensor, latent: Tensor, max_denoise: bool = False
    ) -> Tensor: ...

    def inverse_noise_scaling(self, sigma: Tensor | float, latent: Tensor) -> Tensor: ...
