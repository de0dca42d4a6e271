"""Linear multistep samplers: reuse the slopes of earlier steps instead of extra model calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.ode import (
    Denoiser,
    StepCallback,
    denoise_with_step_estimate,
    report_step,
    sigma_batch,
    to_d,
)

__all__ = [
    "ipndm_v_weights",
    "sample_deis",
    "sample_gradient_estimation",
    "sample_gradient_estimation_cfg_pp",
    "sample_ipndm",
    "sample_ipndm_v",
    "sample_lms",
]

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)

# Adams-Bashforth weights for equal steps, newest slope first (orders 1 to 4).
_ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _lagrange_weights(
    nodes: np.ndarray, start: float, end: float, variable: Callable[[np.ndarray], np.ndarray] = lambda s: s
) -> list[float]:
    """``integral_start^end L_j(variable(s)) ds`` for each Lagrange basis polynomial over ``nodes``.

    With the identity ``variable`` the integrand is a polynomial of degree < 8 and 8-point
    Gauss-Legendre is exact; otherwise it is accurate to far below sampling error over one step.
    """
    s = 0.5 * (end - start) * _GAUSS_NODES + 0.5 * (end + start)
    tau = variable(s)
    weights = []
    for j, node_j in enumerate(nodes):
        basis = np.ones_like(tau)
        for k, node_k in enumerate(nodes):
            if k != j:
                basis = basis * (tau - node_k) / (node_j - node_k)
        weights.append(float(0.5 * (end - start) * np.sum(_GAUSS_WEIGHTS * basis)))
    return weights


#: One linear multistep step: ``(x, i, denoised, slopes) -> x_next``, the slopes ``to_d`` newest first.
_MultistepStep = Callable[[Tensor, int, Tensor, list[Tensor]], Tensor]


def _linear_multistep(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: StepCallback | None,
    disable: bool | None,
    max_order: int,
    step: _MultistepStep,
) -> Tensor:
    """The loop LMS, iPNDM, iPNDM-v and DEIS share: one model call per step, its slope kept with the last
    ``max_order - 1`` ones (newest first), and ``step`` combining them; they differ only in the weights."""
    extra_args = extra_args or {}
    slopes: list[Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        slopes = ([to_d(x, sigmas[i], denoised)] + slopes)[:max_order]
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = step(x, i, denoised, slopes)
    return x


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep in sigma (k-diffusion's LMS): the slope is interpolated through the last
    ``order`` slopes as a polynomial in sigma and integrated exactly over the step."""
    sigma_values = sigmas.detach().cpu().double().numpy()

    def step(x: Tensor, i: int, denoised: Tensor, slopes: list[Tensor]) -> Tensor:
        nodes = sigma_values[i + 1 - len(slopes) : i + 1][::-1]
        weights = _lagrange_weights(nodes, sigma_values[i], sigma_values[i + 1])
        return x + sum(w * d for w, d in zip(weights, slopes))

    # order 0 has always kept every slope (as ``slopes[-0:]`` did)
    return _linear_multistep(model, x, sigmas, extra_args, callback, disable, order or len(sigmas), step)


@torch.no_grad()
def sample_ipndm(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    max_order: int = 4,
) -> Tensor:
    """iPNDM (Zhang & Chen 2022, after Liu et al.'s PNDM): Adams-Bashforth with equal-step weights.

    The fixed weights ignore that the sigma steps are unequal; that is the method as published
    (its variable-step sibling is ipndm_v). The order warms up from 1 as slopes accumulate.
    """
    if not 1 <= max_order <= len(_ADAMS_BASHFORTH):
        raise ValueError(f"ipndm max_order must be between 1 and {len(_ADAMS_BASHFORTH)}, got {max_order}")

    def step(x: Tensor, i: int, denoised: Tensor, slopes: list[Tensor]) -> Tensor:
        slope = sum(w * d for w, d in zip(_ADAMS_BASHFORTH[len(slopes) - 1], slopes))
        return x + slope * (sigmas[i + 1] - sigmas[i])

    return _linear_multistep(model, x, sigmas, extra_args, callback, disable, max_order, step)


