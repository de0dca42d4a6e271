"""Z-Image-Turbo and Chroma through Loom's nodes end where diffusers' `ZImagePipeline` and `ChromaPipeline` end:
the same split files (diffusers' own single-file converters for the transformers and the VAE, transformers'
Qwen3 and T5 for the text encoders), the same start noise, the same sigmas, flow-matching Euler, with and
without classifier-free guidance.

The text path is part of what is compared. Z-Image: diffusers' own `encode_prompt` (its chat template, its
padding to 512 and its cut back to the attended tokens) over transformers' Qwen3 must give what
`CLIPTextEncode` gives; its states are then zero-padded from the tiny encoder's 64 features to the transformer's
real caption width, 2560, as Loom pads them, and handed to the pipeline as `prompt_embeds`.

Chroma: the tokens that `ChromaPipeline._get_t5_prompt_embeds` leaves attended (the prompt, its end token and one
pad token) are the tokens of `T5TokenizerOptions(1, 0)`. diffusers runs T5 under the tokenizer's mask (every pad
token masked out), ComfyUI (and so Loom) runs it over those tokens unmasked (`pixart_t5`: no attention mask).
The test keeps ComfyUI's convention: transformers' T5 encodes diffusers' attended ids without a mask, and the
pipeline gets those states with a mask attending to all of them, so both sides attend to the same tokens. The
rest of the 512 are left out rather than masked: diffusers 0.42.1 turns the pipeline's own 0/1 float mask into
an additive attention bias, which would not mask them (diffusers issues 12116 and 13619).

Guidance scales differ by convention: diffusers' Z-Image computes ``pos + g (pos - neg)``, ComfyUI's cfg is
``neg + cfg (pos - neg)``, so g = cfg - 1 (g = 0, Turbo's setting, turns guidance off as cfg 1 does); Chroma's
pipeline uses ComfyUI's form. Chroma batches a positive and a negative of different lengths by repeating the
shorter (ComfyUI's batching, which diffusers does not do), so its negative prompt here has the positive's length.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    ChromaPipeline,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3Model, T5Config, T5EncoderModel, T5TokenizerFast

from diffusion.checkpoint import open_state_dict
from diffusion.flow_matching import DiscreteFlow
from diffusion.sampling import prepare_noise
from diffusion.schedules import compute_sigmas
from diffusion.text_encoders.zimage_text import CAPTION_WIDTH
from diffusion.tiny_parts import TINY_QWEN3, TINY_T5, TINY_VAE, tiny_chroma_config, tiny_zimage_config, write_tiny_file
from diffusion.vae import FLUX_LATENT
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptySD3LatentImage, VAEDecode
from nodes.loaders import CLIPLoader, T5TokenizerOptions, UNETLoader, VAELoader
from nodes.model_sampling import ModelSamplingAuraFlow
from nodes.sampling import KSampler
from tests.diffusion.test_chroma import diffusers_twin as chroma_twin
from tests.diffusion.test_zimage import diffusers_twin as zimage_twin

# 3 steps: 1000 / 3 is where ComfyUI's simple schedule and the pipelines' default sigmas part.
SEED, STEPS, SIZE = 11, 3, 64
TOLERANCE = 1e-4  # on the final latents, in the model's space; both sides run in fp32 on the CPU
IMAGE_TOLERANCE = 1e-3
FAR = 0.1  # what another seed or shift must at least change, so that the comparison can fail
T5_WIDTH = 4096
DATA = Path(__file__).resolve().parents[2] / "diffusion" / "data"
# Qwen3's chat template as Z-Image's pipeline renders it (one user turn, the assistant's turn opened; the empty
# thinking block only with enable_thinking=False), written out for the tokenizer built from the shipped file.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
ZIMAGE_PROMPT = (
    "a red fox in the snow at dawn, soft golden light, long blue shadows, tall pine trees behind, a frozen lake, mist"
)
ZIMAGE_NEGATIVE = "blurry"


@pytest.fixture
def zimage_files(folders: Folders) -> Folders:
    """Z-Image-Turbo as users install it, in fp32 so that the diffusers twins hold the very same values."""
    write_tiny_file(folders.models / "diffusion_models" / "z_image_turbo.safetensors", "zimage", "diffusion_model")
    write_tiny_file(folders.models / "text_encoders" / "qwen_3_4b.safetensors", "zimage", "qwen3_4b")
    write_tiny_file(folders.models / "vae" / "ae.safetensors", "zimage", "vae")
    return folders


@pytest.fixture
def chroma_files(folders: Folders) -> Folders:
    """Chroma as users install it (the VAE is FLUX's, as Z-Image's), in fp32."""
    write_tiny_file(folders.models / "diffusion_models" / "chroma.safetensors", "chroma", "diffusion_model")
    write_tiny_file(folders.models / "text_encoders" / "t5xxl.safetensors", "chroma", "t5xxl")
    write_tiny_file(folders.models / "vae" / "ae.safetensors", "chroma", "vae")
    return folders


def _weights(folders: Folders, folder: str, name: str) -> dict[str, torch.Tensor]:
    return dict(open_state_dict(folders.models / folder / name))


# ---------------------------------------------------------------- the diffusers / transformers twins


def _widened(weights: dict[str, torch.Tensor], key: str, dim: int, width: int) -> None:
    """Zero-pad `weights[key]` along `dim` to `width`: extra hidden units that are zero in and zero out."""
    tensor = weights[key]
    padding = [0, 0] * (tensor.ndim - 1 - dim) + [0, width - tensor.shape[dim]]
    weights[key] = F.pad(tensor, padding)


def _zimage_twin(weights: dict[str, torch.Tensor]) -> ZImageTransformer2DModel:
    """diffusers' Z-Image transformer on the file's weights. diffusers ties two hidden widths to the model width
    (feed-forward int(dim * 8 / 3), time MLP 1024) where the tiny file has its own (512, 256), so those hidden
    layers get zero units up to diffusers' widths: silu(0) * 0 and silu(0) add nothing, the outputs are unchanged."""
    config = tiny_zimage_config()
    widened = dict(weights)
    feed_forward = int(config.hidden_size / 3 * 8)
    for key in [key for key in weights if ".feed_forward." in key]:
        _widened(widened, key, 1 if key.endswith("w2.weight") else 0, feed_forward)
    for key in ("t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias"):
        _widened(widened, key, 0, 1024)
    _widened(widened, "t_embedder.mlp.2.weight", 1, 1024)
    return zimage_twin(widened, config)


