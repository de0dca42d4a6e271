"""The CFG guider: the denoiser a sampler calls, with regional conditioning, guidance and inpainting."""

from __future__ import annotations

import pytest
import torch

from diffusion.flow_matching import DiscreteFlow
from diffusion.guidance import CFGGuider, ConditioningError, DifferentialMask, Inpainting, fill_channels
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import compute_sigmas
from tests.diffusion.toy_unet import MS, ToyUNet, context, run, zero_latent

SIGMA = torch.tensor([3.0])


def batches(unet: ToyUNet) -> list[int]:
    """The batch size of every UNet call made so far, in order."""
    return [call["batch"] for call in unet.calls]


class TestModelCalls:
    """Guidance costs one UNet call per model evaluation (one per Euler step), however many sides it has."""

    def test_cfg_batches_the_positive_and_the_negative_into_one_call(self):
        unet = ToyUNet()
        run(unet, cfg=5.0, steps=4)
        assert batches(unet) == [2, 2, 2, 2]

    def test_cfg_one_never_evaluates_the_negative(self):
        unet = ToyUNet()
        run(unet, cfg=1.0, steps=4)
        assert batches(unet) == [1, 1, 1, 1]

    def test_no_negative_samples_with_the_positive_prediction_alone(self):
        """The guidance-distilled case: no negative prompt at all, one batch-1 call per step."""
        unet, latent = ToyUNet(), zero_latent()
        guider = CFGGuider(unet, MS, latent, [(context(1), {})])
        sample(guider, get_sampler("euler"), compute_sigmas(MS, "normal", 3), latent, prepare_noise(latent, 1))
        assert batches(unet) == [1, 1, 1]

    def test_no_negative_equals_any_negative_at_cfg_one(self):
        latent, x = zero_latent(), torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
        alone = CFGGuider(ToyUNet(), MS, latent, [(context(1), {})])
        ignored = CFGGuider(ToyUNet(), MS, latent, [(context(1), {})], [(context(2), {})], cfg=1.0)
        assert torch.equal(alone(x, SIGMA), ignored(x, SIGMA))

    def test_guidance_without_a_negative_is_refused(self):
        with pytest.raises(ValueError, match="cfg 4.0 guides away from a negative conditioning"):
            CFGGuider(ToyUNet(), MS, zero_latent(), [(context(1), {})], cfg=4.0)

    def test_a_malformed_negative_is_refused_even_at_cfg_one(self):
        with pytest.raises(ConditioningError, match="negative conditioning #0: option 'area'"):
            CFGGuider(ToyUNet(), MS, zero_latent(), [(context(1), {})], [(context(2), {"area": (1,)})], cfg=1.0)


class TestGuidance:
    def test_batched_cfg_equals_separate_cond_and_uncond_calls(self):
        positive, negative = context(1, tokens=6), context(2, tokens=4)
        unet = ToyUNet()
        batched = run(unet, [(positive, {})], [(negative, {})], cfg=5.0)
        assert all(call["context"].shape[1] == 12 for call in unet.calls)

        reference_unet = ToyUNet()

        def separate(x, sigma):
            x_in, t = MS.calculate_input(sigma, x), MS.timestep(sigma)
            cond = MS.calculate_denoised(sigma, reference_unet(x_in, t, positive), x)
            uncond = MS.calculate_denoised(sigma, reference_unet(x_in, t, negative), x)
            return uncond + (cond - uncond) * 5.0

        sigmas = compute_sigmas(MS, "normal", 4)
        start = MS.noise_scaling(sigmas[0], prepare_noise(zero_latent(), 42), zero_latent(), max_denoise=True)
        expected = get_sampler("euler")(separate, start, sigmas, disable=True)
        # cfg 5 amplifies fp32 rounding of values in the hundreds: tolerate rounding of the largest value.
        torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())

    def test_area_conditioning_changes_only_its_region(self):
        area = {"area": (2, 3, 1, 2)}  # h, w, y, x in latent cells
        base = run(positive=[(context(1), {})])
        with_area = run(positive=[(context(1), {}), (context(3), area)])
        changed = (base - with_area).abs().amax(dim=(0, 1)) > 1e-6
        expected = torch.zeros(6, 6, dtype=torch.bool)
        expected[1:3, 2:5] = True
        assert torch.equal(changed, expected)

    def test_mask_weights_the_average_and_set_area_to_bounds_crops(self):
        mask = torch.zeros(48, 48)
        mask[8:24, 16:40] = 1.0  # pixels -> latent cells rows 1:3, cols 2:5
        unet = ToyUNet()
        masked = run(unet, positive=[(context(1), {}), (context(3), {"mask": mask, "set_area_to_bounds": True})])
        assert {tuple(call["context"].shape) for call in unet.calls} >= {(2, 3, 8)}
        base = run(positive=[(context(1), {})])
        changed = (base - masked).abs().amax(dim=(0, 1)) > 1e-6
        assert changed[1:3, 2:5].all() and changed.sum() == 6

    def test_timestep_range_excludes_a_cond_outside_it(self):
        late = (context(3), {"timestep_start": 0.5, "timestep_end": 1.0})
        unet = ToyUNet()
        run(unet, positive=[(context(1), {}), late], cfg=1.0, steps=6)
        seen = [(float(MS.sigma(call["t"][0])), call["batch"]) for call in unet.calls]
        cutoff = MS.percent_to_sigma(0.5)
        assert all((batch == 2) == (sigma <= cutoff * (1 + 1e-4)) for sigma, batch in seen)
        assert {batch for _, batch in seen} == {1, 2}

    def test_y_and_concat_reach_the_unet_batched(self):
        unet = ToyUNet()
        options = {
            "y": torch.ones(1, 5),
            "concat_latent_image": torch.randn(1, 4, 6, 6),
            "concat_mask": torch.ones(1, 48, 48),
        }
        run(unet, positive=[(context(1), options)], negative=[(context(2), options)])
        assert unet.calls[0]["y"].shape == (2, 5) and unet.calls[0]["concat"].shape == (2, 5, 6, 6)

    def test_an_inpainting_models_mask_channel_defaults_to_the_inpainting_mask(self):
        unet, latent = ToyUNet(), zero_latent()
        mask = torch.zeros(1, 6, 6)
        mask[:, 2:4, 1:5] = 1.0
        inpainting = Inpainting.from_mask(mask, latent, torch.zeros_like(latent))
        guider = CFGGuider(
            unet, MS, latent, [(context(1), {"concat_latent_image": torch.randn(1, 4, 6, 6)})], inpainting=inpainting
        )
        guider(torch.randn(1, 4, 6, 6), SIGMA)
        assert torch.equal(unet.calls[0]["concat"][:, :1], mask[:, None])

    def test_bad_area_is_a_precise_error(self):
        with pytest.raises(ConditioningError, match="positive conditioning #0: option 'area'"):
            run(positive=[(context(1), {"area": (1, 2)})])


