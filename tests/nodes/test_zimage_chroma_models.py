"""Z-Image and Chroma files through the nodes, laid out as their official workflows load them: UNETLoader,
CLIPLoader (type lumina2 with Qwen3-4B, type chroma with T5-XXL), VAELoader; KSampler on them is flow-matching
Euler over their shifted schedules, with CFG as ComfyUI batches it for each."""

from __future__ import annotations

import pytest
import torch

from diffusion.checkpoint import open_state_dict
from diffusion.checkpoint.errors import CheckpointError
from diffusion.chroma import load_chroma
from diffusion.flow_matching import DiscreteFlow
from diffusion.lora import parse_lora
from diffusion.samplers.euler import sample_euler
from diffusion.sampling import prepare_noise
from diffusion.schedules import compute_sigmas
from diffusion.text_encoders.qwen3 import encode_prompt, load_qwen3_encoder
from diffusion.tiny_parts import tiny_file_tensors, write_tiny_file
from diffusion.vae import FLUX_LATENT
from diffusion.zimage import load_zimage
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptySD3LatentImage, VAEDecode
from nodes.loaders import CLIPLoader, LoraLoaderModelOnly, T5TokenizerOptions, UNETLoader, VAELoader
from nodes.model_sampling import ModelSamplingAuraFlow
from nodes.sampling import KSampler


@pytest.fixture
def split_files(folders: Folders) -> Folders:
    """Z-Image-Turbo and Chroma installs as users have them, from tiny files in the real layouts."""
    models = folders.models
    write_tiny_file(models / "diffusion_models" / "z_image_turbo_bf16.safetensors", "zimage", "diffusion_model", "bf16")
    write_tiny_file(models / "text_encoders" / "qwen_3_4b.safetensors", "zimage", "qwen3_4b")
    write_tiny_file(
        models / "diffusion_models" / "Chroma1-HD-fp8mixed.safetensors", "chroma", "diffusion_model", "fp8_mixed"
    )
    write_tiny_file(models / "text_encoders" / "t5xxl_fp16.safetensors", "chroma", "t5xxl", "fp16")
    write_tiny_file(models / "vae" / "ae.safetensors", "zimage", "vae")
    write_tiny_file(models / "loras" / "zimage_style.safetensors", "zimage", "lora")
    return folders


