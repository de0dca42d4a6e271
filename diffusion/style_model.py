"""Style models of `models/style_models/`: FLUX.1 Redux (`flux1-redux-dev.safetensors`, Black Forest Labs 2024).

Redux turns a picture's SigLIP token states (`diffusion.clip_vision`, SigLIP so400m: 729 tokens of 1152) into
tokens in the text stream's space, which ``StyleModelApply`` appends to the T5 context of a FLUX conditioning:
``redux_down(silu(redux_up(states)))``, an MLP widening to 3 x 4096 and narrowing to FLUX's context width 4096.
The file holds exactly `redux_up.{weight,bias}` and `redux_down.{weight,bias}`; the widths are read from their
shapes (tiny files are narrower). The SD1.x T2I-Adapter style model (`style_embedding`, coadapter-style) is the
other kind ComfyUI loads from that folder and is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.fused_linear import FusedLinear
from diffusion.tiny import seeded_rng
from diffusion.unet_config import CheckpointLayoutError, load_exact

__all__ = ["ReduxConfig", "ReduxImageEncoder", "load_style_model", "tiny_redux_tensors"]

_COMPONENT = "style model"
_UP, _DOWN = "redux_up.weight", "redux_down.weight"


@dataclass(frozen=True)
class ReduxConfig:
    vision_width: int  # SigLIP's 1152
    hidden: int  # 3 x 4096
    context_dim: int  # FLUX's T5 width, 4096


class ReduxImageEncoder(nn.Module):
    def __init__(self, config: ReduxConfig) -> None:
        super().__init__()
        self.config = config
        self.redux_up = FusedLinear(config.vision_width, config.hidden)
        self.redux_down = FusedLinear(config.hidden, config.context_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """SigLIP token states ``[B, T, vision_width]`` -> context tokens ``[B, T, context_dim]`` (float32)."""
        x = states.to(self.redux_up.computes_in)
        return self.redux_down(F.silu(self.redux_up(x))).float()


def load_style_model(state_dict: Mapping[str, torch.Tensor]) -> ReduxImageEncoder:
    """The Redux encoder of a style-model file; `CheckpointLayoutError` for any other file, naming what it is."""
    if "style_embedding" in state_dict:
        raise CheckpointLayoutError(
            _COMPONENT, "style_embedding", "a T2I-Adapter style model (SD1.x coadapter-style), which Loom does not "
            "load: the style model Loom reads is FLUX.1 Redux (flux1-redux-dev.safetensors)",
        )  # fmt: skip
    for key in (_UP, _DOWN):
        if key not in state_dict:
            raise CheckpointLayoutError(_COMPONENT, key, "missing: the file is not a FLUX.1 Redux style model")
    hidden, vision_width = state_dict[_UP].shape
    context_dim = state_dict[_DOWN].shape[0]
    with torch.device("meta"):
        model = ReduxImageEncoder(ReduxConfig(vision_width, hidden, context_dim))
    load_exact(model, state_dict, _COMPONENT)
    return model


def tiny_redux_tensors(seed: int = 0, vision_width: int = 48, context_dim: int = 4096) -> dict[str, torch.Tensor]:
    """A tiny random Redux file in the release's keys: it reads the tiny SigLIP's 48-wide states and writes tokens
    of FLUX's real context width (4096, which the tiny FLUX transformers read too), through 64 hidden units."""
    with seeded_rng(seed):
        model = ReduxImageEncoder(ReduxConfig(vision_width, 64, context_dim))
    return {key: tensor.detach().contiguous() for key, tensor in model.state_dict().items()}
