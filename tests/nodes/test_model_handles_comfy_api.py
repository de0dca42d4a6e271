"""MODEL, CLIP and VAE values answer what ComfyUI packs call on them, with ComfyUI's names, arguments and
layouts, and give what Loom's own nodes give for the same request."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from diffusion.prediction import VPrediction
from diffusion.text_encoders.t5_stacks import T5Padding
from diffusion.tiny_parts import write_tiny_file
from nodes.clip_handles import ClipHandle
from nodes.conditioning import CLIPTextEncode, CLIPTextEncodeFlux
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage, VAEDecode, VAEDecodeTiled, VAEEncode, VAEEncodeTiled
from nodes.loaders import CheckpointLoaderSimple, CLIPSetLastLayer, DualCLIPLoader, LoraLoader, LoraLoaderModelOnly
from nodes.model_handles import ModelHandle
from nodes.sampling import KSampler
from nodes.vae_handles import VaeHandle
from tests.nodes.tiny_models import tiny_checkpoint, write_lora

TO_Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
Q_PROJ = "encoder.layers.0.self_attn.q_proj.weight"


@pytest.fixture
def loaded(folders: Folders) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")


def sample(model: ModelHandle, clip: ClipHandle) -> torch.Tensor:
    """Two steps of KSampler on a 64x64 empty latent: what a MODEL's weights do to a picture."""
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("", clip)
    latent = EmptyLatentImage(64, 64, 1)
    return KSampler(model, 7, 2, 6.0, "euler", "normal", positive, negative, latent, 1.0)["samples"]


def low_rank(weight: torch.Tensor, seed: int, rank: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = weight.shape[:2]
    return (
        torch.randn(out_features, rank, generator=generator) * 0.3,
        torch.randn(rank, in_features, generator=generator) * 0.3,
    )


def model_output(model: ModelHandle) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 64, generator=generator)
    with model.unet_fn() as unet_fn:
        return unet_fn(x, torch.tensor([500.0]), context)


# MODEL


def test_a_clone_shares_the_weights_and_patching_it_leaves_the_original_as_it_was(loaded) -> None:
    model, clip, _ = loaded
    before = sample(model, clip)
    clone = model.clone()
    assert clone is not model and clone.unet is model.unet and clone.checkpoint is model.checkpoint
    diff = torch.full_like(dict(model.unet.named_parameters())[TO_Q], 0.05)
    assert clone.add_patches({f"diffusion_model.{TO_Q}": ("diff", (diff,))}) == [f"diffusion_model.{TO_Q}"]
    assert model.patches == () and len(clone.patches) == 1
    assert torch.equal(sample(model, clip), before)
    assert not torch.equal(sample(clone, clip), before)


def test_a_diff_patch_equals_lora_loader_with_the_same_difference_through_ksampler(loaded, folders: Folders) -> None:
    model, clip, _ = loaded
    diff = torch.randn(dict(model.unet.named_parameters())[TO_Q].shape, generator=torch.Generator().manual_seed(1))
    stem = "lora_unet_" + TO_Q.removesuffix(".weight").replace(".", "_")
    write_lora(folders.models / "loras" / "diff.safetensors", {f"{stem}.diff": diff * 0.1})
    by_loader, _ = LoraLoader(model, clip, "diff.safetensors", 0.6, 0.0)

    for form in (("diff", (diff * 0.1,)), (diff * 0.1,), diff * 0.1):  # ComfyUI's forms, and a bare tensor
        patched = model.clone()
        patched.add_patches({f"diffusion_model.{TO_Q}": form}, strength_patch=0.6)
        assert torch.equal(sample(patched, clip), sample(by_loader, clip))


