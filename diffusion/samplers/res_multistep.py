"""RES multistep: the second-order exponential multistep method of Zhang et al. 2023 ("Improved Order
Analysis and Design of Exponential Integrator for Diffusion Models Sampling", arXiv:2308.02157).

In ``lambda = -log sigma`` the VE probability-flow ODE is ``dx/dlambda = D - x``, so a step of length h is
``x' = e^-h x + integral_0^h e^-(h - u) D(lambda + u) du``. RES takes D as the straight line through the
current estimate and the previous step's and integrates it exactly:
``x' = e^-h x + h (b1 D + b2 D_prev)`` with ``b1 = phi1(-h) - phi2(-h) / c2``, ``b2 = phi2(-h) / c2``,
``phi1(z) = (e^z - 1) / z``, ``phi2(z) = (phi1(z) - 1) / z`` and ``c2`` the previous node's offset in units
of h (negative: it lies behind). The first step, and any step that lands on sigma 0, is Euler.

The ancestral variants land on ``sigma_down`` and add fresh noise of std ``sigma_up`` (``ode.ancestral_step``);
the previous node's offset is then measured from where the previous step landed, as in ComfyUI. These
are VE formulas on every model, as in ComfyUI (on a rectified-flow model the ancestral noise leaves
the state with too much signal, as ComfyUI's does). The CFG++ variants (Chung et al. 2024) renoise
with the unconditional estimate: see ``diffusion.samplers.cfg_pp``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import (
    Denoiser,
    StepCallback,
    ancestral_step,
    denoise_with_step_estimate,
    report_step,
    to_d,
)
from diffusion.samplers.snr import half_log_snr

__all__ = [
    "res_multistep",
    "sample_res_multistep",
    "sample_res_multistep_ancestral",
    "sample_res_multistep_ancestral_cfg_pp",
    "sample_res_multistep_cfg_pp",
]


def _phi_1(z: Tensor) -> Tensor:
    return torch.expm1(z) / z


def _phi_2(z: Tensor) -> Tensor:
    return (_phi_1(z) - 1.0) / z


def res_multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: StepCallback | None,
    disable: bool | None,
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
    cfg_pp: bool,
) -> Tensor:
    """The RES multistep loop every variant runs: ``eta`` > 0 adds ancestral noise, ``cfg_pp`` renoises with
    the unconditional estimate (and carries it, not the guided one, to the next step)."""
    extra_args = extra_args or {}
    old_denoised: Tensor | None = None
    old_sigma_down: Tensor | None = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond = denoise_with_step_estimate(model, x, sigmas[i], extra_args, cfg_pp)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None or old_sigma_down is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            lam = half_log_snr(sigmas[i], False)
            h = half_log_snr(sigma_down, False) - lam
            c2 = (half_log_snr(sigmas[i - 1], False) - half_log_snr(old_sigma_down, False)) / h
            phi_1, phi_2 = _phi_1(-h), _phi_2(-h)
            b1 = torch.nan_to_num(phi_1 - phi_2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi_2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = torch.exp(-h) * x + h * (b1 * uncond + b2 * old_denoised)
        if sigmas[i + 1] > 0 and eta > 0:
            assert noise_sampler is not None  # the ancestral variants always have one
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = uncond, sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """RES second-order multistep ODE solver: one model call per step."""
    return res_multistep(model, x, sigmas, extra_args, callback, disable, 0.0, 1.0, None, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """RES multistep with CFG++: the state is pushed by the guidance ``D - D_uncond``, then stepped on the
    unconditional estimates."""
    return res_multistep(model, x, sigmas, extra_args, callback, disable, 0.0, 1.0, None, cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral(
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
    """RES multistep down to ``sigma_down``, then fresh noise up to ``sigma_next``."""
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    return res_multistep(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(
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
    """RES multistep ancestral with CFG++."""
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    return res_multistep(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, cfg_pp=True)
