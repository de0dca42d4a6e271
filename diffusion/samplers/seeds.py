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

from collections.abc import Callable
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


class _SeedsStep:
    """One SEEDS step from sigma to sigma_next in lambda time: the state, its first x0 estimate, the noise
    path drawn so far, and the arithmetic every stage of the step shares."""

    def __init__(
        self,
        model: Denoiser,
        extra_args: dict[str, Any],
        x: Tensor,
        denoised: Tensor,
        sigma: Tensor,
        sigma_next: Tensor,
        flow: bool,
        eta: float,
        s_noise: float,
        noise_sampler: NoiseSampler,
    ) -> None:
        self.model, self.extra_args, self.x, self.denoised = model, extra_args, x, denoised
        self.sigma, self.sigma_next, self.flow = sigma, sigma_next, flow
        self.eta, self.s_noise, self.noise_sampler = eta, s_noise, noise_sampler
        self.inject_noise = eta > 0 and s_noise > 0
        self.noise: Tensor | None = None
        self.lam, self.lam_next = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        self.h = self.lam_next - self.lam
        self.h_eta = self.h * (eta + 1)

    def sigma_at(self, r: float) -> Tensor:
        """The sigma at fraction ``r`` of the step in lambda."""
        return sigma_at(torch.lerp(self.lam, self.lam_next, r), self.flow)

    def alpha(self, sigma_to: Tensor) -> Tensor:
        return signal_scale(sigma_to, self.flow)

    def decayed(self, sigma_to: Tensor, r: float) -> Tensor:
        """The state shrunk for a stage to ``sigma_to`` at fraction ``r``: ``(sigma_to / sigma) e^(-r eta h) x``."""
        return sigma_to / self.sigma * (-r * self.h * self.eta).exp() * self.x

    def estimate(self, x_k: Tensor, sigma_k: Tensor) -> Tensor:
        return self.model(x_k, sigma_batch(sigma_k, self.x), **self.extra_args)

    def with_noise(self, x_k: Tensor, sigma_k: Tensor) -> Tensor:
        """A stage's state plus the path's noise so far at ``sigma_k`` (unchanged when no noise is drawn)."""
        return x_k if self.noise is None else x_k + self.noise * sigma_k * self.s_noise

    def carry_noise(self, r_from: float, r_to: float, sigma_from: Tensor, sigma_to: Tensor) -> None:
        """Extend the noise path from fraction ``r_from`` to ``r_to`` of the step."""
        if self.noise is not None:
            fresh = self.noise_sampler(sigma_from, sigma_to)
            self.noise = _carry_noise(self.noise, (r_from - r_to) * self.h * self.eta, fresh)

    def first_stage(self, r: float) -> tuple[Tensor, Tensor]:
        """The DPM-Solver++(1) substep to fraction ``r`` (the noise path starts there), and the model's
        estimate at its end: ``(sigma_1, denoised_1)``."""
        sigma_1 = self.sigma_at(r)
        x_1 = self.decayed(sigma_1, r) - self.alpha(sigma_1) * _h_phi_1(-r * self.h_eta) * self.denoised
        if self.inject_noise:
            self.noise = (-2 * r * self.h * self.eta).expm1().neg().sqrt() * self.noise_sampler(self.sigma, sigma_1)
        return sigma_1, self.estimate(self.with_noise(x_1, sigma_1), sigma_1)

    def phi_2_end(self, denoised_r: Tensor, r: float) -> Tensor:
        """The step's end before its noise, from its first estimate and the one at fraction ``r``, with the
        exponential-integrator weights ``b_r = phi_2(-h_eta) / r``, ``b_0 = phi_1(-h_eta) - b_r``: SEEDS-2's
        ``phi_2`` solver and SEEDS-3's last stage are this one update."""
        b_r = _h_phi_2(-self.h_eta) / r
        b_0 = _h_phi_1(-self.h_eta) - b_r
        return self.decayed(self.sigma_next, 1.0) - self.alpha(self.sigma_next) * (
            b_0 * self.denoised + b_r * denoised_r
        )


def _seeds(
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
    stages: Callable[[_SeedsStep], Tensor],
) -> Tensor:
    """The loop the SEEDS samplers share: ``stages`` takes each step from its first estimate; the last step
    to sigma 0 returns the x0 estimate."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    flow = is_rectified_flow(model)
    sigmas = offset_first_sigma(sigmas, model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        step = _SeedsStep(model, extra_args, x, denoised, sigmas[i], sigmas[i + 1], flow, eta, s_noise, noise_sampler)
        x = stages(step)
    return x


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

    def stages(step: _SeedsStep) -> Tensor:
        sigma_1, denoised_1 = step.first_stage(r)
        if solver_type == "phi_1":
            decayed, alpha_next = step.decayed(step.sigma_next, 1.0), step.alpha(step.sigma_next)
            x = decayed - alpha_next * _h_phi_1(-step.h_eta) * torch.lerp(step.denoised, denoised_1, 1 / (2 * r))
        else:
            x = step.phi_2_end(denoised_1, r)
        if r < 1:  # at r = 1 the substep's noise already covers the whole step
            step.carry_noise(r, 1.0, sigma_1, step.sigma_next)
        return step.with_noise(x, step.sigma_next)

    return _seeds(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, stages)


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

    def stages(step: _SeedsStep) -> Tensor:
        sigma_1, denoised_1 = step.first_stage(r_1)
        sigma_2 = step.sigma_at(r_2)
        a_1 = r_2 / r_1 * _h_phi_2(-r_2 * step.h_eta)
        a_0 = _h_phi_1(-r_2 * step.h_eta) - a_1
        x_2 = step.decayed(sigma_2, r_2) - step.alpha(sigma_2) * (a_0 * step.denoised + a_1 * denoised_1)
        step.carry_noise(r_1, r_2, sigma_1, sigma_2)
        denoised_2 = step.estimate(step.with_noise(x_2, sigma_2), sigma_2)

        x = step.phi_2_end(denoised_2, r_2)
        step.carry_noise(r_2, 1.0, sigma_2, step.sigma_next)
        return step.with_noise(x, step.sigma_next)

    return _seeds(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, seed, stages)


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
