"""FLUX.1 Redux: the file's four tensors, read at any width, and the MLP they make written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion.style_model import load_style_model, tiny_redux_tensors
from diffusion.unet_config import CheckpointLayoutError


def test_redux_is_down_of_silu_of_up_at_the_files_widths() -> None:
    tensors = tiny_redux_tensors(seed=1, vision_width=48, context_dim=96)
    assert {key: tuple(value.shape) for key, value in tensors.items()} == {
        "redux_up.weight": (64, 48), "redux_up.bias": (64,), "redux_down.weight": (96, 64), "redux_down.bias": (96,),
    }  # fmt: skip
    model = load_style_model(tensors)
    states = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(2))
    hidden = F.silu(states @ tensors["redux_up.weight"].T + tensors["redux_up.bias"])
    expected = hidden @ tensors["redux_down.weight"].T + tensors["redux_down.bias"]
    with torch.no_grad():
        torch.testing.assert_close(model(states), expected, rtol=1e-5, atol=1e-6)


def test_the_tiny_file_reads_the_tiny_siglip_and_writes_flux_context_tokens() -> None:
    config = load_style_model(tiny_redux_tensors()).config
    assert (config.vision_width, config.context_dim) == (48, 4096)


def test_other_style_models_are_named() -> None:
    with pytest.raises(CheckpointLayoutError, match="T2I-Adapter"):
        load_style_model({"style_embedding": torch.zeros(1, 8, 768)})
    with pytest.raises(CheckpointLayoutError, match="not a FLUX.1 Redux"):
        load_style_model({"redux_up.weight": torch.zeros(4, 2)})