def _euler_cfg(predict, flow: DiscreteFlow, latent: torch.Tensor, seed: int, steps: int, cfg: float) -> torch.Tensor:
    """KSampler with euler / simple, written out: x0 = x - sigma v per prompt, then CFG on the x0s."""
    sigmas = compute_sigmas(flow, "simple", steps)
    start = FLUX_LATENT.to_model(latent)
    x = flow.noise_scaling(sigmas[0], prepare_noise(start, seed), start)

    def denoised(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        positive, negative = (x - predict(x, sigma, side) * sigma.reshape(-1, 1, 1, 1) for side in (0, 1))
        return negative + (positive - negative) * cfg

    x = sample_euler(denoised, x, sigmas, disable=True)
    return FLUX_LATENT.from_model(flow.inverse_noise_scaling(sigmas[-1], x))


def test_each_family_samples_with_comfyui_s_defaults(split_files: Folders) -> None:
    zimage, chroma = (
        UNETLoader("z_image_turbo_bf16.safetensors", "default"),
        UNETLoader("Chroma1-HD-fp8mixed.safetensors", "default"),
    )
    assert (zimage.family.value, type(zimage.sampling), zimage.sampling.shift, zimage.sampling.multiplier) == (
        "zimage", DiscreteFlow, 3.0, 1.0,
    )  # fmt: skip
    assert (chroma.family.value, type(chroma.sampling), chroma.sampling.shift, chroma.sampling.multiplier) == (
        "chroma", DiscreteFlow, 1.0, 1.0,
    )  # fmt: skip
    assert zimage.latent_format is chroma.latent_format is FLUX_LATENT
    assert zimage.pooled_dim is chroma.pooled_dim is None and not zimage.takes_guidance and not chroma.takes_guidance
    # Z-Image numbers its caption tokens, so a repeated token is another token: no batching by repeats.
    assert not zimage.repeats_contexts and chroma.repeats_contexts


def test_the_lumina2_clip_gives_qwen3_s_second_to_last_states_at_the_caption_width(split_files: Folders) -> None:
    clip = CLIPLoader("qwen_3_4b.safetensors", "lumina2")
    ((cond, options),) = CLIPTextEncode("a (red:1.5) fox", clip)
    encoder = load_qwen3_encoder(open_state_dict(split_files.models / "text_encoders" / "qwen_3_4b.safetensors"))
    states = encode_prompt(encoder, "a (red:1.5) fox").states
    assert clip.family == "zimage" and options["pooled_output"] is None
    assert cond.shape == (1, states.shape[1], 2560)
    torch.testing.assert_close(cond[..., : states.shape[-1]], states)
    assert not cond[..., states.shape[-1] :].any()


def test_ksampler_on_z_image_is_flow_euler_with_cfg_and_prompts_of_different_lengths_run_apart(
    split_files: Folders,
) -> None:
    model = ModelSamplingAuraFlow(UNETLoader("z_image_turbo_bf16.safetensors", "default"), 3.0)
    clip = CLIPLoader("qwen_3_4b.safetensors", "lumina2")
    positive = CLIPTextEncode("a red fox in the snow", clip)
    negative = CLIPTextEncode("blurry", clip)
    assert positive[0][0].shape[1] != negative[0][0].shape[1]
    latent = EmptySD3LatentImage(64, 48, 1)
    got = KSampler(model, 5, 3, 2.5, "euler", "simple", positive, negative, latent, 1.0)["samples"]
    weights = open_state_dict(split_files.models / "diffusion_models" / "z_image_turbo_bf16.safetensors")
    reference = load_zimage(weights).float().eval()
    contexts = (positive[0][0], negative[0][0])
    with torch.no_grad():
        expected = _euler_cfg(
            lambda x, sigma, side: reference(x, sigma, contexts[side]),
            DiscreteFlow(3.0, 1.0),
            latent["samples"],
            5,
            3,
            2.5,
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ksampler_on_chroma_is_flow_euler_with_cfg_on_t5_with_one_pad_token(split_files: Folders) -> None:
    model = UNETLoader("Chroma1-HD-fp8mixed.safetensors", "default")
    clip = T5TokenizerOptions(CLIPLoader("t5xxl_fp16.safetensors", "chroma"), 1, 0)
    positive, negative = CLIPTextEncode("a red fox", clip), CLIPTextEncode("a blue fox", clip)
    tokens = len(clip.stack.tokenizer.encode("a red fox")) + 1  # the pieces, the end token, one pad
    assert positive[0][0].shape == negative[0][0].shape == (1, tokens, 4096)
    assert positive[0][1]["pooled_output"] is None
    latent = EmptySD3LatentImage(48, 64, 1)
    got = KSampler(model, 2, 3, 3.0, "euler", "simple", positive, negative, latent, 1.0)["samples"]
    weights = open_state_dict(split_files.models / "diffusion_models" / "Chroma1-HD-fp8mixed.safetensors")
    reference = load_chroma(weights).float().eval()
    contexts = (positive[0][0], negative[0][0])
    with torch.no_grad():
        expected = _euler_cfg(
            lambda x, sigma, side: reference(x, sigma, contexts[side]),
            DiscreteFlow(1.0, 1.0),
            latent["samples"],
            2,
            3,
            3.0,
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_fp8_mixed_file_keeps_each_tensor_in_its_stored_dtype(split_files: Folders) -> None:
    chroma = UNETLoader("Chroma1-HD-fp8mixed.safetensors", "default").unet
    assert chroma.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert chroma.double_blocks[0].img_attn.norm.query_norm.scale.dtype == torch.bfloat16


def test_the_chroma_clip_without_options_is_the_prompt_and_its_end_token(split_files: Folders) -> None:
    clip = CLIPLoader("t5xxl_fp16.safetensors", "chroma")
    ((cond, _),) = CLIPTextEncode("a red fox", clip)
    assert cond.shape[1] == len(clip.stack.tokenizer.encode("a red fox"))


def test_a_text_encoder_of_another_kind_is_named_with_what_the_type_takes(split_files: Folders) -> None:
    with pytest.raises(
        CheckpointError, match=r"type lumina2 takes qwen3, each file once; got t5xxl_fp16.safetensors \(t5xxl\)"
    ):
        CLIPLoader("t5xxl_fp16.safetensors", "lumina2")
    with pytest.raises(
        CheckpointError, match=r"type chroma takes t5xxl, each file once; got qwen_3_4b.safetensors \(qwen3\)"
    ):
        CLIPLoader("qwen_3_4b.safetensors", "chroma")


def test_a_z_image_lora_in_comfyui_s_layout_patches_every_block_linear(split_files: Folders) -> None:
    model = UNETLoader("z_image_turbo_bf16.safetensors", "default")
    patches = parse_lora(tiny_file_tensors("zimage", "lora"), model.unet)
    assert not patches.unmatched and len(patches.unet) == sum(
        1 for key in tiny_file_tensors("zimage", "lora") if key.endswith("alpha")
    )
    clip = CLIPLoader("qwen_3_4b.safetensors", "lumina2")
    positive = CLIPTextEncode("a fox", clip)
    latent = EmptySD3LatentImage(32, 32, 1)
    plain = KSampler(model, 1, 2, 1.0, "euler", "simple", positive, positive, latent, 1.0)["samples"]
    styled = LoraLoaderModelOnly(model, "zimage_style.safetensors", 1.0)
    assert LoraLoaderModelOnly(model, "zimage_style.safetensors", 0.0) is model
    assert not torch.allclose(
        KSampler(styled, 1, 2, 1.0, "euler", "simple", positive, positive, latent, 1.0)["samples"], plain
    )


def test_z_image_decodes_through_the_flux_vae(split_files: Folders) -> None:
    model = UNETLoader("z_image_turbo_bf16.safetensors", "default")
    positive = CLIPTextEncode("a fox", CLIPLoader("qwen_3_4b.safetensors", "lumina2"))
    latent = KSampler(model, 1, 2, 1.0, "euler", "simple", positive, positive, EmptySD3LatentImage(64, 64, 1), 1.0)
    image = VAEDecode(latent, VAELoader("ae.safetensors"))
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
