"""Noise schedules: parity with k-diffusion where it has them, the published formulas elsewhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.prediction import EpsPrediction
from diffusion.schedules import (
    SCHEDULER_NAMES,
    UnknownSchedulerError,
    beta_quantile,
    compute_sigmas,
    cut_sigmas,
    denoise_sigmas,
)
from tests.diffusion.kdiffusion_ref import external
from tests.diffusion.kdiffusion_ref import sampling as ksampling

MS = EpsPrediction()


def test_scheduler_names_follow_comfyui_recent_order():
    assert SCHEDULER_NAMES == (
        "simple",
        "sgm_uniform",
        "karras",
        "exponential",
        "ddim_uniform",
        "beta",
        "normal",
        "linear_quadratic",
        "kl_optimal",
    )


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_every_schedule_decreases_to_exactly_zero(name, steps):
    sigmas = compute_sigmas(MS, name, steps)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert sigmas[0] <= MS.sigma_max * (1 + 1e-5)
    if name not in ("ddim_uniform", "beta"):
        assert len(sigmas) == steps + 1


@pytest.mark.parametrize("steps", [5, 30])
def test_karras_and_exponential_match_kdiffusion(steps):
    assert torch.allclose(
        compute_sigmas(MS, "karras", steps), ksampling.get_sigmas_karras(steps, MS.sigma_min, MS.sigma_max), rtol=1e-6
    )
    assert torch.allclose(
        compute_sigmas(MS, "exponential", steps),
        ksampling.get_sigmas_exponential(steps, MS.sigma_min, MS.sigma_max),
        rtol=1e-5,
    )


@pytest.mark.parametrize("steps", [5, 30])
def test_normal_matches_kdiffusion_discrete_schedule(steps):
    reference = external.DiscreteSchedule(MS.sigmas, quantize=False)
    assert torch.allclose(compute_sigmas(MS, "normal", steps), reference.get_sigmas(steps), rtol=1e-5)


def test_sgm_uniform_drops_the_lowest_of_steps_plus_one_timesteps():
    timesteps = torch.linspace(999, 0, 11)[:-1]
    assert torch.allclose(compute_sigmas(MS, "sgm_uniform", 10)[:-1], MS.sigma(timesteps), rtol=1e-5)


def test_simple_takes_evenly_strided_table_entries_from_the_top():
    assert torch.equal(compute_sigmas(MS, "simple", 4)[:-1], MS.sigmas[[999, 749, 499, 249]])
    assert torch.equal(compute_sigmas(MS, "simple", 3)[:-1], MS.sigmas[[999, 666, 333]])


def test_ddim_uniform_uses_the_ddim_integer_stride():
    assert torch.equal(compute_sigmas(MS, "ddim_uniform", 4)[:-1], MS.sigmas[[751, 501, 251, 1]])
    assert len(compute_sigmas(MS, "ddim_uniform", 7)) == 9  # stride 142 yields 8 timesteps below 1000


def test_beta_quantile_matches_scipy():
    from scipy import stats

    levels = np.linspace(0, 1, 101)
    for a, b in [(0.6, 0.6), (2.0, 0.5), (0.5, 3.0)]:
        assert np.abs(beta_quantile(levels, a, b) - stats.beta.ppf(levels, a, b)).max() < 1e-9


def test_beta_schedule_follows_lee_et_al():
    from scipy import stats

    steps = 10
    timesteps = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999).astype(int)
    assert torch.equal(compute_sigmas(MS, "beta", steps)[:-1], MS.sigmas[torch.tensor(timesteps)])


def test_kl_optimal_is_uniform_in_arctangent():
    sigmas = compute_sigmas(MS, "kl_optimal", 6)[:-1].double()
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    expected = torch.tan(t * math.atan(MS.sigma_min) + (1 - t) * math.atan(MS.sigma_max))
    assert torch.allclose(sigmas, expected, rtol=1e-6)


@pytest.mark.parametrize("steps", [2, 9, 30])
def test_linear_quadratic_matches_the_mochi_coefficients(steps):
    """Genmo's published form: linear ramp, then q(i) = a i^2 + b i + c with the coefficients below."""
    tau, linear = 0.025, steps // 2
    quadratic = steps - linear
    step_diff = linear - tau * steps
    a = step_diff / (linear * quadratic**2)
    b = tau / linear - 2 * step_diff / quadratic**2
    c = a * linear**2
    progress = [i * tau / linear for i in range(linear)] + [a * i * i + b * i + c for i in range(linear, steps)]
    expected = torch.tensor([1 - p for p in progress] + [0.0]) * MS.sigma_max
    assert torch.allclose(compute_sigmas(MS, "linear_quadratic", steps), expected, rtol=1e-5, atol=1e-6)


