"""Control-LoRAs: the ControlNet built over a UNet is the one whose weights are the UNet's plus up @ down (and the
file's full weights), and a file that cannot be built over a UNet says why."""

from __future__ import annotations

import pytest
import torch

from diffusion.control_lora import ControlLora, is_control_lora, tiny_control_lora_tensors
from diffusion.control_models import load_control_model
from diffusion.controlnet import ControlNet, ControlNetConfig
from diffusion.tiny import tiny_checkpoint_tensors, tiny_unet_config
from diffusion.unet_config import CheckpointLayoutError, load_exact

PREFIX = "model.diffusion_model."


def unet_weights(family: str) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX) :]: v for k, v in tiny_checkpoint_tensors(family).items() if k.startswith(PREFIX)}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_residuals_are_those_of_the_controlnet_with_base_plus_up_times_down(family: str) -> None:
    config, base = tiny_unet_config(family), unet_weights(family)
    stored = tiny_control_lora_tensors(config, base, seed=3)
    assert is_control_lora(stored) and any(key.endswith(".up") for key in stored)
    control_lora = load_control_model(stored)
    assert isinstance(control_lora, ControlLora)

    # By hand: every ControlNet weight the UNet has, changed by its pair where there is one, else the file's.
    with torch.device("meta"):
        expected = ControlNet(ControlNetConfig(config))
    weights = {}
    for key in expected.state_dict():
        module = key.removesuffix(".weight")
        if f"{module}.up" in stored:
            up, down = stored[f"{module}.up"], stored[f"{module}.down"]
            weights[key] = base[key] + (up.flatten(1) @ down.flatten(1)).reshape(base[key].shape)
        else:
            weights[key] = stored[key] if key in stored else base[key]
    load_exact(expected, weights, "ControlNet")

    built = control_lora.bind(config, base)
    assert control_lora.bound is built and control_lora.config == expected.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 5, config.context_dim, generator=g)
    y = None if config.adm_in_channels is None else torch.randn(2, config.adm_in_channels, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    t = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        actual = control_lora(x, hint, t, context, y)
        reference = expected(x, hint, t, context, y)
        unchanged_weights = without_low_rank_changes(config, base, stored)(x, hint, t, context, y)
    for ours, theirs, unchanged in zip(
        [*actual.input, actual.middle], [*reference.input, reference.middle], unchanged_weights.tensors()
    ):
        assert ours is not None and theirs is not None
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert (ours - unchanged).abs().max() > 1e-4  # the low-rank changes matter


def without_low_rank_changes(config, base, stored) -> ControlNet:
    """The same file's full weights over the bare UNet, no LoRA changes: what the pairs must move away from."""
    with torch.device("meta"):
        model = ControlNet(ControlNetConfig(config))
    load_exact(model, {k: stored.get(k, base.get(k)) for k in model.state_dict()}, "ControlNet")
    return model


def test_before_binding_there_is_no_controlnet_to_run() -> None:
    config = tiny_unet_config("sd15")
    control_lora = ControlLora(tiny_control_lora_tensors(config, unet_weights("sd15")))
    with pytest.raises(RuntimeError, match="bind it first"):
        _ = control_lora.config


def test_a_file_for_another_unet_says_why_and_is_not_built() -> None:
    sd15 = tiny_unet_config("sd15")
    control_lora = ControlLora(tiny_control_lora_tensors(sd15, unet_weights("sd15")))
    reason = control_lora.mismatch(tiny_unet_config("sd2"))
    assert reason is not None and "the UNet's" in reason
    with pytest.raises(CheckpointLayoutError, match="Control-LoRA"):
        control_lora.bind(tiny_unet_config("sd2"), unet_weights("sd2"))
    assert control_lora.bound is None
    assert control_lora.mismatch(sd15) is None


def test_a_lone_half_of_a_pair_is_a_layout_error() -> None:
    stored = tiny_control_lora_tensors(tiny_unet_config("sd15"), unet_weights("sd15"))
    lone = next(key for key in stored if key.endswith(".down"))
    del stored[lone]
    with pytest.raises(CheckpointLayoutError, match=rf"{lone.removesuffix('.down')}\.down: missing"):
        ControlLora(stored)
