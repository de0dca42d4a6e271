"""Flow-matching noise levels and prediction: ComfyUI's tables and shifts, diffusers' scheduler on the same
sigmas, and the exact round trip of the rectified-flow parametrisation."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from diffusion.flow_matching import DiscreteFlow, FluxFlow, flux_shift_for_size
from diffusion.samplers.euler import sample_euler
from diffusion.schedules import compute_sigmas


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_sd3_table_is_diffusers_training_sigmas_in_ascending_order(shift: float) -> None:
    flow = DiscreteFlow(shift=shift)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).sigmas
    torch.testing.assert_close(flow.sigmas, reference.flip(0).float(), rtol=0, atol=1e-6)
    assert flow.sigma_max == pytest.approx(1.0)
    assert flow.sigma_min == pytest.approx(shift * 1e-3 / (1 + (shift - 1) * 1e-3))


def test_the_timestep_is_sigma_times_the_multiplier_and_sigma_inverts_it() -> None:
    sd3, aura = DiscreteFlow(shift=3.0), DiscreteFlow(shift=1.73, multiplier=1.0)
    sigma = torch.tensor([0.25, 0.9])
    torch.testing.assert_close(sd3.timestep(sigma), sigma * 1000)
    torch.testing.assert_close(aura.timestep(sigma), sigma)
    t = torch.tensor(0.5)
    assert float(sd3.sigma(t * 1000)) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    assert float(aura.sigma(t)) == pytest.approx(1.73 * 0.5 / (1 + 0.73 * 0.5))


@pytest.mark.parametrize("width, height", [(256, 256), (1024, 1024), (768, 1344), (512, 512)])
def test_the_flux_shift_for_a_size_is_diffusers_calculate_shift(width: int, height: int) -> None:
    tokens = (width // 16) * (height // 16)
    assert flux_shift_for_size(width, height) == pytest.approx(calculate_shift(tokens))


def test_the_flux_table_follows_the_exponential_shift_over_ten_thousand_steps() -> None:
    mu = flux_shift_for_size(1024, 1024)
    flow = FluxFlow(shift=mu)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    t = torch.arange(1, 10_001, dtype=torch.float64) / 10_000
    expected = torch.tensor([scheduler.time_shift(mu, 1.0, float(v)) for v in t[::997]], dtype=torch.float64)
    torch.testing.assert_close(flow.sigmas[::997].double(), expected, rtol=0, atol=1e-6)
    assert flow.sigmas.numel() == 10_000
    torch.testing.assert_close(flow.timestep(torch.tensor(0.3)), torch.tensor(0.3))


def test_percent_to_sigma_runs_on_the_shifted_time_axis() -> None:
    sd3, flux = DiscreteFlow(shift=3.0), FluxFlow(shift=1.15)
    assert (sd3.percent_to_sigma(0.0), sd3.percent_to_sigma(1.0)) == (1.0, 0.0)
    assert sd3.percent_to_sigma(0.25) == pytest.approx(3 * 0.75 / (1 + 2 * 0.75))
    assert flux.percent_to_sigma(0.25) == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1 / 0.75 - 1))


def test_noising_then_denoising_with_the_true_velocity_gives_the_clean_latent_back() -> None:
    flow = DiscreteFlow(shift=3.0)
    x0, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    sigma = torch.tensor([0.8, 0.3])
    x = flow.noise_scaling(sigma, noise, x0)
    torch.testing.assert_close(x, (1 - sigma)[:, None, None, None] * x0 + sigma[:, None, None, None] * noise)
    torch.testing.assert_close(flow.calculate_denoised(sigma, noise - x0, x), x0, rtol=1e-6, atol=1e-6)
    assert flow.calculate_input(sigma, x) is x
    torch.testing.assert_close(flow.inverse_noise_scaling(0.5, x0), x0 * 2)


def test_euler_over_diffusers_sigmas_steps_exactly_as_diffusers_flow_match_scheduler() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(6)
    weight = torch.randn(16, 16) / 4

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", weight, x) * (1 + sigma.reshape(-1, 1, 1, 1))

    noise = torch.randn(1, 16, 8, 8)
    expected = noise.clone()
    for timestep in scheduler.timesteps:
        sigma = (timestep / 1000).reshape(1)
        expected = scheduler.step(velocity(expected, sigma), timestep, expected).prev_sample

    flow = DiscreteFlow(shift=3.0)
    got = sample_euler(flow.denoiser(lambda x, sigma: velocity(x, sigma)), noise, scheduler.sigmas, disable=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_simple_scheduler_steps_through_the_shifted_table_as_comfyui_does() -> None:
    sigmas = compute_sigmas(DiscreteFlow(shift=3.0), "simple", 4)
    expected = [3 * t / (1 + 2 * t) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    torch.testing.assert_close(sigmas, torch.tensor(expected), rtol=0, atol=1e-6)


def test_the_normal_scheduler_spaces_timesteps_from_sigma_max_to_sigma_min() -> None:
    flux = FluxFlow(shift=1.15)
    sigmas = compute_sigmas(flux, "normal", 3)
    times = torch.linspace(1.0, flux.sigma_min, 3, dtype=torch.float64)
    expected = [math.exp(1.15) / (math.exp(1.15) + 1 / float(t) - 1) for t in times] + [0.0]
    torch.testing.assert_close(sigmas.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)
