"""LoRA parsing and patching: every naming convention lands on the same Loom parameter, and the
patched weights compute what the LoRA's own low-rank layers compute. LoRA files are read as the
LoRA loaders read them, `parse_lora(open_state_dict(path), ...)`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusion.checkpoint import ModelFamily, open_state_dict
from diffusion.lora import FullDelta, LoraFormatError, LowRankDelta, apply_lora_patches, parse_lora
from diffusion.text_encoders import FAMILY_ENCODERS, load_clip_text_model
from diffusion.tiny import tiny_checkpoint_tensors
from diffusion.unet import UNetModel, unet_from_state_dict
from tests.diffusion.weight_files import (
    BAD_WEIGHT_FILES,
    PICKLE_NAMED_SAFETENSORS,
    PICKLE_SUFFIXES,
    expect_refusal,
    write_bad_file,
)


def _view(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


@pytest.fixture(scope="module")
def sd15() -> tuple[UNetModel, list[torch.nn.Module]]:
    tensors = tiny_checkpoint_tensors(ModelFamily.SD15)
    unet = unet_from_state_dict(_view(tensors, "model.diffusion_model."))
    clip = load_clip_text_model(
        _view(tensors, "cond_stage_model.transformer."), FAMILY_ENCODERS["sd15"][0].activation, 64
    )
    return unet, [clip]


@pytest.fixture(scope="module")
def sdxl() -> tuple[UNetModel, list[torch.nn.Module]]:
    tensors = tiny_checkpoint_tensors(ModelFamily.SDXL)
    unet = unet_from_state_dict(_view(tensors, "model.diffusion_model."))
    roles = FAMILY_ENCODERS["sdxl"]
    encoders = [
        load_clip_text_model(_view(tensors, "conditioner.embedders.0.transformer."), roles[0].activation, 64),
        load_clip_text_model(_view(tensors, "conditioner.embedders.1.model."), roles[1].activation, 64),
    ]
    return unet, encoders


def low_rank(out_features: int, in_features: int, rank: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, rank, generator=generator), torch.randn(rank, in_features, generator=generator)


TO_Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"


def test_kohya_ldm_names_patch_w_plus_strength_alpha_over_rank_up_down(sd15) -> None:
    unet, _ = sd15
    weight = unet.get_parameter(f"{TO_Q}.weight")
    up, down = low_rank(*weight.shape, rank=4)
    state = {
        f"lora_unet_{TO_Q.replace('.', '_')}.lora_up.weight": up,
        f"lora_unet_{TO_Q.replace('.', '_')}.lora_down.weight": down,
        f"lora_unet_{TO_Q.replace('.', '_')}.alpha": torch.tensor(2.0),
    }
    patches = parse_lora(state, unet)
    assert patches.unmatched == [] and list(patches.unet) == [f"{TO_Q}.weight"]
    patched = apply_lora_patches(unet, [(patches.unet, 0.7)])
    torch.testing.assert_close(patched[f"{TO_Q}.weight"], weight + 0.7 * (2.0 / 4) * up @ down)


def _kohya_to_q(unet: UNetModel) -> dict[str, torch.Tensor]:
    up, down = low_rank(*unet.get_parameter(f"{TO_Q}.weight").shape)
    stem = f"lora_unet_{TO_Q.replace('.', '_')}"
    return {f"{stem}.lora_up.weight": up, f"{stem}.lora_down.weight": down}


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_a_safetensors_lora_under_a_pickle_suffix_loads(sd15, tmp_path, suffix: str) -> None:
    unet, _ = sd15
    save_file(_kohya_to_q(unet), tmp_path / f"style{suffix}")
    assert list(parse_lora(open_state_dict(tmp_path / f"style{suffix}"), unet).unet) == [f"{TO_Q}.weight"]


def test_a_pickled_lora_named_safetensors_is_refused(sd15, tmp_path) -> None:
    torch.save(_kohya_to_q(sd15[0]), tmp_path / "style.safetensors")
    expect_refusal(open_state_dict, tmp_path / "style.safetensors", PICKLE_NAMED_SAFETENSORS)


@pytest.mark.parametrize(("name", "content", "reason"), BAD_WEIGHT_FILES)
def test_a_lora_file_that_is_not_weights_is_named_with_what_it_is(
    tmp_path, name: str, content: bytes, reason: str
) -> None:
    expect_refusal(open_state_dict, write_bad_file(tmp_path, name, content), reason)


def test_every_naming_convention_resolves_to_the_same_parameter(sd15) -> None:
    unet, _ = sd15
    up, down = low_rank(*unet.get_parameter(f"{TO_Q}.weight").shape)
    diffusers = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    up_level = "up_blocks.1.attentions.0.proj_out"  # the LDM's output_blocks.2.1 in this two-level UNet
    out = unet.get_parameter("output_blocks.2.1.proj_out.weight")
    out_up, out_down = low_rank(out.shape[0], out.shape[1])
    conventions = {
        "kohya_ldm": {
            f"lora_unet_{TO_Q.replace('.', '_')}.lora_up.weight": up,
            f"lora_unet_{TO_Q.replace('.', '_')}.lora_down.weight": down,
        },
        "kohya_diffusers": {
            f"lora_unet_{diffusers.replace('.', '_')}.lora_up.weight": up,
            f"lora_unet_{diffusers.replace('.', '_')}.lora_down.weight": down,
            f"lora_unet_{up_level.replace('.', '_')}.lora_up.weight": out_up,
            f"lora_unet_{up_level.replace('.', '_')}.lora_down.weight": out_down,
        },
        "diffusers_old": {f"unet.{diffusers}.lora.up.weight": up, f"unet.{diffusers}.lora.down.weight": down},
        "peft": {
            f"unet.{diffusers}.lora_B.weight": up,
            f"unet.{diffusers}.lora_A.weight": down,
            f"unet.{up_level}.lora_B.weight": out_up,
            f"unet.{up_level}.lora_A.weight": out_down,
        },
    }
    for name, state in conventions.items():
        patches = parse_lora(state, unet)
        assert patches.unmatched == [], name
        assert f"{TO_Q}.weight" in patches.unet, name
        if len(state) == 4:
            assert "output_blocks.2.1.proj_out.weight" in patches.unet, name
        torch.testing.assert_close(
            apply_lora_patches(unet, [(patches.unet, 1.0)])[f"{TO_Q}.weight"],
            unet.get_parameter(f"{TO_Q}.weight") + up @ down,
        )


def test_locon_conv_patch_equals_running_the_lora_convolutions(sd15) -> None:
    """A 3x3 down conv then a 1x1 up conv, added to the layer's output, is what the patched kernel computes."""
    unet, _ = sd15
    conv = unet.input_blocks[0][0]
    generator = torch.Generator().manual_seed(1)
    down = torch.randn(3, conv.in_channels, 3, 3, generator=generator)
    up = torch.randn(conv.out_channels, 3, 1, 1, generator=generator)
    state = {
        "lora_unet_input_blocks_0_0.lora_down.weight": down,
        "lora_unet_input_blocks_0_0.lora_up.weight": up,
        "lora_unet_input_blocks_0_0.alpha": torch.tensor(1.5),
    }
    patched = apply_lora_patches(unet, [(parse_lora(state, unet).unet, 0.8)])["input_blocks.0.0.weight"]
    x = torch.randn(1, conv.in_channels, 8, 8, generator=generator)
    expected = conv(x) + 0.8 * (1.5 / 3) * F.conv2d(F.conv2d(x, down, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, patched, conv.bias, padding=1), expected, rtol=1e-4, atol=1e-4)


