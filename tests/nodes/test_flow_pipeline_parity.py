"""The whole sampling path through Loom's nodes ends where diffusers' pipelines end: FLUX.1 dev against
FluxPipeline (guidance-distilled), SD3.5 against StableDiffusion3Pipeline (classifier-free guidance); same
weights (through diffusers' own converters), same start noise, same sigmas, flow-matching Euler.

What differs between the two by design is kept out: the prompt embeddings are given to both (their text
encoders are proved separately, tests/diffusion/test_t5.py and test_text_encoders.py) and the latents are
compared before the VAE (proved in tests/diffusion/test_vae.py).
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import save_file

from diffusion.flux import FluxConfig
from diffusion.sampling import prepare_noise
from diffusion.vae import FLUX_LATENT, SD3_LATENT
from nodes.folders import Folders
from nodes.latent import EmptySD3LatentImage
from nodes.loaders import UNETLoader
from nodes.sampling import BasicGuider, CFGGuider, KSamplerSelect, RandomNoise, SamplerCustomAdvanced
from tests.diffusion.random_weights import original_state_dict
from tests.diffusion.test_flux import diffusers_twin, random_flux
from tests.diffusion.test_mmdit import FAMILIES, _diffusers_model, _original_layout_weights

SEED, STEPS, GUIDANCE, CFG, SIZE = 7, 4, 3.5, 4.5, 64


def _write_diffusion_model(folders: Folders, name: str, weights: dict[str, torch.Tensor]) -> None:
    (folders.models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folders.models / "diffusion_models" / name))


def test_flux_dev_through_the_nodes_ends_where_diffusers_flux_pipeline_ends(folders: Folders) -> None:
    # One 128-wide head: the release's RoPE split, so the file loads with nothing but its weights.
    config = FluxConfig(hidden_size=128, num_heads=1, depth=2, depth_single_blocks=2, context_dim=32, vec_dim=16)
    weights = original_state_dict(random_flux(config))
    _write_diffusion_model(folders, "flux-dev.safetensors", weights)
    generator = torch.Generator().manual_seed(0)
    context, pooled = torch.randn(1, 9, 32, generator=generator), torch.randn(1, 16, generator=generator)

    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    pipe = FluxPipeline(scheduler, None, None, None, None, None, diffusers_twin(weights, config))
    latent = EmptySD3LatentImage(SIZE, SIZE, 1)
    noise = prepare_noise(latent["samples"], SEED)
    with torch.no_grad():
        packed = pipe(
            prompt_embeds=context,
            pooled_prompt_embeds=pooled,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            latents=FluxPipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8),
            output_type="latent",
        ).images
    expected = FluxPipeline._unpack_latents(packed, SIZE, SIZE, 8)
    sigmas = pipe.scheduler.sigmas.float()
    assert len(sigmas) == STEPS + 1 and sigmas[-1] == 0

    conditioning = [[context, {"pooled_output": pooled, "guidance": GUIDANCE}]]
    guider = BasicGuider(UNETLoader("flux-dev.safetensors", "default"), conditioning)
    output, _ = SamplerCustomAdvanced(RandomNoise(SEED), guider, KSamplerSelect("euler"), sigmas, latent)
    got = FLUX_LATENT.to_model(output["samples"])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert got.abs().mean() > 0.1  # a real result, not two zeros


def test_sd35_through_the_nodes_ends_where_diffusers_sd3_pipeline_ends_with_cfg(folders: Folders) -> None:
    family = FAMILIES["sd35_large"]
    weights = _original_layout_weights(family.config)
    _write_diffusion_model(folders, "sd3.5.safetensors", weights)
    generator = torch.Generator().manual_seed(0)
    context, negative_context = (torch.randn(1, 9, 32, generator=generator) for _ in range(2))
    pooled, negative_pooled = (torch.randn(1, 32, generator=generator) for _ in range(2))

    pipe = StableDiffusion3Pipeline(
        transformer=_diffusers_model(family, weights),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None,
    )  # fmt: skip
    latent = EmptySD3LatentImage(SIZE, SIZE, 1)
    noise = prepare_noise(latent["samples"], SEED)
    with torch.no_grad():
        expected = pipe(
            prompt_embeds=context,
            negative_prompt_embeds=negative_context,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=CFG,
            latents=noise,
            output_type="latent",
        ).images
    sigmas = pipe.scheduler.sigmas.float()

    model = UNETLoader("sd3.5.safetensors", "default")
    positive = [[context, {"pooled_output": pooled}]]
    negative = [[negative_context, {"pooled_output": negative_pooled}]]
    guider = CFGGuider(model, positive, negative, CFG)
    output, _ = SamplerCustomAdvanced(RandomNoise(SEED), guider, KSamplerSelect("euler"), sigmas, latent)
    got = SD3_LATENT.to_model(output["samples"])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert got.abs().mean() > 0.1
