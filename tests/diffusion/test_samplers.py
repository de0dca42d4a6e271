"""Samplers: parity with k-diffusion's own code, and correctness on a problem with a known answer."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from diffusion.samplers import SAMPLER_NAMES, BrownianTreeNoiseSampler, UnknownSamplerError, get_sampler
from diffusion.samplers.dpm_solver import StepSizeControl
from diffusion.samplers.noise import gaussian_noise_sampler
from diffusion.schedules import karras_sigmas
from tests.diffusion.kdiffusion_ref import sampling as ksampling

SIGMA_MIN, SIGMA_MAX = 0.03, 14.6


class ToyDenoiser:
    """The ideal denoiser of a Gaussian data distribution plus a small fixed nonlinear term, so
    that solver orders and step orderings matter numerically."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(dim, generator=g, dtype=torch.float64)
        self.s = 0.5
        self.w = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.reshape(-1, 1)
        ideal = (self.s**2 * x + sigma**2 * self.mu) / (self.s**2 + sigma**2)
        return ideal + 0.1 * torch.tanh(x @ self.w) / (1 + sigma)


class GaussianDenoiser:
    """Exact denoiser of data ~ N(mu, s^2) per dimension: D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def __init__(self, mu: float = 0.7, s: float = 0.5) -> None:
        self.mu, self.s = mu, s

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return (self.s**2 * x + sigma**2 * self.mu) / (self.s**2 + sigma**2)


def _start(batch: int = 2, dim: int = 64) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX


def _sigmas(steps: int = 12) -> torch.Tensor:
    return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX).double()


class SharedNoise:
    """The same sequence of normal draws handed to both implementations."""

    def __init__(self, like: torch.Tensor, seed: int = 5) -> None:
        self.like, self.seed = like, seed

    def fresh(self):
        return gaussian_noise_sampler(self.like, self.seed)


DETERMINISTIC = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m"]
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_match_kdiffusion(name):
    x, sigmas = _start(), _sigmas()
    ours = get_sampler(name)(ToyDenoiser(), x, sigmas, disable=True)
    reference = getattr(ksampling, f"sample_{name}")(ToyDenoiser(), x, sigmas, disable=True)
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("name", STOCHASTIC)
def test_noisy_samplers_match_kdiffusion_given_the_same_noise(name):
    x, sigmas = _start(), _sigmas()
    noise = SharedNoise(x)
    ours = get_sampler(name)(ToyDenoiser(), x, sigmas, disable=True, noise_sampler=noise.fresh())
    reference = getattr(ksampling, f"sample_{name}")(
        ToyDenoiser(), x, sigmas, disable=True, noise_sampler=noise.fresh()
    )
    assert (ours - reference).abs().max() <= 1e-5


def test_dpmpp_2m_sde_heun_variant_matches_kdiffusion():
    x, sigmas = _start(), _sigmas()
    noise = SharedNoise(x)
    ours = get_sampler("dpmpp_2m_sde")(
        ToyDenoiser(), x, sigmas, disable=True, solver_type="heun", noise_sampler=noise.fresh()
    )
    reference = ksampling.sample_dpmpp_2m_sde(
        ToyDenoiser(), x, sigmas, disable=True, solver_type="heun", noise_sampler=noise.fresh()
    )
    assert (ours - reference).abs().max() <= 1e-5


# ComfyUI names that are k-diffusion samplers with other defaults: name -> (k-diffusion function, its options).
KDIFFUSION_ALIASES = {
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "dpmpp_2m_sde_heun_gpu": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "dpmpp_sde_gpu": ("sample_dpmpp_sde", {}),
    "dpmpp_2m_sde_gpu": ("sample_dpmpp_2m_sde", {}),
    "dpmpp_3m_sde_gpu": ("sample_dpmpp_3m_sde", {}),
}


@pytest.mark.parametrize("name", KDIFFUSION_ALIASES)
def test_comfyui_variants_of_kdiffusion_samplers_match_it_with_their_defaults(name):
    function, options = KDIFFUSION_ALIASES[name]
    x, sigmas = _start(), _sigmas()
    noise = SharedNoise(x)
    ours = get_sampler(name)(ToyDenoiser(), x, sigmas, disable=True, noise_sampler=noise.fresh())
    reference = getattr(ksampling, function)(
        ToyDenoiser(), x, sigmas, disable=True, noise_sampler=noise.fresh(), **options
    )
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"])
def test_gpu_names_are_their_twins_because_loom_draws_brownian_noise_on_the_cpu(name):
    """ComfyUI's "_gpu" samplers draw the Brownian tree on the GPU, so a seed gives them other noise there;
    Loom draws every tree on the CPU (the same on any device), so the two names are one sampler."""
    assert get_sampler(f"{name}_gpu").function is get_sampler(name).function
    x, sigmas = _start(), _sigmas()
    twin = get_sampler(name)(ToyDenoiser(), x, sigmas, disable=True, seed=4)
    assert torch.equal(get_sampler(f"{name}_gpu")(ToyDenoiser(), x, sigmas, disable=True, seed=4), twin)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
def test_churn_matches_kdiffusion_given_the_same_noise(name):
    # k-diffusion draws churn noise from the global RNG at every step, so churn is on at every step here.
    x, sigmas = _start(), _sigmas()
    torch.manual_seed(3)
    reference = getattr(ksampling, f"sample_{name}")(ToyDenoiser(), x, sigmas, disable=True, s_churn=2.0)
    torch.manual_seed(3)
    ours = get_sampler(name)(
        ToyDenoiser(), x, sigmas, disable=True, s_churn=2.0, noise_sampler=lambda sigma, sigma_next: torch.randn_like(x)
    )
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_fast_matches_kdiffusion(eta):
    x, sigmas = _start(), _sigmas(10)
    noise = SharedNoise(x)
    ours = get_sampler("dpm_fast")(ToyDenoiser(), x, sigmas, disable=True, eta=eta, noise_sampler=noise.fresh())
    reference = ksampling.sample_dpm_fast(
        ToyDenoiser(), x, sigmas[-2], sigmas[0], len(sigmas) - 1, disable=True, eta=eta, noise_sampler=noise.fresh()
    )
    assert (ours - reference).abs().max() <= 1e-5


def test_dpm_fast_spends_one_model_call_per_step():
    model = ToyDenoiser()
    get_sampler("dpm_fast")(model, _start(), _sigmas(10), disable=True)
    assert model.calls == 10


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_matches_kdiffusion(order):
    x, sigmas = _start(), _sigmas(10)
    ours_model, reference_model = ToyDenoiser(), ToyDenoiser()
    ours = get_sampler("dpm_adaptive")(ours_model, x, sigmas, disable=True, order=order)
    reference = ksampling.sample_dpm_adaptive(reference_model, x, sigmas[-2], sigmas[0], disable=True, order=order)
    assert (ours - reference).abs().max() <= 1e-5
    assert ours_model.calls <= reference_model.calls


def test_dpm_adaptive_step_size_defaults_are_kdiffusions():
    reference = inspect.signature(ksampling.sample_dpm_adaptive).parameters
    for field in dataclasses.fields(StepSizeControl):
        assert field.default == reference[field.name].default, field.name
    with pytest.raises(ValueError, match="order must be 2 or 3"):
        get_sampler("dpm_adaptive")(ToyDenoiser(), _start(), _sigmas(), disable=True, order=4)


def test_callback_reports_every_step_with_the_documented_keys():
    seen = []
    get_sampler("dpmpp_2m")(ToyDenoiser(), _start(), _sigmas(6), disable=True, callback=seen.append)
    assert [info["i"] for info in seen] == list(range(6))
    assert all(set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"} for info in seen)


# ComfyUI's KSampler list as its current comfy/samplers.py serves it: KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"].
COMFYUI_SAMPLER_NAMES = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)

# The samplers that draw noise of their own, and so take the seed; every other one is deterministic.
SEEDED = {
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "exp_heun_2_x0_sde",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    # noise only when asked for: eta > 0 (DPM-Solver) or churn
    "dpm_fast",
    "dpm_adaptive",
    "euler",
    "heun",
    "heunpp2",
    "dpm_2",
    "ddim",
}


def test_registry_serves_comfyuis_sampler_list_in_its_order():
    assert SAMPLER_NAMES == COMFYUI_SAMPLER_NAMES


def test_exactly_the_samplers_that_draw_noise_take_the_seed():
    assert {name for name in SAMPLER_NAMES if get_sampler(name).takes_seed} == SEEDED


def test_registry_rejects_unknown_names_and_discards_comfyuis_penultimate_sigmas():
    assert {n for n in SAMPLER_NAMES if get_sampler(n).discard_penultimate_sigma} == {
        "dpm_2",
        "dpm_2_ancestral",
        "uni_pc",
        "uni_pc_bh2",
    }
    with pytest.raises(UnknownSamplerError, match="no_such_sampler"):
        get_sampler("no_such_sampler")


# Closed form: for data ~ N(mu, s^2) the exact denoiser is known and so is the exact ODE flow:
# x(sigma) = mu + (x_T - mu) * sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2). Deterministic samplers
# must reproduce that map sample by sample; stochastic ones must reach N(mu, s^2) in distribution.
MU, S, SIGMA_T = 0.7, 0.5, 80.0
# (sampler, steps, max abs error): first-order methods need many more steps for the same accuracy.
ODE_CASES = [
    ("euler", 300, 0.02),
    ("ddim", 300, 0.02),
    ("heunpp2", 300, 0.02),
    ("heun", 40, 0.02),
    ("dpm_2", 40, 0.015),
    ("lms", 40, 0.01),
    ("dpm_fast", 40, 0.003),
    ("dpmpp_2m", 40, 0.025),
    ("ipndm", 40, 0.01),
    ("deis", 40, 0.01),
    ("uni_pc", 40, 0.003),
    ("uni_pc_bh2", 40, 0.003),
    # A bare denoiser has no unconditional estimate apart, so the CFG++ samplers run as their plain twins.
    ("euler_cfg_pp", 300, 0.02),
    ("dpmpp_2m_cfg_pp", 40, 0.025),
    ("exp_heun_2_x0", 40, 0.02),
    ("ipndm_v", 40, 0.005),
    ("res_multistep", 40, 0.035),
    ("res_multistep_cfg_pp", 40, 0.035),
    ("gradient_estimation", 300, 0.02),
    ("gradient_estimation_cfg_pp", 300, 0.02),
]
SDE_SAMPLERS = [
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "euler_ancestral_cfg_pp",
    "dpmpp_2s_ancestral_cfg_pp",
    "exp_heun_2_x0_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde_gpu",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
]


def _prior_noise(dim: int = 4000) -> torch.Tensor:
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * SIGMA_T


def _run(name: str, model, steps: int, **options) -> torch.Tensor:
    sigmas = karras_sigmas(steps, 0.002, SIGMA_T).double()
    if get_sampler(name).takes_seed:
        options.setdefault("seed", 7)
    return get_sampler(name)(model, _prior_noise(), sigmas, disable=True, **options)


@pytest.mark.parametrize("name, steps, tolerance", ODE_CASES)
def test_ode_samplers_follow_the_exact_flow_of_a_gaussian(name, steps, tolerance):
    x_t = _prior_noise()
    exact = MU + (x_t - MU) * S / (S**2 + SIGMA_T**2) ** 0.5
    assert (_run(name, GaussianDenoiser(MU, S), steps) - exact).abs().max() < tolerance


def test_dpm_adaptive_follows_the_exact_flow_to_its_tolerance():
    x_t = _prior_noise()
    exact = MU + (x_t - MU) * S / (S**2 + SIGMA_T**2) ** 0.5
    assert (_run("dpm_adaptive", GaussianDenoiser(MU, S), 10, rtol=0.001) - exact).abs().max() < 0.02


@pytest.mark.parametrize("name", SDE_SAMPLERS)
def test_stochastic_samplers_reach_the_data_distribution(name):
    out = _run(name, GaussianDenoiser(MU, S), steps=300)
    # 4000 samples: the sample mean has std s / sqrt(4000) ~ 0.008, the sample std ~ 0.006.
    assert abs(out.mean().item() - MU) < 0.04
    assert abs(out.std().item() - S) < 0.03


def test_lcm_samples_exactly_with_a_consistency_function():
    # A consistency model maps any noisy point straight to the end of its ODE trajectory.
    def consistency(x, sigma):
        sigma = sigma.reshape(-1, 1)
        return MU + (x - MU) * S / (S**2 + sigma**2) ** 0.5

    out = _run("lcm", consistency, steps=8)
    assert abs(out.mean().item() - MU) < 0.04
    assert abs(out.std().item() - S) < 0.02


@pytest.mark.parametrize("name, variant, final", [("uni_pc", "bh1", "sigma_min"), ("uni_pc_bh2", "bh2", "zero")])
@pytest.mark.parametrize("steps", [5, 12])
def test_uni_pc_matches_diffusers(name, variant, final, steps):
    """diffusers' UniPC runs on the variance-preserving state, so both ends are rescaled by sqrt(1 + sigma^2).
    (diffusers' bh1 produces NaN when the last sigma is 0, so that variant ends at sigma_min.)"""
    from diffusers import UniPCMultistepScheduler

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 16, generator=g) / 4

    def eps_model(x_vp):
        return torch.tanh(x_vp @ weight.to(x_vp.dtype)) * 0.5 + 0.3 * x_vp

    scheduler = UniPCMultistepScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        solver_order=3,
        solver_type=variant,
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type=final,
    )
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double()
    start = torch.randn(2, 16, generator=g)
    reference = start.clone()
    for t in scheduler.timesteps:
        reference = scheduler.step(eps_model(reference), t, reference).prev_sample

    def denoiser(x, sigma):
        sigma = sigma.reshape(-1, 1)
        return x - sigma * eps_model(x / (sigma**2 + 1) ** 0.5)

    ours = get_sampler(name)(denoiser, start.double() * (1 + sigmas[0] ** 2) ** 0.5, sigmas, disable=True)
    assert (ours / (1 + sigmas[-1] ** 2) ** 0.5 - reference.double()).abs().max() < 3e-5


