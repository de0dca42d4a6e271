"""LoRAs trained on diffusers' FLUX.1, SD3, Chroma and Z-Image transformers, applied to Loom's original-layout
models.

The proof runs both models. A tiny random Loom model gets its diffusers twin from diffusers' own single-file
converter (the helpers of `test_flux`, `test_mmdit`, `test_chroma` and `test_zimage`); a random PEFT LoRA covers
every layer of the twin a trainer can target: the split q/k/v projections, FLUX's and Chroma's single-block
`proj_mlp`, the final adaLN whose halves diffusers swaps, SD3's pre-only last text block, SD3.5 Medium's second
attention, Chroma's approximator and Z-Image's refiners and per-patch-size embedder, with an alpha. Merged into the
twin by hand (``W += strength * alpha / rank * B @ A``, what PEFT's layers compute), it must give the prediction
Loom gives with the same file parsed by `parse_lora` and applied by `apply_lora_patches`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable

import pytest
import torch
from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel, ZImageTransformer2DModel
from torch import nn

import tests.diffusion.test_chroma as chroma_twin
import tests.diffusion.test_zimage as zimage_twin
from diffusion.chroma import ChromaConfig, ChromaTransformer, load_chroma
from diffusion.dit_diffusers_layout import (
    OriginalLayer,
    chroma_diffusers_layers,
    flux_diffusers_layers,
    mmdit_diffusers_layers,
    zimage_diffusers_layers,
)
from diffusion.flux import FluxConfig, FluxTransformer, load_flux
from diffusion.lora import apply_lora_patches, parse_lora
from diffusion.mmdit import MMDiT, load_mmdit
from diffusion.zimage import ZImageConfig, ZImageTransformer, load_zimage
from tests.diffusion.random_weights import original_state_dict
from tests.diffusion.test_flux import (
    assert_matches,
    conditioning,
    diffusers_twin,
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


_PEFT_PARTS = ("lora_A.weight", "lora_B.weight", "alpha")


def _renamed(lora: dict[str, torch.Tensor], rename: Callable[[str, str], str]) -> dict[str, torch.Tensor]:
    """Every ``transformer.<layer>.<part>`` of a PEFT file as ``rename(layer, part)``."""
    renamed = {}
    for key, tensor in lora.items():
        part = next(part for part in _PEFT_PARTS if key.endswith(f".{part}"))
        renamed[rename(key.removeprefix("transformer.").removesuffix(f".{part}"), part)] = tensor
    assert len(renamed) == len(lora)
    return renamed


def kohya_style(lora: dict[str, torch.Tensor], prefix: str = "lora_transformer_") -> dict[str, torch.Tensor]:
    """``transformer.a.b.lora_A.weight`` as ``lora_transformer_a_b.lora_down.weight`` (and up, alpha); OneTrainer's
    prefix by default, also written ``lora_unet_`` and (SimpleTuner's LyCORIS files) ``lycoris_``."""
    parts = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "alpha": "alpha"}
    return _renamed(lora, lambda layer, part: f"{prefix}{layer.replace('.', '_')}.{parts[part]}")


def peft_prefixed(lora: dict[str, torch.Tensor], prefix: str = "base_model.model.") -> dict[str, torch.Tensor]:
    """The same file under another prefix: ``base_model.model.<layer>`` as PEFT itself saves a wrapped model,
    ``diffusion_model.<layer>`` as some Z-Image trainers write diffusers' names, none as DiffSynth saves."""
    return _renamed(lora, lambda layer, part: f"{prefix}{layer}.{part}")


