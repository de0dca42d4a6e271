"""A model whose predictions are known in closed form, for the guidance-hook and guidance-rule tests."""

from __future__ import annotations

from typing import Any

import torch

from diffusion.guidance import Conditioning
from diffusion.prediction import EpsPrediction

MS = EpsPrediction()


class KnownUNet:
    """Predicts ``eps = 0.5 x_in + c``, where ``c`` is the first number of the call's context: each
    conditioning (``prompt(c)``) has an x0 prediction ``known_x0`` can write down. Records every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, x_in: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, **_: Any) -> torch.Tensor:
        self.calls.append({"batch": x_in.shape[0], "context": context})
        return 0.5 * x_in + context[:, 0, 0].reshape(-1, 1, 1, 1)

    def batches(self) -> list[int]:
        return [call["batch"] for call in self.calls]


def prompt(value: float) -> Conditioning:
    return [(torch.full((1, 2, 4), value), {})]


def known_x0(x: torch.Tensor, sigma: torch.Tensor, value: float) -> torch.Tensor:
    """The x0 prediction of ``prompt(value)`` at state ``x``: ``x - sigma * (0.5 x / sqrt(sigma^2 + 1) + value)``."""
    s = sigma.reshape(-1, 1, 1, 1)
    return x - s * (0.5 * x / (s**2 + 1) ** 0.5 + value)


def state(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, 4, 4, generator=torch.Generator().manual_seed(seed))


def latent(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 4, 4, 4)
