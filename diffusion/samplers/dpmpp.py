"""DPM-Solver++ samplers (Lu et al. 2022, arXiv:2211.01095) in k-diffusion's sigma formulation.

DPM-Solver++ integrates the ODE exactly in its linear part and approximates the denoised
estimate as a polynomial in ``lambda = -log(sigma)``. In the VE view a first-order step from
sigma to sigma_next is ``x' = (sigma_next / sigma) x + (1 - sigma_next / sigma) D``. The SDE
variants (eta > 0) shrink the deterministic part by ``exp(-eta h)`` and add matching noise.

On a rectified-flow model the SDE samplers step in that model's half-log-SNR with its signal scale
(``diffusion.samplers.snr``), and the ancestral one uses the flow split (``ode.flow_ancestral_step``), as
ComfyUI's do; with the VE formulas the noise they add would leave too much signal in the state. A VE model
gets exactly the VE formulas. ``dpmpp_2m`` is an ODE solver and runs unchanged on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.noise import BrownianTreeNoiseSampler, NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import (
    Denoiser,
    StepCallback,
    ancestral_step,
    denoise_with_step_estimate,
    flow_ancestral_step,
    report_step,
    sigma_batch,
    to_d,
)
from diffusion.samplers.snr import (
    flow_midpoint,
    flow_step,
    half_log_snr,
    is_rectified_flow,
    offset_first_sigma,
    sigma_at,
    signal_scale,
)

__all__ = [
    "brownian_noise",
    "dpmpp_2s_ancestral",
    "exp_step",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
]


def _lambda(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(lam: Tensor) -> Tensor:
    return lam.neg().exp()


def brownian_noise(x: Tensor, sigmas: Tensor, seed: int | None) -> BrownianTreeNoiseSampler:
    """The SDE samplers' default noise: one Brownian path over the schedule's nonzero range."""
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x, float(positive.min()), float(sigmas.max()), seed=0 if seed is None else seed)


def exp_step(x: Tensor, sigma: Tensor, sigma_to: Tensor, denoised: Tensor) -> Tensor:
    """First-order DPM-Solver++ step: exact for a constant denoised estimate."""
    return (sigma_to / sigma) * x - (_lambda(sigma) - _lambda(sigma_to)).expm1() * denoised


def _sde_setup(
    model: Denoiser, x: Tensor, sigmas: Tensor, noise_sampler: NoiseSampler | None, seed: int | None
) -> tuple[NoiseSampler, bool, Tensor]:
    """What every DPM-Solver++ SDE sampler sets up: its noise, whether the model is a flow, its schedule.

    The Brownian path spans the schedule as given; the samplers then step on it with a flow model's
    first sigma moved off 1 (``offset_first_sigma``), as ComfyUI's do.
    """
    noise_sampler = noise_sampler or brownian_noise(x, sigmas, seed)
    return noise_sampler, is_rectified_flow(model), offset_first_sigma(sigmas, model)


def _sde_noise(noise_sampler: NoiseSampler, sigma: Tensor, sigma_next: Tensor, eta_h: Tensor, s_noise: float) -> Tensor:
    """The noise a multistep DPM-Solver++ SDE step adds: std ``sigma_next sqrt(1 - exp(-2 eta h))``.

    It replaces the part of the noise the step's ``exp(-eta h)`` decay took out of the state.
    """
    return noise_sampler(sigma, sigma_next) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * s_noise


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
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
    """DPM-Solver++(2S) single-step second order, down to sigma_down, then ancestral noise."""
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    return dpmpp_2s_ancestral(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cfg_pp=False
    )


def dpmpp_2s_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: StepCallback | None,
    disable: bool | None,
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler,
    cfg_pp: bool,
) -> Tensor:
    """The DPM-Solver++(2S) ancestral loop both variants run; flow models take the flow split.

    ``cfg_pp`` runs the whole step (both substeps and the fresh noise) on the unconditional estimates and
    adds the guidance ``D - D_uncond`` of the step's first call at the end, weighted by the signal scale of
    the next state (1 for VE, ``1 - sigma_next`` for flow), as ComfyUI's dpmpp_2s_ancestral_cfg_pp does.
    """
    extra_args = extra_args or {}
    flow = is_rectified_flow(model)
    two_stage_step = _flow_2s_ancestral_step if flow else _ve_2s_ancestral_step

    def estimate_at(x_2: Tensor, sigma_2: Tensor) -> Tensor:
        return denoise_with_step_estimate(model, x_2, sigma_2, extra_args, cfg_pp)[1]

    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, estimate = denoise_with_step_estimate(model, x, sigmas[i], extra_args, cfg_pp)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        x_next = two_stage_step(x, sigmas[i], sigmas[i + 1], estimate, estimate_at, eta, s_noise, noise_sampler)
        if cfg_pp:
            guidance = denoised - estimate
            x_next = x_next + (1 - sigmas[i + 1]) * guidance if flow else x_next + guidance
        x = x_next
    return x


def _ve_2s_ancestral_step(
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    denoised: Tensor,
    estimate_at: Callable[[Tensor, Tensor], Tensor],
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler,
) -> Tensor:
    """One DPM-Solver++(2S) step to sigma_down through the lambda midpoint, then the ancestral noise."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    if sigma_down == 0:
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
    else:
        sigma_mid = _sigma(_lambda(sigma).lerp(_lambda(sigma_down), 0.5))
        denoised_2 = estimate_at(exp_step(x, sigma, sigma_mid, denoised), sigma_mid)
        x = exp_step(x, sigma, sigma_down, denoised_2)
    if sigma_next > 0:
        x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


