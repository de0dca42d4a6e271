"""Tiny models with random weights for parity tests, and the copy of their weights a reference is built from."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

__all__ = ["original_state_dict", "with_random_scales"]

_M = TypeVar("_M", bound=nn.Module)


def with_random_scales(build: Callable[[], _M], seed: int) -> _M:
    """``build()`` under ``seed``, its norm ``.scale`` parameters drawn from [0.5, 1.5] too: they initialise to
    ones, which would hide a misplaced scale. In eval mode, without gradients."""
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".scale"):
                parameter.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


def original_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights in its own (the original checkpoint's) key layout."""
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}
