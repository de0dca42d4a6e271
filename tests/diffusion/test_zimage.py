"""Z-Image: the config read from original-layout weights, and output parity with diffusers.

Layout proof: a tiny Loom model with random weights gives its original-layout state dict; diffusers' own
single-file converter (`convert_z_image_transformer_checkpoint_to_diffusers`) turns that into a
`ZImageTransformer2DModel`, which must compute what Loom computes. diffusers is called as its pipeline calls it:
lists of per-item latents and captions (each caption only its real tokens), time ``1 - sigma``, and the output
negated, so the patch order, padding, positions, time convention and sign are all checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from diffusers import ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

from diffusion.fused_linear import FusedLinear
from diffusion.model_memory import place
from diffusion.unet_config import CheckpointLayoutError
from diffusion.zimage import ZImageConfig, ZImageTransformer, load_zimage, zimage_config_from_state_dict
from tests.diffusion.random_weights import original_state_dict

TOLERANCE = 1e-4
CONTEXT_DIM = 64
# Two heads of the release's width (128) and RoPE split (32 / 48 / 48). diffusers ties the rest to the width: the
# MLP is int(dim * 8 / 3) wide, the time MLP 1024 in the middle, the time embedding min(dim, 256).
TINY = ZImageConfig(
    hidden_size=256,
    num_heads=2,
    depth=2,
    noise_refiner_depth=1,
    context_refiner_depth=1,
    context_dim=CONTEXT_DIM,
    mlp_hidden_size=int(256 / 3 * 8),
    adaln_dim=256,
    time_hidden_size=1024,
)
# Narrower heads need their RoPE split given; a model narrower than 256 has a time embedding as wide as itself.
NARROW_AXES = (8, 12, 12)
NARROW = ZImageConfig(
    hidden_size=64,
    num_heads=2,
    depth=1,
    noise_refiner_depth=2,
    context_refiner_depth=1,
    context_dim=CONTEXT_DIM,
    mlp_hidden_size=int(64 / 3 * 8),
    adaln_dim=64,
    time_hidden_size=1024,
    axes_dim=NARROW_AXES,
)


def random_zimage(config: ZImageConfig = TINY, seed: int = 0) -> ZImageTransformer:
    """Random weights, norm weights and padding tokens included: they initialise to ones and zeros, which would
    hide a misplaced norm or padding token."""
    torch.manual_seed(seed)
    model = ZImageTransformer(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("pad_token"):
                parameter.normal_()
            elif parameter.ndim == 1 and name.endswith(".weight"):  # RMSNorm weights
                parameter.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


def diffusers_twin(state_dict: dict[str, torch.Tensor], config: ZImageConfig = TINY) -> ZImageTransformer2DModel:
    """A diffusers model holding exactly the given original-layout weights, through diffusers' own converter."""
    assert config.noise_refiner_depth == config.context_refiner_depth  # diffusers has one refiner depth
    reference = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=config.in_channels,
        dim=config.hidden_size,
        n_layers=config.depth,
        n_refiner_layers=config.noise_refiner_depth,
        n_heads=config.num_heads,
        n_kv_heads=config.num_heads,
        cap_feat_dim=config.context_dim,
        rope_theta=config.theta,
        axes_dims=list(config.axes_dim),
        axes_lens=[1536, 512, 512],
    )
    reference.load_state_dict(convert_z_image_transformer_checkpoint_to_diffusers(dict(state_dict)), strict=True)
    return reference.eval().requires_grad_(False)


