"""The SD3 / SD3.5 MMDiT: Stability's single-file layout, read by diffusers' own converter, and parity.

Each tiny family is built by Loom with random weights (qk-norm scales and positions included: left at
their defaults, an `ln_q`/`ln_k` mix-up would go unnoticed), saved as its original-layout state dict,
converted with diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` and loaded with
`strict=True` into `SD3Transformer2DModel`. The two must then compute the same velocity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from diffusers.models.attention import FeedForward

from diffusion.mmdit import MMDiT, MMDiTConfig, StreamMLP, load_mmdit, mmdit_config_from_state_dict
from diffusion.model_memory import place
from diffusion.unet_config import CheckpointLayoutError
from tests.diffusion.random_weights import original_state_dict

TOLERANCE = 1e-4
CONTEXT_DIM = 32
POOLED_DIM = 32
TOKENS = 5


@dataclass(frozen=True)
class TinyFamily:
    """A released file's scheme at toy size: Loom's config and the diffusers kwargs that mirror it."""

    config: MMDiTConfig
    diffusers_config: dict[str, Any]


def _tiny(qk_norm: bool, dual_attention_blocks: tuple[int, ...]) -> TinyFamily:
    # depth 2, 2 heads of 32: one head per block, as in the released files (64 per head there).
    config = MMDiTConfig(
        depth=2,
        hidden_size=64,
        num_heads=2,
        pos_embed_max_size=16,
        pooled_dim=POOLED_DIM,
        context_dim=CONTEXT_DIM,
        qk_norm=qk_norm,
        dual_attention_blocks=dual_attention_blocks,
    )
    diffusers_config = dict(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=CONTEXT_DIM,
        caption_projection_dim=64,
        pooled_projection_dim=POOLED_DIM,
        pos_embed_max_size=16,
        dual_attention_layers=dual_attention_blocks,
        qk_norm="rms_norm" if qk_norm else None,
    )
    return TinyFamily(config, diffusers_config)


FAMILIES = {
    "sd3_medium": _tiny(qk_norm=False, dual_attention_blocks=()),
    "sd35_large": _tiny(qk_norm=True, dual_attention_blocks=()),
    "sd35_medium": _tiny(qk_norm=True, dual_attention_blocks=(0,)),
}

# The released files at full size (diffusers' configs for the same checkpoints beside them).
REAL_FAMILIES: dict[str, tuple[MMDiTConfig, dict[str, Any]]] = {
    "sd3_medium": (
        MMDiTConfig(depth=24, hidden_size=1536, num_heads=24, pos_embed_max_size=192),
        dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192),
    ),
    "sd35_large": (
        MMDiTConfig(depth=38, hidden_size=2432, num_heads=38, pos_embed_max_size=192, qk_norm=True),
        dict(
            num_layers=38,
            num_attention_heads=38,
            caption_projection_dim=2432,
            pos_embed_max_size=192,
            qk_norm="rms_norm",
        ),
    ),
    "sd35_medium": (
        MMDiTConfig(
            depth=24,
            hidden_size=1536,
            num_heads=24,
            pos_embed_max_size=384,
            qk_norm=True,
            dual_attention_blocks=tuple(range(13)),
        ),
        dict(
            num_layers=24,
            num_attention_heads=24,
            caption_projection_dim=1536,
            pos_embed_max_size=384,
            qk_norm="rms_norm",
            dual_attention_layers=tuple(range(13)),
        ),
    ),
}


def _original_layout_weights(config: MMDiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the single-file layout (prefix stripped), norm scales and positions random too."""
    torch.manual_seed(seed)
    model = MMDiT(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("ln_q.weight", "ln_k.weight")):
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
        model.pos_embed.copy_(0.5 * torch.randn_like(model.pos_embed))
    return original_state_dict(model)


def _converted_by_diffusers(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """diffusers' single-file conversion, and the keys it left unconverted (it pops those it maps)."""
    remaining = dict(weights)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(remaining)
    return converted, sorted(remaining)


def _diffusers_model(family: TinyFamily, weights: dict[str, torch.Tensor]) -> SD3Transformer2DModel:
    reference = SD3Transformer2DModel(**family.diffusers_config)
    converted, _ = _converted_by_diffusers(weights)
    reference.load_state_dict(converted, strict=True)
    return reference.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, SD3Transformer2DModel, dict[str, torch.Tensor]]:
    weights = _original_layout_weights(FAMILIES[request.param].config)
    return request.param, _diffusers_model(FAMILIES[request.param], weights), weights


