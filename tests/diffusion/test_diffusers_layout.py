"""diffusers -> LDM key conversion. The parity tests in test_unet/test_vae prove the mapping numerically;
these pin the index arithmetic and the failure modes."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffusion.diffusers_layout import unet_to_ldm, vae_to_ldm
from diffusion.unet import UNetModel, unet_from_state_dict
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.reference_models import CONTEXT_DIM, FAMILIES, tiny_unet, tiny_vae


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_converted_unet_keys_are_exactly_the_ldm_module_keys(family):
    _, weights = tiny_unet(family)
    with torch.device("meta"):
        expected = UNetModel(FAMILIES[family].expected).state_dict()
    assert set(weights) == set(expected)
    assert all(weights[k].shape == expected[k].shape for k in expected)


def test_unet_stages_are_numbered_in_one_flat_list():
    reference, weights = tiny_unet("sd1")
    source = reference.state_dict()
    pairs = {
        "down_blocks.0.resnets.0.conv1.weight": "input_blocks.1.0.in_layers.2.weight",
        "down_blocks.0.attentions.0.proj_in.weight": "input_blocks.1.1.proj_in.weight",
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.2.0.op.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.3.0.skip_connection.weight",
        "mid_block.resnets.1.time_emb_proj.weight": "middle_block.2.emb_layers.1.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.1.1.conv.weight",
        "up_blocks.1.resnets.1.norm2.bias": "output_blocks.3.0.out_layers.0.bias",
        "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2.weight": (
            "output_blocks.3.1.transformer_blocks.0.ff.net.2.weight"
        ),
        "time_embedding.linear_2.weight": "time_embed.2.weight",
        "conv_norm_out.weight": "out.0.weight",
    }
    for diffusers_key, ldm_key in pairs.items():
        assert torch.equal(weights[ldm_key], source[diffusers_key]), diffusers_key


def test_upsampler_follows_the_transformer_in_attention_up_blocks():
    _, weights = tiny_unet("sdxl_refiner")
    assert "output_blocks.3.2.conv.weight" in weights  # level 1 has attention: ResBlock, transformer, upsample
    assert "output_blocks.1.1.conv.weight" in weights  # level 2 has none


def test_per_level_layers_per_block_match_diffusers():
    torch.manual_seed(0)
    reference = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=(1, 2),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=8,
    ).eval()
    unet = unet_from_state_dict(unet_to_ldm(reference.state_dict(), reference.config))
    assert unet.config.num_res_blocks == (1, 2)
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([37.0]), torch.randn(1, 3, CONTEXT_DIM)
    with torch.no_grad():
        assert (unet(x, t, context) - reference(x, t, context).sample).abs().max() <= 1e-4


def test_unet_features_without_an_ldm_counterpart_are_named():
    reference, _ = tiny_unet("sd1")
    weights = dict(reference.state_dict(), **{"class_embedding.linear_1.weight": torch.zeros(4, 4)})
    with pytest.raises(CheckpointLayoutError, match="class_embedding.linear_1.weight"):
        unet_to_ldm(weights, reference.config)


def test_vae_up_blocks_are_renumbered_by_resolution_level():
    reference, weights = tiny_vae()
    source = reference.state_dict()
    pairs = {
        "decoder.up_blocks.0.resnets.1.conv1.weight": "decoder.up.1.block.1.conv1.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight": "decoder.up.1.upsample.conv.weight",
        "decoder.up_blocks.1.resnets.0.conv_shortcut.bias": "decoder.up.0.block.0.nin_shortcut.bias",
        "encoder.down_blocks.0.downsamplers.0.conv.bias": "encoder.down.0.downsample.conv.bias",
        "encoder.mid_block.resnets.1.norm1.weight": "encoder.mid.block_2.norm1.weight",
        "encoder.mid_block.attentions.0.group_norm.bias": "encoder.mid.attn_1.norm.bias",
    }
    for diffusers_key, ldm_key in pairs.items():
        assert torch.equal(weights[ldm_key], source[diffusers_key]), diffusers_key


def test_vae_attention_matrices_become_1x1_convolutions():
    reference, weights = tiny_vae()
    linear = reference.state_dict()["encoder.mid_block.attentions.0.to_out.0.weight"]
    assert linear.shape == (64, 64)
    assert torch.equal(weights["encoder.mid.attn_1.proj_out.weight"], linear[:, :, None, None])


def test_vae_attention_names_of_old_diffusers_releases_are_accepted():
    reference, weights = tiny_vae()
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, tensor in reference.state_dict().items():
        for new, old in renames.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[key] = tensor
    converted = vae_to_ldm(legacy)
    assert set(converted) == set(weights)
    assert all(torch.equal(converted[k], weights[k]) for k in weights)


def test_vae_keys_without_an_ldm_counterpart_are_named():
    with pytest.raises(CheckpointLayoutError, match="encoder.mid_block.attentions.0.to_add_out.weight"):
        vae_to_ldm({"encoder.mid_block.attentions.0.to_add_out.weight": torch.zeros(4, 4)})
