"""Sampling: a sampler run over a schedule of sigmas, from a latent and its start noise, with a guider as the model.

The parts are built apart and composed by the caller, as in k-diffusion: the sigmas
(``diffusion.schedules``, cut by denoise or a step window there), the start noise
(``prepare_noise``), the denoiser (a ``diffusion.guidance`` guider) and the sampler
(``diffusion.samplers``). ``sample`` only adds what joins them: noising the latent to the first sigma,
and turning the last state back into a latent. Progress, previews and interruption all go through
the sampler's one ``callback(step)`` hook; to stop sampling, raise from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from diffusion.guidance import Guider
from diffusion.prediction import ModelSampling
from diffusion.samplers import SamplerSpec, StepCallback

__all__ = ["Previewer", "prepare_noise", "sample"]

#: Renders an x0 estimate ``[B, C, H, W]`` (a step callback's ``denoised``) as an ``[h, w, 3]`` uint8
#: image of its first item.
Previewer = Callable[[Tensor], np.ndarray]


def prepare_noise(latent: Tensor, seed: int, batch_index: list[int] | None = None) -> Tensor:
    """The start noise of a latent batch, identical for a seed on every device.

    Drawn on the CPU in float32 from a generator seeded with ``seed`` (the same numbers as
    ``torch.manual_seed(seed); torch.randn(...)``), then cast. Without ``batch_index`` the whole
    batch is one draw, so item 0 is the same for every batch size. With it (a latent cut out of a
    larger batch), items are drawn one by one up to ``max(batch_index)`` and picked, so each item
    gets the noise it had in the original batch.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = tuple(latent.shape)
    if batch_index is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        draws = [
            torch.randn((1,) + shape[1:], generator=generator, dtype=torch.float32) for _ in range(max(batch_index) + 1)
        ]
        noise = torch.cat([draws[i] for i in batch_index])
    return noise.to(latent.device, latent.dtype)


def _is_full_denoise(model_sampling: ModelSampling, sigma: float) -> bool:
    return math.isclose(sigma, model_sampling.sigma_max, rel_tol=1e-5) or sigma > model_sampling.sigma_max


def sample(
    guider: Guider,
    sampler: SamplerSpec,
    sigmas: Tensor,
    latent: Tensor,
    noise: Tensor,
    *,
    seed: int = 0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Denoise ``latent`` ``[B, C, H, W]`` from ``sigmas[0]`` down to ``sigmas[-1]``; returns the new latent.

    ``noise`` (zeros to continue a latent that is already noisy) is scaled to the first sigma and
    added; a run from the model's highest sigma scales it as the model's training prior
    (``ModelSampling.noise_scaling`` with ``max_denoise``). ``seed`` seeds the noise that ancestral and SDE
    samplers draw at every step. ``callback`` receives k-diffusion's per-step dict (``i``, ``x``,
    ``sigma``, ``sigma_hat``, ``denoised``: the step's x0 estimate); an exception raised from it stops
    sampling between two steps and propagates. Fewer than two sigmas is no step at all: the latent
    comes back as given (a denoise of 0, or a step window that starts at the end).
    """
    if len(sigmas) < 2:
        return latent
    sigmas = sigmas.to(latent.device)
    model_sampling = guider.model_sampling
    full = _is_full_denoise(model_sampling, float(sigmas[0]))
    x = model_sampling.noise_scaling(sigmas[0], noise, latent, max_denoise=full)
    options = {"seed": seed} if sampler.takes_seed else {}
    samples = sampler(guider, x, sigmas, callback=callback, disable=True, **options)
    if guider.inpainting is not None:
        samples = guider.inpainting.finish(samples)
    return model_sampling.inverse_noise_scaling(sigmas[-1], samples)
