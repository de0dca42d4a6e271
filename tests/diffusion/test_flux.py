"""FLUX.1: the config read from Black Forest Labs-layout weights, and output parity with diffusers.

Layout proof: a tiny Loom model with random weights gives its original-layout state dict; diffusers' own
single-file converter (`convert_flux_transformer_checkpoint_to_diffusers`) turns that into a
`FluxTransformer2DModel`, which must compute what Loom computes. Latents are packed into tokens and given their
position ids by diffusers' own pipeline helpers, so the patch order and the ids are checked too.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

from diffusion.flux import (
    FluxConfig,
    FluxTransformer,
    flux_config_from_state_dict,
    image_position_ids,
    load_flux,
    reference_offsets,
)
from diffusion.fused_linear import FusedLinear
from diffusion.model_memory import place
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.random_weights import original_state_dict, with_random_scales
from tests.diffusion.single_block_widths import converted_at_model_width

TOLERANCE = 1e-4
AXES = (4, 14, 14)  # two heads of 32
CONTEXT_DIM, VEC_DIM, TEXT_TOKENS = 32, 16, 5


def tiny_config(in_channels: int = 64, guidance: bool = True) -> FluxConfig:
    return FluxConfig(
        in_channels=in_channels,
        out_channels=64,
        hidden_size=64,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        context_dim=CONTEXT_DIM,
        vec_dim=VEC_DIM,
        guidance_embed=guidance,
        axes_dim=AXES,
    )


def random_flux(config: FluxConfig, seed: int = 0) -> FluxTransformer:
    return with_random_scales(lambda: FluxTransformer(config), seed)


def diffusers_twin(state_dict: dict[str, torch.Tensor], config: FluxConfig) -> FluxTransformer2DModel:
    """A diffusers model holding exactly the given original-layout weights, through diffusers' own converter."""
    sizes = (config.depth_single_blocks, config.hidden_size, config.mlp_hidden_size)
    converted = converted_at_model_width(state_dict, convert_flux_transformer_checkpoint_to_diffusers, *sizes)
    reference = FluxTransformer2DModel(
        patch_size=1,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_layers=config.depth,
        num_single_layers=config.depth_single_blocks,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim,
        pooled_projection_dim=config.vec_dim,
        guidance_embeds=config.guidance_embed,
        axes_dims_rope=config.axes_dim,
    )
    reference.load_state_dict(converted, strict=True)
    return reference.eval().requires_grad_(False)


def run_diffusers(
    reference: FluxTransformer2DModel,
    x: torch.Tensor,
    conditioning: dict[str, torch.Tensor | None],
    references: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
) -> torch.Tensor:
    """The pipeline's packing and ids around the diffusers model; `references` are (latent, ids) appended."""
    b, c, h, w = x.shape
    tokens = [FluxPipeline._pack_latents(x, b, c, h, w)]
    ids = [FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)]
    for latent, latent_ids in references:
        latent = latent.expand(b, -1, -1, -1)
        tokens.append(FluxPipeline._pack_latents(latent, b, c, *latent.shape[-2:]))
        ids.append(latent_ids)
    context = conditioning["context"]
    assert context is not None
    out = reference(
        hidden_states=torch.cat(tokens, dim=1),
        encoder_hidden_states=context,
        pooled_projections=conditioning["y"],
        timestep=conditioning["timesteps"],
        img_ids=torch.cat(ids),
        txt_ids=torch.zeros(context.shape[1], 3),
        guidance=conditioning["guidance"],
    ).sample
    return FluxPipeline._unpack_latents(out[:, : tokens[0].shape[1]], h * 8, w * 8, 8)


def conditioning(batch: int, guidance: bool, seed: int = 1) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    return {
        "timesteps": torch.linspace(0.3, 0.9, batch),
        "context": torch.randn(batch, TEXT_TOKENS, CONTEXT_DIM, generator=g),
        "y": torch.randn(batch, VEC_DIM, generator=g),
        "guidance": torch.linspace(2.5, 4.0, batch) if guidance else None,
    }


def run_loom(
    model: FluxTransformer, x: torch.Tensor, cond: dict[str, torch.Tensor | None], **extra: object
) -> torch.Tensor:
    context, y, timesteps = cond["context"], cond["y"], cond["timesteps"]
    assert context is not None and y is not None and timesteps is not None
    return model(x, timesteps, context, y, guidance=cond["guidance"], **extra)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal, not two near-zero outputs
    assert (actual - expected).abs().max() <= TOLERANCE


# ---------------------------------------------------------------- parity with diffusers