def _vae_twin(weights: dict[str, torch.Tensor]) -> AutoencoderKL:
    """FLUX's autoencoder in diffusers (no quant convs, FLUX's latent scale and shift) through its LDM converter."""
    levels = len(TINY_VAE.channel_mult)
    config: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [TINY_VAE.base_channels * mult for mult in TINY_VAE.channel_mult],
        "layers_per_block": TINY_VAE.num_res_blocks,
        "latent_channels": TINY_VAE.z_channels,
        "norm_num_groups": 32,
        "scaling_factor": FLUX_LATENT.scale_factor,
        "shift_factor": FLUX_LATENT.shift_factor,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }
    model = AutoencoderKL(**config)
    model.load_state_dict(convert_ldm_vae_checkpoint(weights, config), strict=True)
    return model.eval().requires_grad_(False)


def _qwen3_twin(weights: dict[str, torch.Tensor]) -> Qwen3Model:
    config = Qwen3Config(
        hidden_size=TINY_QWEN3.hidden_size,
        num_hidden_layers=TINY_QWEN3.layers,
        num_attention_heads=TINY_QWEN3.heads,
        num_key_value_heads=TINY_QWEN3.kv_heads,
        head_dim=TINY_QWEN3.head_dim,
        intermediate_size=TINY_QWEN3.intermediate_size,
        vocab_size=TINY_QWEN3.vocab_size,
        rms_norm_eps=TINY_QWEN3.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": TINY_QWEN3.rope_theta},
    )
    model = Qwen3Model(config)
    model.load_state_dict({key.removeprefix("model."): tensor for key, tensor in weights.items()}, strict=True)
    return model.eval().requires_grad_(False)


def _qwen_tokenizer(directory: Path) -> Qwen2TokenizerFast:
    path = directory / "qwen3_tokenizer.json"
    path.write_bytes(gzip.decompress((DATA / "qwen3_tokenizer.json.gz").read_bytes()))
    return Qwen2TokenizerFast(tokenizer_file=str(path), pad_token="<|endoftext|>", chat_template=QWEN3_CHAT_TEMPLATE)


def _t5_twin(weights: dict[str, torch.Tensor]) -> T5EncoderModel:
    config = T5Config(
        d_model=TINY_T5.d_model,
        num_layers=TINY_T5.layers,
        num_heads=TINY_T5.heads,
        d_kv=TINY_T5.d_kv,
        d_ff=TINY_T5.d_ff,
        vocab_size=TINY_T5.vocab_size,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    )
    model = T5EncoderModel(config)
    model.load_state_dict({**weights, "encoder.embed_tokens.weight": weights["shared.weight"]}, strict=True)
    return model.eval().requires_grad_(False)


class FinalLatents:
    """A pipeline callback keeping the latents of the last step: what the pipeline then decodes."""

    def __init__(self) -> None:
        self.latents: torch.Tensor | None = None

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        self.latents = tensors["latents"].clone()
        return {}


