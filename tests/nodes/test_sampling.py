"""KSampler / KSamplerAdvanced: the library's sampler with the model side of ComfyUI's common_ksampler."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from diffusion import guidance
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import denoise_sigmas
from diffusion.unet import sdxl_adm_vector
from graph.progress import Interrupted, InterruptFlag, node_context
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage, SetLatentNoiseMask
from nodes.loaders import CheckpointLoaderSimple
from nodes.model_handles import ModelHandle
from nodes.sampling import (
    BasicScheduler,
    CFGGuider,
    DisableNoise,
    KSampler,
    KSamplerAdvanced,
    KSamplerSelect,
    RandomNoise,
    SamplerCustom,
    SamplerCustomAdvanced,
    model_conditioning,
)
from tests.nodes.tiny_models import tiny_checkpoint


@pytest.fixture
def sd15(folders: Folders) -> tuple[Any, Any, Any]:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")


def conds(clip: Any) -> tuple[list, list]:
    return CLIPTextEncode("a red cube", clip), CLIPTextEncode("blurry", clip)


def test_ksampler_is_sigmas_noise_guider_and_sampler_on_the_scaled_latent(sd15) -> None:
    model, clip, _ = sd15
    positive, negative = conds(clip)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = KSampler(model, 7, 2, 5.0, "euler_ancestral", "karras", positive, negative, {"samples": start}, 0.8)
    latent = start * 0.18215
    sigmas = denoise_sigmas(model.sampling, "karras", 2, 0.8)
    with model.unet_fn() as unet_fn:
        guider = guidance.CFGGuider(
            unet_fn, model.sampling, latent, [tuple(c) for c in positive], [tuple(c) for c in negative], 5.0
        )
        expected = sample(guider, get_sampler("euler_ancestral"), sigmas, latent, prepare_noise(latent, 7), seed=7)
    torch.testing.assert_close(out["samples"], expected / 0.18215)


def test_inpainting_leaves_latent_cells_outside_the_mask_as_given(sd15) -> None:
    """Unchanged up to the rounding of scaling into the model's space and back."""
    model, clip, _ = sd15
    positive, negative = conds(clip)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    out = KSampler(
        model, 3, 2, 7.0, "euler", "normal", positive, negative, SetLatentNoiseMask({"samples": latent}, mask), 1.0
    )
    for region in ((..., slice(0, 2), slice(None)), (..., slice(None), slice(6, 8))):
        torch.testing.assert_close(out["samples"][region], latent[region], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out["samples"][..., 2:6, 2:6], latent[..., 2:6, 2:6])
    assert torch.equal(out["noise_mask"], SetLatentNoiseMask({"samples": latent}, mask)["noise_mask"])


def test_advanced_with_full_range_and_noise_equals_ksampler(sd15) -> None:
    model, clip, _ = sd15
    positive, negative = conds(clip)
    latent = EmptyLatentImage(64, 64, 1)
    plain = KSampler(model, 11, 2, 6.0, "euler", "normal", positive, negative, latent, 1.0)
    advanced = KSamplerAdvanced(
        model, "enable", 11, 2, 6.0, "euler", "normal", positive, negative, latent, 0, 10000, "disable"
    )
    torch.testing.assert_close(advanced["samples"], plain["samples"])
    skipped = KSamplerAdvanced(
        model, "enable", 11, 2, 6.0, "euler", "normal", positive, negative, latent, 2, 10000, "disable"
    )
    assert torch.equal(skipped["samples"], latent["samples"])


def test_advanced_without_start_noise_still_seeds_the_samplers_own_noise(sd15) -> None:
    """As ComfyUI's common_ksampler: add_noise only drops the start noise; an ancestral sampler's
    per-step noise still comes from noise_seed."""
    model, clip, _ = sd15
    positive, negative = conds(clip)
    noisy = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 3}

    def second_pass(seed: int) -> torch.Tensor:
        return KSamplerAdvanced(
            model, "disable", seed, 4, 6.0, "euler_ancestral", "normal", positive, negative, noisy, 2, 10000, "disable"
        )["samples"]

    assert torch.equal(second_pass(1), second_pass(1))
    assert not torch.allclose(second_pass(1), second_pass(2))


