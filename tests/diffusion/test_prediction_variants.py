"""The parametrisations and schedules ComfyUI's ModelSamplingDiscrete / ModelSamplingContinuousEDM choose among:
zero terminal SNR, LCM, x0, EDM and Cosmos's rectified flow."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.prediction import (
    ZSNR_TERMINAL_ALPHA_BAR,
    CosmosRFlowPrediction,
    CosmosRFlowSchedule,
    DistilledSchedule,
    EDMPrediction,
    EDMSchedule,
    EpsPrediction,
    ImageToImagePrediction,
    LCMPrediction,
    X0Prediction,
    scaled_linear_schedule,
    zero_terminal_snr_alphas_cumprod,
)

X = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
OUT = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))


def sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


class TestZeroTerminalSNR:
    def test_the_last_alpha_bar_is_zero_and_the_first_is_kept(self) -> None:
        original = sd_alphas_cumprod()
        rescaled = zero_terminal_snr_alphas_cumprod(original)
        assert float(rescaled[-1]) == 0.0
        torch.testing.assert_close(rescaled[0], original[0])
        assert bool((rescaled[1:] < rescaled[:-1]).all())

    def test_it_is_lin_et_al_algorithm_1(self) -> None:
        """sqrt(a') = (sqrt(a) - sqrt(a_T)) sqrt(a_0) / (sqrt(a_0) - sqrt(a_T)), and diffusers agrees."""
        original = sd_alphas_cumprod()
        root, first, last = original.sqrt(), original[0].sqrt(), original[-1].sqrt()
        expected = ((root - last) * first / (first - last)) ** 2
        torch.testing.assert_close(zero_terminal_snr_alphas_cumprod(original), expected)
        from diffusers import DDPMScheduler

        diffusers = DDPMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
        )
        torch.testing.assert_close(
            zero_terminal_snr_alphas_cumprod(original).float(), diffusers.alphas_cumprod, rtol=1e-4, atol=1e-9
        )

    def test_the_schedule_ends_at_comfyuis_stand_in_for_zero(self) -> None:
        plain, zsnr = scaled_linear_schedule(), scaled_linear_schedule(zero_terminal_snr=True)
        assert zsnr.sigma_max == pytest.approx(math.sqrt((1 - ZSNR_TERMINAL_ALPHA_BAR) / ZSNR_TERMINAL_ALPHA_BAR))
        assert zsnr.sigma_max > 4500 and plain.sigma_max < 15
        assert zsnr.sigma_min == pytest.approx(plain.sigma_min, rel=1e-6)


class TestLCM:
    def test_the_distilled_timesteps_are_every_twentieth_ending_at_999(self) -> None:
        full = scaled_linear_schedule()
        distilled = DistilledSchedule(full)
        assert len(distilled.sigmas) == 50
        assert torch.equal(distilled.sigmas, full.sigmas[19::20])
        assert distilled.timestep(torch.tensor([distilled.sigma_max, distilled.sigma_min])).tolist() == [999.0, 19.0]
        # A sigma between two trained ones maps to the nearer one's timestep, not a fraction.
        between = (full.sigmas[500] * full.sigmas[501]).sqrt()
        assert float(distilled.timestep(between)) in (499.0, 519.0)
        torch.testing.assert_close(distilled.sigma(torch.tensor([999.0, 19.0])), full.sigmas[[999, 19]])
        assert distilled.percent_to_sigma(0.0) == math.inf and distilled.percent_to_sigma(1.0) == 0.0

    def test_the_estimate_mixes_eps_x0_and_the_input_by_the_consistency_boundary_conditions(self) -> None:
        lcm = LCMPrediction()
        sigma = lcm.sigmas[[10, 30]]
        t = lcm.timestep(sigma).reshape(-1, 1, 1, 1) * 10.0
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip, c_out = 0.25 / (t**2 + 0.25), t / (t**2 + 0.25) ** 0.5
        expected = c_out * (X - OUT * s) + c_skip * X
        torch.testing.assert_close(lcm.calculate_denoised(sigma, OUT, X), expected)
        torch.testing.assert_close(lcm.calculate_input(sigma, X), EpsPrediction().calculate_input(sigma, X))


def test_x0_models_output_the_estimate_and_img_to_img_takes_the_input_unscaled() -> None:
    sigma = torch.tensor([3.0, 1.0])
    assert torch.equal(X0Prediction().calculate_denoised(sigma, OUT, X), OUT)
    torch.testing.assert_close(X0Prediction().calculate_input(sigma, X), X / (sigma**2 + 1).sqrt().reshape(-1, 1, 1, 1))
    assert torch.equal(ImageToImagePrediction().calculate_input(sigma, X), X)
    assert torch.equal(ImageToImagePrediction().calculate_denoised(sigma, OUT, X), OUT)


class TestEDM:
    def test_the_model_is_conditioned_on_a_quarter_of_log_sigma(self) -> None:
        schedule = EDMSchedule(0.002, 120.0)
        sigma = torch.tensor([0.002, 1.0, 80.0])
        torch.testing.assert_close(schedule.timestep(sigma), 0.25 * sigma.log())
        torch.testing.assert_close(schedule.sigma(schedule.timestep(sigma)), sigma)
        assert schedule.sigma_min == pytest.approx(0.002, rel=1e-6) and schedule.sigma_max == pytest.approx(120.0)
        log_spacing = schedule.sigmas.log().diff()
        torch.testing.assert_close(log_spacing, torch.full_like(log_spacing, math.log(60000) / 999), rtol=1e-3, atol=0)
        assert schedule.percent_to_sigma(0.5) == pytest.approx(math.sqrt(0.002 * 120.0), rel=1e-5)

    def test_the_preconditioning_is_karras_et_al_table_1(self) -> None:
        edm = EDMPrediction(EDMSchedule(), sigma_data=0.5)
        sigma = torch.tensor([0.3, 20.0])
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25) ** 0.5, 1 / (s**2 + 0.25) ** 0.5
        torch.testing.assert_close(edm.calculate_denoised(sigma, OUT, X), c_skip * X + c_out * OUT)
        torch.testing.assert_close(edm.calculate_input(sigma, X), c_in * X)

    def test_a_range_that_is_not_one_is_refused(self) -> None:
        with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
            EDMSchedule(0.0, 120.0)


def test_cosmos_rflow_reads_sigma_as_flow_time_and_keeps_the_state_variance_exploding() -> None:
    schedule = CosmosRFlowSchedule(0.002, 80.0)
    sigma = torch.tensor([0.5, 4.0])
    torch.testing.assert_close(schedule.timestep(sigma), sigma / (sigma + 1))
    torch.testing.assert_close(schedule.sigma(torch.tensor([1 / 3, 0.8, 0.9999999])), torch.tensor([0.5, 4.0, 80.0]))
    flow = CosmosRFlowPrediction(schedule)
    t = (sigma / (sigma + 1)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(flow.calculate_input(sigma, X), X * (1 - t))
    torch.testing.assert_close(flow.calculate_denoised(sigma, OUT, X), X * (1 - t) - OUT * t)
    full = flow.noise_scaling(torch.tensor([80.0, 80.0]), OUT, X, max_denoise=True)
    torch.testing.assert_close(full, X + OUT * 80.0)