def _loom_schedule(shift: float) -> tuple[FlowMatchEulerDiscreteScheduler, list[float]]:
    """KSampler's euler / simple sigmas for a pipeline to run as they are: given as `sigmas=` to a scheduler that
    shifts by 1 (so not again) and appends the final 0."""
    sigmas = compute_sigmas(DiscreteFlow(shift, 1.0), "simple", STEPS)
    return FlowMatchEulerDiscreteScheduler(shift=1.0), sigmas[:-1].tolist()


def _max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def _assert_parity(
    got: torch.Tensor, expected: torch.Tensor, image: torch.Tensor, expected_image: torch.Tensor
) -> None:
    assert expected.abs().mean() > 0.1  # a real result, not two zeros
    assert _max_difference(got, expected) <= TOLERANCE
    # Pixels in [0, 1] through the random decoder, more loosely: the latents above are the real check.
    assert image.std() > 0.01 and _max_difference(image, expected_image) <= IMAGE_TOLERANCE


# ---------------------------------------------------------------- the schedule


#: The sigmas each pipeline shifts when given none (the same formula, in torch and in numpy).
DEFAULT_SIGMAS = {
    "z-image": (3.0, get_default_z_image_sigmas),
    "chroma": (1.0, lambda steps: np.linspace(1.0, 1 / steps, steps).tolist()),
}


@pytest.mark.parametrize("family", sorted(DEFAULT_SIGMAS))
def test_the_pipelines_default_sigmas_are_the_simple_schedule_up_to_comfyui_s_1000_entry_table(family: str) -> None:
    """Both pipelines shift linspace(1, 1 / steps, steps) by a constant shift; ComfyUI's simple schedule takes the
    same times from a table of 1000, each rounded down to a thousandth. Equal where the steps divide 1000, up to
    a thousandth apart elsewhere; so the parity tests give the pipelines Loom's own sigmas."""
    shift, default_sigmas = DEFAULT_SIGMAS[family]
    for steps in (4, STEPS):
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        scheduler.set_timesteps(steps, sigmas=default_sigmas(steps))
        difference = _max_difference(scheduler.sigmas, compute_sigmas(DiscreteFlow(shift, 1.0), "simple", steps))
        assert difference == 0.0 if 1000 % steps == 0 else 0.0 < difference <= 1e-3


# ---------------------------------------------------------------- Z-Image


@pytest.mark.parametrize("cfg", [1.0, 3.0], ids=["turbo-cfg-1", "cfg-3-negative-of-another-length"])
def test_z_image_through_the_nodes_ends_where_diffusers_z_image_pipeline_ends(
    zimage_files: Folders, tmp_path: Path, cfg: float
) -> None:
    unet = UNETLoader("z_image_turbo.safetensors", "default")
    clip = CLIPLoader("qwen_3_4b.safetensors", "lumina2")
    positive, negative = CLIPTextEncode(ZIMAGE_PROMPT, clip), CLIPTextEncode(ZIMAGE_NEGATIVE, clip)
    latent = EmptySD3LatentImage(SIZE, SIZE, 1)
    output = KSampler(
        ModelSamplingAuraFlow(unet, 3.0), SEED, STEPS, cfg, "euler", "simple", positive, negative, latent, 1.0
    )
    got = FLUX_LATENT.to_model(output["samples"])
    image = VAEDecode(output, VAELoader("ae.safetensors"))

    scheduler, sigmas = _loom_schedule(3.0)
    pipe = ZImagePipeline(
        scheduler=scheduler,
        vae=_vae_twin(_weights(zimage_files, "vae", "ae.safetensors")),
        text_encoder=_qwen3_twin(_weights(zimage_files, "text_encoders", "qwen_3_4b.safetensors")),
        tokenizer=_qwen_tokenizer(tmp_path),
        transformer=_zimage_twin(_weights(zimage_files, "diffusion_models", "z_image_turbo.safetensors")),
    )
    with torch.no_grad():
        embeds, negative_embeds = pipe.encode_prompt(
            ZIMAGE_PROMPT, do_classifier_free_guidance=True, negative_prompt=ZIMAGE_NEGATIVE
        )
    # The text path: diffusers' states are the narrow part of Loom's, the rest Loom's zero padding.
    for ours, theirs in zip((positive, negative), (embeds, negative_embeds)):
        ((context, _),) = ours
        assert context.shape == (1, theirs[0].shape[0], CAPTION_WIDTH)
        assert _max_difference(context[0, :, : theirs[0].shape[1]], theirs[0]) <= 1e-4
        assert not context[..., theirs[0].shape[1] :].any()
    # Captions padded to different multiples of 32: diffusers batches the two behind a mask, Loom runs them apart.
    assert positive[0][0].shape[1] > 32 > negative[0][0].shape[1]

    final = FinalLatents()
    with torch.no_grad():
        expected_image = pipe(
            prompt_embeds=[F.pad(e, (0, CAPTION_WIDTH - e.shape[-1])) for e in embeds],
            negative_prompt_embeds=[F.pad(e, (0, CAPTION_WIDTH - e.shape[-1])) for e in negative_embeds],
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            sigmas=sigmas,
            guidance_scale=cfg - 1,
            latents=prepare_noise(latent["samples"], SEED),
            output_type="pt",
            callback_on_step_end=final,
        ).images
    assert pipe.scheduler.sigmas.tolist() == [*sigmas, 0.0]
    assert final.latents is not None
    _assert_parity(got, final.latents, image, expected_image.permute(0, 2, 3, 1))

    # The comparison can fail: another shift, or another seed, lands far outside the tolerance.
    for model, seed in ((ModelSamplingAuraFlow(unet, 6.0), SEED), (ModelSamplingAuraFlow(unet, 3.0), SEED + 1)):
        other = KSampler(model, seed, STEPS, cfg, "euler", "simple", positive, negative, latent, 1.0)
        assert _max_difference(FLUX_LATENT.to_model(other["samples"]), final.latents) > FAR


