"""DifferentialDiffusion: a MODEL whose sampling reads a soft noise mask as how much each cell may change.

End to end on the tiny SD1.5 checkpoint: KSampler on the patched model against plain inpainting, against
the library's own composition, and against the sampling loop written out by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from diffusion import guidance
from diffusion.guidance import DifferentialMask
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import denoise_sigmas
from graph.declare import spec_of
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import SetLatentNoiseMask
from nodes.loaders import CheckpointLoaderSimple, LoraLoaderModelOnly
from nodes.model_patches import DifferentialDiffusion
from nodes.model_sampling import ModelSamplingSD3
from nodes.sampling import CFGGuider, KSampler, KSamplerSelect, RandomNoise, SamplerCustomAdvanced
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora

SCALE = 0.18215  # SD1.5's latent scale
#: A soft mask on the 8 x 8 latent grid, the same in every row: two cells to keep, a ramp, two to repaint.
COLUMNS = torch.tensor([0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
#: The pixel mask: constant over each 8 x 8 block, so its bilinear reduction to the latent grid is exact.
PIXEL_MASK = COLUMNS.repeat_interleave(8).expand(1, 64, 64).clone()
STEPS, SEED, CFG = 4, 3, 6.0


@pytest.fixture
def sd15(folders: Folders) -> tuple[Any, Any, Any]:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")


@pytest.fixture
def conds(sd15) -> tuple[list, list]:
    clip = sd15[1]
    return CLIPTextEncode("a red cube", clip), CLIPTextEncode("blurry", clip)


@pytest.fixture
def start() -> dict[str, torch.Tensor]:
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return SetLatentNoiseMask({"samples": latent}, PIXEL_MASK)


def ksampler(model: Any, conds: tuple[list, list], start: dict, scheduler: str = "simple") -> torch.Tensor:
    positive, negative = conds
    return KSampler(model, SEED, STEPS, CFG, "euler", scheduler, positive, negative, start, 1.0)["samples"]


def test_the_interface_is_comfyui_s() -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    info = registry.object_info()["DifferentialDiffusion"]
    assert info["input"] == {
        "required": {"model": ["MODEL"]},
        "optional": {"strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]},
    }
    assert info["output"] == ["MODEL"] and info["output_node"] is False
    assert (info["display_name"], info["category"]) == ("Differential Diffusion", "_for_testing")


def test_the_patched_model_shares_everything_but_its_mask_policy(sd15, folders: Folders) -> None:
    model = sd15[0]
    patched = DifferentialDiffusion(model, 0.5)
    assert patched.mask_policy == DifferentialMask(0.5) and model.mask_policy is None
    assert patched.unet is model.unet and patched.sampling is model.sampling and patched.patches == model.patches
    assert spec_of(DifferentialDiffusion).run(None, {"model": model}).values[0].mask_policy == DifferentialMask(1.0)
    # Later model nodes keep the policy: a shift, a LoRA.
    assert ModelSamplingSD3(patched, 3.0).mask_policy == DifferentialMask(0.5)
    write_lora(folders.models / "loras" / "style.safetensors", kohya_lora_tensors(model.unet, []))
    with_lora = LoraLoaderModelOnly(patched, "style.safetensors", 0.7)
    assert with_lora.patches != patched.patches and with_lora.mask_policy == DifferentialMask(0.5)


def test_without_the_node_inpainting_is_the_librarys_plain_composition_bit_for_bit(sd15, conds, start) -> None:
    model = sd15[0]
    latent = start["samples"] * SCALE
    sigmas = denoise_sigmas(model.sampling, "simple", STEPS, 1.0)
    noise = prepare_noise(latent, SEED)
    with model.unet_fn() as unet_fn:
        positive, negative = ([tuple(c) for c in side] for side in conds)
        inpainting = guidance.Inpainting.from_mask(PIXEL_MASK, latent, noise)
        guider = guidance.CFGGuider(unet_fn, model.sampling, latent, positive, negative, CFG, inpainting)
        expected = sample(guider, get_sampler("euler"), sigmas, latent, noise, seed=SEED)
    assert torch.equal(ksampler(model, conds, start), expected / SCALE)


def test_cells_below_every_threshold_keep_the_latent_and_the_rest_differ_from_plain_inpainting(
    sd15, conds, start
) -> None:
    """Four simple-schedule steps call the model at timesteps 999, 749, 499 and 249: thresholds of about
    1, 0.75, 0.5 and 0.25. Cells of mask 0 and 0.2 never reach one, so they keep the latent (up to the
    rounding of Euler's last step); plain inpainting blends the 0.2 column instead."""
    model = sd15[0]
    plain = ksampler(model, conds, start)
    differential = ksampler(DifferentialDiffusion(model, 1.0), conds, start)
    original = start["samples"]
    torch.testing.assert_close(differential[..., :3], original[..., :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain[..., :2], original[..., :2], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(plain[..., 2], original[..., 2], atol=1e-3)
    for column in range(3, 8):
        assert not torch.allclose(differential[..., column], plain[..., column], atol=1e-3), column
        assert not torch.allclose(differential[..., column], original[..., column], atol=1e-3), column


def test_ksampler_on_the_patched_model_is_the_hand_written_loop(sd15, conds, start) -> None:
    """Euler with the kept cells held and pinned by ``mask >= threshold``, the threshold falling linearly in
    the UNet's timesteps from the first sigma to the model's sigma_min (the schedule ends at 0)."""
    model = sd15[0]
    result = ksampler(DifferentialDiffusion(model, 1.0), conds, start)

    ms = model.sampling
    latent = start["samples"] * SCALE
    noise = prepare_noise(latent, SEED)
    sigmas = denoise_sigmas(ms, "simple", STEPS, 1.0)
    soft = COLUMNS.expand(1, 1, 8, 8)
    t_from, t_to = ms.timestep(sigmas[0]), ms.timestep(torch.tensor(ms.sigma_min))
    with model.unet_fn() as unet_fn:
        positive, negative = ([tuple(c) for c in side] for side in conds)
        unmasked = guidance.CFGGuider(unet_fn, ms, latent, positive, negative, CFG)
        x = latent + noise * (sigmas[0] ** 2 + 1) ** 0.5
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            mask = (soft >= (ms.timestep(sigma) - t_to) / (t_from - t_to)).float()
            held = x * mask + (latent + noise * sigma) * (1 - mask)
            denoised = unmasked(held, sigma.reshape(1)) * mask + latent * (1 - mask)
            x = x + (x - denoised) / sigma * (sigma_next - sigma)
    torch.testing.assert_close(result, x / SCALE, rtol=1e-5, atol=1e-5)


def test_a_strength_below_one_is_another_result(sd15, conds, start) -> None:
    model = sd15[0]
    full = ksampler(DifferentialDiffusion(model, 1.0), conds, start)
    assert not torch.allclose(ksampler(DifferentialDiffusion(model, 0.5), conds, start), full, atol=1e-3)
    assert torch.equal(ksampler(DifferentialDiffusion(model, 0.0), conds, start), full)  # 0 counts as 1


def test_a_guider_built_on_the_patched_model_carries_the_policy_into_custom_sampling(sd15, conds, start) -> None:
    model = DifferentialDiffusion(sd15[0], 1.0)
    positive, negative = conds
    sigmas = denoise_sigmas(model.sampling, "simple", STEPS, 1.0)
    guider = CFGGuider(model, positive, negative, CFG)
    output, _ = SamplerCustomAdvanced(RandomNoise(SEED), guider, KSamplerSelect("euler"), sigmas, start)
    assert torch.equal(output["samples"], ksampler(model, conds, start))
