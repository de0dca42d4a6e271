"""Half-log-SNR time, the clock of the exponential-integrator samplers, for VE and rectified-flow models.

A noisy state is ``x = alpha x0 + sigma noise``. In the k-diffusion view every model is variance
exploding, ``alpha = 1``; a rectified-flow model (``diffusion.flow_matching``, ComfyUI's CONST) has
``alpha = 1 - sigma``. Exponential integrators solve the linear part of the diffusion ODE/SDE exactly
by stepping in ``lambda = log(alpha / sigma)`` (DPM-Solver++, Lu et al. 2022, arXiv:2211.01095), so their
coefficients carry alpha, and so does the noise they add. Written with alpha, one formula serves both
parametrisations; it is the VE formula run on the VE-equivalent state ``x / alpha`` at noise level
``sigma / alpha``. A VE model gets ``alpha = 1`` exactly, so its results are those of the VE formula.

Samplers learn the parametrisation from the model (``ode.model_sampling_of``): a guider carries its
``model_sampling``; a bare denoiser is read as VE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.flow_matching import FlowPrediction
from diffusion.samplers.ode import Denoiser, model_sampling_of

__all__ = [
    "flow_midpoint",
    "flow_step",
    "half_log_snr",
    "is_rectified_flow",
    "offset_first_sigma",
    "sigma_at",
    "signal_scale",
]

#: Where a rectified-flow schedule that starts at sigma = 1 (lambda = -inf) starts instead, as a fraction of
#: the process (ComfyUI's ``offset_first_sigma_for_snr``).
FIRST_SIGMA_OFFSET = 1e-4


def is_rectified_flow(model: Denoiser) -> bool:
    """Whether the model's states are ``(1 - sigma) x0 + sigma noise`` rather than ``x0 + sigma noise``."""
    return isinstance(model_sampling_of(model), FlowPrediction)


def half_log_snr(sigma: Tensor, flow: bool) -> Tensor:
    """``lambda = log(alpha / sigma)``: ``-log sigma`` (VE), ``log((1 - sigma) / sigma)`` (flow)."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_at(lam: Tensor, flow: bool) -> Tensor:
    """The sigma at half-log-SNR ``lam``: the inverse of ``half_log_snr``."""
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def signal_scale(sigma: Tensor, flow: bool) -> Tensor:
    """``alpha``, the weight of x0 in the state at ``sigma``: 1 (VE), ``1 - sigma`` (flow)."""
    return 1 - sigma if flow else torch.ones_like(sigma)


def offset_first_sigma(sigmas: Tensor, model: Denoiser) -> Tensor:
    """The schedule with a flow model's first sigma moved off 1, where lambda is infinite.

    A full-strength flow schedule starts at sigma = 1 (pure noise); samplers that step in lambda start
    from the model's sigma at ``FIRST_SIGMA_OFFSET`` of the process instead, as ComfyUI's do. The model
    is called there too. Other schedules come back unchanged.
    """
    sampling = model_sampling_of(model)
    if not isinstance(sampling, FlowPrediction) or len(sigmas) < 2 or float(sigmas[0]) < 1.0:
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = sampling.percent_to_sigma(FIRST_SIGMA_OFFSET)
    return sigmas


def flow_step(x: Tensor, sigma: Tensor, sigma_to: Tensor, denoised: Tensor) -> Tensor:
    """A rectified-flow state moved to ``sigma_to`` along the straight line through it and its x0 estimate.

    The first-order step of the flow ODE (Euler in sigma, which is also DDIM and DPM-Solver++(1) there);
    the ancestral samplers' deterministic part on flow models.
    """
    ratio = sigma_to / sigma
    return ratio * x + (1 - ratio) * denoised


def flow_midpoint(sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """The half-log-SNR midpoint of a flow step from ``sigma`` to ``sigma_to``.

    From sigma = 1 (lambda = -inf) there is none; 0.9999 stands in, as in ComfyUI's RF samplers.
    """
    if float(sigma) == 1.0:
        return torch.full_like(sigma, 0.9999)
    return sigma_at(half_log_snr(sigma, True).lerp(half_log_snr(sigma_to, True), 0.5), True)