class TestBrownianTree:
    def test_increments_are_consistent_across_step_refinement(self):
        like = torch.zeros(3, 50, dtype=torch.float64)
        tree = BrownianTreeNoiseSampler(like, 0.1, 10.0, seed=4)
        whole = tree(torch.tensor(8.0), torch.tensor(1.0)) * 7.0**0.5
        parts = (
            tree(torch.tensor(8.0), torch.tensor(3.5)) * 4.5**0.5
            + tree(torch.tensor(3.5), torch.tensor(1.0)) * 2.5**0.5
        )
        assert torch.allclose(whole, parts, atol=1e-10)

    def test_same_seed_gives_the_same_path_and_other_seeds_do_not(self):
        like = torch.zeros(1000)
        a = BrownianTreeNoiseSampler(like, 0.1, 10.0, seed=4)(torch.tensor(5.0), torch.tensor(4.0))
        b = BrownianTreeNoiseSampler(like, 0.1, 10.0, seed=4)(torch.tensor(5.0), torch.tensor(4.0))
        c = BrownianTreeNoiseSampler(like, 0.1, 10.0, seed=5)(torch.tensor(5.0), torch.tensor(4.0))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)

    def test_normalised_increments_are_standard_normal_and_independent(self):
        like = torch.zeros(20000, dtype=torch.float64)
        tree = BrownianTreeNoiseSampler(like, 0.03, 14.6, seed=1)
        first = tree(torch.tensor(14.6), torch.tensor(6.0))
        second = tree(torch.tensor(6.0), torch.tensor(0.5))
        assert abs(first.std().item() - 1) < 0.03 and abs(second.std().item() - 1) < 0.03
        assert abs(first.mean().item()) < 0.03
        assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 0.03
