"""The probability-flow ODE view of Karras et al. 2022 that every sampler here shares.

With ``x = x0 + sigma * noise`` and a denoiser ``D(x, sigma)``, the ODE is
``dx/dsigma = (x - D(x, sigma)) / sigma``; ancestral and SDE samplers split each step into a
deterministic move to a lower sigma plus fresh noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["Denoiser", "StepCallback", "ancestral_step", "report_step", "sigma_batch", "to_d"]

StepCallback = Callable[[dict[str, Any]], None]


class Denoiser(Protocol):
    """``model(x, sigma, **extra_args) -> denoised``: sigma is a ``[batch]`` tensor."""

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor: ...


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


def sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    """A scalar sigma as the ``[batch]`` tensor models take."""
    return sigma * x.new_ones([x.shape[0]])


def report_step(
    callback: StepCallback | None, x: Tensor, i: int, sigma: Tensor, sigma_hat: Tensor, denoised: Tensor
) -> None:
    """Send one step's state to the progress hook (progress bars, previews, interruption)."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