def test_an_empty_latent_of_another_channel_count_is_remade_but_a_real_one_is_refused(sd15) -> None:
    model, clip, _ = sd15
    positive, negative = conds(clip)
    out = KSampler(model, 1, 1, 1.0, "euler", "normal", positive, negative, {"samples": torch.zeros(1, 16, 8, 8)}, 1.0)
    assert out["samples"].shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="16 channels but this sd15 model works on 4"):
        KSampler(model, 1, 1, 1.0, "euler", "normal", positive, negative, {"samples": torch.ones(1, 16, 8, 8)}, 1.0)


class Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[float, float, Any]] = []

    def on_progress(self, node_id: str, value: float, total: float, preview: Any) -> None:
        self.reports.append((value, total, preview))


def test_every_step_reports_progress_with_a_jpeg_preview(sd15) -> None:
    model, clip, _ = sd15
    positive, negative = conds(clip)
    sink = Sink()
    with node_context("3", InterruptFlag(), sink):
        KSampler(model, 1, 3, 7.0, "euler", "normal", positive, negative, EmptyLatentImage(64, 64, 1), 1.0)
    assert [(value, total) for value, total, _ in sink.reports] == [(1, 3), (2, 3), (3, 3)]
    kind, picture, max_size = sink.reports[0][2]
    assert kind == "JPEG" and isinstance(picture, Image.Image) and picture.size == (8, 8) and max_size == 512


def test_an_interrupt_stops_sampling_at_the_end_of_the_step_with_the_executors_exception(
    sd15, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step callback's progress report raises ``Interrupted`` for the running node: no further model call."""
    model, clip, _ = sd15
    positive, negative = conds(clip)
    flag = InterruptFlag()
    calls = []
    real = ModelHandle.unet_fn

    def counting(self):
        context = real(self)
        inner = context.__enter__()

        class Wrapped:
            def __enter__(self_inner):
                def call(*args, **kwargs):
                    calls.append(1)
                    flag.set()
                    return inner(*args, **kwargs)

                return call

            def __exit__(self_inner, *exc):
                return context.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(ModelHandle, "unet_fn", counting)
    with node_context("3", flag, None), pytest.raises(Interrupted) as stopped:
        KSampler(model, 1, 5, 7.0, "euler", "normal", positive, negative, EmptyLatentImage(64, 64, 1), 1.0)
    assert len(calls) == 1 and stopped.value.node_id == "3"


def test_sdxl_size_conditioning_defaults_to_the_latent_size_and_keeps_explicit_values(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "xl.safetensors", family="sdxl")
    model, clip, _ = CheckpointLoaderSimple("xl.safetensors")
    positive = CLIPTextEncode("a cat", clip)
    latent = torch.zeros(1, 4, 12, 10)
    ((_, options),) = model_conditioning(model, positive, latent, negative=False)
    pooled = positive[0][1]["pooled_output"]
    torch.testing.assert_close(options["y"], sdxl_adm_vector(pooled, (96, 80), (0, 0), (96, 80)))
    explicit = [
        [
            positive[0][0],
            {**positive[0][1], "width": 1024, "height": 768, "crop_w": 8, "target_width": 512, "target_height": 512},
        ]
    ]
    ((_, options),) = model_conditioning(model, explicit, latent, negative=False)
    torch.testing.assert_close(options["y"], sdxl_adm_vector(pooled, (768, 1024), (0, 8), (512, 512)))


def test_inpainting_latents_in_the_conditioning_are_scaled_like_the_sampled_latent(sd15) -> None:
    model, clip, _ = sd15
    raw = torch.randn(1, 4, 8, 8)
    positive = [[clip.encode("x")[0], {"concat_latent_image": raw}]]
    ((_, options),) = model_conditioning(model, positive, raw, negative=False)
    torch.testing.assert_close(options["concat_latent_image"], raw * 0.18215)
    assert positive[0][1]["concat_latent_image"] is raw


def test_the_sdxl_refiner_uses_the_aesthetic_score(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "refiner.safetensors", family="sdxl_refiner")
    model, clip, _ = CheckpointLoaderSimple("refiner.safetensors")
    assert model.unet.config.adm_in_channels == 64 + 5 * 256
    positive = CLIPTextEncode("a cat", clip)
    ((_, pos),) = model_conditioning(model, positive, torch.zeros(1, 4, 8, 8), negative=False)
    ((_, neg),) = model_conditioning(model, positive, torch.zeros(1, 4, 8, 8), negative=True)
    assert pos["y"].shape == (1, model.unet.config.adm_in_channels)
    assert not torch.equal(pos["y"], neg["y"])


def test_custom_sampling_parts_compose_to_exactly_ksampler(sd15) -> None:
    model, clip, _ = sd15
    positive, negative = conds(clip)
    latent = EmptyLatentImage(64, 64, 1)
    plain = KSampler(model, 5, 3, 6.0, "dpmpp_2m", "karras", positive, negative, latent, 1.0)
    sigmas = BasicScheduler(model, "karras", 3, 1.0)
    assert sigmas.shape == (4,) and sigmas[-1] == 0
    output, denoised = SamplerCustom(
        model, True, 5, 6.0, positive, negative, KSamplerSelect("dpmpp_2m"), sigmas, latent
    )
    torch.testing.assert_close(output["samples"], plain["samples"])
    assert denoised is output
    advanced, _ = SamplerCustomAdvanced(
        RandomNoise(5), CFGGuider(model, positive, negative, 6.0), KSamplerSelect("dpmpp_2m"), sigmas, latent
    )
    torch.testing.assert_close(advanced["samples"], plain["samples"])


def test_sampler_custom_without_added_noise_still_seeds_the_samplers_own_noise(sd15) -> None:
    """ComfyUI passes noise_seed to the sampler whether or not noise is added first: an ancestral
    sampler's per-step noise, and so its result, follows the seed."""
    model, clip, _ = sd15
    positive, negative = conds(clip)
    sigmas = BasicScheduler(model, "normal", 3, 1.0)
    start = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))}
    ancestral = KSamplerSelect("euler_ancestral")
    first, second = (
        SamplerCustom(model, False, seed, 5.0, positive, negative, ancestral, sigmas, start)[0]["samples"]
        for seed in (1, 2)
    )
    assert not torch.equal(first, second)
    again = SamplerCustom(model, False, 1, 5.0, positive, negative, ancestral, sigmas, start)[0]["samples"]
    assert torch.equal(first, again)


