"""SEEDS: Stochastic Explicit Exponential Derivative-free Solvers (Gonzalez et al. 2023, NeurIPS,
arXiv:2305.14267), in data prediction and half-log-SNR time, as ComfyUI runs them; and the exponential
Heun methods that are SEEDS-2 with its intermediate point at the end of the step.

In ``lambda = log(alpha / sigma)`` a step of length h with noise strength eta shrinks the state by
``(sigma_next / sigma) e^(-eta h)``, moves it towards the x0 estimate by ``alpha_next (1 - e^(-(1 + eta) h))``,
and adds noise of std ``sigma_next sqrt(1 - e^(-2 eta h))``: the exact solution of the SDE for a
constant x0 estimate (eta = 0 is the ODE, DPM-Solver++). SEEDS-2 takes one such substep to the point
at fraction r of the step, evaluates the model there, and combines both estimates over the whole step
(``phi_1``: the DPM-Solver++ mix, ``phi_2``: the exponential-integrator weights ``phi_2(-h_eta) / r``). The
noise of the substeps is one Brownian path: the full step's noise carries the substep's forward, decayed
by ``e^((r - 1) eta h)``. Rectified-flow models step in their own lambda with their signal scale
(``diffusion.samplers.snr``), starting just off sigma = 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import Denoiser, StepCallback, report_step, sigma_batch
from diffusion.samplers.snr import half_log_snr, is_rectified_flow, offset_first_sigma, sigma_at, signal_scale

__all__ = [
    "sample_exp_heun_2_x0",
    "sample_exp_heun_2_x0_sde",
    "sample_seeds_2",
    "sample_seeds_3",
]


def _h_phi_1(h: Tensor) -> Tensor:
    """``h phi_1(h) = e^h - 1``."""
    return torch.expm1(h)


def _h_phi_2(h: Tensor) -> Tensor:
    """``h phi_2(h) = (e^h - 1 - h) / h``."""
    return (torch.expm1(h) - h) / h


def _carry_noise(noise: Tensor, segment: Tensor, fresh: Tensor) -> Tensor:
    """The normalised noise of a longer stretch of the path: the earlier part decayed by ``e^segment``
    (segment <= 0, in units of ``eta h``), plus fresh noise for the rest."""
    return noise * segment.exp() + segment.mul(2).expm1().neg().sqrt() * fresh


@torch.no_grad()
def sample_seeds_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    r: float = 0.5,
    solver_type: str = "phi_1",
    seed: int | None = None,
) -> Tensor:
    """SEEDS-2: two model calls per step, the second at fraction ``r`` of the step in lambda."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    inject_noise = eta > 0 and s_noise > 0
    flow = is_rectified_flow(model)
    sigmas = offset_first_sigma(sigmas, model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        sigma_1 = sigma_at(torch.lerp(lam, lam_next, r), flow)
        alpha_1, alpha_next = signal_scale(sigma_1, flow), signal_scale(sigma_next, flow)

        x_1 = sigma_1 / sigma * (-r * h * eta).exp() * x - alpha_1 * _h_phi_1(-r * h_eta) * denoised
        if inject_noise:
            noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigma, sigma_1)
            x_1 = x_1 + noise * sigma_1 * s_noise
        denoised_1 = model(x_1, sigma_batch(sigma_1, x), **extra_args)

        decayed = sigma_next / sigma * (-h * eta).exp() * x
        if solver_type == "phi_1":
            x = decayed - alpha_next * _h_phi_1(-h_eta) * torch.lerp(denoised, denoised_1, 1 / (2 * r))
        else:
            b_1 = _h_phi_2(-h_eta) / r
            b_0 = _h_phi_1(-h_eta) - b_1
            x = decayed - alpha_next * (b_0 * denoised + b_1 * denoised_1)
        if inject_noise:
            if r < 1:  # at r = 1 the substep's noise already covers the whole step
                noise = _carry_noise(noise, (r - 1) * h * eta, noise_sampler(sigma_1, sigma_next))
            x = x + noise * sigma_next * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
    seed: int | None = None,
) -> Tensor:
    """SEEDS-3: three model calls per step, at the start and at fractions ``r_1`` and ``r_2`` in lambda."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    inject_noise = eta > 0 and s_noise > 0
    flow = is_rectified_flow(model)
    sigmas = offset_first_sigma(sigmas, model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        sigma_1 = sigma_at(torch.lerp(lam, lam_next, r_1), flow)
        sigma_2 = sigma_at(torch.lerp(lam, lam_next, r_2), flow)
        alpha_1, alpha_2 = signal_scale(sigma_1, flow), signal_scale(sigma_2, flow)
        alpha_next = signal_scale(sigma_next, flow)

        x_1 = sigma_1 / sigma * (-r_1 * h * eta).exp() * x - alpha_1 * _h_phi_1(-r_1 * h_eta) * denoised
        if inject_noise:
            noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigma, sigma_1)
            x_1 = x_1 + noise * sigma_1 * s_noise
        denoised_1 = model(x_1, sigma_batch(sigma_1, x), **extra_args)

        a_1 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a_0 = _h_phi_1(-r_2 * h_eta) - a_1
        x_2 = sigma_2 / sigma * (-r_2 * h * eta).exp() * x - alpha_2 * (a_0 * denoised + a_1 * denoised_1)
        if inject_noise:
            noise = _carry_noise(noise, (r_1 - r_2) * h * eta, noise_sampler(sigma_1, sigma_2))
            x_2 = x_2 + noise * sigma_2 * s_noise
        denoised_2 = model(x_2, sigma_batch(sigma_2, x), **extra_args)

        b_2 = _h_phi_2(-h_eta) / r_2
        b_0 = _h_phi_1(-h_eta) - b_2
        x = sigma_next / sigma * (-h * eta).exp() * x - alpha_next * (b_0 * denoised + b_2 * denoised_2)
        if inject_noise:
            noise = _carry_noise(noise, (r_2 - 1) * h * eta, noise_sampler(sigma_2, sigma_next))
            x = x + noise * sigma_next * s_noise
    return x


@torch.no_grad()
def sample_exp_heun_2_x0(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    solver_type: str = "phi_2",
) -> Tensor:
    """Exponential Heun in x0 prediction and lambda time: a DPM-Solver++(1) step to the end of the step,
    a model call there, and the ``phi_2`` trapezoid of both estimates (SEEDS-2 with r = 1, eta = 0)."""
    return sample_seeds_2(
        model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0, r=1.0, solver_type=solver_type
    )


@torch.no_grad()
def sample_exp_heun_2_x0_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_type: str = "phi_2",
    seed: int | None = None,
) -> Tensor:
    """Stochastic exponential Heun: SEEDS-2 with r = 1 (the predictor's noise is kept for the corrector)."""
    return sample_seeds_2(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, 1.0, solver_type, seed
    )
