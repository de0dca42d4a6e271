"""Cheap step previews: a fixed linear map from latent channels to RGB, no VAE call.

The VAE decoder is far too slow to run at every sampling step on a CPU (bench/RESULTS.md: about 12 s per
512 px decode), but a latent pixel's colour is close to a linear function of its channels. The
factors below are least-squares fits of latent channels to the downscaled RGB image. The
SD1.x/SD2.x matrix was published by Keturn (2022) and the SDXL matrix and bias are the ones
distributed with ComfyUI's latent formats; both are widely reused constants. They apply to the
latent in model space (after the VAE scale factor), which is what samplers carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["LATENT_RGB_FACTORS", "LatentRGBFactors", "UnknownLatentFamilyError", "latent_to_rgb"]


@dataclass(frozen=True)
class LatentRGBFactors:
    """``rgb = latent_channels @ factors + bias``, in [-1, 1]."""

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


_SD1 = LatentRGBFactors(
    factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    )
)

_SDXL = LatentRGBFactors(
    factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    bias=(0.1084, -0.0175, -0.0011),
)

LATENT_RGB_FACTORS: dict[str, LatentRGBFactors] = {"sd1": _SD1, "sd2": _SD1, "sdxl": _SDXL}
"""Per model family; SD2 shares SD1's VAE and so its latent space."""


class UnknownLatentFamilyError(KeyError):
    """A model family without preview factors."""

    def __init__(self, family: str) -> None:
        self.family = family
        super().__init__(f"no latent preview factors for family {family!r}; known: {', '.join(LATENT_RGB_FACTORS)}")


def latent_to_rgb(latent: Tensor, family: str, max_size: int | None = None) -> np.ndarray:
    """The first item of a ``[B, C, H, W]`` (or ``[C, H, W]``) latent as an ``[H, W, 3]`` uint8 image.

    ``max_size`` shrinks the preview (area average) so its longer side is at most that many pixels.
    """
    try:
        table = LATENT_RGB_FACTORS[family]
    except KeyError:
        raise UnknownLatentFamilyError(family) from None
    sample = latent[0] if latent.ndim == 4 else latent
    if sample.shape[0] != len(table.factors):
        raise ValueError(f"{family} previews need {len(table.factors)} latent channels, got {sample.shape[0]}")
    sample = sample.detach().float().cpu()
    if max_size is not None and max(sample.shape[1:]) > max_size:
        scale = max_size / max(sample.shape[1:])
        size = (max(1, round(sample.shape[1] * scale)), max(1, round(sample.shape[2] * scale)))
        sample = torch.nn.functional.interpolate(sample[None], size=size, mode="area")[0]
    factors = torch.tensor(table.factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", sample, factors) + torch.tensor(table.bias)
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
