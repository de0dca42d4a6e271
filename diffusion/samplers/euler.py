"""Single-step ODE samplers of Karras et al. 2022 and their ancestral variants.

The ODE samplers run unchanged on rectified-flow models (the flow's ODE has the same form in sigma). The
ancestral ones split each step with ``ode.flow_ancestral_step`` there, as ComfyUI's RF variants do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import (
    Denoiser,
    StepCallback,
    ancestral_step,
    flow_ancestral_step,
    report_step,
    sigma_batch,
    to_d,
)
from diffusion.samplers.snr import flow_step, is_rectified_flow

__all__ = [
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_heunpp2",
]


@dataclass(frozen=True)
class _Churn:
    """Karras et al. 2022, Algorithm 2's churn settings and the noise it draws."""

    s_churn: float
    s_tmin: float
    s_tmax: float
    s_noise: float
    noise_sampler: NoiseSampler

    def __call__(self, x: Tensor, sigmas: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Algorithm 2 lines 5-7: raise the noise level to ``sigma_hat`` before the step."""
        in_range = self.s_tmin <= float(sigmas[i]) <= self.s_tmax
        gamma = min(self.s_churn / (len(sigmas) - 1), 2**0.5 - 1) if in_range else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            noise = self.noise_sampler(sigmas[i], sigma_hat)
            x = x + noise * self.s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        return x, sigma_hat


#: The higher-order part of one Algorithm 2 step: ``(x, d, sigma_hat, i) -> x_next`` from the churned state
#: ``x`` at ``sigma_hat`` and the slope ``d`` there, for a step that does not land on sigma 0.
_Correction = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def _algorithm_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any],
    callback: StepCallback | None,
    disable: bool | None,
    churn: _Churn,
    correction: _Correction | None,
) -> Tensor:
    """Karras et al. 2022, Algorithm 2: the loop Euler, Heun, Heun++ and DPM2 share.

    Each step churns, evaluates the slope at ``sigma_hat`` and hands it to ``correction``; a step to
    sigma 0, and every step when ``correction`` is None, is the plain Euler step, so the samplers
    differ only in how they spend their extra model calls on the other steps.
    """
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = churn(x, sigmas, i)
        denoised = model(x, sigma_batch(sigma_hat, x), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report_step(callback, x, i, sigmas[i], sigma_hat, denoised)
        if correction is None or sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = correction(x, d, sigma_hat, i)
    return x


def _euler_look_ahead(
    model: Denoiser, x: Tensor, d: Tensor, sigma: Tensor, sigma_to: Tensor, extra_args: dict[str, Any]
) -> tuple[Tensor, Tensor]:
    """The Euler prediction at ``sigma_to`` from slope ``d``, and the model's slope there.

    The second evaluation of Heun's method (and of Heun++'s look-ahead points, and of DPM2 at its midpoint).
    """
    x_to = x + d * (sigma_to - sigma)
    return x_to, to_d(x_to, sigma_to, model(x_to, sigma_batch(sigma_to, x), **extra_args))


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Karras et al. 2022, Algorithm 2 with Euler steps (first order, one model call per step)."""
    extra_args = extra_args or {}
    churn = _Churn(s_churn, s_tmin, s_tmax, s_noise, noise_sampler or gaussian_noise_sampler(x, seed))
    return _algorithm_2(model, x, sigmas, extra_args, callback, disable, churn, None)


