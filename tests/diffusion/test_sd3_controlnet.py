"""Stability's SD3.5 ControlNets: their key layout, their residuals and where the MMDiT adds them, against diffusers.

The reference is diffusers' `SD3ControlNetModel` in the configuration its own conversion script gives Stability's
files (no text stream, `use_pos_embed=False` so that the transformer's patch embedding and positions are borrowed,
the real pooled text), holding the same random weights: Loom's original-layout tensors renamed by the mapping of
`scripts/convert_sd3_controlnet_to_diffusers.py` (fused `qkv` cut into q, k, v; `adaLN_modulation.1` is
`norm1.linear`; `mlp.fc1`/`fc2` are `ff.net.0.proj`/`ff.net.2`; `attn.proj` is `attn.to_out.0`). The MMDiT it
borrows from is a random Loom MMDiT and its diffusers twin, through diffusers' single-file converter.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import SD3ControlNetModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

from diffusion.flux_controlnet import BlockResiduals
from diffusion.mmdit import MMDiT, MMDiTConfig
from diffusion.sd3_controlnet import (
    SD3ControlNet,
    SD3ControlNetConfig,
    is_sd3_controlnet,
    load_sd3_controlnet,
    prepare_hint_image,
    sd3_controlnet_config_from_state_dict,
    tiny_sd3_controlnet_tensors,
)
from diffusion.tiny_parts import tiny_mmdit_config
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.random_weights import original_state_dict

TOLERANCE = 1e-5
HIDDEN, HEADS, DEPTH, CONTROL_DEPTH = 128, 2, 4, 2  # 64-wide heads, as the loader reads them
CONTEXT_DIM = POOLED_DIM = 32
MMDIT = MMDiTConfig(
    depth=DEPTH,
    hidden_size=HIDDEN,
    num_heads=HEADS,
    pos_embed_max_size=16,
    pooled_dim=POOLED_DIM,
    context_dim=CONTEXT_DIM,
    qk_norm=True,
)
CONTROLNET = SD3ControlNetConfig(hidden_size=HIDDEN, num_heads=HEADS, depth=CONTROL_DEPTH, pooled_dim=POOLED_DIM)

# scripts/convert_sd3_controlnet_to_diffusers.py: Stability's block layer -> diffusers' (qkv is cut in three).
_BLOCK_LAYERS = {
    "attn.proj": "attn.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm1.linear",
}
_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")


def stability_to_diffusers(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in weights.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            converted[key] = tensor
            continue
        index, layer, param = match.groups()
        block = f"transformer_blocks.{index}."
        if layer == "attn.qkv":
            for name, part in zip(("to_q", "to_k", "to_v"), tensor.chunk(3)):
                converted[f"{block}attn.{name}.{param}"] = part
        else:
            converted[f"{block}{_BLOCK_LAYERS[layer]}.{param}"] = tensor
    return converted


def random_mmdit(seed: int = 0) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(MMDIT)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("ln_q.weight", "ln_k.weight")):
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
        model.pos_embed.copy_(0.5 * torch.randn_like(model.pos_embed))
    return model.eval().requires_grad_(False)


def diffusers_transformer(model: MMDiT) -> SD3Transformer2DModel:
    reference = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=DEPTH,
        attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=CONTEXT_DIM,
        caption_projection_dim=HIDDEN,
        pooled_projection_dim=POOLED_DIM,
        pos_embed_max_size=16,
        qk_norm="rms_norm",
    )
    converted = convert_sd3_transformer_checkpoint_to_diffusers(original_state_dict(model))
    reference.load_state_dict(converted, strict=True)
    return reference.eval().requires_grad_(False)


def random_controlnet(seed: int = 1) -> SD3ControlNet:
    """Every weight random, the zero layers too (zero residuals would prove nothing)."""
    torch.manual_seed(seed)
    model = SD3ControlNet(CONTROLNET)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("controlnet_blocks", "pos_embed_input")):
                parameter.normal_(0.0, 0.05)
    return model.eval().requires_grad_(False)


def diffusers_controlnet(model: SD3ControlNet, transformer: SD3Transformer2DModel) -> SD3ControlNetModel:
    """The configuration diffusers' conversion script gives the SD3.5 Large ControlNets, at this size."""
    reference = SD3ControlNetModel(
        patch_size=2,
        in_channels=16,
        num_layers=CONTROL_DEPTH,
        attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=None,
        caption_projection_dim=HIDDEN,
        pooled_projection_dim=POOLED_DIM,
        out_channels=16,
        pos_embed_max_size=None,
        pos_embed_type=None,
        use_pos_embed=False,
        force_zeros_for_pooled_projection=False,
    )
    reference.load_state_dict(stability_to_diffusers(dict(model.state_dict())), strict=True)
    reference.pos_embed = reference._get_pos_embed_from_transformer(transformer)  # what its pipeline does
    return reference.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models() -> tuple[MMDiT, SD3Transformer2DModel, SD3ControlNet, SD3ControlNetModel]:
    mmdit = random_mmdit()
    transformer = diffusers_transformer(mmdit)
    controlnet = random_controlnet()
    return mmdit, transformer, controlnet, diffusers_controlnet(controlnet, transformer)