def test_tucker_mid_conv_patch_equals_the_three_lora_convolutions(sd15) -> None:
    unet, _ = sd15
    conv = unet.input_blocks[0][0]
    generator = torch.Generator().manual_seed(2)
    down = torch.randn(3, conv.in_channels, 1, 1, generator=generator)
    mid = torch.randn(3, 3, 3, 3, generator=generator)
    up = torch.randn(conv.out_channels, 3, 1, 1, generator=generator)
    state = {
        "lora_unet_input_blocks_0_0.lora_down.weight": down,
        "lora_unet_input_blocks_0_0.lora_mid.weight": mid,
        "lora_unet_input_blocks_0_0.lora_up.weight": up,
    }
    patched = apply_lora_patches(unet, [(parse_lora(state, unet).unet, 1.0)])["input_blocks.0.0.weight"]
    x = torch.randn(1, conv.in_channels, 8, 8, generator=generator)
    expected = conv(x) + F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    torch.testing.assert_close(F.conv2d(x, patched, conv.bias, padding=1), expected, rtol=1e-4, atol=1e-4)


def test_text_encoder_keys_reach_the_right_encoder(sdxl) -> None:
    unet, (clip_l, clip_g) = sdxl
    q = "encoder.layers.0.self_attn.q_proj"
    up, down = low_rank(64, 64)
    state = {
        f"lora_te1_text_model_{q.replace('.', '_')}.lora_up.weight": up,
        f"lora_te1_text_model_{q.replace('.', '_')}.lora_down.weight": down,
        f"text_encoder_2.text_model.{q}.lora_linear_layer.up.weight": up * 2,
        f"text_encoder_2.text_model.{q}.lora_linear_layer.down.weight": down,
    }
    patches = parse_lora(state, unet, [clip_l, clip_g])
    assert patches.unmatched == [] and patches.unet == {}
    torch.testing.assert_close(
        apply_lora_patches(clip_l, [(patches.text[0], 1.0)])[f"{q}.weight"],
        clip_l.get_parameter(f"{q}.weight") + up @ down,
    )
    torch.testing.assert_close(
        apply_lora_patches(clip_g, [(patches.text[1], 1.0)])[f"{q}.weight"],
        clip_g.get_parameter(f"{q}.weight") + 2 * up @ down,
    )


