"""LoRAs trained on diffusers' FLUX.1 and SD3 transformers, applied to Loom's original-layout models.

The proof runs both models. A tiny random Loom model gets its diffusers twin from diffusers' own single-file
converter (the helpers of `test_flux` and `test_mmdit`); a random PEFT LoRA covers every layer of the twin a
trainer can target: the split q/k/v projections, FLUX's single-block `proj_mlp`, the final adaLN whose halves
diffusers swaps, SD3's pre-only last text block and SD3.5 Medium's second attention, with an alpha. Merged into the
twin by hand (``W += strength * alpha / rank * B @ A``, what PEFT's layers compute), it must give the prediction
Loom gives with the same file parsed by `parse_lora` and applied by `apply_lora_patches`.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from torch import nn

from diffusion.dit_diffusers_layout import OriginalLayer, flux_diffusers_layers, mmdit_diffusers_layers
from diffusion.flux import FluxConfig, FluxTransformer, load_flux
from diffusion.lora import apply_lora_patches, parse_lora
from diffusion.mmdit import MMDiT, load_mmdit
from tests.diffusion.test_flux import (
    assert_matches,
    conditioning,
    diffusers_twin,
    original_state_dict,
    random_flux,
    run_diffusers,
    run_loom,
    tiny_config,
)
from tests.diffusion.test_mmdit import (
    FAMILIES,
    REAL_FAMILIES,
    TOLERANCE,
    _diffusers_model,
    _diffusers_velocity,
    _inputs,
    _original_layout_weights,
)

RANK, ALPHA, STRENGTH = 4, 3.0, 0.8
LORA_CHANGES_THE_OUTPUT_BY = 0.05  # far above the parity tolerance: a LoRA applied nowhere cannot pass


def trainable_layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """Every layer of a diffusers model a LoRA trainer can target: its linears and its patch convolution."""
    return {name: layer for name, layer in model.named_modules() if isinstance(layer, (nn.Linear, nn.Conv2d))}


def random_peft_lora(layers: dict[str, nn.Linear | nn.Conv2d], seed: int) -> dict[str, torch.Tensor]:
    """``transformer.<layer>.lora_A.weight`` [rank, in(, k, k)], ``lora_B.weight`` [out, rank(, 1, 1)] and
    ``alpha`` for every layer, as diffusers' trainers save them."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, layer in layers.items():
        weight = layer.weight
        lora[f"transformer.{name}.lora_A.weight"] = 0.1 * torch.randn(RANK, *weight.shape[1:], generator=g)
        lora[f"transformer.{name}.lora_B.weight"] = 0.1 * torch.randn(
            weight.shape[0], RANK, *[1] * (weight.ndim - 2), generator=g
        )
        lora[f"transformer.{name}.alpha"] = torch.tensor(ALPHA)
    return lora


def merge_into(model: nn.Module, lora: dict[str, torch.Tensor], strength: float) -> None:
    """PEFT's merge, by hand, on the diffusers model's own weights."""
    with torch.no_grad():
        for name, layer in trainable_layers(model).items():
            down, up = lora[f"transformer.{name}.lora_A.weight"], lora[f"transformer.{name}.lora_B.weight"]
            scale = float(lora[f"transformer.{name}.alpha"]) / down.shape[0]
            layer.weight += strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape)


