"""Sampling: start noise, the sampler run over given sigmas, the step callback, schedule windows."""

from __future__ import annotations

import pytest
import torch

from diffusion.guidance import CFGGuider
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import cut_sigmas, denoise_sigmas
from tests.diffusion.toy_unet import MS, ToyUNet, context, run, zero_latent


class TestNoise:
    def test_same_seed_same_noise_and_item_zero_survives_a_batch_size_change(self):
        one = prepare_noise(zero_latent(1), seed=7)
        assert torch.equal(one, prepare_noise(zero_latent(1), seed=7))
        assert torch.equal(prepare_noise(zero_latent(3), seed=7)[:1], one)
        assert not torch.equal(prepare_noise(zero_latent(1), seed=8), one)

    def test_batch_index_picks_each_items_own_draw(self):
        draws = prepare_noise(zero_latent(1), seed=7, batch_index=[0, 1, 2])
        picked = prepare_noise(zero_latent(2), seed=7, batch_index=[2, 0])
        assert torch.equal(picked[0], draws[2]) and torch.equal(picked[1], draws[0])

    def test_same_seed_same_result(self):
        assert torch.equal(run(seed=3), run(seed=3))
        assert not torch.equal(run(seed=3), run(seed=4))


class TestSample:
    def test_fewer_than_two_sigmas_returns_the_latent_untouched(self):
        latent, unet = torch.randn(1, 4, 6, 6), ToyUNet()
        assert run(unet, latent=latent, sigmas=denoise_sigmas(MS, "normal", 4, 0.0)) is latent
        assert run(unet, latent=latent, sigmas=torch.tensor([0.0])) is latent
        assert unet.calls == []

    def test_the_start_is_the_latent_noised_to_the_first_sigma(self):
        """From the model's highest sigma the latent counts as pure noise, at the DDPM prior's scale
        sqrt(sigma_max^2 + 1); from lower down (img2img) the noise is scaled by the sigma itself."""
        latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(2))
        noise = prepare_noise(latent, 42)
        for denoise, scale in ((1.0, (MS.sigma_max**2 + 1) ** 0.5), (0.5, None)):
            sigmas = denoise_sigmas(MS, "normal", 4, denoise)
            steps: list[dict] = []
            run(latent=latent, sigmas=sigmas, callback=steps.append)
            expected = latent + noise * (float(sigmas[0]) if scale is None else scale)
            torch.testing.assert_close(steps[0]["x"], expected)

    def test_a_split_schedule_with_leftover_noise_equals_one_run(self):
        sigmas = denoise_sigmas(MS, "normal", 8)
        whole = run(sigmas=sigmas)
        first = run(sigmas=cut_sigmas(sigmas, end_step=3, leftover_noise=True))
        second = run(latent=first, sigmas=cut_sigmas(sigmas, start_step=3), add_noise=False)
        assert torch.allclose(whole, second, atol=1e-5)

    def test_ending_early_without_leftover_noise_finishes_the_denoise_in_the_window(self):
        unet = ToyUNet()
        run(unet, sigmas=cut_sigmas(denoise_sigmas(MS, "normal", 8), end_step=3))
        assert len(unet.calls) == 3

    def test_a_noise_mask_keeps_the_unmasked_region(self):
        latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(9))
        mask = torch.zeros(1, 6, 6)
        mask[:, 2:4, 2:4] = 1.0
        out = run(
            latent=latent, noise_mask=mask, sigmas=denoise_sigmas(MS, "normal", 4, 0.6), sampler="euler_ancestral"
        )
        keep = mask[0] == 0
        assert torch.equal(out[0][:, keep], latent[0][:, keep])
        assert not torch.allclose(out[0][:, ~keep], latent[0][:, ~keep])

    @pytest.mark.parametrize("name", ["dpmpp_2m_sde", "euler_ancestral", "uni_pc", "dpm_fast"])
    def test_every_kind_of_sampler_runs_deterministically(self, name):
        a, b = run(sampler=name, steps=5), run(sampler=name, steps=5)
        assert torch.equal(a, b) and torch.isfinite(a).all()


class TestStepCallback:
    """k-diffusion's one hook: what progress bars, previews and interruption are built on."""

    def test_every_step_reports_its_index_state_and_x0_estimate(self):
        steps: list[dict] = []
        run(steps=3, callback=steps.append)
        assert [step["i"] for step in steps] == [0, 1, 2]
        sigmas = denoise_sigmas(MS, "normal", 3)
        assert [float(step["sigma"]) for step in steps] == [float(s) for s in sigmas[:-1]]
        assert all(step["denoised"].shape == step["x"].shape == (1, 4, 6, 6) for step in steps)

    def test_the_x0_estimate_is_what_a_preview_draws(self):
        """The step's ``denoised`` is the guider's output at that step's state."""
        estimates: list[torch.Tensor] = []
        unet, latent = ToyUNet(), zero_latent()
        guider = CFGGuider(unet, MS, latent, [(context(1), {})])
        sigmas = denoise_sigmas(MS, "normal", 2)
        sample(
            guider,
            get_sampler("euler"),
            sigmas,
            latent,
            prepare_noise(latent, 5),
            callback=lambda step: estimates.append(step["denoised"]),
        )
        start = MS.noise_scaling(sigmas[0], prepare_noise(latent, 5), latent, max_denoise=True)
        torch.testing.assert_close(estimates[0], guider(start, sigmas[:1]))

    def test_an_exception_from_the_callback_stops_sampling_and_propagates(self):
        class Stop(Exception):
            pass

        def stop_at_second_step(step: dict) -> None:
            if step["i"] == 1:
                raise Stop

        unet = ToyUNet()
        with pytest.raises(Stop):
            run(unet, sampler="heun", steps=6, callback=stop_at_second_step)
        assert len(unet.calls) == 3  # heun: step 1 took 2 calls, step 2 reports after its first call
