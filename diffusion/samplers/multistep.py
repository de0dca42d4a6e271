"""Linear multistep samplers: reuse the slopes of earlier steps instead of extra model calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.ode import Denoiser, StepCallback, report_step, sigma_batch, to_d

__all__ = ["sample_deis", "sample_ipndm", "sample_lms"]

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
    extra_args = extra_args or {}
    sigma_values = sigmas.detach().cpu().double().numpy()
    slopes: list[Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        slopes = (slopes + [to_d(x, sigmas[i], denoised)])[-order:]
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        nodes = sigma_values[i + 1 - len(slopes) : i + 1][::-1]
        weights = _lagrange_weights(nodes, sigma_values[i], sigma_values[i + 1])
        x = x + sum(w * d for w, d in zip(weights, reversed(slopes)))
    return x


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
    extra_args = extra_args or {}
    slopes: list[Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        slopes = ([to_d(x, sigmas[i], denoised)] + slopes)[:max_order]
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        slope = sum(w * d for w, d in zip(_ADAMS_BASHFORTH[len(slopes) - 1], slopes))
        x = x + slope * (sigmas[i + 1] - sigmas[i])
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
    extra_args = extra_args or {}
    sigma_values = sigmas.detach().cpu().double().numpy()
    times = vp_time(sigma_values)
    slopes: list[Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigma_batch(sigmas[i], x), **extra_args)
        slopes = ([to_d(x, sigmas[i], denoised)] + slopes)[:max_order]
        report_step(callback, x, i, sigmas[i], sigmas[i], denoised)
        nodes = times[i + 1 - len(slopes) : i + 1][::-1]
        weights = _lagrange_weights(nodes, sigma_values[i], sigma_values[i + 1], vp_time)
        x = x + sum(w * d for w, d in zip(weights, slopes))
    return x