class TestInpainting:
    def test_the_x0_estimate_keeps_the_latent_outside_the_mask(self):
        latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(9))
        mask = torch.zeros(6, 6)
        mask[2:4, 2:4] = 1.0
        inpainting = Inpainting.from_mask(mask, latent, prepare_noise(latent, 1))
        guider = CFGGuider(ToyUNet(), MS, latent, [(context(1), {})], [(context(2), {})], 6.0, inpainting)
        estimate = guider(torch.randn(1, 4, 6, 6), SIGMA)
        keep = mask == 0
        assert torch.equal(estimate[0][:, keep], latent[0][:, keep])
        assert not torch.allclose(estimate[0][:, ~keep], latent[0][:, ~keep])

    def test_a_mask_of_another_batch_is_refused(self):
        with pytest.raises(ValueError, match="noise_mask has batch 3, the latent has 2"):
            Inpainting.from_mask(torch.ones(3, 6, 6), zero_latent(2), zero_latent(2))


#: A soft mask on a 1 x 4 latent grid: a cell that must stay, two part-way cells and one to repaint.
SOFT = torch.tensor([0.0, 0.3, 0.7, 1.0]).reshape(1, 1, 1, 4)


def at(sigma: float) -> torch.Tensor:
    return torch.tensor([sigma])


