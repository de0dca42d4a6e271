"""Model wrappers: the DDPM sigma table, sigma <-> timestep, eps and v parametrisations."""

from __future__ import annotations

import pytest
import torch

from diffusion.prediction import DiscreteSchedule, EpsPrediction, VPrediction, scaled_linear_schedule
from tests.diffusion.kdiffusion_ref import external


def _alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return scheduler.alphas_cumprod


def _inner(x, t, **kwargs):
    return torch.tanh(x) * 0.7 + (t.reshape(-1, 1, 1, 1) / 1000) * x


def test_sigma_table_matches_the_diffusers_training_schedule():
    expected = ((1 - _alphas_cumprod()) / _alphas_cumprod()) ** 0.5
    table = scaled_linear_schedule().sigmas
    assert table.shape == (1000,)
    assert torch.allclose(table, expected.float(), rtol=2e-5)  # diffusers multiplies in float32
    assert abs(table[0].item() - 0.0292) < 1e-4 and abs(table[-1].item() - 14.6146) < 1e-3


def test_sigma_timestep_round_trip_matches_kdiffusion_interpolation():
    reference = external.DiscreteEpsDDPMDenoiser(_inner, _alphas_cumprod(), quantize=False)
    ours = scaled_linear_schedule()
    sigmas = torch.exp(torch.linspace(-4, 3, 50))  # includes values outside the table at both ends
    assert torch.allclose(ours.timestep(sigmas), reference.sigma_to_t(sigmas), atol=1e-3)
    timesteps = torch.linspace(0, 999, 77)
    assert torch.allclose(ours.sigma(timesteps), reference.t_to_sigma(timesteps), rtol=2e-5)
    inside = sigmas[(sigmas > ours.sigma_min) & (sigmas < ours.sigma_max)]
    assert torch.allclose(ours.sigma(ours.timestep(inside)), inside, rtol=1e-4)


@pytest.mark.parametrize(
    "wrapper, reference_class", [(EpsPrediction, "DiscreteEpsDDPMDenoiser"), (VPrediction, "DiscreteVDDPMDenoiser")]
)
def test_denoiser_matches_kdiffusion_wrappers(wrapper, reference_class):
    reference = getattr(external, reference_class)(_inner, _alphas_cumprod(), quantize=False)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 5
    sigma = torch.tensor([14.0, 2.5, 0.1])
    ours = wrapper().denoiser(_inner)(x, sigma)
    assert torch.allclose(ours, reference(x, sigma), rtol=1e-5, atol=1e-5)


def test_noise_scaling_uses_the_ddpm_prior_variance_for_a_full_denoise():
    model = EpsPrediction()
    noise, latent = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    assert torch.allclose(model.noise_scaling(3.0, noise, latent), latent + 3.0)
    assert torch.allclose(model.noise_scaling(3.0, noise, latent, max_denoise=True), latent + 10**0.5)
    assert torch.equal(model.inverse_noise_scaling(0.0, latent), latent)


def test_percent_to_sigma_spans_the_process():
    model = EpsPrediction()
    assert model.percent_to_sigma(0.0) == float("inf") and model.percent_to_sigma(1.0) == 0.0
    assert abs(model.percent_to_sigma(0.5) - float(model.sigma(torch.tensor(499.5)))) < 1e-6


def test_schedule_rejects_a_table_that_does_not_increase():
    with pytest.raises(ValueError, match="increase"):
        DiscreteSchedule(torch.tensor([1.0, 0.5, 2.0]))
