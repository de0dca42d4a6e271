"""Samplers that redraw noise each step from the model's clean estimate: DDPM and LCM.

DDPM's posterior assumes the VE/VP states of a discrete diffusion model and is used unchanged on any
model, as in ComfyUI.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import Denoiser, StepCallback, report_step, sigma_batch
from diffusion.samplers.snr import is_rectified_flow, signal_scale

__all__ = ["sample_ddpm", "sample_lcm"]


def _ddpm_posterior_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, noise: Tensor) -> Tensor:
    """One draw from the DDPM posterior ``q(x_next | x, x0 = denoised)`` (Ho et al. 2020, eq. 6-7).

    The posterior is defined on the variance-preserving state ``sqrt(a) * x`` with
    ``a = 1 / (1 + sigma^2)``; the schedule's two sigmas define the step's ``alpha = a / a_next``.
    """
    a, a_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    alpha = a / a_next
    beta = 1 - alpha
    state = x * a.sqrt()
    mean = (a_next.sqrt() * beta / (1 - a)) * denoised + (alpha.sqrt() * (1 - a_next) / (1 - a)) * state
    std = ((1 - a_next) / (1 - a) * beta).sqrt()
    return (mean + std * noise) / a_next.sqrt()


@torch.no_grad()
def sample_ddpm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Ancestral DDPM sampling over an arbitrary sigma schedule; the last step to 0 returns x0."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
            x = _ddpm_posterior_step(x, denoised, sigmas[i], sigmas[i + 1], noise)
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023; Luo et al. 2023 for latent consistency
    models): jump to the model's x0, then re-noise it to the next sigma with fresh noise (on a
    rectified-flow model, along its straight path: ``(1 - sigma) x0 + sigma noise``)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    flow = is_rectified_flow(model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            if flow:
                x = x * signal_scale(sigmas[i + 1], flow)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x