VARIANTS = {
    # name: (token features of img_in, guidance embedding)
    "dev": (64, True),
    "schnell": (64, False),
    "fill": (384, True),  # noisy latent 16 + masked-image latent 16 + 8x8-packed mask 64
    "canny": (128, True),  # noisy latent 16 + control-image latent 16
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_computes_what_diffusers_computes_on_the_converted_file(variant: str, cpu_path: str) -> None:
    in_channels, guidance = VARIANTS[variant]
    config = tiny_config(in_channels, guidance)
    model = random_flux(config, seed=len(variant))
    reference = diffusers_twin(original_state_dict(model), config)
    x = torch.randn(2, config.latent_channels, 6, 10, generator=torch.Generator().manual_seed(2))  # not square
    cond = conditioning(2, guidance)
    with torch.no_grad():
        actual = run_loom(model, x, cond)
        expected = run_diffusers(reference, x, cond)
    assert actual.shape == (2, 16, 6, 10)
    assert_matches(actual, expected)


def test_odd_sized_latents_are_wrapped_to_even_and_cropped_back() -> None:
    config = tiny_config()
    model = random_flux(config, seed=5)
    reference = diffusers_twin(original_state_dict(model), config)
    x = torch.randn(1, 16, 7, 9, generator=torch.Generator().manual_seed(3))
    cond = conditioning(1, guidance=True)
    with torch.no_grad():
        actual = run_loom(model, x, cond)
        expected = run_diffusers(reference, F.pad(x, (0, 1, 0, 1), mode="circular"), cond)[:, :, :7, :9]
    assert_matches(actual, expected)


def test_kontext_references_are_extra_tokens_at_index_one_beside_each_other() -> None:
    config = tiny_config()
    model = random_flux(config, seed=6)
    reference = diffusers_twin(original_state_dict(model), config)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 6, 8, generator=g)
    wide = torch.randn(1, 16, 8, 12, generator=g)  # at the origin, as FluxKontextPipeline places its one image
    small = torch.randn(1, 16, 6, 4, generator=g)  # below the wide one: latent row 8 = token row 4
    wide_ids = FluxPipeline._prepare_latent_image_ids(1, 4, 6, x.device, x.dtype)
    wide_ids[:, 0] = 1
    small_ids = FluxPipeline._prepare_latent_image_ids(1, 3, 2, x.device, x.dtype)
    small_ids[:, 0] = 1
    small_ids[:, 1] += 4
    cond = conditioning(2, guidance=True)
    with torch.no_grad():
        one = run_loom(model, x, cond, ref_latents=[wide])
        two = run_loom(model, x, cond, ref_latents=[wide, small])
        assert_matches(one, run_diffusers(reference, x, cond, [(wide, wide_ids)]))
        assert_matches(two, run_diffusers(reference, x, cond, [(wide, wide_ids), (small, small_ids)]))
        assert (one - run_loom(model, x, cond)).abs().max() > 1e-3  # the reference does take part


def test_references_are_placed_beside_the_box_of_the_earlier_ones() -> None:
    # A wide first reference makes the next go below it; a tall box makes the next go to its right.
    assert reference_offsets([(8, 12), (6, 4)]) == [(0, 0), (8, 0)]
    assert reference_offsets([(8, 4), (6, 6), (4, 4)]) == [(0, 0), (0, 4), (8, 0)]
    assert image_position_ids(2, 3, index=1, row_offset=4, col_offset=1).tolist() == [
        [1, 4, 1],
        [1, 4, 2],
        [1, 4, 3],
        [1, 5, 1],
        [1, 5, 2],
        [1, 5, 3],
    ]


# ---------------------------------------------------------------- config and loading


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_is_read_back_from_the_weights(variant: str) -> None:
    config = tiny_config(*VARIANTS[variant])
    state_dict = original_state_dict(random_flux(config))
    assert flux_config_from_state_dict(state_dict, axes_dim=AXES) == config
    assert load_flux(state_dict, config).config == config


@pytest.mark.parametrize(
    "release",
    [
        FluxConfig(),  # dev, Krea, Kontext
        FluxConfig(guidance_embed=False),  # schnell
        FluxConfig(in_channels=384),  # Fill
        FluxConfig(in_channels=128),  # Canny, Depth
    ],
)
def test_release_shapes_give_24_heads_of_128_and_the_release_rope(release: FluxConfig) -> None:
    with torch.device("meta"):
        state_dict = FluxTransformer(release).state_dict()
    assert "img_in.weight" in state_dict and "final_layer.adaLN_modulation.1.weight" in state_dict
    assert ("guidance_in.in_layer.weight" in state_dict) == release.guidance_embed
    detected = flux_config_from_state_dict(state_dict)
    assert detected == release
    assert (detected.num_heads, detected.head_dim, detected.axes_dim) == (24, 128, (16, 56, 56))
    assert (detected.hidden_size, detected.depth, detected.depth_single_blocks) == (3072, 19, 38)


