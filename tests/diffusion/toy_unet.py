"""A UNet stand-in for the sampling and guidance tests, and the start of a guided sampling run."""

from __future__ import annotations

from typing import Any

import torch

from diffusion.guidance import CFGGuider, Conditioning, Inpainting
from diffusion.prediction import EpsPrediction
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import denoise_sigmas

MS = EpsPrediction()


class ToyUNet:
    """Per-cell cross-attention over the context plus a timestep-dependent mix: cells never see each
    other (so regions are independent) and repeating context tokens leaves the output unchanged.
    Records every call, so tests can count model calls and see what each one received."""

    def __init__(self, channels: int = 4, dim: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.q = torch.randn(channels, dim, generator=g)
        self.k = torch.randn(dim, dim, generator=g) / dim**0.5
        self.v = torch.randn(dim, channels, generator=g) / dim**0.5
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        x_in: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.calls.append({"batch": x_in.shape[0], "context": context, "t": timesteps, "y": y, "concat": concat})
        cells = x_in.permute(0, 2, 3, 1).flatten(1, 2)
        scores = (cells @ self.q) @ (context @ self.k).transpose(1, 2) / self.q.shape[1] ** 0.5
        attended = (scores.softmax(-1) @ context @ self.v).reshape(x_in.shape[0], x_in.shape[2], x_in.shape[3], -1)
        out = 0.3 * x_in + attended.permute(0, 3, 1, 2) * (1 + timesteps.reshape(-1, 1, 1, 1) / 1000)
        if y is not None:
            out = out + y.mean(1).reshape(-1, 1, 1, 1)
        if concat is not None:
            out = out + concat.mean(1, keepdim=True)
        return out


def context(seed: int, tokens: int = 3, dim: int = 8) -> torch.Tensor:
    return torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed))


def zero_latent(batch: int = 1, size: int = 6) -> torch.Tensor:
    return torch.zeros(batch, 4, size, size)


def run(
    unet: ToyUNet | None = None,
    positive: Conditioning | None = None,
    negative: Conditioning | None = None,
    *,
    latent: torch.Tensor | None = None,
    sampler: str = "euler",
    steps: int = 4,
    cfg: float = 7.0,
    seed: int = 42,
    sigmas: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    add_noise: bool = True,
    callback: Any = None,
) -> torch.Tensor:
    """KSampler's composition on the toy UNet: normal-schedule sigmas, seeded noise, a CFG guider, a sampler."""
    latent = zero_latent() if latent is None else latent
    spec = get_sampler(sampler)
    if sigmas is None:
        sigmas = denoise_sigmas(MS, "normal", steps, discard_penultimate_sigma=spec.discard_penultimate_sigma)
    noise = prepare_noise(latent, seed) if add_noise else torch.zeros_like(latent)
    inpainting = None if noise_mask is None else Inpainting.from_mask(noise_mask, latent, noise)
    guider = CFGGuider(
        unet or ToyUNet(),
        MS,
        latent,
        positive or [(context(1), {})],
        [(context(2), {})] if negative is None else negative,
        cfg,
        inpainting,
    )
    return sample(guider, spec, sigmas, latent, noise, seed=seed, callback=callback)
