"""End to end with a ControlNet: Loom's UNet + ControlNet + CFG guider + Euler reproduce diffusers'
``StableDiffusionControlNetPipeline`` and ``StableDiffusionXLControlNetPipeline``.

Tiny random models with the same weights on both sides (the UNet and ControlNet in diffusers' classes and in Loom's,
converted from one set of LDM-layout tensors), the same text embeddings (``prompt_embeds`` and, for SDXL, the
pooled embeddings and size conditioning), the same control picture and start noise, classifier-free guidance with
the ControlNet applied to both sides (as ControlNetApplyAdvanced applies it and the pipelines do outside guess
mode), a 64 x 64 picture. diffusers' ``linspace`` Euler visits ComfyUI's ``normal`` sigmas (see
``test_pipeline_parity``), and its noise is pre-divided to start at Loom's full-denoise state.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers import (
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)

from diffusion.applied_control import AppliedControl
from diffusion.controlnet import load_controlnet, tiny_controlnet_tensors
from diffusion.guidance import CFGGuider
from diffusion.prediction import EpsPrediction
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import denoise_sigmas
from diffusion.unet import sdxl_adm_vector, unet_from_state_dict
from tests.diffusion.reference_models import CONTEXT_DIM, FAMILIES, POOLED_DIM, TIME_EMBED_DIM, tiny_unet, tiny_vae
from tests.diffusion.test_controlnet import _diffusers_config, _to_diffusers
from tests.diffusion.test_pipeline_parity import SD_TRAINING_SCHEDULE

SEED, STEPS, CFG, STRENGTH = 77, 4, 6.0, 0.8
SIZE = 64


def control_picture() -> torch.Tensor:
    """A 64 x 64 picture of bright bars on black, channels first, in 0..1."""
    picture = torch.zeros(1, 3, SIZE, SIZE)
    picture[:, :, 8:16, :] = 1.0
    picture[:, :, :, 40:44] = 1.0
    return picture


def embeddings(seed: int, width: int) -> torch.Tensor:
    return torch.randn(1, 77, width, generator=torch.Generator().manual_seed(seed))


def controlnet_pair(family: str) -> tuple[ControlNetModel, Any]:
    weights = tiny_controlnet_tensors(FAMILIES[family].expected, seed=9)
    config = FAMILIES[family].diffusers_config
    reference = ControlNetModel(**_diffusers_config(config)).eval()
    reference.load_state_dict(_to_diffusers(weights, config["layers_per_block"]), strict=True)
    return reference, load_controlnet(weights).eval()


def loom_sample(
    unet: Any, controlnet: Any, positive: dict[str, Any], negative: dict[str, Any], strength: float = STRENGTH
) -> torch.Tensor:
    control = AppliedControl(controlnet, control_picture(), strength)
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    guider = CFGGuider(
        unet,
        EpsPrediction(),
        latent,
        [(positive["context"], {**without_context(positive), "control": control})],
        [(negative["context"], {**without_context(negative), "control": control})],
        CFG,
    )
    sigmas = denoise_sigmas(EpsPrediction(), "normal", STEPS)
    with torch.no_grad():
        return sample(guider, get_sampler("euler"), sigmas, latent, prepare_noise(latent, SEED), seed=SEED)


def without_context(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key != "context"}


def diffusers_latents(pipeline: Any) -> torch.Tensor:
    """The start noise as diffusers' Euler scales it, so both start at Loom's state."""
    scheduler = EulerDiscreteScheduler(**SD_TRAINING_SCHEDULE, timestep_spacing="linspace")
    pipeline.scheduler = scheduler
    pipeline.set_progress_bar_config(disable=True)
    scheduler.set_timesteps(STEPS)
    noise = prepare_noise(torch.zeros(1, 4, SIZE // 8, SIZE // 8), SEED)
    return noise * math.sqrt(EpsPrediction().sigma_max ** 2 + 1) / float(scheduler.init_noise_sigma)


def test_sd15_controlnet_pipeline_final_latent_matches_diffusers() -> None:
    unet, ldm_unet = tiny_unet("sd1", seed=3)
    vae, _ = tiny_vae(seed=4)
    reference_controlnet, controlnet = controlnet_pair("sd1")
    pipeline = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, controlnet=reference_controlnet,
        scheduler=EulerDiscreteScheduler(**SD_TRAINING_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    positive, negative = embeddings(1, CONTEXT_DIM), embeddings(2, CONTEXT_DIM)
    expected = pipeline(
        prompt_embeds=positive, negative_prompt_embeds=negative, image=control_picture(),
        latents=diffusers_latents(pipeline), num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE,
        controlnet_conditioning_scale=STRENGTH, output_type="latent",
    ).images  # fmt: skip
    loom_unet = unet_from_state_dict(ldm_unet).eval()
    actual = loom_sample(loom_unet, controlnet, {"context": positive}, {"context": negative})
    uncontrolled = loom_sample(loom_unet, controlnet, {"context": positive}, {"context": negative}, strength=0.0)
    assert expected.abs().max() > 0.1 and (actual - uncontrolled).abs().max() > 1e-2
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_sdxl_controlnet_pipeline_final_latent_matches_diffusers() -> None:
    unet, ldm_unet = tiny_unet("sdxl", seed=5)
    vae, _ = tiny_vae(seed=6)
    reference_controlnet, controlnet = controlnet_pair("sdxl")
    pipeline = StableDiffusionXLControlNetPipeline(
        vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        controlnet=reference_controlnet, scheduler=EulerDiscreteScheduler(**SD_TRAINING_SCHEDULE),
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )  # fmt: skip
    positive, negative = embeddings(1, CONTEXT_DIM), embeddings(2, CONTEXT_DIM)
    g = torch.Generator().manual_seed(3)
    pooled, negative_pooled = torch.randn(1, POOLED_DIM, generator=g), torch.randn(1, POOLED_DIM, generator=g)
    expected = pipeline(
        prompt_embeds=positive, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled, image=control_picture(), latents=diffusers_latents(pipeline),
        num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE, controlnet_conditioning_scale=STRENGTH,
        output_type="latent",
    ).images  # fmt: skip

    def y(pooled_text: torch.Tensor) -> torch.Tensor:
        return sdxl_adm_vector(pooled_text, (SIZE, SIZE), (0, 0), (SIZE, SIZE), embed_dim=TIME_EMBED_DIM)

    loom_unet = unet_from_state_dict(ldm_unet).eval()
    actual = loom_sample(
        loom_unet, controlnet, {"context": positive, "y": y(pooled)}, {"context": negative, "y": y(negative_pooled)}
    )
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-3)