def peft_adapter_named(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT model's raw state dict: its adapter's name (``default``) before ``weight``."""
    return _renamed(lora, lambda layer, part: f"transformer.{layer}.{part.replace('.weight', '.default.weight')}")


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


# ---------------------------------------------------------------- Chroma


def test_a_peft_chroma_lora_computes_in_loom_what_it_computes_merged_into_diffusers() -> None:
    config = chroma_twin.tiny_config()
    model = chroma_twin.random_chroma(config, seed=20)
    original = original_state_dict(model)
    reference = chroma_twin.diffusers_twin(original, config)
    layers = trainable_layers(reference)
    assert {
        "distilled_guidance_layer.layers.1.linear_2",
        "single_transformer_blocks.1.proj_mlp",
        "transformer_blocks.1.attn.add_v_proj",
    } <= set(layers)
    assert not [name for name in layers if "norm" in name]  # Chroma's norms have no projections of their own
    lora = random_peft_lora(layers, seed=21)
    patched = load_chroma({**original, **patched_weights(model, lora, STRENGTH)}, config)
    x, timesteps, context = chroma_twin.inputs(2, 6, 8, seed=22)
    with torch.no_grad():
        before = chroma_twin.run_diffusers(reference, x, timesteps, context)
        merge_into(reference, lora, STRENGTH)
        expected = chroma_twin.run_diffusers(reference, x, timesteps, context)
        actual = patched(x, timesteps, context)
    assert (expected - before).abs().max() > LORA_CHANGES_THE_OUTPUT_BY
    chroma_twin.assert_matches(actual, expected)


def test_chroma_s_approximator_layers_are_renamed_and_its_single_blocks_split_like_flux_s() -> None:
    config = chroma_twin.tiny_config()
    layers = chroma_diffusers_layers(config)
    hidden = config.hidden_size
    assert layers["distilled_guidance_layer.layers.1.linear_1"] == OriginalLayer(
        "distilled_guidance_layer.layers.1.in_layer"
    )
    assert layers["distilled_guidance_layer.layers.1.linear_2"] == OriginalLayer(
        "distilled_guidance_layer.layers.1.out_layer"
    )
    mlp = layers["single_transformer_blocks.0.proj_mlp"]
    assert mlp.module == "single_blocks.0.linear1" and mlp.rows is not None
    assert (mlp.rows.start, mlp.rows.stop) == (3 * hidden, 3 * hidden + config.mlp_hidden_size)


# ---------------------------------------------------------------- Z-Image


@pytest.mark.parametrize("name", ["tiny", "narrow"])
def test_a_peft_zimage_lora_computes_in_loom_what_it_computes_merged_into_diffusers(name: str) -> None:
    # diffusers has one refiner depth for both refiners.
    config = {"tiny": zimage_twin.TINY, "narrow": dataclasses.replace(zimage_twin.NARROW, noise_refiner_depth=1)}[name]
    model = zimage_twin.random_zimage(config, seed=23)
    original = zimage_twin.original_state_dict(model)
    reference = zimage_twin.diffusers_twin(original, config)
    layers = trainable_layers(reference)
    assert {
        "all_x_embedder.2-1",
        "all_final_layer.2-1.adaLN_modulation.1",
        "noise_refiner.0.adaLN_modulation.0",
        "context_refiner.0.attention.to_k",
        f"layers.{config.depth - 1}.attention.to_out.0",
    } <= set(layers)
    lora = random_peft_lora(layers, seed=24)
    patched = load_zimage({**original, **patched_weights(model, lora, STRENGTH)}, config)
    x, sigma, context = zimage_twin.inputs(2, 6, 8, 5, seed=25)
    with torch.no_grad():
        before = zimage_twin.run_diffusers(reference, x, sigma, context)
        merge_into(reference, lora, STRENGTH)
        expected = zimage_twin.run_diffusers(reference, x, sigma, context)
        actual = patched(x, sigma, context)
    assert (expected - before).abs().max() > LORA_CHANGES_THE_OUTPUT_BY
    zimage_twin.assert_matches(actual, expected)


def test_zimage_s_split_q_k_v_patch_what_comfyui_s_fused_qkv_lora_patches() -> None:
    """ComfyUI's own conversion of a diffusers Z-Image LoRA stacks the q, k and v downs and puts the ups on the
    diagonal; that file, in the original layout, and the split one are the same change to ``attention.qkv``."""
    config = zimage_twin.TINY
    model = zimage_twin.random_zimage(config, seed=26)
    hidden, rank = config.hidden_size, 2
    g = torch.Generator().manual_seed(27)
    ups = [torch.randn(hidden, rank, generator=g) for _ in range(3)]
    downs = [torch.randn(rank, hidden, generator=g) for _ in range(3)]
    split = {}
    for name, up, down in zip(("to_q", "to_k", "to_v"), ups, downs):
        split[f"diffusion_model.layers.1.attention.{name}.lora_B.weight"] = up
        split[f"diffusion_model.layers.1.attention.{name}.lora_A.weight"] = down
    fused = {
        "diffusion_model.layers.1.attention.qkv.lora_B.weight": torch.block_diag(*ups),
        "diffusion_model.layers.1.attention.qkv.lora_A.weight": torch.cat(downs),
    }
    expected = patched_weights(model, fused)
    actual = patched_weights(model, split)
    assert list(actual) == list(expected) == ["layers.1.attention.qkv.weight"]
    torch.testing.assert_close(actual["layers.1.attention.qkv.weight"], expected["layers.1.attention.qkv.weight"])


# ---------------------------------------------------------------- naming variants and what does not resolve


def _flux_and_its_lora() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = tiny_config()
    model = random_flux(config, seed=10)
    return model, random_peft_lora(trainable_layers(diffusers_twin(original_state_dict(model), config)), seed=11)


def _sd35_medium_and_its_lora() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    family = FAMILIES["sd35_medium"]
    weights = _original_layout_weights(family.config, seed=12)
    return load_mmdit(weights), random_peft_lora(trainable_layers(_diffusers_model(family, weights)), seed=13)


def _chroma_and_its_lora() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = chroma_twin.tiny_config()
    model = chroma_twin.random_chroma(config, seed=14)
    reference = chroma_twin.diffusers_twin(original_state_dict(model), config)
    return model, random_peft_lora(trainable_layers(reference), seed=15)


def _zimage_and_its_lora() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = zimage_twin.random_zimage(zimage_twin.TINY, seed=16)
    reference = zimage_twin.diffusers_twin(zimage_twin.original_state_dict(model))
    return model, random_peft_lora(trainable_layers(reference), seed=17)


VARIANTS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "OneTrainer lora_transformer_": kohya_style,
    "kohya lora_unet_": lambda lora: kohya_style(lora, "lora_unet_"),
    "SimpleTuner lycoris_": lambda lora: kohya_style(lora, "lycoris_"),
    "PEFT base_model.model.": peft_prefixed,
    "diffusion_model.": lambda lora: peft_prefixed(lora, "diffusion_model."),
    "DiffSynth, no prefix": lambda lora: peft_prefixed(lora, ""),
    "PEFT adapter name": peft_adapter_named,
}


@pytest.mark.parametrize(
    "build",
    [_flux_and_its_lora, _sd35_medium_and_its_lora, _chroma_and_its_lora, _zimage_and_its_lora],
    ids=["flux", "sd35_medium", "chroma", "zimage"],
)
def test_kohya_style_names_and_other_prefixes_patch_exactly_what_the_peft_file_patches(build) -> None:
    model, lora = build()
    expected = patched_weights(model, lora)
    for name, variant in VARIANTS.items():
        actual = patched_weights(model, variant(lora))
        assert actual.keys() == expected.keys(), name
        assert all(torch.equal(actual[key], expected[key]) for key in expected), name


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


def test_chroma_and_zimage_layers_the_model_lacks_are_reported_unmatched() -> None:
    chroma = chroma_twin.random_chroma(chroma_twin.tiny_config())  # 2 double, 2 single blocks, 2 approximator layers
    zimage = zimage_twin.random_zimage(zimage_twin.TINY)  # 2 layers, 1 refiner of each kind

    def lora(*stems: str) -> dict[str, torch.Tensor]:
        up, down = torch.zeros(4, 2), torch.zeros(2, 4)
        return {
            key: value
            for stem in stems
            for key, value in ((f"{stem}.lora_B.weight", up), (f"{stem}.lora_A.weight", down))
        }

    chroma_absent = [
        "transformer.transformer_blocks.0.norm1.linear",  # FLUX.1's modulation projections are gone
        "transformer.single_transformer_blocks.0.norm.linear",
        "transformer.norm_out.linear",
        "transformer.time_text_embed.timestep_embedder.linear_1",
        "transformer.distilled_guidance_layer.layers.2.linear_1",  # a third approximator layer
        "distilled_guidance_layer.layers.0.linear_3",
    ]
    patches = parse_lora(lora("transformer.distilled_guidance_layer.layers.1.linear_2", *chroma_absent), chroma)
    assert patches.unmatched == sorted(chroma_absent)
    assert list(patches.unet) == ["distilled_guidance_layer.layers.1.out_layer.weight"]

    zimage_absent = [
        "transformer.context_refiner.0.adaLN_modulation.0",  # the text refiner is not time-modulated
        "transformer.noise_refiner.1.attention.to_q",  # a second noise refiner
        "transformer.layers.2.feed_forward.w1",
        "transformer.siglip_embedder.1",  # Z-Image Omni's image-prompt embedder
        "diffusion_model.all_x_embedder.4-1",  # another patch size
        "lora_unet_layers_0_attention_to_z",
        "text_encoders.qwen3_4b.layers.0.self_attn.q_proj",  # a text encoder's layer is not a bare layer name
    ]
    patches = parse_lora(lora("diffusion_model.noise_refiner.0.attention.to_v", *zimage_absent), zimage)
    assert patches.unmatched == sorted(zimage_absent)
    assert list(patches.unet) == ["noise_refiner.0.attention.qkv.weight"]


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
    # A stem is looked up among Loom's own names first: a diffusers name written as one of them must be that layer.
    loom_modules = {name.rpartition(".")[0].replace(".", "_"): name.rpartition(".")[0] for name in loom}
    for name, layer in layers.items():
        same = loom_modules.get(name.replace(".", "_"))
        assert same is None or (same == layer.module and layer.rows is None), name
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


def test_the_chroma_map_fits_the_released_model() -> None:
    config = ChromaConfig()
    with torch.device("meta"):
        loom = ChromaTransformer(config)
        reference = ChromaTransformer2DModel()  # diffusers' defaults are Chroma1's sizes
    _check_layers_tile_the_original(chroma_diffusers_layers(config), reference, loom)


def test_the_zimage_map_fits_the_released_model() -> None:
    config = ZImageConfig()
    with torch.device("meta"):
        loom = ZImageTransformer(config)
        reference = ZImageTransformer2DModel()  # diffusers' defaults are Z-Image-Turbo's sizes
    _check_layers_tile_the_original(zimage_diffusers_layers(config), reference, loom)