def test_unknown_scheduler_and_bad_steps_are_precise_errors():
    with pytest.raises(UnknownSchedulerError, match="'cosine'"):
        compute_sigmas(MS, "cosine", 10)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        compute_sigmas(MS, "karras", 0)


class TestDenoise:
    """KSampler's and BasicScheduler's ``denoise``: the tail of a longer schedule."""

    def test_a_full_denoise_is_the_whole_schedule(self):
        assert torch.equal(denoise_sigmas(MS, "karras", 10), compute_sigmas(MS, "karras", 10))

    def test_a_partial_denoise_takes_the_last_steps_of_int_steps_over_denoise(self):
        assert torch.equal(denoise_sigmas(MS, "karras", 10, 0.5), compute_sigmas(MS, "karras", 20)[-11:])
        assert torch.equal(denoise_sigmas(MS, "normal", 4, 0.3), compute_sigmas(MS, "normal", 13)[-5:])

    @pytest.mark.parametrize("exact", [False, True])
    def test_no_denoise_is_no_sigmas(self, exact):
        assert denoise_sigmas(MS, "normal", 4, 0.0, exact_denoise=exact).numel() == 0

    def test_samplers_that_discard_the_penultimate_sigma_get_one_more_step_scheduled(self):
        full = compute_sigmas(MS, "normal", 11)
        assert torch.equal(
            denoise_sigmas(MS, "normal", 10, discard_penultimate_sigma=True), torch.cat([full[:-2], full[-1:]])
        )
        longer = compute_sigmas(MS, "normal", 21)
        assert torch.equal(
            denoise_sigmas(MS, "normal", 10, 0.5, discard_penultimate_sigma=True),
            torch.cat([longer[:-2], longer[-1:]])[-11:],
        )

    def test_ksampler_rounds_a_denoise_just_below_one_to_full_and_basic_scheduler_does_not(self):
        """ComfyUI's two rules differ (``KSampler.set_steps``: above 0.9999 is full; BasicScheduler:
        only 1 is), visibly only where ``int(steps / denoise) > steps``: here 10001 scheduled steps."""
        steps, denoise = 10000, 0.999900005
        ksampler = denoise_sigmas(MS, "normal", steps, denoise)
        basic = denoise_sigmas(MS, "normal", steps, denoise, exact_denoise=True)
        assert torch.equal(ksampler, compute_sigmas(MS, "normal", steps))
        assert torch.equal(basic, compute_sigmas(MS, "normal", steps + 1)[-(steps + 1) :])
        assert len(ksampler) == len(basic) and not torch.equal(ksampler, basic)
        usual = denoise_sigmas(MS, "normal", 20, 0.99995)
        assert torch.equal(usual, denoise_sigmas(MS, "normal", 20, 0.99995, exact_denoise=True))


class TestStepWindow:
    """KSamplerAdvanced's ``start_at_step`` / ``end_at_step`` / ``return_with_leftover_noise``."""

    SIGMAS = torch.tensor([16.0, 8.0, 4.0, 2.0, 1.0, 0.0])

    def test_no_window_is_the_whole_schedule(self):
        assert torch.equal(cut_sigmas(self.SIGMAS), self.SIGMAS)
        assert torch.equal(cut_sigmas(self.SIGMAS, 0, 10000), self.SIGMAS)

    def test_ending_early_finishes_the_denoise_at_sigma_zero(self):
        assert cut_sigmas(self.SIGMAS, end_step=2).tolist() == [16.0, 8.0, 0.0]

    def test_ending_early_with_leftover_noise_stops_at_the_schedules_sigma(self):
        assert cut_sigmas(self.SIGMAS, end_step=2, leftover_noise=True).tolist() == [16.0, 8.0, 4.0]

    def test_starting_late_skips_the_first_steps(self):
        assert cut_sigmas(self.SIGMAS, start_step=2).tolist() == [4.0, 2.0, 1.0, 0.0]
        assert cut_sigmas(self.SIGMAS, 1, 3).tolist() == [8.0, 4.0, 0.0]

    def test_a_window_starting_at_or_after_its_end_has_no_step(self):
        assert cut_sigmas(self.SIGMAS, start_step=5).tolist() == [0.0]
        assert cut_sigmas(self.SIGMAS, start_step=9).tolist() == [0.0]
        assert cut_sigmas(self.SIGMAS, 3, 3).tolist() == [0.0]
        assert cut_sigmas(torch.zeros(0), start_step=0).numel() == 0

    def test_the_schedule_passed_in_is_not_modified(self):
        sigmas = self.SIGMAS.clone()
        cut_sigmas(sigmas, end_step=2)
        assert torch.equal(sigmas, self.SIGMAS)
