"""ER-SDE-Solver (Cui et al. 2023, "Elucidating the Solution Space of Extended Reverse-Time SDE for Diffusion
Models", arXiv:2309.06169): the VP ER-SDE-Solver-3 in data prediction, as ComfyUI runs it.

The extended reverse-time SDE has a family of solutions indexed by a noise scale function
``phi(lambda)`` of the VE-equivalent noise level ``lambda = sigma / alpha``. A first-order step from
``lambda_s`` to ``lambda_t`` is exact for a constant x0 estimate:
``x_t / alpha_t = r x_s / alpha_s + (1 - r) D + sqrt(lambda_t^2 - r^2 lambda_s^2) z`` with
``r = phi(lambda_t) / phi(lambda_s)``. Stages 2 and 3 add the first and second divided differences of
the x0 estimates over past steps, each times an integral of ``1 / phi`` over the step, taken by a
200-point left Riemann sum from ``lambda_t``. The default ``phi(l) = l (e^(l^0.3) + 10)`` is the paper's
choice for few steps. Rectified-flow models step in their own lambda with their signal scale
(``diffusion.samplers.snr``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.noise import NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import Denoiser, StepCallback, report_step, sigma_batch
from diffusion.samplers.snr import is_rectified_flow, offset_first_sigma, signal_scale

__all__ = ["INTEGRATION_POINTS", "default_noise_scaler", "sample_er_sde"]

#: Points of the Riemann sums that integrate ``1 / phi`` over a step (ComfyUI's number).
INTEGRATION_POINTS = 200


def default_noise_scaler(lam: Tensor) -> Tensor:
    """``phi(lambda) = lambda (exp(lambda^0.3) + 10)``: the noise scale function of the reference ER-SDE-Solver."""
    return lam * ((lam**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    noise_scaler: Callable[[Tensor], Tensor] | None = None,
    max_stage: int = 3,
    seed: int | None = None,
) -> Tensor:
    """ER-SDE-Solver up to ``max_stage`` (1 to 3) stages; stages warm up as past estimates accumulate."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, seed)
    phi = noise_scaler or default_noise_scaler
    flow = is_rectified_flow(model)
    sigmas = offset_first_sigma(sigmas, model)
    levels = sigmas / signal_scale(sigmas, flow)
    points = torch.arange(INTEGRATION_POINTS, dtype=sigmas.dtype, device=sigmas.device)
    old_denoised: Tensor | None = None
    old_slope: Tensor | None = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            level, level_next = levels[i], levels[i + 1]
            alpha, alpha_next = signal_scale(sigmas[i], flow), signal_scale(sigmas[i + 1], flow)
            r = phi(level_next) / phi(level)
            x = alpha_next / alpha * r * x + alpha_next * (1 - r) * denoised
            if stage >= 2 and old_denoised is not None:
                dt = level_next - level
                spacing = -dt / INTEGRATION_POINTS
                positions = level_next + points * spacing
                scaled = phi(positions)
                slope = (denoised - old_denoised) / (level - levels[i - 1])
                x = x + alpha_next * (dt + (1 / scaled).sum() * spacing * phi(level_next)) * slope
                if stage >= 3 and old_slope is not None:
                    curve_integral = ((positions - level) / scaled).sum() * spacing
                    curvature = (slope - old_slope) / ((level - levels[i - 2]) / 2)
                    x = x + alpha_next * (dt**2 / 2 + curve_integral * phi(level_next)) * curvature
                old_slope = slope
            if s_noise > 0:
                noise_std = (level_next**2 - level**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_next * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * noise_std
        old_denoised = denoised
    return x
