"""ControlNet: parity with diffusers' ControlNetModel on identical weights, both file layouts, and the UNet's
control input against diffusers' `down_block_additional_residuals` / `mid_block_additional_residual`."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from diffusion.checkpoint.detect import ModelFamily
from diffusion.controlnet import (
    ControlNet,
    ControlNetConfig,
    ControlResiduals,
    controlnet_layout,
    controlnet_to_ldm,
    detect_controlnet_config,
    fit_hint,
    load_controlnet,
    tiny_controlnet_tensors,
)
from diffusion.tiny import _unet_config as tiny_unet_config
from diffusion.tiny import tiny_checkpoint_tensors
from diffusion.unet import unet_from_state_dict
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.reference_models import FAMILIES, REAL_FAMILIES, tiny_unet
from tests.diffusion.test_unet import _inputs

TOLERANCE = 1e-4
CONTROLLED = ("sd1", "sd2", "sdxl")  # the families ControlNets exist for; sdxl carries label_emb
_UNET_ONLY = ("up_block_types", "out_channels", "sample_size")


def _diffusers_config(unet_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`ControlNetModel` kwargs for the encoder of a `UNet2DConditionModel` config."""
    return {k: v for k, v in unet_kwargs.items() if k not in _UNET_ONLY}


def _to_diffusers(ldm: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """diffusers' own single-file conversion. Its key table has no `label_emb` entries (it maps only the
    SD1/SD2 layout), so SDXL's embedding is renamed the way its UNet conversion renames it."""
    converted = convert_controlnet_checkpoint(ldm, {"layers_per_block": layers_per_block})
    for ldm_index, linear in (("0", "linear_1"), ("2", "linear_2")):
        for param in ("weight", "bias"):
            key = f"control_model.label_emb.0.{ldm_index}.{param}"
            if key in ldm:
                converted[f"add_embedding.{linear}.{param}"] = ldm[key]
    return converted


@pytest.fixture(scope="module", params=CONTROLLED)
def pair(request):
    """(family, diffusers ControlNetModel, Loom ControlNet, original-layout weights) on the same weights."""
    family = FAMILIES[request.param]
    weights = tiny_controlnet_tensors(family.expected, seed=3)
    reference = ControlNetModel(**_diffusers_config(family.diffusers_config)).eval()
    reference.load_state_dict(_to_diffusers(weights, family.diffusers_config["layers_per_block"]), strict=True)
    return request.param, reference, load_controlnet(weights), weights


def _hint(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(x.shape[0], 3, 8 * x.shape[-2], 8 * x.shape[-1], generator=g)


def test_original_layout_is_detected_as_the_config_it_was_made_for(pair):
    name, _, _, weights = pair
    stripped = {k.removeprefix("control_model."): v for k, v in weights.items()}
    assert detect_controlnet_config(stripped) == ControlNetConfig(FAMILIES[name].expected)


def test_every_residual_matches_diffusers(pair):
    name, reference, controlnet, _ = pair
    x, t, context, y, extra = _inputs(name)
    hint = _hint(x)
    with torch.no_grad():
        down, mid = reference(x, t, context, controlnet_cond=hint, return_dict=False, **extra)
        actual = controlnet(x, hint, t, context, y)
    assert len(actual.input) == len(down) == len(controlnet.input_blocks)
    for ours, theirs in zip([*actual.input, actual.middle], [*down, mid]):
        assert ours is not None and theirs.abs().max() > 0.01
        assert (ours - theirs).abs().max() <= TOLERANCE


def test_diffusers_layout_loads_to_the_same_weights_and_residuals(pair):
    name, reference, controlnet, weights = pair
    diffusers_weights = reference.state_dict()
    assert controlnet_layout(diffusers_weights) == "diffusers"
    renamed = controlnet_to_ldm(diffusers_weights)
    assert renamed.keys() == {k.removeprefix("control_model.") for k in weights}
    assert all(torch.equal(renamed[k.removeprefix("control_model.")], v) for k, v in weights.items())
    x, t, context, y, _ = _inputs(name)
    hint = _hint(x)
    with torch.no_grad():
        expected = controlnet(x, hint, t, context, y)
        actual = load_controlnet(diffusers_weights)(x, hint, t, context, y)
    assert all(torch.equal(a, b) for a, b in zip([*actual.input, actual.middle], [*expected.input, expected.middle]))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_weights_and_channels_last_take_fp32_inputs_and_return_fp32_residuals(dtype, cpu_path):
    family = FAMILIES["sdxl"]
    weights = tiny_controlnet_tensors(family.expected, seed=3)
    reference = ControlNetModel(**_diffusers_config(family.diffusers_config)).eval()
    reference.load_state_dict(_to_diffusers(weights, family.diffusers_config["layers_per_block"]), strict=True)
    controlnet = load_controlnet({k: v.clone() for k, v in weights.items()})
    controlnet = controlnet.to(dtype).to(memory_format=torch.channels_last)
    x, t, context, y, extra = _inputs("sdxl")
    hint = _hint(x)
    with torch.no_grad():
        down, mid = reference(x, t, context, controlnet_cond=hint, return_dict=False, **extra)
        actual = controlnet(x, hint, t, context, y)
    for ours, theirs in zip([*actual.input, actual.middle], [*down, mid]):
        assert ours is not None and ours.dtype == torch.float32
        assert (ours - theirs).abs().max() / theirs.abs().max() < 0.05


def test_unet_with_control_matches_diffusers_additional_residuals(pair):
    name, _, controlnet, _ = pair
    reference_unet, unet_weights = tiny_unet(name)
    unet = unet_from_state_dict(unet_weights)
    x, t, context, y, extra = _inputs(name)
    with torch.no_grad():
        residuals = controlnet(x, _hint(x), t, context, y)
        expected = reference_unet(
            x,
            t,
            context,
            down_block_additional_residuals=residuals.input,
            mid_block_additional_residual=residuals.middle,
            **extra,
        ).sample
        actual = unet(x, t, context, y, control=residuals)
        uncontrolled = unet(x, t, context, y)
    assert (actual - uncontrolled).abs().max() > 0.1
    assert (actual - expected).abs().max() <= TOLERANCE


def test_no_control_and_empty_control_leave_the_unet_bit_identical():
    _, weights = tiny_unet("sd1")
    unet = unet_from_state_dict(weights)
    x, t, context, _, _ = _inputs("sd1")
    with torch.no_grad():
        plain = unet(x, t, context)
        assert torch.equal(unet(x, t, context, control=None), plain)
        assert torch.equal(unet(x, t, context, control=ControlResiduals(())), plain)


def test_residuals_for_another_unet_are_refused():
    _, weights = tiny_unet("sd1")
    unet = unet_from_state_dict(weights)
    x, t, context, _, _ = _inputs("sd1")
    with pytest.raises(ValueError, match="3 input residuals, this UNet has 4 skips"):
        unet(x, t, context, control=ControlResiduals((torch.zeros(1),) * 3))
    wrong_middle = ControlResiduals((None,) * 4, torch.zeros(2, 64, 2, 2))
    with pytest.raises(ValueError, match=r"\(middle\) has shape \(2, 64, 2, 2\)"):
        unet(x, t, context, control=wrong_middle)


def test_scaled_and_summed_residuals_compose_like_two_controlnets_at_their_strengths():
    a = ControlResiduals((torch.ones(1, 2), None, torch.full((1, 2), 2.0)), torch.ones(1, 3))
    b = ControlResiduals((torch.ones(1, 2), torch.ones(1, 2), None), None)
    total = a.scaled(0.5) + b.scaled(2.0)
    assert [None if r is None else r.tolist() for r in total.input] == [[[2.5, 2.5]], [[2.0, 2.0]], [[1.0, 1.0]]]
    assert total.middle is not None and total.middle.tolist() == [[0.5, 0.5, 0.5]]
    assert a.input[0].tolist() == [[1.0, 1.0]]  # scaled() leaves the original untouched
    assert (ControlResiduals(()) + b).input == b.input
    with pytest.raises(ValueError, match="3 and 2 input blocks"):
        _ = a + ControlResiduals((None, None))


def test_a_missing_key_is_named():
    weights = tiny_controlnet_tensors(FAMILIES["sd1"].expected)
    del weights["control_model.zero_convs.2.0.bias"]
    with pytest.raises(CheckpointLayoutError, match=r"zero_convs\.2\.0\.bias: missing") as error:
        load_controlnet(weights)
    assert error.value.component == "ControlNet"


def test_files_that_are_not_controlnets_are_named_as_such():
    assert controlnet_layout({"input_blocks.0.0.weight": torch.zeros(1)}) is None
    with pytest.raises(CheckpointLayoutError, match="input_hint_block.0.weight: missing; not a ControlNet"):
        load_controlnet({"input_blocks.0.0.weight": torch.zeros(1)})


def test_bare_keys_and_a_bundled_sd_model_both_load():
    weights = tiny_controlnet_tensors(FAMILIES["sd1"].expected)
    bare = {k.removeprefix("control_model."): v for k, v in weights.items()}
    bundled = {**weights, "model.diffusion_model.out.2.bias": torch.zeros(4), "first_stage_model.x": torch.zeros(1)}
    assert controlnet_layout(bare) == controlnet_layout(bundled) == "ldm"
    x, t, context, _, _ = _inputs("sd1")
    hint = _hint(x)
    with torch.no_grad():
        a = load_controlnet(bare)(x, hint, t, context)
        b = load_controlnet(bundled)(x, hint, t, context)
    assert all(torch.equal(p, q) for p, q in zip(a.input, b.input))


def test_hint_of_the_wrong_size_is_refused_and_fit_hint_makes_it_right():
    controlnet = load_controlnet(tiny_controlnet_tensors(FAMILIES["sd1"].expected))
    x, t, context, _, _ = _inputs("sd1", height=8, width=6)
    image = torch.rand(1, 3, 100, 100)
    with pytest.raises(ValueError, match=r"hint must be \[2 or 1, 3, 64, 48\]"):
        controlnet(x, image, t, context)
    hint = fit_hint(image, 64, 48)
    assert hint.shape == (1, 3, 64, 48)
    with torch.no_grad():
        assert len(controlnet(x, hint, t, context).input) == 4


def test_fit_hint_crops_about_the_centre_then_resizes_nearest_exact():
    image = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 1, 4, 8)
    assert torch.equal(fit_hint(image, 4, 4), image[..., 2:6])
    assert torch.equal(fit_hint(image, 2, 2), image[..., 2:6][..., 1::2, 1::2])


@pytest.mark.parametrize("family", [ModelFamily.SD15, ModelFamily.SD2, ModelFamily.SDXL])
def test_tiny_controlnet_drives_the_unet_of_the_tiny_checkpoint(family):
    prefix = "model.diffusion_model."
    checkpoint = tiny_checkpoint_tensors(family)
    unet = unet_from_state_dict({k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)})
    controlnet = load_controlnet(tiny_controlnet_tensors(tiny_unet_config(family, False)))
    assert controlnet.config.unet == unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 7, unet.config.context_dim, generator=g)
    adm = unet.config.adm_in_channels
    y = None if adm is None else torch.randn(1, adm, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        residuals = controlnet(x, _hint(x), t, context, y)
        out = unet(x, t, context, y, control=residuals.scaled(0.8))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.equal(out, unet(x, t, context, y))


@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl"])
def test_published_controlnet_layouts_are_detected_and_built_key_for_key(family):
    # Shapes only, on the meta device: full-size layouts cost no memory.
    unet_kwargs, expected = REAL_FAMILIES[family]
    with torch.device("meta"):
        reference = ControlNetModel(**_diffusers_config(unet_kwargs))
        ours = ControlNet(ControlNetConfig(expected)).state_dict()
    weights = controlnet_to_ldm(reference.state_dict())
    assert detect_controlnet_config(weights) == ControlNetConfig(expected)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in ours.items()}
