"""SA-Solver: Stochastic Adams Solver (Xue et al. 2023, NeurIPS, arXiv:2309.05019), in data prediction and
half-log-SNR time, as ComfyUI runs it.

With noise strength tau, the SDE's exact step from ``lambda_s`` to ``lambda_t`` (``h = lambda_t - lambda_s``) is
``x_t = (sigma_t / sigma_s) e^(-tau^2 h) x_s + alpha_t (1 + tau^2) integral e^((1 + tau^2)(l - lambda_t)) D(l) dl
+ sigma_t sqrt(1 - e^(-2 tau^2 h)) z``. The Adams methods put a polynomial through the x0 estimates of the
last steps and integrate it exactly (``stochastic_adams_weights``): the predictor extrapolates to the next
step from the last ``predictor_order`` estimates; after the model is called there, the corrector redoes
the step with the last ``corrector_order`` estimates, the new one included, and the same noise. PECE
evaluates the corrected state again. tau is 1 inside the middle of the process (from 20% to 80% of it in
the model's timesteps) and 0 (an ODE step) outside. The orders shrink over the last steps of a schedule
that ends at 0. Rectified-flow models step in their own lambda with their signal scale
(``diffusion.samplers.snr``), starting just off sigma = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.prediction import EpsPrediction
from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import Denoiser, StepCallback, model_sampling_of, report_step, sigma_batch
from diffusion.samplers.snr import half_log_snr, is_rectified_flow, offset_first_sigma, signal_scale

__all__ = [
    "TauFunction",
    "sample_sa_solver",
    "sample_sa_solver_pece",
    "stochastic_adams_weights",
    "tau_interval",
]

#: tau as a function of the noise level the step goes to.
TauFunction = Callable[[Tensor], float]


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> TauFunction:
    """tau = ``eta`` for noise levels in ``[end_sigma, start_sigma]``, 0 elsewhere (SA-Solver's interval,
    placed in sigma rather than the reference code's time)."""

    def tau(sigma: Tensor) -> float:
        return eta if eta > 0 and start_sigma >= float(sigma) >= end_sigma else 0.0

    return tau


def _default_tau(model: Denoiser) -> TauFunction:
    """The stochastic interval from 20% to 80% of the process in the model's timesteps; a bare denoiser is
    taken to have the discrete SD 1.x/SDXL schedule."""
    sampling = model_sampling_of(model) or EpsPrediction()
    return tau_interval(sampling.percent_to_sigma(0.2), sampling.percent_to_sigma(0.8))


def stochastic_adams_weights(nodes: Tensor, lambda_s: Tensor, lambda_t: Tensor, tau: float) -> Tensor:
    """``(1 + tau^2) integral_{lambda_s}^{lambda_t} e^((1 + tau^2)(l - lambda_t)) L_j(l) dl`` for the Lagrange basis
    polynomials ``L_j`` through ``nodes`` (SA-Solver eqs. 15 and 18, without the factor alpha_t).

    In ``v = l - lambda_t`` the moments ``m_p = k integral_{-h}^0 e^(k v) v^p dv`` (``k = 1 + tau^2``) follow by parts,
    ``m_p = [p = 0] - (-h)^p e^(-k h) - (p / k) m_(p-1)``; the weights are the solution of
    ``sum_j w_j v_j^p = m_p``. Computed in float64.
    """
    k = 1.0 + tau**2
    offsets = (nodes - lambda_t).double()
    h = float(lambda_t - lambda_s)
    decay = torch.tensor(-k * h, dtype=torch.float64).exp()
    moments: list[Tensor] = []
    for p in range(len(nodes)):
        moment = (1.0 if p == 0 else 0.0) - (-h) ** p * decay
        if p > 0:
            moment = moment - p / k * moments[-1]
        moments.append(moment)
    powers = torch.stack([offsets**p for p in range(len(nodes))])
    return torch.linalg.solve(powers, torch.stack(moments).to(powers.device))


def _adams_combination(estimates: list[Tensor], weights: Tensor) -> Tensor:
    return sum((w * d for w, d in zip(weights.tolist(), estimates)), torch.zeros_like(estimates[0]))


def _adams_step(
    x: Tensor,
    estimates: list[Tensor],
    nodes: Tensor,
    lambda_s: Tensor,
    lambda_t: Tensor,
    sigma_s: Tensor,
    sigma_t: Tensor,
    tau: float,
    flow: bool,
) -> Tensor:
    """The deterministic part of the SDE's step from ``sigma_s`` to ``sigma_t`` with the x0 estimates at
    ``nodes``: the predictor takes it from the last estimates, the corrector redoes the same step with the
    new one included; only the nodes differ."""
    weights = stochastic_adams_weights(nodes, lambda_s, lambda_t, tau)
    weights = weights * float(signal_scale(sigma_t, flow))
    x = sigma_t / sigma_s * (-(tau**2) * (lambda_t - lambda_s)).exp() * x
    return x + _adams_combination(estimates, weights)


@torch.no_grad()
def sample_sa_solver(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    tau_func: TauFunction | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    seed: int | None = None,
) -> Tensor:
    """SA-Solver predictor-corrector: one model call per step (two with ``use_pece``)."""
    if len(sigmas) <= 1:
        return x
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    tau_of = tau_func or _default_tau(model)
    flow = is_rectified_flow(model)
    sigmas = offset_first_sigma(sigmas, model)
    lambdas = half_log_snr(sigmas, flow)
    steps = len(sigmas) - 1
    lower_order_to_end = float(sigmas[-1]) == 0.0
    estimates: list[Tensor] = []
    x_pred = x
    tau = 0.0
    noise: Tensor | None = None
    for i in trange(steps, disable=disable):
        denoised = model(x_pred, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x_pred, i, sigmas[i], sigmas[i], denoised)
        estimates = (estimates + [denoised])[-max(predictor_order, corrector_order) :]
        order_p = min(predictor_order, len(estimates))
        order_c = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(estimates))
        if lower_order_to_end:
            order_p, order_c = min(order_p, steps - 1 - i), min(order_c, steps - i)

        if order_c == 0:
            x = x_pred
        else:
            nodes = lambdas[i - order_c + 1 : i + 1]
            x = _adams_step(
                x, estimates[-order_c:], nodes, lambdas[i - 1], lambdas[i], sigmas[i - 1], sigmas[i], tau, flow
            )
            if noise is not None:
                x = x + noise
            if use_pece:
                denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
                estimates[-1] = denoised

        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = tau_of(sigmas[i + 1])
        nodes = lambdas[i - order_p + 1 : i + 1]
        x_pred = _adams_step(
            x, estimates[-order_p:], nodes, lambdas[i], lambdas[i + 1], sigmas[i], sigmas[i + 1], tau, flow
        )
        noise = None
        if tau > 0 and s_noise > 0:
            h = lambdas[i + 1] - lambdas[i]
            noise_std = sigmas[i + 1] * (-2 * tau**2 * h).expm1().neg().sqrt() * s_noise
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * noise_std
            x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    tau_func: TauFunction | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    predictor_order: int = 3,
    corrector_order: int = 4,
    seed: int | None = None,
) -> Tensor:
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate): the corrected state is evaluated again
    and that estimate replaces the predicted one."""
    return sample_sa_solver(
        model,
        x,
        sigmas,
        extra_args,
        callback,
        disable,
        tau_func,
        s_noise,
        noise_sampler,
        predictor_order,
        corrector_order,
        use_pece=True,
        seed=seed,
    )
