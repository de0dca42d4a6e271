"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance", arXiv:2406.08070).

Plain classifier-free guidance steps along the guided noise estimate. CFG++ keeps the guided x0 estimate
but renoises with the *unconditional* one: a DDIM/Euler step from sigma to sigma_next becomes
``x_next = D_guided + sigma_next (x - D_uncond) / sigma`` instead of ``D_guided + sigma_next (x - D_guided) / sigma``.
Both estimates come from one model call (``ode.denoise_with_uncond``); where the model has none apart,
the two coincide and each sampler here is exactly its plain twin. ComfyUI's guidance scale is used
as is (it is not remapped to the paper's lambda in [0, 1]).

``res_multistep_cfg_pp`` and ``gradient_estimation_cfg_pp`` live beside their plain twins;
``dpmpp_2s_ancestral_cfg_pp`` runs its twin's loop (``dpmpp.dpmpp_2s_ancestral``) with the CFG++ flag.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.dpmpp import dpmpp_2s_ancestral
from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import (
    Denoiser,
    StepCallback,
    ancestral_step,
    denoise_with_uncond,
    report_step,
    sigma_batch,
    to_d,
)
from diffusion.samplers.snr import half_log_snr, is_rectified_flow, signal_scale

__all__ = [
    "sample_dpmpp_2m_cfg_pp",
    "sample_dpmpp_2s_ancestral_cfg_pp",
    "sample_euler_ancestral_cfg_pp",
    "sample_euler_cfg_pp",
]


def _scaled_ancestral_step(
    sigma: Tensor, sigma_next: Tensor, alpha: Tensor, alpha_next: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    """``ancestral_step`` between the VE-equivalent noise levels ``sigma / alpha``.

    A flow model at sigma = 1 has alpha = 0: the level is infinite and, in the limit, the step keeps
    ``sqrt(1 - min(eta, 1)^2)`` of the next level's noise from the state and draws the rest fresh.
    """
    if float(alpha) == 0.0:
        sigma_next_ve = sigma_next / alpha_next
        sigma_up = sigma_next_ve * min(eta, 1.0)
        return (sigma_next_ve**2 - sigma_up**2) ** 0.5, sigma_up
    return ancestral_step(sigma / alpha, sigma_next / alpha_next, eta)


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Euler ancestral with CFG++: land on the guided x0, renoise towards sigma_down with the unconditional noise.

    In VE-equivalent terms (``x / alpha`` at ``sigma / alpha``, see ``diffusion.samplers.snr``)
    the step is ``D + sigma_down (x - D_uncond) / sigma`` plus fresh noise of std ``sigma_up``; it is the
    DDIM form of Euler, and on a flow model too it uses the VE-equivalent ancestral split.
    """
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    flow = is_rectified_flow(model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond = denoise_with_uncond(model, x, sigma_batch(sigmas[i], x), extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha, alpha_next = signal_scale(sigmas[i], flow), signal_scale(sigmas[i + 1], flow)
        noise_direction = to_d(x, sigmas[i], alpha * uncond)
        sigma_down, sigma_up = _scaled_ancestral_step(sigmas[i], sigmas[i + 1], alpha, alpha_next, eta)
        x = alpha_next * denoised + alpha_next * sigma_down * noise_direction
        if eta > 0 and s_noise > 0:
            x = x + alpha_next * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Euler (DDIM) with CFG++: ``x_next = D + sigma_next (x - D_uncond) / sigma``; no noise is drawn."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++(2S) ancestral with CFG++, in ComfyUI's form.

    The whole step (both substeps and the fresh noise) runs on the unconditional estimates; the
    guidance ``D - D_uncond`` of the step's first call is added at the end, weighted by the signal
    scale of the next state (1 for VE, ``1 - sigma_next`` for flow). Flow models take the flow split
    (``ode.flow_ancestral_step``), as plain ``dpmpp_2s_ancestral`` does.
    """
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    return dpmpp_2s_ancestral(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cfg_pp=True)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """DPM-Solver++(2M) with CFG++: ``x_next = D + e^-h (x - D_uncond) + (1 - e^-h) (D - D_uncond_prev) / (2 r)``.

    The first-order part is the exponential-integrator form of the CFG++ Euler step; the
    second-order correction extrapolates from the previous step's unconditional estimate, with
    ``r = h_last / h`` in ``lambda = -log sigma`` as in plain 2M. VE formulas on every model, as ComfyUI's.
    """
    extra_args = extra_args or {}
    old_uncond: Tensor | None = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond = denoise_with_uncond(model, x, sigma_batch(sigmas[i], x), extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        lam = half_log_snr(sigmas[i], False)
        h = half_log_snr(sigmas[i + 1], False) - lam
        decay = torch.exp(-h)
        step = -decay * uncond
        if old_uncond is not None and sigmas[i + 1] != 0:
            half_inv_r = h / (2 * (lam - half_log_snr(sigmas[i - 1], False)))
            step = step - torch.expm1(-h) * half_inv_r * (denoised - old_uncond)
        x = denoised + step + decay * x
        old_uncond = uncond
    return x