class TestDifferentialMask:
    """Differential Diffusion: the soft mask thresholded by how far the model call is through the schedule."""

    def test_the_threshold_falls_from_one_to_zero_linearly_in_a_unets_timesteps(self):
        # The normal schedule spaces timesteps evenly (999, 666, 333, 0), so the thresholds are too.
        sigmas = compute_sigmas(MS, "normal", 4)
        thresholds = [float(DifferentialMask().threshold(sigma.reshape(1), sigmas, MS)) for sigma in sigmas[:-1]]
        assert thresholds == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0], abs=1e-6)

    def test_a_flow_models_timestep_is_its_sigma_so_the_threshold_is_linear_in_sigma(self):
        flow = DiscreteFlow(shift=3.0)
        sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
        low = flow.sigma_min  # the schedule ends below it, so the threshold reaches 0 there
        expected = (0.5 - low) / (1.0 - low)
        assert float(DifferentialMask().threshold(at(0.5), sigmas, flow)) == pytest.approx(expected, rel=1e-6)

    def test_a_schedule_ending_above_sigma_min_ends_the_threshold_at_its_own_last_sigma(self):
        """Leftover noise for a later pass (KSamplerAdvanced): the run's own end is where every cell joins."""
        flow = DiscreteFlow(shift=3.0)
        sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25])
        assert float(DifferentialMask().threshold(at(0.5), sigmas, flow)) == pytest.approx(1 / 3, rel=1e-6)
        assert float(DifferentialMask().threshold(at(0.25), sigmas, flow)) == pytest.approx(0.0, abs=1e-7)

    def test_the_first_call_repaints_only_full_cells_and_the_last_every_cell_above_zero(self):
        sigmas = compute_sigmas(MS, "simple", 4)  # ends above sigma_min, then 0
        policy = DifferentialMask()
        assert torch.equal(policy(SOFT, sigmas[:1], sigmas, MS), torch.tensor([0.0, 0.0, 0.0, 1.0]).reshape(SOFT.shape))
        assert torch.equal(policy(SOFT, sigmas[-2:-1], sigmas, MS), torch.tensor([0.0, 1, 1, 1]).reshape(SOFT.shape))

    def test_at_the_models_sigma_min_even_a_zero_cell_is_repainted(self):
        """``mask >= 0`` holds everywhere: the normal and karras schedules end their model calls there, and
        ComfyUI then resamples the whole latent in the last step too."""
        sigmas = compute_sigmas(MS, "normal", 4)
        assert torch.equal(DifferentialMask()(SOFT, sigmas[-2:-1], sigmas, MS), torch.ones_like(SOFT))

    def test_a_strength_below_one_mixes_the_soft_mask_back_in_and_zero_counts_as_one(self):
        sigmas = compute_sigmas(MS, "simple", 4)
        binary = torch.tensor([0.0, 0.0, 0.0, 1.0]).reshape(SOFT.shape)
        first = sigmas[:1]
        torch.testing.assert_close(DifferentialMask(0.25)(SOFT, first, sigmas, MS), 0.25 * binary + 0.75 * SOFT)
        assert torch.equal(DifferentialMask(0.0)(SOFT, first, sigmas, MS), binary)
        assert torch.equal(DifferentialMask(1.0)(SOFT, first, sigmas, MS), binary)

    def test_a_policy_needs_the_schedule(self):
        with pytest.raises(ValueError, match="needs the sigmas of the schedule"):
            Inpainting.from_mask(SOFT, zero_latent(1, 4), zero_latent(1, 4), policy=DifferentialMask())

    def test_without_a_policy_every_call_uses_the_mask_itself(self):
        inpainting = Inpainting.from_mask(torch.rand(6, 6), zero_latent(), zero_latent())
        assert inpainting.mask_at(MS, SIGMA) is inpainting.mask

    def test_the_guider_holds_and_keeps_with_the_calls_own_mask(self):
        latent = torch.randn(1, 4, 1, 4, generator=torch.Generator().manual_seed(3))
        sigmas = compute_sigmas(MS, "simple", 4)
        inpainting = Inpainting.from_mask(SOFT, latent, prepare_noise(latent, 1), sigmas, DifferentialMask())
        guider = CFGGuider(ToyUNet(), MS, latent, [(context(1), {})], [(context(2), {})], 6.0, inpainting)
        x = torch.randn(1, 4, 1, 4, generator=torch.Generator().manual_seed(4))
        first = guider(x, sigmas[:1])
        assert torch.equal(first[..., :3], latent[..., :3]) and not torch.equal(first[..., 3], latent[..., 3])
        last = guider(x, sigmas[-2:-1])
        assert torch.equal(last[..., 0], latent[..., 0]) and not torch.equal(last[..., 1:], latent[..., 1:])

    def test_sampling_is_the_hand_written_loop_and_leaves_the_last_state_unpinned(self):
        latent = torch.randn(1, 4, 1, 4, generator=torch.Generator().manual_seed(5))
        noise = prepare_noise(latent, 2)
        sigmas = compute_sigmas(MS, "simple", 5)
        unet = ToyUNet()
        inpainting = Inpainting.from_mask(SOFT, latent, noise, sigmas, DifferentialMask())
        guider = CFGGuider(unet, MS, latent, [(context(1), {})], [(context(2), {})], 6.0, inpainting)
        result = sample(guider, get_sampler("euler"), sigmas, latent, noise)

        plain = CFGGuider(unet, MS, latent, [(context(1), {})], [(context(2), {})], 6.0)
        t_from, t_to = MS.timestep(sigmas[0]), MS.timestep(torch.tensor(MS.sigma_min))
        x = latent + noise * (sigmas[0] ** 2 + 1) ** 0.5
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            mask = (SOFT >= (MS.timestep(sigma) - t_to) / (t_from - t_to)).float()
            held = x * mask + (latent + noise * sigma) * (1 - mask)
            denoised = plain(held, sigma.reshape(1)) * mask + latent * (1 - mask)
            x = x + (x - denoised) / sigma * (sigma_next - sigma)
        torch.testing.assert_close(result, x, rtol=1e-6, atol=1e-6)
        assert inpainting.finish(x) is x
        torch.testing.assert_close(result[..., 0], latent[..., 0], rtol=0, atol=1e-5)


def test_flux_fill_channels_are_the_image_latent_then_the_pixel_mask_packed_8_by_8() -> None:
    image = torch.randn(1, 16, 3, 5)
    mask = torch.zeros(1, 1, 24, 40)
    mask[0, 0, 8 * 2 + 3, 8 * 4 + 6] = 1.0  # pixel (19, 38): cell (2, 4), offset (3, 6)
    concat = fill_channels({"concat_latent_image": image, "concat_mask": mask}, 1, "positive", 0, None, (3, 5))
    assert concat is not None and concat.shape == (1, 16 + 64, 3, 5)
    assert torch.equal(concat[:, :16], image)
    packed = concat[:, 16:]
    assert packed.sum() == 1.0 and packed[0, 8 * 3 + 6, 2, 4] == 1.0
    assert fill_channels({}, 1, "positive", 0, None, (3, 5)) is None