def _flow_2s_ancestral_step(
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    denoised: Tensor,
    estimate_at: Callable[[Tensor, Tensor], Tensor],
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler,
) -> Tensor:
    """One DPM-Solver++(2S) ancestral step on a rectified-flow state: straight-line substeps, the flow split."""
    sigma_down, renoise, rescale = flow_ancestral_step(sigma, sigma_next, eta)
    if sigma_next == 0:
        return x + to_d(x, sigma, denoised) * (sigma_down - sigma)
    sigma_mid = flow_midpoint(sigma, sigma_down)
    denoised_2 = estimate_at(flow_step(x, sigma, sigma_mid, denoised), sigma_mid)
    x = flow_step(x, sigma, sigma_down, denoised_2)
    if eta > 0:
        x = rescale * x + noise_sampler(sigma, sigma_next) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_sde(
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
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++ stochastic second order: an intermediate point at fraction ``r`` of the log step.

    Each substep is the VE step on the VE-equivalent state ``x / alpha`` at ``sigma / alpha`` (see
    ``diffusion.samplers.snr``), scaled back by alpha; for a VE model alpha is exactly 1.
    """
    extra_args = extra_args or {}
    noise_sampler, flow, sigmas = _sde_setup(model, x, sigmas, noise_sampler, seed)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        lam, lam_next = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        sigma_mid = sigma_at(lam + (lam_next - lam) * r, flow)
        mix = 1 / (2 * r)
        alpha, alpha_mid, alpha_next = (signal_scale(s, flow) for s in (sigmas[i], sigma_mid, sigmas[i + 1]))
        ve_sigma, state = sigmas[i] / alpha, x / alpha
        sigma_down, sigma_up = ancestral_step(ve_sigma, sigma_mid / alpha_mid, eta)
        x_2 = exp_step(state, ve_sigma, sigma_down, denoised)
        x_2 = alpha_mid * (x_2 + noise_sampler(sigmas[i], sigma_mid) * s_noise * sigma_up)
        denoised_2 = model(x_2, sigma_batch(sigma_mid, x), **extra_args)
        sigma_down, sigma_up = ancestral_step(ve_sigma, sigmas[i + 1] / alpha_next, eta)
        x = exp_step(state, ve_sigma, sigma_down, (1 - mix) * denoised + mix * denoised_2)
        x = alpha_next * (x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """DPM-Solver++(2M): second order from the previous step's denoised estimate, one call per step."""
    extra_args = extra_args or {}
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if old_denoised is None or sigmas[i + 1] == 0:
            x = exp_step(x, sigmas[i], sigmas[i + 1], denoised)
        else:
            h = _lambda(sigmas[i + 1]) - _lambda(sigmas[i])
            h_last = _lambda(sigmas[i]) - _lambda(sigmas[i - 1])
            half_inv_r = h / (2 * h_last)
            x = exp_step(x, sigmas[i], sigmas[i + 1], (1 + half_inv_r) * denoised - half_inv_r * old_denoised)
        old_denoised = denoised
    return x


#: The ``(denoised, h)`` of a multistep SDE's earlier steps, newest first (at most two); ``h`` is None while
#: no step has left sigma 0's side of the schedule.
_History = list[tuple[Tensor, Tensor | None]]

#: One multistep SDE step that does not land on sigma 0, before its noise:
#: ``(x, denoised, sigma, sigma_next, h, flow, history) -> x_next``.
_MultistepSDEStep = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, bool, _History], Tensor]