def kohya_style(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``transformer.a.b.lora_A.weight`` as ``lora_transformer_a_b.lora_down.weight`` (and up, alpha)."""
    parts = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "alpha": "alpha"}
    renamed = {}
    for key, tensor in lora.items():
        for part, kohya_part in parts.items():
            if key.endswith(f".{part}"):
                stem = key.removeprefix("transformer.").removesuffix(f".{part}")
                renamed[f"lora_transformer_{stem.replace('.', '_')}.{kohya_part}"] = tensor
    assert len(renamed) == len(lora)
    return renamed


def peft_prefixed(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same file as PEFT itself saves a wrapped model: ``base_model.model.<layer>``."""
    return {f"base_model.model.{key.removeprefix('transformer.')}": tensor for key, tensor in lora.items()}


def patched_weights(model: nn.Module, lora: dict[str, torch.Tensor], strength: float = 1.0) -> dict[str, torch.Tensor]:
    patches = parse_lora(lora, model)
    assert patches.unmatched == []
    return apply_lora_patches(model, [(patches.unet, strength)])


# ---------------------------------------------------------------- FLUX.1


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_a_peft_flux_lora_computes_in_loom_what_it_computes_merged_into_diffusers(guidance: bool) -> None:
    config = tiny_config(guidance=guidance)
    model = random_flux(config, seed=3)
    original = original_state_dict(model)
    reference = diffusers_twin(original, config)
    layers = trainable_layers(reference)
    assert {"single_transformer_blocks.1.proj_mlp", "norm_out.linear", "transformer_blocks.1.attn.add_v_proj"} <= set(
        layers
    )
    lora = random_peft_lora(layers, seed=4)
    patched = load_flux({**original, **patched_weights(model, lora, STRENGTH)}, config)
    x = torch.randn(2, config.latent_channels, 6, 8, generator=torch.Generator().manual_seed(5))
    cond = conditioning(2, guidance)
    with torch.no_grad():
        before = run_diffusers(reference, x, cond)
        merge_into(reference, lora, STRENGTH)
        expected = run_diffusers(reference, x, cond)
        actual = run_loom(patched, x, cond)
    assert (expected - before).abs().max() > LORA_CHANGES_THE_OUTPUT_BY
    assert_matches(actual, expected)


def test_a_diffusers_layer_that_is_part_of_a_fused_one_patches_only_its_rows() -> None:
    """A FLUX single block's ``linear1`` is q, k, v and the MLP input: ``proj_mlp`` is its last rows."""
    config = tiny_config()
    model = random_flux(config)
    hidden, mlp = config.hidden_size, config.mlp_hidden_size
    g = torch.Generator().manual_seed(6)
    up, down = torch.randn(mlp, 2, generator=g), torch.randn(2, hidden, generator=g)
    patched = patched_weights(
        model,
        {
            "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight": up,
            "transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight": down,
        },
    )
    base = model.get_parameter("single_blocks.1.linear1.weight")
    assert list(patched) == ["single_blocks.1.linear1.weight"]
    assert torch.equal(patched["single_blocks.1.linear1.weight"][: 3 * hidden], base[: 3 * hidden])
    torch.testing.assert_close(patched["single_blocks.1.linear1.weight"][3 * hidden :], base[3 * hidden :] + up @ down)


def test_full_deltas_land_in_their_rows_and_the_final_adaln_halves_swap() -> None:
    """diffusers' final adaLN yields (scale, shift), Black Forest Labs' (shift, scale)."""
    config = tiny_config()
    model = random_flux(config)
    hidden = config.hidden_size
    g = torch.Generator().manual_seed(7)
    k_bias, scale_bias, shift_bias = (torch.randn(hidden, generator=g) for _ in range(3))
    patched = patched_weights(
        model,
        {
            "transformer.transformer_blocks.0.attn.to_k.diff_b": k_bias,
            "transformer.norm_out.linear.diff_b": torch.cat((scale_bias, shift_bias)),
        },
    )
    qkv = model.get_parameter("double_blocks.0.img_attn.qkv.bias")
    torch.testing.assert_close(
        patched["double_blocks.0.img_attn.qkv.bias"],
        qkv + torch.cat((torch.zeros(hidden), k_bias, torch.zeros(hidden))),
    )
    adaln = model.get_parameter("final_layer.adaLN_modulation.1.bias")
    torch.testing.assert_close(
        patched["final_layer.adaLN_modulation.1.bias"], adaln + torch.cat((shift_bias, scale_bias))
    )


# ---------------------------------------------------------------- SD3 / SD3.5


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_peft_sd3_lora_computes_in_loom_what_it_computes_merged_into_diffusers(name: str) -> None:
    family = FAMILIES[name]
    weights = _original_layout_weights(family.config, seed=8)
    model = load_mmdit(weights)
    reference = _diffusers_model(family, weights)
    layers = trainable_layers(reference)
    last = family.config.depth - 1
    assert {"pos_embed.proj", "norm_out.linear", f"transformer_blocks.{last}.norm1_context.linear"} <= set(layers)
    assert bool(family.config.dual_attention_blocks) == ("transformer_blocks.0.attn2.to_v" in layers)
    lora = random_peft_lora(layers, seed=9)
    patched = load_mmdit({**weights, **patched_weights(model, lora, STRENGTH)})
    x, sigmas, context, pooled = _inputs(8, 6)
    with torch.no_grad():
        before = _diffusers_velocity(reference, x, sigmas, context, pooled)
        merge_into(reference, lora, STRENGTH)
        expected = _diffusers_velocity(reference, x, sigmas, context, pooled)
        actual = patched(x, sigmas, context, pooled)
    assert (expected - before).abs().max() > LORA_CHANGES_THE_OUTPUT_BY
    assert (actual - expected).abs().max() <= TOLERANCE


# ---------------------------------------------------------------- naming variants and what does not resolve


def _flux_and_its_lora() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = tiny_config()
    model = random_flux(config, seed=10)
    return model, random_peft_lora(trainable_layers(diffusers_twin(original_state_dict(model), config)), seed=11)


def _sd35_medium_and_its_lora() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    family = FAMILIES["sd35_medium"]
    weights = _original_layout_weights(family.config, seed=12)
    return load_mmdit(weights), random_peft_lora(trainable_layers(_diffusers_model(family, weights)), seed=13)


@pytest.mark.parametrize("build", [_flux_and_its_lora, _sd35_medium_and_its_lora], ids=["flux", "sd35_medium"])
def test_kohya_style_names_and_peft_s_own_prefix_patch_exactly_what_the_peft_file_patches(build) -> None:
    model, lora = build()
    expected = patched_weights(model, lora)
    for variant in (kohya_style(lora), peft_prefixed(lora)):
        actual = patched_weights(model, variant)
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[name], expected[name]) for name in expected)