def ipndm_v_weights(steps: list[float]) -> list[float]:
    """The variable-step iPNDM weights of the newest slope first, from the step lengths, newest first.

    ``steps[0]`` is the step being taken (``sigma_next - sigma``), ``steps[k]`` the one taken k steps
    before; ``len(steps)`` slopes are combined (order 1 to 4). This is iPNDM-v of Zhou et al. 2024
    ("Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", arXiv:2312.00094) as its
    reference code and ComfyUI have it. Order 2 is the exact variable-step Adams-Bashforth rule;
    orders 3 and 4 correct it by step-ratio terms and are not. With equal steps orders 1 to 3 give
    ipndm's Adams-Bashforth weights, but order 4 gives 57/24, -65/24, 43/24, -11/24, not 55, -59, 37, -9.
    """
    order = len(steps)
    if order == 1:
        return [1.0]
    h, h_1 = steps[0], steps[1]
    r = h / h_1
    weights = [1 + r / 2, -r / 2]
    if order == 2:
        return weights
    h_2 = steps[2]
    # g3: the weight the third slope gets; the first two give it back so the weights still sum to 1.
    g3 = (1 - h * h / (3 * h_1 * (h_1 + h_2))) / 2
    ratio_2 = h_1 / h_2
    weights = [weights[0] + g3, weights[1] - (1 + ratio_2) * g3, g3 * ratio_2]
    if order == 3:
        return weights
    h_3 = steps[3]
    span = h + h_1 + h_2
    g4 = (
        ((1 - h / (3 * (h + h_1))) / 2 + (1 - h / (2 * (h + h_1))) * h / (6 * span))
        * (h * (h + h_1) * span)
        / (h_1 * (h_1 + h_2) * (h_1 + h_2 + h_3))
    )
    ratio_3 = h_1 * (h_1 + h_2) / (h_2 * (h_2 + h_3))
    return [
        weights[0] + g4,
        weights[1] - (1 + ratio_2 + ratio_3) * g4,
        weights[2] + (ratio_2 + ratio_3 * (1 + h_2 / h_3)) * g4,
        -g4 * ratio_3 * ratio_2,
    ]


@torch.no_grad()
def sample_ipndm_v(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    max_order: int = 4,
) -> Tensor:
    """iPNDM with variable-step weights (``ipndm_v_weights``): the order warms up from 1; the last step to
    sigma 0 returns the x0 estimate."""
    if not 1 <= max_order <= 4:
        raise ValueError(f"ipndm_v max_order must be between 1 and 4, got {max_order}")
    sigma_values = sigmas.detach().cpu().double().tolist()

    def step(x: Tensor, i: int, denoised: Tensor, slopes: list[Tensor]) -> Tensor:
        if sigmas[i + 1] == 0:
            return denoised
        steps = [sigma_values[i + 1 - k] - sigma_values[i - k] for k in range(len(slopes))]
        slope = sum(w * d for w, d in zip(ipndm_v_weights(steps), slopes))
        return x + slope * (sigmas[i + 1] - sigmas[i])

    return _linear_multistep(model, x, sigmas, extra_args, callback, disable, max_order, step)


@torch.no_grad()
def sample_gradient_estimation(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    ge_gamma: float = 2.0,
) -> Tensor:
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and Improving Diffusion Models from an
    Optimization Perspective", ICML): Euler, plus ``(ge_gamma - 1)`` times the change in slope since the
    previous step; ``ge_gamma = 2`` extrapolates the slope linearly. The last step to 0 returns x0."""
    return _gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=False)


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    ge_gamma: float = 2.0,
) -> Tensor:
    """Gradient estimation with CFG++ (Chung et al. 2024): the slope is taken from the unconditional
    estimate and the Euler part lands on the guided one, ``D + sigma_next (x - D_uncond) / sigma``."""
    return _gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)


def _gradient_estimation(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: StepCallback | None,
    disable: bool | None,
    ge_gamma: float,
    cfg_pp: bool,
) -> Tensor:
    extra_args = extra_args or {}
    old_d: Tensor | None = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond = denoise_with_step_estimate(model, x, sigmas[i], extra_args, cfg_pp)
        d = to_d(x, sigmas[i], uncond)
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def vp_time(sigma: np.ndarray, beta_min: float = 0.1, beta_d: float = 19.9) -> np.ndarray:
    """The VP-SDE time of Song et al. 2021 with the noise level ``sigma``: inverts
    ``sigma^2 + 1 = exp(beta_d t^2 / 2 + beta_min t)``."""
    return (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(np.square(sigma))) - beta_min) / beta_d


@torch.no_grad()
def sample_deis(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    max_order: int = 3,
) -> Tensor:
    """tAB-DEIS (Zhang & Chen 2022, arXiv:2204.13902): the noise prediction is extrapolated as a
    polynomial in VP time t through the last ``max_order`` steps and integrated with the exact
    transition of the ODE.

    In the variance-exploding coordinates used here the transition is the identity and
    ``dx = eps dsigma``, so a step adds ``sum_j eps_j * integral L_j(t(sigma)) dsigma``. Polynomials
    in t rather than sigma are the paper's point: eps varies smoothly in t.
    """
    sigma_values = sigmas.detach().cpu().double().numpy()
    times = vp_time(sigma_values)

    def step(x: Tensor, i: int, denoised: Tensor, slopes: list[Tensor]) -> Tensor:
        nodes = times[i + 1 - len(slopes) : i + 1][::-1]
        weights = _lagrange_weights(nodes, sigma_values[i], sigma_values[i + 1], vp_time)
        return x + sum(w * d for w, d in zip(weights, slopes))

    return _linear_multistep(model, x, sigmas, extra_args, callback, disable, max_order, step)