def test_heads_narrower_than_128_need_their_rope_axes_given() -> None:
    state_dict = original_state_dict(random_flux(tiny_config()))
    with pytest.raises(ValueError, match="axes_dim"):
        flux_config_from_state_dict(state_dict)


def test_a_missing_weight_is_named() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_flux(config))
    del state_dict["single_blocks.1.norm.key_norm.scale"]
    with pytest.raises(CheckpointLayoutError, match=r"single_blocks\.1\.norm\.key_norm\.scale: missing"):
        load_flux(state_dict, config)


def test_a_diffusers_layout_file_is_refused_with_the_key_it_lacks() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_flux(config))
    diffusers_layout = diffusers_twin(state_dict, config).state_dict()
    with pytest.raises(CheckpointLayoutError, match=r"img_in\.weight: missing"):
        load_flux(diffusers_layout)
    prefixed = {f"model.diffusion_model.{key}": tensor for key, tensor in state_dict.items()}
    with pytest.raises(CheckpointLayoutError, match="prefix stripped"):
        load_flux(prefixed)


def test_load_adopts_the_given_tensors() -> None:
    config = tiny_config()
    state_dict = original_state_dict(random_flux(config))
    model = load_flux(state_dict, config)
    assert model.img_in.weight.data_ptr() == state_dict["img_in.weight"].data_ptr()
    assert not any(p.is_meta for p in model.parameters())


def test_fp16_weights_placed_for_fp32_compute_what_the_model_cast_whole_computes() -> None:
    config = tiny_config()
    half = {key: tensor.half() for key, tensor in original_state_dict(random_flux(config, seed=7)).items()}
    placed = load_flux(dict(half), config)
    place(placed, torch.device("cpu"), torch.float32)
    whole = load_flux({key: tensor.clone() for key, tensor in half.items()}, config).float()
    assert placed.dtype == whole.dtype == torch.float32
    linears = [layer for layer in placed.modules() if isinstance(layer, FusedLinear)]
    assert linears and all(layer.weight.dtype == torch.float16 for layer in linears)
    x = torch.randn(2, 16, 6, 8, generator=torch.Generator().manual_seed(8))
    cond = conditioning(2, guidance=True)
    ref = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(run_loom(placed, x, cond, ref_latents=[ref]), run_loom(whole, x, cond, ref_latents=[ref]))


# ---------------------------------------------------------------- the forward contract


def test_a_guidance_distilled_model_needs_guidance_and_schnell_ignores_it() -> None:
    x = torch.randn(1, 16, 4, 4)
    cond = conditioning(1, guidance=False)
    with pytest.raises(ValueError, match="guidance"):
        run_loom(random_flux(tiny_config()), x, cond)
    schnell = random_flux(tiny_config(guidance=False))
    with torch.no_grad():
        assert torch.equal(run_loom(schnell, x, cond), run_loom(schnell, x, {**cond, "guidance": torch.tensor([3.5])}))


def test_a_latent_without_the_conditioning_channels_is_refused() -> None:
    fill = random_flux(tiny_config(384))
    with pytest.raises(ValueError, match=r"\[B, 96, H, W\]"):
        run_loom(fill, torch.randn(1, 16, 4, 4), conditioning(1, guidance=True))


def test_scalar_timesteps_and_guidance_apply_to_the_whole_batch() -> None:
    model = random_flux(tiny_config())
    x = torch.randn(2, 16, 4, 4)
    cond = conditioning(2, guidance=True)
    context, y = cond["context"], cond["y"]
    assert context is not None and y is not None
    with torch.no_grad():
        scalar = model(x, 0.5, context, y, guidance=3.5)
        batched = model(x, torch.full((2,), 0.5), context, y, guidance=torch.full((2,), 3.5))
    assert torch.equal(scalar, batched)


def test_bf16_stays_close_to_fp32() -> None:
    model = random_flux(tiny_config(), seed=11)
    x = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(12))
    cond = conditioning(1, guidance=True)
    with torch.no_grad():
        fp32 = run_loom(model, x, cond)
        bf16 = run_loom(model.to(torch.bfloat16), x, cond)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() <= 0.05 * fp32.abs().max()
