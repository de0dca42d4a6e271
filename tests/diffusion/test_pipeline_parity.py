"""End to end: Loom's UNet + a CFG guider + a sampler reproduce diffusers' ``StableDiffusionPipeline`` txt2img.

One tiny random SD1 model (the same weights on both sides: diffusers' UNet2DConditionModel and
Loom's UNet loaded from its LDM-layout conversion), the same text embeddings (passed to diffusers
as ``prompt_embeds``/``negative_prompt_embeds``), the same start noise, classifier-free guidance
7.5, a 64x64 px image (8x8 latent). Each Loom sampler/scheduler pair runs against the diffusers
scheduler configured to visit the same sigmas:

* ComfyUI ``normal`` (evenly spaced timesteps 999 ... 0) is diffusers' ``linspace`` spacing;
  4 steps keep every timestep an integer, because diffusers interpolates the sigma table linearly
  in sigma and Loom (like k-diffusion) in log-sigma, which agree only at table entries.
* ``simple`` (every N/steps-th table entry from the top) is diffusers' ``trailing`` spacing.
* ``karras`` is ``use_karras_sigmas=True``.

Start-noise convention: Loom (like ComfyUI) starts a full denoise at ``sqrt(sigma_max^2 + 1)``
times the noise, the variance of the DDPM prior in the VE frame; diffusers' Euler-family
schedulers scale by ``init_noise_sigma``, which is only ``sigma_max`` under ``linspace``/``trailing``
spacing. So diffusers is handed the noise pre-divided to make both start at the same state. DDIM
and DPM-Solver work in the VP frame, where that same state is the unit-variance noise itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
)

from diffusion.guidance import CFGGuider
from diffusion.prediction import EpsPrediction
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import denoise_sigmas
from diffusion.unet import unet_from_state_dict
from tests.diffusion.reference_clip import reference_tokenizer, tiny_reference_model
from tests.diffusion.reference_models import CONTEXT_DIM, tiny_unet, tiny_vae

SEED = 1234
CFG = 7.5
LATENT_SHAPE = (1, 4, 8, 8)  # 64x64 px
SD_TRAINING_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
)


@dataclass(frozen=True)
class Case:
    sampler: str
    scheduler: str
    steps: int
    reference: type
    options: dict[str, Any] = field(default_factory=dict)
    vp_frame: bool = False  # diffusers' sample is x / sqrt(sigma^2 + 1) (DDIM, DPM-Solver)

    @property
    def id(self) -> str:
        return f"{self.sampler}-{self.scheduler}"


CASES = [
    Case("euler", "normal", 4, EulerDiscreteScheduler, dict(timestep_spacing="linspace")),
    Case("euler", "karras", 5, EulerDiscreteScheduler, dict(use_karras_sigmas=True)),
    Case("euler_ancestral", "normal", 4, EulerAncestralDiscreteScheduler, dict(timestep_spacing="linspace")),
    Case("heun", "normal", 4, HeunDiscreteScheduler, dict(timestep_spacing="linspace")),
    Case("lms", "normal", 4, LMSDiscreteScheduler, dict(timestep_spacing="linspace")),
    Case(
        "dpmpp_2m",
        "simple",
        5,
        DPMSolverMultistepScheduler,
        dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing", final_sigmas_type="zero"),
        vp_frame=True,
    ),
    Case(
        "ddim",
        "simple",
        5,
        DDIMScheduler,
        dict(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True),
        vp_frame=True,
    ),
]


@dataclass
class Models:
    pipeline: StableDiffusionPipeline
    loom_unet: torch.nn.Module
    positive: torch.Tensor
    negative: torch.Tensor


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    diffusers_unet, ldm_weights = tiny_unet("sd1", seed=3)
    vae, _ = tiny_vae(seed=4)
    text_encoder = tiny_reference_model(layers=2, hidden_act="quick_gelu", with_projection=False, seed=5)
    assert text_encoder.config.hidden_size == CONTEXT_DIM
    tokenizer = reference_tokenizer(tmp_path_factory.mktemp("clip_vocab"))
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=diffusers_unet,
        scheduler=EulerDiscreteScheduler(**SD_TRAINING_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)

    def embed(prompt: str) -> torch.Tensor:
        ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids).last_hidden_state

    return Models(
        pipeline=pipeline,
        loom_unet=unet_from_state_dict(ldm_weights).eval(),
        positive=embed("a photo of an astronaut riding a horse on mars"),
        negative=embed(""),
    )


def reference_scheduler(case: Case) -> Any:
    return case.reference(**SD_TRAINING_SCHEDULE, **case.options)


def reference_sigmas(scheduler: Any, steps: int) -> torch.Tensor:
    """The distinct noise levels a diffusers scheduler visits, in the VE frame, ending in 0."""
    scheduler.set_timesteps(steps)
    if isinstance(scheduler, DDIMScheduler):
        alphas = scheduler.alphas_cumprod[scheduler.timesteps]
        return torch.cat([((1 - alphas) / alphas).sqrt(), torch.zeros(1)])
    return torch.unique_consecutive(scheduler.sigmas.float())


def loom_sigmas(case: Case) -> torch.Tensor:
    """KSampler's sigmas for the case."""
    discard = get_sampler(case.sampler).discard_penultimate_sigma
    return denoise_sigmas(EpsPrediction(), case.scheduler, case.steps, discard_penultimate_sigma=discard)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_diffusers_scheduler_visits_the_loom_sigmas(case: Case) -> None:
    loom = loom_sigmas(case)
    torch.testing.assert_close(reference_sigmas(reference_scheduler(case), case.steps), loom, rtol=1e-4, atol=1e-6)


def loom_txt2img(models: Models, case: Case) -> torch.Tensor:
    latent = torch.zeros(LATENT_SHAPE)
    guider = CFGGuider(models.loom_unet, EpsPrediction(), latent, [(models.positive, {})], [(models.negative, {})], CFG)
    with torch.no_grad():
        noise = prepare_noise(latent, SEED)
        return sample(guider, get_sampler(case.sampler), loom_sigmas(case), latent, noise, seed=SEED)


def diffusers_txt2img(models: Models, case: Case, noise: torch.Tensor) -> torch.Tensor:
    scheduler = reference_scheduler(case)
    if case.vp_frame:
        latents = noise
    else:
        scheduler.set_timesteps(case.steps)
        sigma_max = EpsPrediction().sigma_max
        latents = noise * math.sqrt(sigma_max**2 + 1) / float(scheduler.init_noise_sigma)
    models.pipeline.scheduler = scheduler
    # The ancestral sampler draws one N(0, 1) tensor per step; Loom from a CPU generator seeded with
    # the seed, diffusers from the generator it is given: the same stream.
    return models.pipeline(
        prompt_embeds=models.positive,
        negative_prompt_embeds=models.negative,
        latents=latents,
        num_inference_steps=case.steps,
        guidance_scale=CFG,
        height=64,
        width=64,
        output_type="latent",
        generator=torch.Generator().manual_seed(SEED),
    ).images


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_txt2img_final_latent_matches_diffusers_pipeline(models: Models, case: Case) -> None:
    noise = prepare_noise(torch.zeros(LATENT_SHAPE), SEED)
    expected = diffusers_txt2img(models, case, noise)
    actual = loom_txt2img(models, case)
    assert expected.abs().max() > 0.1, "the reference produced a degenerate latent"
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-3)
