"""The probability-flow ODE view of Karras et al. 2022 that every sampler here shares.

With ``x = x0 + sigma * noise`` and a denoiser ``D(x, sigma)``, the ODE is
``dx/dsigma = (x - D(x, sigma)) / sigma``; ancestral and SDE samplers split each step into a
deterministic move to a lower sigma plus fresh noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from diffusion.prediction import ModelSampling

__all__ = [
    "Denoiser",
    "ParametrisedDenoiser",
    "StepCallback",
    "UncondDenoiser",
    "ancestral_step",
    "denoise_with_step_estimate",
    "denoise_with_uncond",
    "flow_ancestral_step",
    "model_sampling_of",
    "report_step",
    "sigma_batch",
    "to_d",
]

StepCallback = Callable[[dict[str, Any]], None]


class Denoiser(Protocol):
    """``model(x, sigma, **extra_args) -> denoised``: sigma is a ``[batch]`` tensor."""

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor: ...


@runtime_checkable
class UncondDenoiser(Denoiser, Protocol):
    """A denoiser that can also hand over the unconditional x0 estimate of a call (CFG++ samplers need it).

    ``model.with_uncond(x, sigma, **extra_args)`` returns ``(denoised, uncond_denoised)`` from one evaluation:
    the guided estimate ``model(x, sigma)`` would return, and the negative side's own prediction.
    ``diffusion.guidance.CFGGuider`` is one. The pair comes back from the call that made it (ComfyUI
    captures it in a post-CFG hook instead), so no state outlives the call.
    """

    def with_uncond(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class ParametrisedDenoiser(Denoiser, Protocol):
    """A denoiser that names its noise parametrisation (every guider does, as ``model_sampling``).

    Most samplers never look: they see sigmas and x0 estimates only. The exponential integrators
    that step in half-log-SNR time and the ancestral samplers ask whether the model is a
    rectified-flow one (``diffusion.samplers.snr``); SA-Solver places its stochastic interval in
    the model's timesteps.
    """

    model_sampling: ModelSampling


def model_sampling_of(model: Denoiser) -> ModelSampling | None:
    """The model's noise parametrisation, or None for a bare denoiser (read as variance-exploding)."""
    return model.model_sampling if isinstance(model, ParametrisedDenoiser) else None


def denoise_with_uncond(model: Denoiser, x: Tensor, sigma: Tensor, extra_args: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The guided and the unconditional x0 estimate of one model call, for CFG++ samplers.

    A model that keeps no unconditional estimate apart (a bare denoiser, a guidance-distilled
    model wrapped without a guider) gives its one estimate as both, so a CFG++ sampler then runs
    exactly as its plain twin.
    """
    if isinstance(model, UncondDenoiser):
        return model.with_uncond(x, sigma, **extra_args)
    denoised = model(x, sigma, **extra_args)
    return denoised, denoised


def denoise_with_step_estimate(
    model: Denoiser, x: Tensor, sigma: Tensor, extra_args: dict[str, Any], cfg_pp: bool
) -> tuple[Tensor, Tensor]:
    """The guided x0 estimate of one call at the scalar ``sigma``, and the one a sampler steps with.

    A CFG++ sampler (``cfg_pp``) steps with the unconditional estimate (``denoise_with_uncond``); its plain
    twin calls the model as usual and steps with the guided estimate itself.
    """
    if cfg_pp:
        return denoise_with_uncond(model, x, sigma_batch(sigma, x), extra_args)
    denoised = model(x, sigma_batch(sigma, x), **extra_args)
    return denoised, denoised


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The ODE derivative ``dx/dsigma`` at ``x`` given the denoiser's estimate."""
    return (x - denoised) / sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step into a deterministic move to ``sigma_down`` and fresh noise of std ``sigma_up``.

    ``sigma_down^2 + sigma_up^2 = sigma_to^2``, so the state has the right noise level after
    the noise is added; eta = 1 matches DDPM's posterior variance, eta = 0 is the plain ODE step.
    """
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def flow_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """The ancestral split for a rectified-flow state ``x = (1 - sigma) x0 + sigma noise`` (ComfyUI's RF variant).

    Returns ``(sigma_down, renoise, rescale)``: the deterministic step lands at
    ``sigma_down = sigma_to (1 + (sigma_to / sigma_from - 1) eta)``, its state is scaled by
    ``rescale = (1 - sigma_to) / (1 - sigma_down)`` so the signal has the weight it has at ``sigma_to``,
    and fresh noise of std ``renoise`` brings the noise up to ``sigma_to``:
    ``(rescale sigma_down)^2 + renoise^2 = sigma_to^2``. eta = 0 is the plain ODE step. The VE split
    (``ancestral_step``) would leave the signal at weight ``1 - sigma_down``, too strong for sigma_to.
    """
    sigma_down = sigma_to * (1 + (sigma_to / sigma_from - 1) * eta)
    rescale = (1 - sigma_to) / (1 - sigma_down)
    renoise = (sigma_to**2 - sigma_down**2 * rescale**2) ** 0.5
    return sigma_down, renoise, rescale


def sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    """A scalar sigma as the ``[batch]`` tensor models take."""
    return sigma * x.new_ones([x.shape[0]])


def report_step(
    callback: StepCallback | None, x: Tensor, i: int, sigma: Tensor, sigma_hat: Tensor, denoised: Tensor
) -> None:
    """Send one step's state to the progress hook (progress bars, previews, interruption)."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