def test_diffusers_layers_the_model_lacks_are_reported_unmatched() -> None:
    flux = random_flux(tiny_config(guidance=False))  # schnell: no guidance embedder
    sd3 = load_mmdit(_original_layout_weights(FAMILIES["sd3_medium"].config))  # depth 2, no second attention
    up, down = torch.zeros(64, 2), torch.zeros(2, 64)

    def lora(*stems: str) -> dict[str, torch.Tensor]:
        return {
            key: value
            for stem in stems
            for key, value in ((f"{stem}.lora_B.weight", up), (f"{stem}.lora_A.weight", down))
        }

    flux_absent = [
        "transformer.transformer_blocks.2.attn.to_q",  # a third double block
        "transformer.single_transformer_blocks.0.attn.to_out.0",  # single blocks have no output projection
        "transformer.time_text_embed.guidance_embedder.linear_2",
        "lora_transformer_transformer_blocks_0_attn_to_z",
    ]
    patches = parse_lora(lora("transformer.transformer_blocks.0.attn.to_q", *flux_absent), flux)
    assert patches.unmatched == sorted(flux_absent)
    assert list(patches.unet) == ["double_blocks.0.img_attn.qkv.weight"]

    sd3_absent = [
        "transformer.transformer_blocks.1.attn.to_add_out",  # the last text stream is pre-only
        "transformer.transformer_blocks.1.ff_context.net.0.proj",
        "transformer.transformer_blocks.0.attn2.to_q",  # SD3 Medium has no second attention
    ]
    patches = parse_lora(lora("transformer.transformer_blocks.1.attn.add_k_proj", *sd3_absent), sd3)
    assert patches.unmatched == sorted(sd3_absent)
    assert list(patches.unet) == ["joint_blocks.1.context_block.attn.qkv.weight"]


# ---------------------------------------------------------------- the maps at the released sizes


def _check_layers_tile_the_original(
    layers: dict[str, OriginalLayer], diffusers_model: nn.Module, loom_model: nn.Module
) -> None:
    """Every diffusers layer is named, has the shape of its rows of the Loom weight, and the rows cut from one
    Loom weight cover it exactly once; no two names collide once written kohya-style."""
    diffusers_weights = {name: layer.weight for name, layer in trainable_layers(diffusers_model).items()}
    assert set(layers) == set(diffusers_weights)
    assert len({name.replace(".", "_") for name in layers}) == len(layers)
    loom = dict(loom_model.named_parameters())
    cut: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name, layer in layers.items():
        original = loom[f"{layer.module}.weight"].shape
        expected = original if layer.rows is None else layer.rows.part_shape(original)
        assert diffusers_weights[name].shape == expected, name
        if layer.rows is not None:
            cut[layer.module].append((layer.rows.start, layer.rows.stop))
    for module, rows in cut.items():
        bounds = sorted(rows)
        assert bounds[0][0] == 0 and bounds[-1][1] == loom[f"{module}.weight"].shape[0], module
        assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:])), module


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_the_flux_map_fits_the_released_model(guidance: bool) -> None:
    config = FluxConfig(guidance_embed=guidance)
    with torch.device("meta"):
        loom = FluxTransformer(config)
        reference = FluxTransformer2DModel(guidance_embeds=guidance)
    _check_layers_tile_the_original(flux_diffusers_layers(config), reference, loom)


@pytest.mark.parametrize("name", sorted(REAL_FAMILIES))
def test_the_sd3_map_fits_the_released_models(name: str) -> None:
    config, diffusers_config = REAL_FAMILIES[name]
    with torch.device("meta"):
        loom = MMDiT(config)
        reference = SD3Transformer2DModel(sample_size=128, **diffusers_config)
    _check_layers_tile_the_original(mmdit_diffusers_layers(config), reference, loom)