# ---------------------------------------------------------------- Chroma


def _attended_t5_states(pipe: ChromaPipeline, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 states of the ids diffusers leaves attended, computed unmasked as ComfyUI does, at Chroma's context
    width; a mask attending to each of them)."""
    _, mask = pipe._get_t5_prompt_embeds(prompt)
    attended = int(mask.sum())
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=512, return_tensors="pt").input_ids
    states = pipe.text_encoder(ids[:, :attended]).last_hidden_state
    return F.pad(states, (0, T5_WIDTH - states.shape[-1])), mask[:, :attended].bool()


@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["cfg-1", "cfg-4-negative"])
def test_chroma_through_the_nodes_ends_where_diffusers_chroma_pipeline_ends(chroma_files: Folders, cfg: float) -> None:
    prompt, negative_prompt = "a red fox in the snow", "dark, blurry, low quality photo"
    unet = UNETLoader("chroma.safetensors", "default")
    clip = T5TokenizerOptions(CLIPLoader("t5xxl.safetensors", "chroma"), 1, 0)
    positive, negative = CLIPTextEncode(prompt, clip), CLIPTextEncode(negative_prompt, clip)
    latent = EmptySD3LatentImage(SIZE, SIZE, 1)
    output = KSampler(unet, SEED, STEPS, cfg, "euler", "simple", positive, negative, latent, 1.0)
    got = FLUX_LATENT.to_model(output["samples"])
    image = VAEDecode(output, VAELoader("ae.safetensors"))

    scheduler, sigmas = _loom_schedule(1.0)
    pipe = ChromaPipeline(
        scheduler=scheduler,
        vae=_vae_twin(_weights(chroma_files, "vae", "ae.safetensors")),
        text_encoder=_t5_twin(_weights(chroma_files, "text_encoders", "t5xxl.safetensors")),
        tokenizer=T5TokenizerFast(tokenizer_file=str(DATA / "t5_tokenizer.json")),
        transformer=chroma_twin(_weights(chroma_files, "diffusion_models", "chroma.safetensors"), tiny_chroma_config()),
    )
    with torch.no_grad():
        embeds, mask = _attended_t5_states(pipe, prompt)
        negative_embeds, negative_mask = _attended_t5_states(pipe, negative_prompt)
    for ours, theirs in ((positive, embeds), (negative, negative_embeds)):
        ((context, options),) = ours
        assert options["pooled_output"] is None
        assert _max_difference(context, theirs) <= 1e-4
    assert embeds.shape == negative_embeds.shape

    noise = prepare_noise(latent["samples"], SEED)
    final = FinalLatents()
    with torch.no_grad():
        expected_image = pipe(
            prompt_embeds=embeds,
            prompt_attention_mask=mask,
            negative_prompt_embeds=negative_embeds if cfg > 1 else None,
            negative_prompt_attention_mask=negative_mask if cfg > 1 else None,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            sigmas=sigmas,
            guidance_scale=cfg,
            latents=ChromaPipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8),
            output_type="pt",
            callback_on_step_end=final,
        ).images
    assert pipe.scheduler.sigmas.tolist() == [*sigmas, 0.0]
    assert final.latents is not None
    expected = ChromaPipeline._unpack_latents(final.latents, SIZE, SIZE, 8)
    _assert_parity(got, expected, image, expected_image.permute(0, 2, 3, 1))

    for model, seed in ((ModelSamplingAuraFlow(unet, 3.0), SEED), (unet, SEED + 1)):
        other = KSampler(model, seed, STEPS, cfg, "euler", "simple", positive, negative, latent, 1.0)
        assert _max_difference(FLUX_LATENT.to_model(other["samples"]), expected) > FAR