def test_lora_patch_tuples_equal_the_same_lora_file_through_lora_loader(loaded, folders: Folders) -> None:
    model, _, _ = loaded
    tensors: dict[str, torch.Tensor] = {}
    patches: dict[str, Any] = {}
    for seed, (name, module) in enumerate(model.unet.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_k", "to_v")):
            up, down = low_rank(module.weight, seed)
            stem = "lora_unet_" + name.replace(".", "_")
            tensors |= {
                f"{stem}.lora_up.weight": up,
                f"{stem}.lora_down.weight": down,
                f"{stem}.alpha": torch.tensor(2.0),
            }
            patches[f"diffusion_model.{name}.weight"] = ("lora", (up, down, 2.0, None, None, None))
    write_lora(folders.models / "loras" / "style.safetensors", tensors)
    patched = model.clone()
    applied = patched.add_patches(patches, 0.7)
    assert sorted(applied) == sorted(patches)
    assert torch.equal(model_output(patched), model_output(LoraLoaderModelOnly(model, "style.safetensors", 0.7)))


def test_keys_the_model_does_not_have_are_skipped_and_not_returned(loaded) -> None:
    model, _, _ = loaded
    weight = dict(model.unet.named_parameters())[TO_Q]
    applied = model.clone().add_patches(
        {
            "diffusion_model.no_such_block.weight": (torch.zeros(3),),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": (torch.zeros(3),),
            TO_Q: (torch.zeros_like(weight),),  # a Loom name is not a ComfyUI key
            f"diffusion_model.{TO_Q}": (torch.zeros_like(weight),),
        }
    )
    assert applied == [f"diffusion_model.{TO_Q}"]


def test_a_patch_of_some_rows_equals_a_full_difference_that_is_zero_elsewhere(loaded) -> None:
    model, _, _ = loaded
    weight = dict(model.unet.named_parameters())[TO_Q]
    part = torch.randn(8, weight.shape[1], generator=torch.Generator().manual_seed(2))
    rows, full = model.clone(), model.clone()
    key = f"diffusion_model.{TO_Q}"
    assert rows.add_patches({(key, (0, 8, 8)): (part,)}) == [(key, (0, 8, 8))]
    whole = torch.zeros_like(weight)
    whole[8:16] = part
    full.add_patches({key: (whole,)})
    assert torch.equal(model_output(rows), model_output(full))


@pytest.mark.parametrize(
    ("patch", "kwargs", "error", "message"),
    [
        (("loha", (torch.zeros(1),) * 8), {}, NotImplementedError, "MODEL.add_patches: .* 'loha' patch"),
        (
            ("lora", (torch.zeros(32, 4), torch.zeros(4, 32), 1.0, None, torch.ones(32), None)),
            {},
            NotImplementedError,
            "DoRA",
        ),
        ([(torch.zeros(32, 32), None)], {}, NotImplementedError, "model-merge patch"),
        ((torch.zeros(32, 32),), {"strength_model": 0.5}, NotImplementedError, "strength_model"),
        ((torch.zeros(3, 3),), {}, ValueError, "does not fit its weight"),
    ],
)
def test_patches_loom_cannot_apply_raise_naming_the_method_and_apply_nothing(
    loaded, patch: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    model, _, _ = loaded
    weight = dict(model.unet.named_parameters())[TO_Q]
    assert weight.shape == (32, 32)  # the tiny UNet's, which the patches above are made for
    good = {f"diffusion_model.{TO_Q}": (torch.ones_like(weight),)}
    bad = {"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight": patch}
    with pytest.raises(error, match=message):
        model.add_patches(good | bad, **kwargs)
    assert model.patches == ()


def test_model_options_are_comfyui_s_dict_copied_by_clone_and_kept_by_loom_s_nodes(loaded, folders: Folders) -> None:
    model, clip, _ = loaded
    assert model.model_options == {"transformer_options": {}}
    clone = model.clone()
    clone.model_options["transformer_options"]["my_pack"] = {"strength": 1}
    clone.model_options["my_pack_setting"] = 2
    assert model.model_options == {"transformer_options": {}}
    stem = "lora_unet_" + TO_Q.removesuffix(".weight").replace(".", "_")
    write_lora(folders.models / "loras" / "diff.safetensors", {f"{stem}.diff": torch.zeros(32, 32)})
    with_lora, _ = LoraLoader(clone, clip, "diff.safetensors", 1.0, 0.0)
    assert with_lora.model_options == clone.model_options
    assert with_lora.model_options["transformer_options"] is not clone.model_options["transformer_options"]


@pytest.mark.parametrize(
    "method",
    ["set_model_unet_function_wrapper", "set_model_denoise_mask_function", "set_model_attn1_patch",
     "set_model_attn2_replace", "get_key_patches"],
)  # fmt: skip
def test_comfyui_hooks_loom_cannot_honour_raise_naming_the_method(loaded, method: str) -> None:
    model, _, _ = loaded
    with pytest.raises(NotImplementedError, match=f"MODEL.{method}\\(\\) is not supported in Loom"):
        getattr(model.clone(), method)(lambda args: args["cond"])


def test_sampling_options_written_directly_are_ignored_with_a_warning(loaded, caplog: pytest.LogCaptureFixture) -> None:
    model, clip, _ = loaded
    baseline = sample(model, clip)
    clone = model.clone()
    clone.model_options["model_function_wrapper"] = lambda apply_model, args: apply_model(**args)
    clone.model_options["my_pack_setting"] = 1
    with caplog.at_level(logging.DEBUG, logger="nodes.model_handles"):
        assert torch.equal(sample(clone, clip), baseline)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("'model_function_wrapper'" in text and "set_model_unet_function_wrapper" in text for text in warnings)
    assert any("'my_pack_setting'" in text for text in debug)


def test_model_objects_are_loom_s_under_comfyui_s_names(loaded) -> None:
    model, _, _ = loaded
    assert model.get_model_object("model_sampling") is model.sampling is model.model.model_sampling
    assert model.get_model_object("diffusion_model") is model.unet is model.model.diffusion_model
    assert model.get_model_object("diffusion_model.time_embed") is model.unet.time_embed
    latent = torch.randn(1, 4, 8, 8)
    latent_format = model.model.latent_format
    assert (latent_format.name, latent_format.latent_channels) == ("sd1", 4)
    assert torch.equal(latent_format.process_in(latent), model.latent_format.to_model(latent))
    assert torch.equal(latent_format.process_out(latent), model.latent_format.from_model(latent))
    assert model.model.get_dtype() == model.model_dtype() == torch.float32
    sigma = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    assert model.sampling.sigma_min < sigma < model.sampling.sigma_max
    with pytest.raises(AttributeError, match="get_model_object\\('model_config'\\)"):
        model.get_model_object("model_config")


def test_add_object_patch_replaces_model_sampling_on_that_handle_only(loaded) -> None:
    model, _, _ = loaded
    clone = model.clone()
    v_prediction = VPrediction()
    clone.add_object_patch("model_sampling", v_prediction)
    assert clone.get_model_object("model_sampling") is v_prediction and model.sampling is not v_prediction
    with pytest.raises(NotImplementedError, match="add_object_patch\\('diffusion_model.input_blocks'\\)"):
        clone.add_object_patch("diffusion_model.input_blocks", object())
    with pytest.raises(TypeError, match="lacks calculate_input"):
        clone.add_object_patch("model_sampling", object())


# CLIP


@pytest.mark.parametrize(
    "text",
    ["a lighthouse", "a (red:1.4) lighthouse, [fog], ((night))", ", ".join(["a lighthouse on a cliff"] * 20), ""],
)
def test_encoding_tokenize_s_tokens_equals_clip_text_encode(loaded, text: str) -> None:
    _, clip, _ = loaded
    ((expected, options),) = CLIPTextEncode(text, clip)
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(cond, expected) and torch.equal(pooled, options["pooled_output"])
    assert torch.equal(clip.encode_from_tokens(tokens), expected)
    as_dict = clip.encode_from_tokens(tokens, return_dict=True)
    assert set(as_dict) == {"cond", "pooled_output"} and torch.equal(as_dict["cond"], expected)
    ((scheduled, scheduled_options),) = clip.encode_from_tokens_scheduled(tokens, add_dict={"my_key": 1})
    assert torch.equal(scheduled, expected) and torch.equal(
        scheduled_options["pooled_output"], options["pooled_output"]
    )
    assert scheduled_options["my_key"] == 1


def test_tokens_are_comfyui_s_windows_of_token_and_weight_pairs(loaded) -> None:
    _, clip, _ = loaded
    tokens = clip.tokenize("a (red:1.3) fox")
    assert list(tokens) == ["l"]
    (window,) = tokens["l"]
    assert len(window) == 77 and window[0] == (49406, 1.0) and (49407, 1.0) in window
    assert [weight for _, weight in window[1:4]] == [1.0, 1.3, 1.0]
    assert len(clip.tokenize(", ".join(["a lighthouse on a cliff"] * 20))["l"]) == 2


def test_edited_tokens_are_encoded_as_edited(loaded) -> None:
    _, clip, _ = loaded
    tokens = clip.tokenize("a red fox")
    token, _ = tokens["l"][0][2]
    tokens["l"][0][2] = (token, 1.3)
    ((expected, _),) = CLIPTextEncode("a (red:1.3) fox", clip)
    assert torch.equal(clip.encode_from_tokens(tokens), expected)
    built = {"l": [list(window) for window in clip.tokenize("a (red:1.3) fox")["l"]]}  # plain lists, as packs build
    assert torch.equal(clip.encode_from_tokens(built), expected)


def test_clip_layer_on_a_clone_is_clip_set_last_layer(loaded) -> None:
    _, clip, _ = loaded
    clone = clip.clone()
    clone.clip_layer(-2)
    assert clip.clip_skip is None and clone.load_model() is clone
    ((expected, _),) = CLIPTextEncode("a fox", CLIPSetLastLayer(clip, -2))
    assert torch.equal(clone.encode_from_tokens(clone.tokenize("a fox")), expected)
    with pytest.raises(ValueError, match="CLIP.clip_layer -40 is out of range"):
        clone.clip_layer(-40)


def test_clip_add_patches_equals_lora_loader_s_text_encoder_part(loaded, folders: Folders) -> None:
    model, clip, _ = loaded
    (encoder,) = clip.encoders
    up, down = low_rank(dict(encoder.named_parameters())[Q_PROJ], 3)
    stem = "lora_te_text_model_" + Q_PROJ.removesuffix(".weight").replace(".", "_")
    write_lora(
        folders.models / "loras" / "te.safetensors",
        {f"{stem}.lora_up.weight": up, f"{stem}.lora_down.weight": down, f"{stem}.alpha": torch.tensor(4.0)},
    )
    _, by_loader = LoraLoader(model, clip, "te.safetensors", 0.0, 0.8)
    patched = clip.clone()
    key = f"clip_l.transformer.text_model.{Q_PROJ}"
    applied = patched.add_patches(
        {key: ("lora", (up, down, 4.0, None, None, None)), "t5xxl.transformer.encoder.block.0.weight": (up,)}, 0.8
    )
    assert applied == [key] and clip.patches == {}
    ((expected, _),) = CLIPTextEncode("a fox", by_loader)
    assert torch.equal(patched.encode_from_tokens(patched.tokenize("a fox")), expected)


def test_clip_calls_loom_cannot_answer_raise_naming_the_method(loaded) -> None:
    _, clip, _ = loaded
    with pytest.raises(NotImplementedError, match="CLIP.tokenize\\(return_word_ids=True\\)"):
        clip.tokenize("a fox", return_word_ids=True)
    with pytest.raises(NotImplementedError, match="CLIP.tokenize: .*images"):
        clip.tokenize("a fox", images=[torch.zeros(1, 8, 8, 3)])
    with pytest.raises(NotImplementedError, match="encode_from_tokens\\(return_pooled='unprojected'\\)"):
        clip.encode_from_tokens(clip.tokenize("a fox"), return_pooled="unprojected")
    with pytest.raises(ValueError, match="needs the tokens \\['l'\\]"):
        clip.encode_from_tokens({"g": []})


@pytest.fixture
def flux_clip(folders: Folders) -> ClipHandle:
    write_tiny_file(folders.models / "text_encoders" / "clip_l.safetensors", "flux_dev", "clip_l")
    write_tiny_file(folders.models / "text_encoders" / "t5xxl.safetensors", "flux_dev", "t5xxl")
    return DualCLIPLoader("clip_l.safetensors", "t5xxl.safetensors", "flux")


def test_a_t5_family_encodes_the_text_of_its_tokens_as_its_nodes_do(flux_clip: ClipHandle) -> None:
    tokens = flux_clip.tokenize("a (red:1.2) fox")
    assert sorted(tokens) == ["l", "t5xxl"] and len(tokens["t5xxl"][0]) == 256
    ((expected, options),) = CLIPTextEncode("a (red:1.2) fox", flux_clip)
    cond, pooled = flux_clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(cond, expected) and torch.equal(pooled, options["pooled_output"])
    # CLIPTextEncodeFlux's way: CLIP-L's tokens from one text, T5's from another.
    tokens["t5xxl"] = flux_clip.tokenize("a fox in the snow")["t5xxl"]
    ((expected, options),) = CLIPTextEncodeFlux(flux_clip, "a (red:1.2) fox", "a fox in the snow", 3.5)
    cond, pooled = flux_clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(cond, expected) and torch.equal(pooled, options["pooled_output"])
    tokens["t5xxl"][0][0] = (tokens["t5xxl"][0][0][0], 1.5)
    with pytest.raises(NotImplementedError, match="flux CLIP encodes the text its tokens came from"):
        flux_clip.encode_from_tokens(tokens)


def test_t5_tokenizer_options_set_the_padding_of_t5_s_tokens(flux_clip: ClipHandle) -> None:
    clone = flux_clip.clone()
    clone.set_tokenizer_option("t5xxl_min_length", 8)
    clone.set_tokenizer_option("t5xxl_min_padding", 2)
    clone.set_tokenizer_option("llama_template", "ignored, as ComfyUI's T5 tokenizer ignores it")
    assert flux_clip.t5_padding is None and len(clone.tokenize("a fox")["t5xxl"][0]) == 8
    assert clone.t5_padding == T5Padding(min_padding=2, min_length=8)
    ((expected, _),) = CLIPTextEncode("a fox", flux_clip.with_t5_padding(clone.t5_padding))
    assert torch.equal(clone.encode_from_tokens(clone.tokenize("a fox")), expected)


# VAE


def test_vae_decode_and_encode_are_the_vae_nodes(loaded) -> None:
    _, _, vae = loaded
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    images = vae.decode(latent)
    assert images.shape == (2, 64, 64, 3) and 0.0 <= float(images.min()) <= float(images.max()) <= 1.0
    assert torch.equal(images, VAEDecode({"samples": latent}, vae))
    pixels = torch.rand(1, 70, 67, 3, generator=torch.Generator().manual_seed(5))
    encoded = vae.encode(pixels)
    assert encoded.shape == (1, 4, 8, 8) and torch.equal(encoded, VAEEncode(pixels, vae)["samples"])
    assert vae.vae_encode_crop_pixels(pixels).shape == (1, 64, 64, 3)
    assert torch.equal(vae.encode(vae.vae_encode_crop_pixels(pixels)), encoded)


def test_tiled_calls_take_comfyui_s_units_and_equal_the_tiled_nodes(loaded) -> None:
    _, _, vae = loaded
    factor = vae.spacial_compression_decode()
    latent = torch.randn(1, 4, 20, 20, generator=torch.Generator().manual_seed(6))
    expected = VAEDecodeTiled({"samples": latent}, vae, 64, 16)
    assert torch.equal(
        vae.decode_tiled(latent, tile_x=64 // factor, tile_y=64 // factor, overlap=16 // factor), expected
    )
    pixels = torch.rand(1, 160, 160, 3, generator=torch.Generator().manual_seed(7))
    expected = VAEEncodeTiled(pixels, vae, 64, 16)["samples"]
    assert torch.equal(vae.encode_tiled(pixels, tile_x=64, tile_y=64, overlap=16), expected)


def test_vae_sizes_under_comfyui_s_names(loaded) -> None:
    _, _, vae = loaded
    assert vae.downscale_ratio == vae.upscale_ratio == vae.spacial_compression_encode() == 8
    assert vae.spacial_compression_decode() == 8 and vae.temporal_compression_decode() is None
    assert (vae.latent_channels, vae.latent_dim, vae.output_channels) == (4, 2, 3)
    assert vae.first_stage_model is vae.model
    with pytest.raises(NotImplementedError, match="VAE.decode\\(vae_options="):
        vae.decode(torch.zeros(1, 4, 8, 8), vae_options={"fast": True})