def test_full_deltas_patch_weight_and_bias(sd15) -> None:
    unet, _ = sd15
    weight = unet.get_parameter("out.2.weight")
    diff, diff_b = torch.full_like(weight, 0.25), torch.ones(weight.shape[0])
    patches = parse_lora({"lora_unet_out_2.diff": diff, "lora_unet_out_2.diff_b": diff_b}, unet)
    assert isinstance(patches.unet["out.2.weight"][0], FullDelta)
    patched = apply_lora_patches(unet, [(patches.unet, 2.0)])
    torch.testing.assert_close(patched["out.2.weight"], weight + 0.5)
    torch.testing.assert_close(patched["out.2.bias"], unet.get_parameter("out.2.bias") + 2.0)


def test_keys_for_absent_modules_are_reported_not_applied(sd15) -> None:
    unet, encoders = sd15
    up, down = low_rank(8, 8)
    state = {
        "lora_unet_no_such_block.lora_up.weight": up,
        "lora_unet_no_such_block.lora_down.weight": down,
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up,
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
        "lora_unet_x.hada_w1_a": up,
    }
    patches = parse_lora(state, unet, encoders)
    assert patches.unmatched == [
        "lora_te2_text_model_encoder_layers_0_mlp_fc1",
        "lora_unet_no_such_block",
        "lora_unet_x.hada_w1_a",
    ]
    assert patches.unet == {} and patches.text == {}


def test_a_file_that_is_not_a_lora_is_refused_with_its_name(sd15) -> None:
    unet, _ = sd15
    with pytest.raises(LoraFormatError, match=r"model\.safetensors: no LoRA tensors.*input_blocks"):
        parse_lora({"input_blocks.0.0.weight": torch.zeros(1)}, unet, path="model.safetensors")
    with pytest.raises(LoraFormatError, match="only one of the up/down"):
        parse_lora({"lora_unet_out_2.lora_up.weight": torch.zeros(4, 2)}, unet)


def test_patching_never_writes_into_the_module_and_strengths_add_linearly(sd15) -> None:
    unet, _ = sd15
    before = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    delta = LowRankDelta(*low_rank(*unet.get_parameter(f"{TO_Q}.weight").shape), scale=1.0)
    patches = {f"{TO_Q}.weight": [delta]}
    once = apply_lora_patches(unet, [(patches, 1.0)])[f"{TO_Q}.weight"]
    twice = apply_lora_patches(unet, [(patches, 0.5), (patches, 0.5)])[f"{TO_Q}.weight"]
    torch.testing.assert_close(once, twice)
    assert apply_lora_patches(unet, [(patches, 0.0)]) == {}
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, before[name]), name