def inputs(height: int = 8, width: int = 6, batch: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 16, height, width, generator=g)
    hint = torch.randn(1, 16, height, width, generator=g)
    sigmas = torch.linspace(0.3, 0.9, batch)
    context = torch.randn(batch, 5, CONTEXT_DIM, generator=g)
    pooled = torch.randn(batch, POOLED_DIM, generator=g)
    return x, hint, sigmas, context, pooled


def diffusers_residuals(reference: SD3ControlNetModel, x, hint, sigmas, pooled) -> list[torch.Tensor]:
    return reference(
        hidden_states=x,
        controlnet_cond=hint.expand(x.shape[0], -1, -1, -1),
        encoder_hidden_states=None,
        pooled_projections=pooled,
        timestep=sigmas * 1000,
    ).controlnet_block_samples


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal
    assert (actual - expected).abs().max() <= TOLERANCE


# ---------------------------------------------------------------- residuals and where they go


def test_each_residual_is_diffusers_and_serves_two_consecutive_joint_blocks_the_last_included(models):
    mmdit, _, controlnet, reference = models
    x, hint, sigmas, context, pooled = inputs()
    with torch.no_grad():
        residuals = controlnet(x, hint, sigmas, context, pooled, transformer=mmdit)
        expected = diffusers_residuals(reference, x, hint, sigmas, pooled)
    assert residuals.single == ()
    assert len(residuals.double) == DEPTH
    for block, residual in enumerate(residuals.double):
        assert residual is not None
        assert_close(residual, expected[block // 2])


def test_the_mmdit_adds_each_residual_to_the_image_tokens_after_its_block_as_diffusers_does(models):
    mmdit, transformer, _, reference = models
    x, hint, sigmas, context, pooled = inputs()
    with torch.no_grad():
        samples = diffusers_residuals(reference, x, hint, sigmas, pooled)
        expected = transformer(x, context, pooled, sigmas * 1000, block_controlnet_hidden_states=samples).sample
        # diffusers' placement: residual i // 2, none after the last (pre-only) block.
        control = BlockResiduals((samples[0], samples[0], samples[1], None))
        actual = mmdit(x, sigmas, context, pooled, control=control)
        uncontrolled = mmdit(x, sigmas, context, pooled)
    assert (actual - uncontrolled).abs().max() > 0.1
    assert_close(actual, expected)


def test_a_skipped_block_still_gets_its_residual_as_in_diffusers(models):
    mmdit, transformer, _, reference = models
    x, hint, sigmas, context, pooled = inputs()
    with torch.no_grad():
        samples = diffusers_residuals(reference, x, hint, sigmas, pooled)
        expected = transformer(
            x, context, pooled, sigmas * 1000, block_controlnet_hidden_states=samples, skip_layers=[1]
        ).sample
        control = BlockResiduals((samples[0], samples[0], samples[1], None))
        actual = mmdit(x, sigmas, context, pooled, skip_layers=[1], control=control)
    assert_close(actual, expected)


def test_the_residual_after_the_last_block_reaches_the_output(models):
    """Stability's reference and ComfyUI add one after the pre-only last block too (diffusers does not)."""
    mmdit, _, controlnet, _ = models
    x, hint, sigmas, context, pooled = inputs()
    with torch.no_grad():
        residuals = controlnet(x, hint, sigmas, context, pooled, transformer=mmdit)
        full = mmdit(x, sigmas, context, pooled, control=residuals)
        without_last = mmdit(x, sigmas, context, pooled, control=BlockResiduals((*residuals.double[:-1], None)))
    assert (full - without_last).abs().max() > 1e-2


def test_odd_latents_are_wrapped_like_the_mmdit_wraps_them(models):
    mmdit, _, controlnet, _ = models
    x, hint, sigmas, context, pooled = inputs(height=7, width=5)
    with torch.no_grad():
        residuals = controlnet(x, hint, sigmas, context, pooled, transformer=mmdit)
        out = mmdit(x, sigmas, context, pooled, control=residuals)
    assert residuals.double[0] is not None and residuals.double[0].shape == (2, 4 * 3, HIDDEN)
    assert out.shape == x.shape


def test_residuals_for_another_mmdit_or_latent_are_refused(models):
    mmdit, _, controlnet, _ = models
    x, hint, sigmas, context, pooled = inputs()
    with torch.no_grad():
        residuals = controlnet(x, hint, sigmas, context, pooled, transformer=mmdit)
    with pytest.raises(ValueError, match="3 residuals for 4 joint blocks"):
        mmdit(x, sigmas, context, pooled, control=BlockResiduals(residuals.double[:3]))
    with pytest.raises(ValueError, match="image tokens"):
        mmdit(x[..., :4], sigmas, context, pooled, control=residuals)


def test_inputs_that_do_not_fit_are_refused(models):
    mmdit, _, controlnet, _ = models
    x, hint, sigmas, context, pooled = inputs()
    with pytest.raises(ValueError, match="VAE latent"):
        controlnet(x, hint[..., :4], sigmas, context, pooled, transformer=mmdit)
    narrow = MMDiT(MMDiTConfig(depth=2, hidden_size=64, num_heads=1, pos_embed_max_size=16, pooled_dim=32))
    with pytest.raises(ValueError, match="128 wide"):
        controlnet(x, hint, sigmas, context, pooled, transformer=narrow)


# ---------------------------------------------------------------- files


def test_the_tiny_file_has_stabilitys_keys_and_loads_into_diffusers_by_its_conversion():
    mmdit_config = tiny_mmdit_config("sd35_large")
    tensors = tiny_sd3_controlnet_tensors(mmdit_config, seed=3, control_type="depth")
    assert is_sd3_controlnet(tensors)
    assert tensors["control_type"].item() == 2
    blocks = {key for key in tensors if key.startswith("transformer_blocks.0.")}
    assert blocks == {
        f"transformer_blocks.0.{layer}.{param}"
        for layer in ("adaLN_modulation.1", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
        for param in ("weight", "bias")
    }
    reference = SD3ControlNetModel(
        num_layers=1,
        attention_head_dim=64,
        num_attention_heads=2,
        joint_attention_dim=None,
        pooled_projection_dim=2048,
        pos_embed_max_size=None,
        pos_embed_type=None,
        use_pos_embed=False,
    )
    weights = {k: v for k, v in tensors.items() if k != "control_type"}
    reference.load_state_dict(stability_to_diffusers(weights), strict=True)


@pytest.mark.parametrize("control_type", ["blur", "canny", "depth", None])
def test_the_config_and_control_type_are_read_back_from_the_tiny_file(control_type):
    mmdit_config = tiny_mmdit_config("sd35_large")
    tensors = tiny_sd3_controlnet_tensors(mmdit_config, control_type=control_type)
    model = load_sd3_controlnet(tensors)
    assert model.config == SD3ControlNetConfig(
        hidden_size=128, num_heads=2, depth=1, pooled_dim=2048, control_type=control_type
    )
    key = "transformer_blocks.0.attn.qkv.weight"
    assert model.state_dict()[key].data_ptr() == tensors[key].data_ptr()  # adopted, not copied


def test_the_tiny_controlnet_drives_the_tiny_mmdit():
    config = tiny_mmdit_config("sd35_large")
    torch.manual_seed(0)
    mmdit = MMDiT(config).eval()
    controlnet = load_sd3_controlnet(tiny_sd3_controlnet_tensors(config))
    x, hint = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    context, pooled = torch.randn(1, 3, config.context_dim), torch.randn(1, config.pooled_dim)
    with torch.no_grad():
        residuals = controlnet(x, hint, 0.5, context, pooled, transformer=mmdit)
        controlled = mmdit(x, 0.5, context, pooled, control=residuals)
        plain = mmdit(x, 0.5, context, pooled)
    assert [r is residuals.double[0] for r in residuals.double] == [True, True]
    assert (controlled - plain).abs().max() > 0


def test_diffusers_layout_and_2b_design_files_are_refused_by_name():
    tensors = tiny_sd3_controlnet_tensors(tiny_mmdit_config("sd35_large"))
    diffusers_layout = {**tensors, "transformer_blocks.0.norm1.linear.weight": torch.zeros(1)}
    with pytest.raises(CheckpointLayoutError, match="diffusers' layout"):
        sd3_controlnet_config_from_state_dict(diffusers_layout)
    square = {**tensors, "time_text_embed.text_embedder.linear_1.weight": torch.zeros(128, 128)}
    with pytest.raises(CheckpointLayoutError, match="2B"):
        load_sd3_controlnet(square)
    with pytest.raises(CheckpointLayoutError, match="control_type: 7"):
        load_sd3_controlnet({**tensors, "control_type": torch.tensor(7.0)})


def test_hint_images_are_prepared_as_each_control_type_was_trained():
    image = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(prepare_hint_image(image, "canny"), torch.tensor([0.5, 32.375, 128.0]))
    assert torch.equal(prepare_hint_image(image, "depth"), torch.tensor([1.0, 0.75, 0.0]))
    assert prepare_hint_image(image, "blur") is image
    assert prepare_hint_image(image, None) is image
