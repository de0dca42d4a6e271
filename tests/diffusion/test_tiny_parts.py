"""Tiny SD3/SD3.5/FLUX files: each part loads through Loom's own loaders and computes, in every dtype.

What "the real layout" means here: keys without a prefix in a standalone part, ComfyUI's prefixes in an
all-in-one file, the dtypes fp8 files really store, and embedding tables with room for every id the real
tokenizers emit.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion.applied_control import controlnet_mismatch
from diffusion.checkpoint import ModelFamily, detect_checkpoint
from diffusion.chroma import load_chroma
from diffusion.clip_vision import load_clip_vision
from diffusion.control_models import load_control_model
from diffusion.controlnet import ControlNetConfig, load_controlnet, tiny_controlnet_tensors
from diffusion.controlnet_union import UnionControlNet
from diffusion.flux import FluxTransformer, load_flux
from diffusion.flux_controlnet import FluxControlNet, load_flux_controlnet
from diffusion.mmdit import MMDiT, load_mmdit
from diffusion.model_memory import place
from diffusion.sd3_controlnet import SD3ControlNet, load_sd3_controlnet
from diffusion.style_model import load_style_model
from diffusion.t2i_adapter import T2IAdapter
from diffusion.t5_tokenizer import VOCAB_SIZE as T5_VOCAB_SIZE
from diffusion.t5_tokenizer import load_t5_tokenizer
from diffusion.text_encoders import load_clip_text_model
from diffusion.text_encoders.qwen3 import load_qwen3_encoder
from diffusion.text_encoders.t5 import load_t5_encoder
from diffusion.tiny import tiny_checkpoint_tensors, tiny_unet_config, write_tiny_checkpoint
from diffusion.tiny_parts import (
    DTYPES,
    FLOW_FAMILIES,
    PARTS,
    T5_EMBEDDING_ROWS,
    TINY_CLIP_G,
    TINY_CLIP_L,
    TINY_QWEN3,
    TINY_T5,
    TINY_VAE,
    TinyFileError,
    checkpoint_prefixes,
    tiny_chroma_config,
    tiny_file_tensors,
    tiny_flux_config,
    tiny_mmdit_config,
    tiny_zimage_config,
    valid_dtypes,
    valid_parts,
    write_tiny_file,
)
from diffusion.tokenizer import load_clip_tokenizer
from diffusion.vae import vae_from_state_dict
from diffusion.zimage import load_zimage

FLUX_FAMILIES = ["flux_dev", "flux_schnell", "flux_fill", "flux_canny", "flux_depth"]
SD3_FAMILIES = ["sd3", "sd35_medium", "sd35_large"]
CPU = torch.device("cpu")
FP8 = torch.float8_e4m3fn


@functools.cache
def tensors(family: str, part: str = "checkpoint", dtype: str = "fp32") -> dict[str, torch.Tensor]:
    """Built once per module run; nothing here writes into a loaded tensor."""
    return tiny_file_tensors(family, part, dtype)


def stripped(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}


def same(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> bool:
    """Same keys, dtypes, shapes and bits (fp8 compared as bytes: CPU torch cannot compare fp8 values)."""
    if first.keys() != second.keys():
        return False
    return all(
        a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        if a.dtype == FP8
        else a.dtype == b.dtype and torch.equal(a, b)
        for a, b in ((first[key], second[key]) for key in first)
    )


def flux_flow(model: FluxTransformer) -> torch.Tensor:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, config.latent_channels, 8, 6, generator=generator)
    context, pooled = torch.randn(1, 5, 4096, generator=generator), torch.randn(1, 768, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([0.7]), context, pooled, guidance=3.5)


def sd3_flow(model: MMDiT) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 6, generator=generator)
    context, pooled = torch.randn(1, 5, 4096, generator=generator), torch.randn(1, 2048, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([0.7]), context, pooled)


# ---------------------------------------------------------------- diffusion models


@pytest.mark.parametrize("family", FLUX_FAMILIES)
def test_a_flux_diffusion_model_is_in_bfl_layout_loads_without_axes_and_predicts_a_flow(family: str) -> None:
    weights = tensors(family, "diffusion_model")
    assert {"img_in.weight", "double_blocks.0.img_attn.qkv.weight", "single_blocks.1.linear2.weight"} <= set(weights)
    assert ("guidance_in.in_layer.weight" in weights) == (family != "flux_schnell")
    assert weights["img_in.weight"].shape[1] == {"flux_fill": 384, "flux_canny": 128, "flux_depth": 128}.get(family, 64)
    model = load_flux(weights)  # no axes_dim: 128-wide heads take the release's RoPE split
    assert model.config == tiny_flux_config(family)
    flow = flux_flow(model)
    assert flow.shape == (1, 16, 8, 6) and flow.isfinite().all()


@pytest.mark.parametrize("family", SD3_FAMILIES)
def test_an_sd3_diffusion_model_is_in_stability_layout_and_predicts_a_flow(family: str) -> None:
    weights = tensors(family, "diffusion_model")
    assert {"x_embedder.proj.weight", "pos_embed", "joint_blocks.1.context_block.attn.qkv.weight"} <= set(weights)
    assert ("joint_blocks.0.x_block.attn.ln_q.weight" in weights) == (family != "sd3")
    assert any(".x_block.attn2." in key for key in weights) == (family == "sd35_medium")
    model = load_mmdit(weights)
    assert model.config == tiny_mmdit_config(family)
    assert model.config.head_dim == 64  # SD3's rule, which the loader assumes without qk-norm
    flow = sd3_flow(model)
    assert flow.shape == (1, 16, 8, 6) and flow.isfinite().all()


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_loom_detects_each_diffusion_model_file_as_its_family(family: str, tmp_path: Path) -> None:
    info = detect_checkpoint(write_tiny_file(tmp_path / "m.safetensors", family, "diffusion_model", "fp8"))
    expected = "flux" if family.startswith("flux") else "sd3" if family.startswith("sd3") else family
    assert info.family is ModelFamily(expected)
    assert info.latent_channels == 16 and info.prediction == "flow"


def test_z_image_and_chroma_load_in_their_original_layouts_and_predict_a_flow() -> None:
    zimage = load_zimage(tensors("zimage", "diffusion_model"))
    assert zimage.config == tiny_zimage_config() and zimage.config.context_dim == 2560
    assert zimage.x_pad_token.abs().sum() > 0  # random, so a misplaced pad token shows
    chroma = load_chroma(tensors("chroma", "diffusion_model"))
    assert chroma.config == tiny_chroma_config()
    latent = torch.randn(1, 16, 8, 6)
    with torch.no_grad():
        assert zimage(latent, torch.tensor([0.5]), torch.randn(1, 7, 2560)).isfinite().all()
        assert chroma(latent, torch.tensor([0.5]), torch.randn(1, 7, 4096)).isfinite().all()


def test_qwen3_loads_in_its_file_layout_with_three_layers_and_the_real_table() -> None:
    weights = tensors("zimage", "qwen3_4b")
    assert weights["model.embed_tokens.weight"].shape == (151936, 64)
    assert "model.layers.2.self_attn.q_norm.weight" in weights and "model.layers.3.mlp.up_proj.weight" not in weights
    assert load_qwen3_encoder(weights).config == TINY_QWEN3


def test_an_fp8_mixed_file_has_fp8_linear_weights_and_everything_else_in_bf16() -> None:
    weights = tiny_file_tensors("chroma", "diffusion_model", "fp8_mixed")
    assert weights["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    assert weights["double_blocks.0.img_attn.qkv.bias"].dtype == torch.bfloat16
    assert weights["double_blocks.0.img_attn.norm.query_norm.scale"].dtype == torch.bfloat16
    assert "scaled_fp8" not in weights and not any(key.endswith("scale_weight") for key in weights)


@pytest.mark.parametrize(
    ("family", "diffusers_type"),
    [
        ("flux_dev", "flux-dev"),
        ("flux_schnell", "flux-schnell"),
        ("flux_fill", "flux-fill"),
        ("flux_canny", "flux-depth"),  # Canny and Depth have the same shapes; diffusers names both "depth"
        ("flux_depth", "flux-depth"),
    ],
)
def test_diffusers_tells_the_flux_variants_apart_in_the_tiny_files(family: str, diffusers_type: str) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    assert infer_diffusers_model_type(tensors(family, "diffusion_model")) == diffusers_type
    assert infer_diffusers_model_type(tensors(family)) == diffusers_type


def test_the_transformers_read_the_real_text_widths() -> None:
    flux, sd3 = tensors("flux_dev", "diffusion_model"), tensors("sd3", "diffusion_model")
    assert flux["txt_in.weight"].shape[1] == 4096 and flux["vector_in.in_layer.weight"].shape[1] == 768
    assert sd3["context_embedder.weight"].shape[1] == 4096 and sd3["y_embedder.mlp.0.weight"].shape[1] == 2048


# ---------------------------------------------------------------- VAE and text encoders


@pytest.mark.parametrize("family", ["sd3", "flux_dev"])
def test_the_vae_is_the_16_channel_autoencoder_without_quant_convs(family: str) -> None:
    weights = tensors(family, "vae")
    assert not any("quant_conv" in key for key in weights)
    model = vae_from_state_dict(weights)
    assert model.config == TINY_VAE and model.config.downscale == 8
    with torch.no_grad():
        latent = model.encode(torch.rand(1, 3, 32, 24) * 2 - 1)
        assert latent.shape == (1, 16, 4, 3)
        assert model.decode(latent).shape == (1, 3, 32, 24)


def test_sd3_and_flux_vaes_differ_as_the_released_ones_do() -> None:
    assert not same(tensors("sd3", "vae"), tensors("flux_dev", "vae"))
    assert same(tensors("sd3", "vae"), tensors("sd35_large", "vae"))


def test_clip_l_loads_in_transformers_layout_and_takes_the_largest_clip_id() -> None:
    weights = tensors("flux_dev", "clip_l")
    assert all(key.startswith("text_model.") for key in weights)
    model = load_clip_text_model(weights, "quick_gelu")
    assert model.config == TINY_CLIP_L
    largest = load_clip_tokenizer().vocab_size - 1
    assert largest == 49407 < weights["text_model.embeddings.token_embedding.weight"].shape[0]
    ids = torch.tensor([[49406, 320, 1125, largest]])
    with torch.no_grad():
        hidden, pooled = model(ids, torch.tensor([3]), layer=-2)
    assert hidden.shape == (1, 4, 64) and pooled.shape == (1, 64) and hidden.isfinite().all()


def test_clip_g_has_its_projection_beside_the_tower_and_the_layer_comfyui_detects_it_by() -> None:
    weights = tensors("sd3", "clip_g")
    assert weights["text_projection.weight"].shape == (1280, 64)
    assert "text_model.encoder.layers.30.mlp.fc1.weight" in weights  # ComfyUI: a standalone CLIP-G file
    assert not any(key.startswith("text_model.encoder.layers.22.") for key in tensors("sd3", "clip_l"))
    model = load_clip_text_model(weights, "gelu")
    assert model.config == TINY_CLIP_G
    with torch.no_grad():
        _, pooled = model(torch.tensor([[49406, 1125, 49407]]), torch.tensor([2]))
    assert pooled.shape == (1, 1280)


def test_t5xxl_loads_in_transformers_layout_and_takes_the_largest_t5_id() -> None:
    weights = tensors("sd3", "t5xxl")
    assert weights["shared.weight"].shape == (T5_EMBEDDING_ROWS, 64)
    model = load_t5_encoder(weights)
    assert model.config == TINY_T5
    batch = load_t5_tokenizer().encode_batch(["a tiny red fox"], length=8)
    assert T5_VOCAB_SIZE - 1 == 32099 < T5_EMBEDDING_ROWS
    ids = batch.ids.clone()
    ids[0, 0] = T5_VOCAB_SIZE - 1
    with torch.no_grad():
        states = model(ids, batch.attention_mask)
    assert states.shape == (1, 8, 64) and states.isfinite().all()


def test_text_encoders_are_the_same_files_for_every_family() -> None:
    for part in ("clip_l", "t5xxl"):
        assert same(tensors("sd3", part), tensors("flux_schnell", part))
    assert same(tensors("chroma", "t5xxl"), tensors("flux_dev", "t5xxl"))
    assert same(tensors("zimage", "vae"), tensors("chroma", "vae")) and same(
        tensors("chroma", "vae"), tensors("flux_dev", "vae")
    )


# ---------------------------------------------------------------- all in one


@pytest.mark.parametrize(
    ("family", "prefixes"),
    [
        (
            "sd35_large",
            (
                "model.diffusion_model.",
                "first_stage_model.",
                "text_encoders.clip_l.transformer.",
                "text_encoders.clip_g.transformer.",
                "text_encoders.t5xxl.transformer.",
            ),
        ),
        (
            "flux_dev",
            ("model.diffusion_model.", "vae.", "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."),
        ),
    ],
)
def test_an_all_in_one_file_holds_each_part_under_comfyuis_prefix(family: str, prefixes: tuple[str, ...]) -> None:
    checkpoint = tensors(family)
    assert checkpoint_prefixes(family) == prefixes
    encoders = [prefix.split(".")[1] for prefix in prefixes if prefix.startswith("text_encoders.")]
    loose = {key for key in checkpoint if not key.startswith(prefixes)}
    assert loose == {f"text_encoders.{name}.logit_scale" for name in encoders}
    parts = dict(zip(prefixes, ["diffusion_model", "vae", *encoders]))
    for prefix, part in parts.items():
        assert same(stripped(checkpoint, prefix), tensors(family, part)), prefix
    assert checkpoint["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"].ndim == 1


# ---------------------------------------------------------------- dtypes on disk


def test_an_fp8_checkpoint_stores_what_comfy_orgs_fp8_file_stores_and_loads(tmp_path: Path) -> None:
    on_disk = load_file(write_tiny_file(tmp_path / "flux1-dev-fp8.safetensors", "flux_dev", dtype="fp8"))
    dtypes = {
        prefix: {t.dtype for t in stripped(on_disk, prefix).values()} for prefix in checkpoint_prefixes("flux_dev")
    }
    assert dtypes == {
        "model.diffusion_model.": {FP8},
        "text_encoders.t5xxl.transformer.": {FP8},
        "text_encoders.clip_l.transformer.": {torch.float16},
        "vae.": {torch.float32},
    }
    model = load_flux(stripped(on_disk, "model.diffusion_model."))
    place(model, CPU, torch.float32)
    assert model.double_blocks[0].img_attn.qkv.weight.dtype == FP8
    assert flux_flow(model).isfinite().all()
    encoder = load_t5_encoder(stripped(on_disk, "text_encoders.t5xxl.transformer."))
    place(encoder, CPU, torch.float32)
    with torch.no_grad():
        assert encoder(torch.tensor([[100, 32099, 1]])).isfinite().all()


def test_a_scaled_fp8_diffusion_model_stores_linear_weights_over_their_scales(tmp_path: Path) -> None:
    on_disk = load_file(write_tiny_file(tmp_path / "m.safetensors", "sd35_large", "diffusion_model", "fp8_scaled"))
    original = tensors("sd35_large", "diffusion_model")
    assert on_disk["scaled_fp8"].dtype == FP8 and on_disk["scaled_fp8"].numel() == 0
    scaled = sorted(key.removesuffix(".scale_weight") for key in on_disk if key.endswith(".scale_weight"))
    assert "joint_blocks.0.x_block.attn.qkv" in scaled and "context_embedder" in scaled
    for layer in scaled:
        weight, scale = on_disk[f"{layer}.weight"], on_disk[f"{layer}.scale_weight"]
        assert weight.dtype == FP8 and scale.dtype == torch.float32 and scale.shape == ()
        assert torch.equal(on_disk[f"{layer}.scale_input"], torch.ones(()))
        assert weight.float().abs().max() == 448.0  # the largest weight maps to the top of the e4m3 range
        error = (weight.float() * scale - original[f"{layer}.weight"]).abs().max()
        assert error <= 16.0001 * scale  # half of e4m3's coarsest step (32), plus fp32 rounding
    others = {key for key in on_disk if key.rsplit(".", 1)[0] not in scaled and key != "scaled_fp8"}
    assert {"pos_embed", "x_embedder.proj.weight", "joint_blocks.0.x_block.attn.ln_q.weight"} <= others
    assert {on_disk[key].dtype for key in others} == {torch.bfloat16}
    model = load_mmdit(on_disk)
    place(model, CPU, torch.float32)
    assert model.joint_blocks[0].x_block.attn.qkv.weight_scale is not None
    assert sd3_flow(model).isfinite().all()


def test_a_scaled_fp8_checkpoint_marks_each_quantised_component_under_its_prefix() -> None:
    checkpoint = tensors("flux_schnell", "checkpoint", "fp8_scaled")
    assert {key for key in checkpoint if key.endswith("scaled_fp8")} == {
        "model.diffusion_model.scaled_fp8",
        "text_encoders.t5xxl.transformer.scaled_fp8",
    }
    encoder = load_t5_encoder(stripped(checkpoint, "text_encoders.t5xxl.transformer."))
    assert encoder.encoder.block[0].layer[0].SelfAttention.q.weight_scale is not None
    assert {t.dtype for t in stripped(checkpoint, "text_encoders.clip_l.transformer.").values()} == {torch.float16}


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_files_cast_every_floating_tensor(dtype: str, torch_dtype: torch.dtype) -> None:
    for family, part in (("sd3", "checkpoint"), ("flux_fill", "lora"), ("sdxl", "checkpoint")):
        cast = tensors(family, part, dtype)
        floating = {key: t.dtype for key, t in cast.items() if t.is_floating_point()}
        scales = {key for key in floating if key.endswith(".logit_scale")}  # fp32 in ComfyUI's files too
        assert {floating[key] for key in floating.keys() - scales} == {torch_dtype}
        assert {floating[key] for key in scales} <= {torch.float32}
    assert (
        tensors("sdxl", "checkpoint", dtype)[
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
        ].dtype
        == torch.int64
    )


# ---------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family", ["flux_dev", "sd35_medium"])
def test_the_lora_targets_the_tiny_transformers_linears_in_comfyuis_layout(family: str) -> None:
    lora = tensors(family, "lora")
    base = tensors(family, "diffusion_model")
    stems = {key.rsplit(".", 2)[0] for key in lora if key.endswith(".lora_up.weight")}
    assert lora.keys() == {f"{s}.{part}" for s in stems for part in ("lora_up.weight", "lora_down.weight", "alpha")}
    for stem in stems:
        assert stem.startswith("diffusion_model.")
        weight = base[stem.removeprefix("diffusion_model.") + ".weight"]
        up, down = lora[f"{stem}.lora_up.weight"], lora[f"{stem}.lora_down.weight"]
        assert up.shape == (weight.shape[0], 4) and down.shape == (4, weight.shape[1])
        assert lora[f"{stem}.alpha"].item() == 2.0
    modules = {stem.split(".", 1)[1] for stem in stems}
    if family == "flux_dev":
        assert {"double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.2", "single_blocks.1.linear1"} <= modules
    else:
        assert {"joint_blocks.0.x_block.attn2.qkv", "joint_blocks.1.context_block.attn.qkv"} <= modules
    assert not any("mod" in module for module in modules)


# ---------------------------------------------------------------- determinism and requests


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    def digest(name: str, seed: int) -> str:
        path = write_tiny_file(tmp_path / f"{name}.safetensors", "flux_canny", "diffusion_model", "fp8_scaled", seed)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest("a", 5) == digest("b", 5) != digest("c", 6)


def test_an_sd_checkpoint_in_fp32_is_the_file_diffusion_tiny_writes(tmp_path: Path) -> None:
    ours = write_tiny_file(tmp_path / "a.safetensors", "sd2", seed=2)
    theirs = write_tiny_checkpoint(tmp_path / "b.safetensors", "sd2", seed=2)
    assert ours.read_bytes() == theirs.read_bytes()
    assert same(tiny_file_tensors("sd2", seed=2), tiny_checkpoint_tensors("sd2", seed=2))


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_an_sd_controlnet_is_in_the_original_layout_for_the_tiny_checkpoints_unet(family: str, tmp_path: Path) -> None:
    weights = tensors(family, "controlnet", "fp16")
    assert "control_model.input_hint_block.0.weight" in weights and "control_model.middle_block_out.0.weight" in weights
    assert ("control_model.label_emb.0.0.weight" in weights) == (family == "sdxl")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}
    layout = {key: value.shape for key, value in tiny_controlnet_tensors(tiny_unet_config(family)).items()}
    assert {key: value.shape for key, value in weights.items()} == layout
    controlnet = load_controlnet(load_file(write_tiny_file(tmp_path / "cn.safetensors", family, "controlnet")))
    assert controlnet.config == ControlNetConfig(controlnet.config.unet) and controlnet.config.unet.in_channels == 4
    assert controlnet_mismatch(controlnet.config, tiny_unet_config(family), 4) is None


def test_every_family_lists_its_parts_and_dtypes() -> None:
    vision = ("clip_vision_h", "clip_vision_g", "siglip_vision")
    assert valid_parts("sd15") == ("checkpoint", "controlnet", "t2i_adapter", *vision)
    assert valid_parts("sdxl") == ("checkpoint", "controlnet", "t2i_adapter", "controlnet_union", *vision)
    assert valid_parts("sdxl_refiner") == ("checkpoint", *vision)
    assert valid_dtypes("sd2", "controlnet") == ("fp32", "fp16", "bf16")
    flux_parts = ("checkpoint", "diffusion_model", "vae", "clip_l", "t5xxl", "lora")
    assert valid_parts("flux_dev") == (*flux_parts, "controlnet", "style_model", *vision)
    assert valid_parts("flux_schnell") == (*flux_parts, *vision)
    sd3_parts = ("checkpoint", "diffusion_model", "vae", "clip_l", "clip_g", "t5xxl", "lora")
    assert valid_parts("sd3") == (*sd3_parts, *vision)
    assert valid_parts("sd35_large") == (*sd3_parts, "controlnet", *vision)
    assert set(PARTS) == {
        *sd3_parts,
        "qwen3_4b",
        "controlnet",
        "t2i_adapter",
        "controlnet_union",
        "style_model",
        *vision,
    }
    assert valid_parts("zimage") == ("diffusion_model", "vae", "qwen3_4b", "lora", *vision)
    assert valid_parts("chroma") == ("diffusion_model", "vae", "t5xxl", "lora", *vision)
    assert valid_dtypes("sd35_medium", "t5xxl") == DTYPES
    assert "fp8_mixed" not in valid_dtypes("flux_dev", "checkpoint")
    assert valid_dtypes("flux_dev", "vae") == valid_dtypes("sdxl", "checkpoint") == ("fp32", "fp16", "bf16")
    assert valid_dtypes("zimage", "qwen3_4b") == ("fp32", "fp16", "bf16")
    assert set(FLOW_FAMILIES) == {*FLUX_FAMILIES, *SD3_FAMILIES, "zimage", "chroma"}
    with pytest.raises(TinyFileError, match="no family 'sd3' for a FLUX.1 transformer"):
        tiny_flux_config("sd3")
    with pytest.raises(TinyFileError, match="no family 'flux_dev' for an MMDiT"):
        tiny_mmdit_config("flux_dev")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (("sd4", "checkpoint", "fp32"), "unknown family 'sd4'; valid families: sd15, sd2, sdxl, sdxl_refiner, sd3"),
        (("sd3", "unet", "fp32"), "unknown part 'unet'; valid parts: checkpoint, diffusion_model, vae, clip_l"),
        (
            ("sd3", "checkpoint", "int8"),
            "unknown dtype 'int8'; valid dtypes: fp32, fp16, bf16, fp8, fp8_scaled, fp8_mixed",
        ),
        (("zimage", "checkpoint", "fp32"), "no part 'checkpoint' for zimage; valid parts: diffusion_model, vae, qwen3"),
        (("flux_dev", "clip_g", "fp32"), "no part 'clip_g' for flux_dev; valid parts: checkpoint, diffusion_model"),
        (("flux_dev", "vae", "fp8"), "no dtype 'fp8' for the vae of flux_dev; valid dtypes: fp32, fp16, bf16"),
        (("sdxl", "vae", "fp32"), "no part 'vae' for sdxl; valid parts: checkpoint, controlnet"),
        (
            ("sdxl_refiner", "controlnet", "fp32"),
            "no part 'controlnet' for sdxl_refiner; valid parts: checkpoint, clip_vision_h, clip_vision_g, "
            "siglip_vision$",
        ),
        (
            ("flux_schnell", "controlnet", "fp32"),
            "no part 'controlnet' for flux_schnell; valid parts: checkpoint, diff",
        ),
        (("sd3", "style_model", "fp32"), "no part 'style_model' for sd3; valid parts: checkpoint, diffusion_model"),
        (("sd15", "controlnet", "fp8"), "no dtype 'fp8' for the controlnet of sd15; valid dtypes: fp32, fp16, bf16"),
    ],
)
def test_a_request_with_no_tiny_file_is_refused_listing_the_valid_ones(
    request_: tuple[str, str, str], message: str
) -> None:
    with pytest.raises(TinyFileError, match=message):
        tiny_file_tensors(*request_)


@pytest.mark.parametrize(
    ("family", "part", "kind"),
    [
        ("sd15", "t2i_adapter", T2IAdapter),
        ("sdxl", "t2i_adapter", T2IAdapter),
        ("sdxl", "controlnet_union", UnionControlNet),
        ("sd35_large", "controlnet", SD3ControlNet),
        ("flux_dev", "controlnet", FluxControlNet),
    ],
)
def test_control_parts_load_back_as_their_kind_for_the_family_s_tiny_model(
    tmp_path: Path, family: str, part: str, kind: type
) -> None:
    state_dict = load_file(write_tiny_file(tmp_path / "control.safetensors", family, part, "fp16"))
    assert {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()} == {torch.float16}
    if family == "sd35_large":
        model = load_sd3_controlnet(state_dict)
    elif family == "flux_dev":
        model = load_flux_controlnet(state_dict)
    else:
        model = load_control_model(state_dict)
    assert isinstance(model, kind)


@pytest.mark.parametrize("kind", ["clip_vision_h", "clip_vision_g", "siglip_vision"])
def test_vision_parts_are_detected_as_their_tower_for_any_family(tmp_path: Path, kind: str) -> None:
    path = write_tiny_file(tmp_path / "vision.safetensors", "zimage", kind)
    assert load_clip_vision(load_file(path)).config.kind == kind
    stored = load_file(path)
    assert all(torch.equal(tensor, tiny_file_tensors("sd15", kind)[key]) for key, tensor in stored.items())


def test_the_style_model_reads_the_tiny_siglip_and_writes_the_tiny_flux_context(tmp_path: Path) -> None:
    redux = load_style_model(load_file(write_tiny_file(tmp_path / "redux.safetensors", "flux_dev", "style_model")))
    siglip = load_clip_vision(tiny_file_tensors("flux_dev", "siglip_vision"))
    assert redux.config.vision_width == siglip.config.width
    assert redux.config.context_dim == tiny_flux_config("flux_dev").context_dim