def run_diffusers(
    reference: ZImageTransformer2DModel,
    x: torch.Tensor,
    sigma: torch.Tensor,
    context: torch.Tensor,
    lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """As ZImagePipeline calls the model: per-item lists, time 1 - sigma, the output negated."""
    lengths = lengths or [context.shape[1]] * x.shape[0]
    captions = [item[:length] for item, length in zip(context, lengths)]
    out = reference(list(x.unsqueeze(2).unbind(0)), 1 - sigma, captions, return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def inputs(
    batch: int, height: int, width: int, tokens: int, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, height, width, generator=g)
    sigma = torch.linspace(0.9, 0.3, batch)
    context = torch.randn(batch, tokens, CONTEXT_DIM, generator=g)
    return x, sigma, context


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1  # a real signal, not two near-zero outputs
    assert (actual - expected).abs().max() <= TOLERANCE


@pytest.fixture(scope="module")
def tiny() -> tuple[ZImageTransformer, ZImageTransformer2DModel]:
    model = random_zimage(TINY)
    return model, diffusers_twin(original_state_dict(model))


# ---------------------------------------------------------------- parity with diffusers

SHAPES = {
    # name: (batch, latent height, width, text tokens)
    "square, 64 image tokens (no image padding)": (1, 16, 16, 32),
    "non-square, 15 image tokens padded to 32": (1, 6, 10, 12),
    "text of 5 tokens padded to 32": (1, 8, 8, 5),
    "text of 40 tokens padded to 64": (1, 8, 12, 40),
    "batch of 2 at different sigmas": (2, 10, 6, 7),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_computes_what_diffusers_computes_on_the_converted_file(
    shape: str, tiny: tuple[ZImageTransformer, ZImageTransformer2DModel], cpu_path: str
) -> None:
    model, reference = tiny
    batch, height, width, tokens = SHAPES[shape]
    x, sigma, context = inputs(batch, height, width, tokens)
    with torch.no_grad():
        actual = model(x, sigma, context)
        expected = run_diffusers(reference, x, sigma, context)
    assert actual.shape == (batch, 16, height, width)
    assert_matches(actual, expected)


def test_a_batch_of_different_sigmas_is_per_item(tiny: tuple[ZImageTransformer, ZImageTransformer2DModel]) -> None:
    model, _ = tiny
    x, sigma, context = inputs(2, 6, 6, 9)
    with torch.no_grad():
        batched = model(x, sigma, context)
        alone = [model(x[i : i + 1], sigma[i : i + 1], context[i : i + 1]) for i in range(2)]
    assert (batched - torch.cat(alone)).abs().max() <= TOLERANCE
    assert (alone[0] - model(x[:1], sigma[1:], context[:1])).abs().max() > 1e-3  # the time does take part


def test_prompts_of_different_lengths_share_a_batch_through_context_lengths(
    tiny: tuple[ZImageTransformer, ZImageTransformer2DModel], cpu_path: str
) -> None:
    model, reference = tiny
    x, sigma, context = inputs(3, 6, 8, 40)
    lengths = [5, 40, 32]  # padded to 32, 64 and 32 text tokens
    with torch.no_grad():
        actual = model(x, sigma, context, context_lengths=lengths)
        assert_matches(actual, run_diffusers(reference, x, sigma, context, lengths))
        # Each item computes what it computes alone, whatever fills its row past its length.
        noisy = context.clone()
        noisy[0, 5:] = 100.0
        alone = model(x[:1], sigma[:1], context[:1, :5])
        assert (model(x, sigma, noisy, context_lengths=torch.tensor(lengths))[:1] - alone).abs().max() <= TOLERANCE


def test_odd_sized_latents_are_wrapped_to_even_and_cropped_back(
    tiny: tuple[ZImageTransformer, ZImageTransformer2DModel],
) -> None:
    model, reference = tiny
    x, sigma, context = inputs(1, 7, 9, 6)
    with torch.no_grad():
        actual = model(x, sigma, context)
        expected = run_diffusers(reference, F.pad(x, (0, 1, 0, 1), mode="circular"), sigma, context)[:, :, :7, :9]
    assert_matches(actual, expected)


def test_a_narrow_model_with_a_narrow_time_embedding_matches_too() -> None:
    config = dataclasses.replace(NARROW, noise_refiner_depth=1)
    model = random_zimage(config, seed=3)
    reference = diffusers_twin(original_state_dict(model), config)
    x, sigma, context = inputs(2, 6, 6, 3)
    with torch.no_grad():
        assert_matches(model(x, sigma, context), run_diffusers(reference, x, sigma, context))


# ---------------------------------------------------------------- config and loading


@pytest.mark.parametrize("config", [TINY, NARROW], ids=["tiny", "narrow"])
def test_config_is_read_back_from_the_weights(config: ZImageConfig) -> None:
    state_dict = original_state_dict(random_zimage(config))
    assert zimage_config_from_state_dict(state_dict, axes_dim=config.axes_dim) == config
    assert load_zimage(state_dict, config).config == config


def test_the_release_shapes_are_diffusers_default_model_without_allocating() -> None:
    release = ZImageConfig()
    with torch.device("meta"):
        state_dict = ZImageTransformer(release).state_dict()
        reference = ZImageTransformer2DModel().state_dict()  # diffusers' defaults are the release's sizes
    assert all(tensor.is_meta for tensor in state_dict.values())
    detected = zimage_config_from_state_dict(state_dict)
    assert detected == release
    assert (detected.num_heads, detected.head_dim, detected.axes_dim) == (30, 128, (32, 48, 48))
    assert (detected.hidden_size, detected.depth, detected.mlp_hidden_size, detected.adaln_dim) == (
        3840,
        30,
        10240,
        256,
    )
    assert sum(tensor.numel() for tensor in state_dict.values()) == 6_154_908_736
    converted = convert_z_image_transformer_checkpoint_to_diffusers(dict(state_dict))
    assert {key: tuple(t.shape) for key, t in converted.items()} == {
        key: tuple(t.shape) for key, t in reference.items()
    }


def test_heads_narrower_than_128_need_their_rope_axes_given() -> None:
    state_dict = original_state_dict(random_zimage(NARROW))
    with pytest.raises(ValueError, match="axes_dim"):
        zimage_config_from_state_dict(state_dict)


def test_a_missing_weight_is_named() -> None:
    state_dict = original_state_dict(random_zimage())
    del state_dict["layers.1.attention.k_norm.weight"]
    with pytest.raises(CheckpointLayoutError, match=r"layers\.1\.attention\.k_norm\.weight: missing"):
        load_zimage(state_dict, TINY)


def test_a_diffusers_layout_file_is_refused_with_the_key_it_lacks(
    tiny: tuple[ZImageTransformer, ZImageTransformer2DModel],
) -> None:
    model, reference = tiny
    with pytest.raises(CheckpointLayoutError, match=r"x_embedder\.weight: missing"):
        load_zimage(reference.state_dict())
    prefixed = {f"model.diffusion_model.{key}": tensor for key, tensor in original_state_dict(model).items()}
    with pytest.raises(CheckpointLayoutError, match="prefix stripped"):
        load_zimage(prefixed)


def test_the_unused_top_level_norm_final_of_some_files_is_dropped() -> None:
    state_dict = original_state_dict(random_zimage())
    model = load_zimage({**state_dict, "norm_final.weight": torch.ones(TINY.hidden_size)})
    assert "norm_final.weight" not in model.state_dict()
    state_dict["layers.0.stray.weight"] = torch.ones(1)
    with pytest.raises(CheckpointLayoutError, match=r"layers\.0\.stray\.weight: unexpected"):
        load_zimage(state_dict)


def test_load_adopts_the_given_tensors() -> None:
    state_dict = original_state_dict(random_zimage())
    model = load_zimage(state_dict)
    assert model.x_embedder.weight.data_ptr() == state_dict["x_embedder.weight"].data_ptr()
    assert model.cap_pad_token.data_ptr() == state_dict["cap_pad_token"].data_ptr()
    assert not any(p.is_meta for p in model.parameters())


def test_fp16_weights_placed_for_fp32_compute_what_the_model_cast_whole_computes() -> None:
    half = {key: tensor.half() for key, tensor in original_state_dict(random_zimage(seed=7)).items()}
    placed = load_zimage(dict(half))
    place(placed, torch.device("cpu"), torch.float32)
    whole = load_zimage({key: tensor.clone() for key, tensor in half.items()}).float()
    assert placed.dtype == whole.dtype == torch.float32
    linears = [layer for layer in placed.modules() if isinstance(layer, FusedLinear)]
    assert linears and all(layer.weight.dtype == torch.float16 for layer in linears)
    x, sigma, context = inputs(2, 6, 8, 7)
    with torch.no_grad():
        assert torch.equal(placed(x, sigma, context), whole(x, sigma, context))


# ---------------------------------------------------------------- the forward contract


def test_scalar_timesteps_apply_to_the_whole_batch(tiny: tuple[ZImageTransformer, ZImageTransformer2DModel]) -> None:
    model, _ = tiny
    x, _, context = inputs(2, 4, 4, 3)
    with torch.no_grad():
        assert torch.equal(model(x, 0.5, context), model(x, torch.full((2,), 0.5), context))


def test_malformed_inputs_are_refused(tiny: tuple[ZImageTransformer, ZImageTransformer2DModel]) -> None:
    model, _ = tiny
    x, sigma, context = inputs(2, 4, 4, 6)
    with pytest.raises(ValueError, match=r"\[B, 16, H, W\]"):
        model(x[:, :4], sigma, context)
    with pytest.raises(ValueError, match=r"context must be \[2, T, 64\]"):
        model(x, sigma, context[:1])
    with pytest.raises(ValueError, match="context_lengths"):
        model(x, sigma, context, context_lengths=[3, 7])  # more than the 6 tokens given
    with pytest.raises(ValueError, match="context_lengths"):
        model(x, sigma, context, context_lengths=[3])


def test_bf16_stays_close_to_fp32() -> None:
    model = random_zimage(seed=11)
    x, sigma, context = inputs(1, 6, 8, 5, seed=12)
    with torch.no_grad():
        fp32 = model(x, sigma, context)
        bf16 = model.to(torch.bfloat16)(x, sigma, context)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() <= 0.05 * fp32.abs().max()


def test_fp16_overflow_stays_finite() -> None:
    model = random_zimage(seed=13).half()
    value = model.get_parameter("layers.0.feed_forward.w3.weight")
    x, sigma, context = inputs(1, 4, 4, 3)
    with torch.no_grad():
        value.fill_(60000.0)  # SwiGLU products far past fp16's 65504
        out = model(x, sigma, context)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
