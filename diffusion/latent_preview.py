"""Cheap step previews: a fixed linear map from latent channels to RGB, no VAE call.

The VAE decoder is far too slow to run at every sampling step on a CPU (bench/RESULTS.md: about 12 s per
512 px decode), but a latent pixel's colour is close to a linear function of its channels. The
factors below are least-squares fits of latent channels to the downscaled RGB image. The
SD1.x/SD2.x matrix was published by Keturn (2022) and the SDXL, SD3 and FLUX matrices and biases are the
ones distributed with ComfyUI's latent formats; all are widely reused constants. They apply to the
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

# The 16-channel VAEs of SD3 and FLUX, fitted the same way (ComfyUI's latent formats carry these constants).
_SD3 = LatentRGBFactors(
    factors=(
        (-0.0922, -0.0175, 0.0749),
        (0.0311, 0.0633, 0.0954),
        (0.1994, 0.0927, 0.0458),
        (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496),
        (-0.0006, 0.1104, 0.0309),
        (0.0978, 0.0306, 0.0427),
        (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669),
        (-0.0488, 0.0130, -0.0268),
        (0.0922, 0.0988, 0.0951),
        (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895),
        (-0.0069, -0.0030, -0.0810),
        (-0.0596, -0.0465, -0.0293),
        (-0.1448, -0.1463, -0.1189),
    ),
    bias=(0.2394, 0.2135, 0.1925),
)

_FLUX = LatentRGBFactors(
    factors=(
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    bias=(-0.0329, -0.0718, -0.0851),
)

LATENT_RGB_FACTORS: dict[str, LatentRGBFactors] = {"sd1": _SD1, "sd2": _SD1, "sdxl": _SDXL, "sd3": _SD3, "flux": _FLUX}
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