@torch.no_grad()
def sample_euler_ancestral(
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
    """Euler step down to ``sigma_down``, then fresh noise up to ``sigma_next`` (ancestral sampling)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    if is_rectified_flow(model):
        return _euler_ancestral_flow(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _euler_ancestral_flow(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any],
    callback: StepCallback | None,
    disable: bool | None,
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler,
) -> Tensor:
    """Euler ancestral on a rectified-flow state: the straight line to ``sigma_down``, rescale, renoise."""
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, renoise, rescale = flow_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = flow_step(x, sigmas[i], sigma_down, denoised)
        if eta > 0:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Karras et al. 2022, Algorithm 2: Heun's second-order correction, Euler on the last step to 0."""
    extra_args = extra_args or {}
    churn = _Churn(s_churn, s_tmin, s_tmax, s_noise, noise_sampler or gaussian_noise_sampler(x, seed))

    def heun_correction(x: Tensor, d: Tensor, sigma_hat: Tensor, i: int) -> Tensor:
        _, d_2 = _euler_look_ahead(model, x, d, sigma_hat, sigmas[i + 1], extra_args)
        return x + (d + d_2) / 2 * (sigmas[i + 1] - sigma_hat)

    return _algorithm_2(model, x, sigmas, extra_args, callback, disable, churn, heun_correction)


@torch.no_grad()
def sample_heunpp2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Heun with look-ahead slopes weighted by noise level (the "Heun++" variant ComfyUI calls heunpp2).

    Each step takes Euler predictions one and two schedule points ahead and averages the slopes
    found there; the slope at ``sigma_k`` gets weight ``sigma_k / (2 sigma_0)`` and the current one
    the rest. Early in sampling (large sigmas) the look-ahead slopes weigh up to half, late in
    sampling the step is nearly Euler. Two points ahead are used while they exist and are
    nonzero, one point (Heun-like) before the last nonzero sigma, and plain Euler to 0.
    """
    extra_args = extra_args or {}
    churn = _Churn(s_churn, s_tmin, s_tmax, s_noise, noise_sampler or gaussian_noise_sampler(x, seed))
    scale = 2 * sigmas[0]

    def look_ahead_correction(x: Tensor, d: Tensor, sigma_hat: Tensor, i: int) -> Tensor:
        dt = sigmas[i + 1] - sigma_hat
        x_2, d_2 = _euler_look_ahead(model, x, d, sigma_hat, sigmas[i + 1], extra_args)
        if i + 2 >= len(sigmas) - 1 or sigmas[i + 2] == 0:
            w_2 = sigmas[i + 1] / scale
            return x + (d * (1 - w_2) + d_2 * w_2) * dt
        _, d_3 = _euler_look_ahead(model, x_2, d_2, sigmas[i + 1], sigmas[i + 2], extra_args)
        w_2, w_3 = sigmas[i + 1] / scale, sigmas[i + 2] / scale
        return x + (d * (1 - w_2 - w_3) + d_2 * w_2 + d_3 * w_3) * dt

    return _algorithm_2(model, x, sigmas, extra_args, callback, disable, churn, look_ahead_correction)


def _dpm_2_step(
    model: Denoiser, x: Tensor, d: Tensor, sigma: Tensor, sigma_to: Tensor, extra_args: dict[str, Any]
) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022) in sigma: the slope at the log-space midpoint carries the whole step."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    _, d_2 = _euler_look_ahead(model, x, d, sigma, sigma_mid, extra_args)
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    seed: int | None = None,
) -> Tensor:
    """Karras et al. 2022 Algorithm 2 with DPM-Solver-2 midpoint steps (k-diffusion's "DPM2")."""
    extra_args = extra_args or {}
    churn = _Churn(s_churn, s_tmin, s_tmax, s_noise, noise_sampler or gaussian_noise_sampler(x, seed))

    def midpoint_correction(x: Tensor, d: Tensor, sigma_hat: Tensor, i: int) -> Tensor:
        return _dpm_2_step(model, x, d, sigma_hat, sigmas[i + 1], extra_args)

    return _algorithm_2(model, x, sigmas, extra_args, callback, disable, churn, midpoint_correction)


@torch.no_grad()
def sample_dpm_2_ancestral(
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
    """DPM-Solver-2 step down to ``sigma_down``, then fresh noise up to ``sigma_next``."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    flow = is_rectified_flow(model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        if flow:
            sigma_down, sigma_up, rescale = flow_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm_2_step(model, x, d, sigmas[i], sigma_down, extra_args)
            if flow:
                x = rescale * x
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x
