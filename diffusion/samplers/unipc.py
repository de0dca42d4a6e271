"""UniPC (Zhao et al. 2023, arXiv:2302.04867): a multistep predictor with a free corrector.

Working on the data prediction ``D`` in ``lambda = -log(sigma)``, each step predicts the next state
with the order-p UniP update, calls the model there, and uses that call twice: the UniC
corrector refines the state with it, and the next step's predictor reuses it (it is not
recomputed at the corrected state). So the corrector raises the order at no extra model call.
The variants differ in ``B(h)``: ``h`` (bh1, better at few steps for unconditional models) and
``e^h - 1`` (bh2, the paper's recommendation for guided sampling).

In variance-exploding coordinates the DPM-Solver++ transition factors ``alpha_t`` are all 1, so
the update is ``x' = (sigma'/sigma) x - (e^{-h} - 1) D - B(h) * sum_k rho_k D1_k``. The final
step to sigma = 0 is first order and lands exactly on the model's estimate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from diffusion.samplers.ode import Denoiser, StepCallback, report_step, sigma_batch

__all__ = ["sample_uni_pc", "sample_uni_pc_bh2"]


def _coefficients(ratios: list[float], h: float, order: int, variant: str) -> tuple[Tensor, Tensor, float]:
    """``R`` (powers of the step ratios), ``b = phi_{k+1}(h) k! / B(h)`` and ``B(h)`` for an order-p update."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    r = torch.tensor(ratios + [1.0], dtype=torch.float64)
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), b_h


def _rho(rows: Tensor, b: Tensor) -> Tensor:
    """The weights ``rho`` of the differences, from ``rows @ rho = b``; a one-term system takes 0.5 instead
    of its solution (the reference implementations' rule, for the predictor at order 2 and the corrector
    at order 1 alike)."""
    return torch.tensor([0.5]) if len(b) == 1 else torch.linalg.solve(rows, b)


def _weighted(weights: Tensor, values: list[Tensor]) -> Tensor | float:
    """``sum_k w_k v_k``; 0 when there are no values (a first-order step has no differences)."""
    return sum(float(w) * v for w, v in zip(weights, values))


@torch.no_grad()
def _sample_unipc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None,
    callback: StepCallback | None,
    disable: bool | None,
    order: int,
    variant: str,
) -> Tensor:
    extra_args = extra_args or {}
    steps = len(sigmas) - 1
    lambdas = [-math.log(float(s)) if s > 0 else math.inf for s in sigmas]
    denoised = model(x, sigma_batch(sigmas[0], x), **extra_args)
    history: list[tuple[float, Tensor]] = [(lambdas[0], denoised)]
    for i in trange(steps, disable=disable):
        report_step(callback, x, i, sigmas[i], sigmas[i], history[-1][1])
        step_order = min(order, len(history), steps - i)
        lam, m0 = history[-1]
        h = lambdas[i + 1] - lam
        base = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * m0
        if i == steps - 1:
            x = base
            break
        previous = history[-step_order:-1][::-1]
        ratios = [(lam_k - lam) / h for lam_k, _ in previous]
        differences = [(m_k - m0) / r_k for (_, m_k), r_k in zip(previous, ratios)]
        rows, b, b_h = _coefficients(ratios, h, step_order, variant)
        x_next = base
        if differences:
            rho_p = _rho(rows[:-1, :-1], b[:-1])
            x_next = base - b_h * _weighted(rho_p, differences)
        m_next = model(x_next, sigma_batch(sigmas[i + 1], x), **extra_args)
        rho_c = _rho(rows, b)
        correction = _weighted(rho_c[:-1], differences) + float(rho_c[-1]) * (m_next - m0)
        x = base - b_h * correction
        history = (history + [(lambdas[i + 1], m_next)])[-order:]
    return x


def sample_uni_pc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 3,
) -> Tensor:
    """UniPC with ``B(h) = h`` (bh1)."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, disable, order, "bh1")


def sample_uni_pc_bh2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 3,
) -> Tensor:
    """UniPC with ``B(h) = e^h - 1`` (bh2)."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, disable, order, "bh2")