def _multistep_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: StepCallback | None,
    disable: bool | None,
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
    seed: int | None,
    step: _MultistepSDEStep,
) -> Tensor:
    """The loop DPM-Solver++(2M) SDE and (3M) SDE share; they differ only in ``step``.

    Each step calls the model, lands on the denoised estimate at sigma 0, and otherwise runs ``step`` over
    the half-log-SNR step ``h`` with the earlier estimates, then adds the ``exp(-eta h)`` noise (``_sde_noise``).
    """
    extra_args = extra_args or {}
    noise_sampler, flow, sigmas = _sde_setup(model, x, sigmas, noise_sampler, seed)
    history: _History = []
    h: Tensor | None = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = half_log_snr(sigmas[i + 1], flow) - half_log_snr(sigmas[i], flow)
            x = step(x, denoised, sigmas[i], sigmas[i + 1], h, flow, history)
            if eta:
                x = x + _sde_noise(noise_sampler, sigmas[i], sigmas[i + 1], h * eta, s_noise)
        history = [(denoised, h), *history[:1]]
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_type: str = "midpoint",
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE with the midpoint or Heun form of the second-order correction."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")

    def second_order_step(
        x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, h: Tensor, flow: bool, history: _History
    ) -> Tensor:
        alpha_next = signal_scale(sigma_next, flow)
        eta_h = eta * h
        decay = (-h - eta_h).expm1().neg()
        x = sigma_next / sigma * (-eta_h).exp() * x + alpha_next * decay * denoised
        if history:
            old_denoised, h_last = history[0]
            if h_last is not None:
                slope = (denoised - old_denoised) * (h / h_last)
                if solver_type == "heun":
                    x = x + alpha_next * (decay / (-h - eta_h) + 1) * slope
                else:
                    x = x + alpha_next * 0.5 * decay * slope
        return x

    return _multistep_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, second_order_step
    )


@torch.no_grad()
def sample_dpmpp_3m_sde(
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
    """DPM-Solver++(3M) SDE: third order from the two previous denoised estimates."""

    def third_order_step(
        x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor, h: Tensor, flow: bool, history: _History
    ) -> Tensor:
        alpha, alpha_next = signal_scale(sigma, flow), signal_scale(sigma_next, flow)
        h_eta = h * (eta + 1)
        x = alpha_next / alpha * torch.exp(-h_eta) * x + alpha_next * (-h_eta).expm1().neg() * denoised
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        denoised_1, h_1 = history[0] if history else (denoised, None)
        denoised_2, h_2 = history[1] if len(history) > 1 else (denoised, None)
        if h_2 is not None:
            # h is never unset, so h_2 (set two steps back) implies h_1
            assert h_1 is not None
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + alpha_next * phi_2 * d1 - alpha_next * phi_3 * d2
        elif h_1 is not None:
            x = x + alpha_next * phi_2 * (denoised - denoised_1) / (h_1 / h)
        return x

    return _multistep_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, third_order_step
    )


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_type: str = "heun",
    seed: int | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE with the Heun form of the correction by default (ComfyUI's dpmpp_2m_sde_heun)."""
    return sample_dpmpp_2m_sde(
        model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type, seed
    )