def _inputs(height: int, width: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Latents, distinct sigmas, text tokens and the pooled vector."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 16, height, width, generator=g)
    sigmas = torch.linspace(0.2, 0.95, batch)
    context = torch.randn(batch, TOKENS, CONTEXT_DIM, generator=g)
    pooled = torch.randn(batch, POOLED_DIM, generator=g)
    return x, sigmas, context, pooled


def _diffusers_velocity(
    reference: SD3Transformer2DModel,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    **kwargs: Any,
) -> torch.Tensor:
    """diffusers on the same inputs: it takes sigma × 1000 and no odd sides, so those are padded as
    Loom pads them (circularly) and its output cropped back."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (0, -width % 2, 0, -height % 2), mode="circular")
    return reference(padded, context, pooled, sigmas * 1000, **kwargs).sample[:, :, :height, :width]


def test_diffusers_converter_maps_every_original_key_onto_every_diffusers_weight(family):
    name, _, weights = family
    converted, left_over = _converted_by_diffusers(weights)
    assert left_over == []
    expected = SD3Transformer2DModel(**FAMILIES[name].diffusers_config).state_dict()
    assert {key: tuple(t.shape) for key, t in converted.items()} == {key: tuple(t.shape) for key, t in expected.items()}


def test_last_text_stream_is_pre_only_and_dual_attention_sits_in_the_listed_blocks(family):
    name, _, weights = family
    config = FAMILIES[name].config
    hidden, last = config.hidden_size, f"joint_blocks.{config.depth - 1}.context_block."
    qk_norm = ["attn.ln_q.weight", "attn.ln_k.weight"] if config.qk_norm else []
    pre_only = ["adaLN_modulation.1.weight", "adaLN_modulation.1.bias", "attn.qkv.weight", "attn.qkv.bias", *qk_norm]
    assert sorted(k.removeprefix(last) for k in weights if k.startswith(last)) == sorted(pre_only)
    assert weights[f"{last}adaLN_modulation.1.weight"].shape == (2 * hidden, hidden)  # shift, scale
    dual = sorted({int(k.split(".")[1]) for k in weights if ".x_block.attn2." in k})
    assert dual == list(config.dual_attention_blocks)
    for block in config.dual_attention_blocks:
        assert weights[f"joint_blocks.{block}.x_block.adaLN_modulation.1.weight"].shape == (9 * hidden, hidden)


def test_detected_config_is_the_one_built(family):
    name, _, weights = family
    assert mmdit_config_from_state_dict(weights) == FAMILIES[name].config


@pytest.mark.parametrize("height, width", [(8, 8), (6, 10), (7, 9)], ids=["square", "non-square", "odd"])
def test_output_matches_diffusers(family, height, width, cpu_path):
    _, reference, weights = family
    model = load_mmdit(weights)
    x, sigmas, context, pooled = _inputs(height, width)
    with torch.no_grad():
        expected = _diffusers_velocity(reference, x, sigmas, context, pooled)
        actual = model(x, sigmas, context, pooled)
    assert actual.shape == x.shape
    assert expected.abs().max() > 0.5
    assert (actual - expected).abs().max() <= TOLERANCE


def test_mlp_is_diffusers_tanh_gelu_feed_forward(cpu_path):
    """At the activations where tanh-GELU and exact GELU part (the whole models' tiny weights stay
    below them), on both CPU paths: oneDNN's fused epilogue and the plain one."""
    torch.manual_seed(3)
    mlp = StreamMLP(64).requires_grad_(False)
    reference = FeedForward(dim=64, dim_out=64, activation_fn="gelu-approximate")
    reference.load_state_dict(
        {
            "net.0.proj.weight": mlp.fc1.weight,
            "net.0.proj.bias": mlp.fc1.bias,
            "net.2.weight": mlp.fc2.weight,
            "net.2.bias": mlp.fc2.bias,
        }
    )
    x = 4 * torch.randn(2, 9, 64)
    with torch.no_grad():
        expected = reference(x)
        exact_gelu = mlp.fc2(F.gelu(mlp.fc1(x)))
        actual = mlp(x)
    assert (exact_gelu - expected).abs().max() > 1e-4
    assert (actual - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("skip", [[0], [1], [0, 1]], ids=["first", "last (pre-only text)", "all"])
def test_skip_layers_match_diffusers_skip_layers(family, skip):
    _, reference, weights = family
    model = load_mmdit(weights)
    x, sigmas, context, pooled = _inputs(8, 6)
    with torch.no_grad():
        expected = _diffusers_velocity(reference, x, sigmas, context, pooled, skip_layers=skip)
        actual = model(x, sigmas, context, pooled, skip_layers=skip)
        unskipped = model(x, sigmas, context, pooled)
    assert (actual - unskipped).abs().max() > 1e-2, "skipping a block must change the prediction"
    assert (actual - expected).abs().max() <= TOLERANCE


def test_skip_layers_outside_the_model_are_refused():
    model = load_mmdit(_original_layout_weights(FAMILIES["sd3_medium"].config))
    x, sigmas, context, pooled = _inputs(8, 8)
    with pytest.raises(ValueError, match=r"skip_layers \[2\]"):
        model(x, sigmas, context, pooled, skip_layers=[2])


def test_scalar_sigma_applies_to_the_whole_batch():
    model = load_mmdit(_original_layout_weights(FAMILIES["sd35_large"].config))
    x, _, context, pooled = _inputs(8, 8)
    with torch.no_grad():
        assert torch.equal(
            model(x, torch.tensor(0.5), context, pooled), model(x, torch.full((2,), 0.5), context, pooled)
        )


def test_latents_wider_than_the_stored_positions_are_refused():
    model = load_mmdit(_original_layout_weights(FAMILIES["sd3_medium"].config))
    x, sigmas, context, pooled = _inputs(8, 34)  # 17 patches; 16 positions per side
    with pytest.raises(ValueError, match="17 patch grid exceeds"):
        model(x, sigmas, context, pooled)


@pytest.mark.parametrize("name", sorted(REAL_FAMILIES))
def test_released_sizes_are_detected_and_convert_to_diffusers_shapes(name):
    """At full size on the meta device (no memory): the released configs round-trip through the weights'
    shapes, and diffusers' converter turns them into exactly the shapes of diffusers' own model."""
    config, diffusers_config = REAL_FAMILIES[name]
    with torch.device("meta"):
        weights = MMDiT(config).state_dict()
        expected = SD3Transformer2DModel(sample_size=128, **diffusers_config).state_dict()
    assert mmdit_config_from_state_dict(weights) == config
    converted, left_over = _converted_by_diffusers(dict(weights))
    assert left_over == []
    assert {key: tuple(t.shape) for key, t in converted.items()} == {key: tuple(t.shape) for key, t in expected.items()}


def test_fp16_weights_placed_for_fp32_compute_exactly_what_the_model_cast_whole_computes(cpu_path):
    half = {k: v.half() for k, v in _original_layout_weights(FAMILIES["sd35_medium"].config).items()}
    placed = load_mmdit(dict(half))
    place(placed, torch.device("cpu"), torch.float32)
    cast_whole = load_mmdit({k: v.clone() for k, v in half.items()}).float()
    linear = placed.context_embedder
    assert (linear.weight.dtype, linear.computes_in, placed.dtype) == (torch.float16, torch.float32, torch.float32)
    x, sigmas, context, pooled = _inputs(7, 8)
    with torch.no_grad():
        expected = cast_whole(x, sigmas, context, pooled)
        assert torch.equal(placed(x, sigmas, context, pooled), expected)
        assert torch.equal(
            placed(x, sigmas, context, pooled, skip_layers=[1]), cast_whole(x, sigmas, context, pooled, skip_layers=[1])
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_weights_take_fp32_inputs_and_return_fp32(dtype, cpu_path):
    weights = _original_layout_weights(FAMILIES["sd35_medium"].config)
    reference = _diffusers_model(FAMILIES["sd35_medium"], weights)
    model = load_mmdit({k: v.to(dtype) for k, v in weights.items()})
    x, sigmas, context, pooled = _inputs(7, 8)
    with torch.no_grad():
        expected = _diffusers_velocity(reference, x, sigmas, context, pooled)
        actual = model(x, sigmas, context, pooled)
    assert (model.dtype, actual.dtype) == (dtype, torch.float32)
    assert (actual - expected).abs().max() / expected.abs().max() < 0.05


def test_loading_adopts_the_stored_tensors():
    weights = _original_layout_weights(FAMILIES["sd3_medium"].config)
    model = load_mmdit(weights)
    assert model.final_layer.linear.weight.data_ptr() == weights["final_layer.linear.weight"].data_ptr()
    assert not any(p.requires_grad for p in model.parameters())


def test_a_missing_weight_is_named():
    weights = _original_layout_weights(FAMILIES["sd35_medium"].config)
    del weights["joint_blocks.0.x_block.attn2.ln_k.weight"]
    with pytest.raises(CheckpointLayoutError, match=r"joint_blocks\.0\.x_block\.attn2\.ln_k\.weight: missing"):
        load_mmdit(weights)


def test_a_state_dict_with_its_prefix_still_on_is_refused_with_the_reason():
    weights = {
        f"model.diffusion_model.{k}": v for k, v in _original_layout_weights(FAMILIES["sd3_medium"].config).items()
    }
    with pytest.raises(CheckpointLayoutError, match="x_embedder.proj.weight: missing.*model.diffusion_model"):
        load_mmdit(weights)


def test_a_wrong_shape_is_named():
    weights = _original_layout_weights(FAMILIES["sd3_medium"].config)
    weights["context_embedder.bias"] = torch.zeros(65)
    with pytest.raises(CheckpointLayoutError, match=r"context_embedder\.bias: shape \(65,\)"):
        load_mmdit(weights)


def test_positions_not_on_a_square_grid_are_refused():
    weights = _original_layout_weights(FAMILIES["sd3_medium"].config)
    weights["pos_embed"] = weights["pos_embed"][:, :200]
    with pytest.raises(CheckpointLayoutError, match="pos_embed"):
        mmdit_config_from_state_dict(weights)