def test_basic_scheduler_denoise_keeps_the_tail_of_a_longer_schedule(sd15) -> None:
    model, _, _ = sd15
    full = BasicScheduler(model, "normal", 8, 1.0)
    torch.testing.assert_close(BasicScheduler(model, "normal", 4, 0.5), full[-5:])
    assert BasicScheduler(model, "normal", 4, 0.0).numel() == 0


def test_leftover_noise_gives_a_separate_denoised_estimate(sd15) -> None:
    model, clip, _ = sd15
    positive, negative = conds(clip)
    sigmas = BasicScheduler(model, "normal", 4, 1.0)[:3]  # stop two steps early, still noisy
    start = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))}
    output, denoised = SamplerCustom(model, True, 2, 5.0, positive, negative, KSamplerSelect("euler"), sigmas, start)
    assert not torch.allclose(output["samples"], denoised["samples"])
    guider = CFGGuider(model, positive, negative, 5.0)
    to_zero = torch.stack([sigmas[-1], torch.tensor(0.0)])
    x0, _ = SamplerCustomAdvanced(DisableNoise(), guider, KSamplerSelect("euler"), to_zero, output)
    torch.testing.assert_close(denoised["samples"], x0["samples"])
    quiet, _ = SamplerCustomAdvanced(DisableNoise(), guider, KSamplerSelect("euler"), sigmas, start)
    assert not torch.allclose(quiet["samples"], output["samples"])


def test_an_inpainting_model_without_inpaint_conditioning_samples_its_own_latent(folders: Folders) -> None:
    """VAEEncodeForInpaint + an inpainting checkpoint: the masked picture's latent is the extra input."""
    tiny_checkpoint(folders.models, "inpaint.safetensors", inpaint=True)
    model, clip, _ = CheckpointLoaderSimple("inpaint.safetensors")
    latent = torch.randn(1, 4, 8, 8)
    ((_, options),) = model_conditioning(model, CLIPTextEncode("a cat", clip), latent, negative=False)
    assert options["concat_latent_image"] is latent


@pytest.mark.parametrize(
    ("family", "prediction", "expected"), [("sd15", "eps", "EpsPrediction"), ("sd2", "v", "VPrediction")]
)
def test_the_model_predicts_as_its_file_says(folders: Folders, family: str, prediction: str, expected: str) -> None:
    from diffusion.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(folders.models / "checkpoints" / "m.safetensors", family, prediction=prediction)  # type: ignore[arg-type]
    model, clip, _ = CheckpointLoaderSimple("m.safetensors")
    assert type(model.sampling).__name__ == expected
    out = KSampler(model, 1, 1, 3.0, "euler", "normal", *conds(clip), EmptyLatentImage(64, 64, 1), 1.0)
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
