"""Samplers on a rectified-flow model (SD3's parametrisation), on a problem with a known answer.

With states ``x = (1 - sigma) x0 + sigma noise`` and data x0 ~ N(mu, s^2), the exact denoiser is
``D(x, sigma) = mu + a s^2 / (a^2 s^2 + sigma^2) (x - a mu)`` with ``a = 1 - sigma``, and the probability-flow
ODE keeps ``(x - a mu) / sqrt(a^2 s^2 + sigma^2)`` fixed: from pure noise at sigma = 1 it ends at
``mu + s x_1``. ODE samplers must follow that map sample by sample; stochastic ones must reach
N(mu, s^2) in distribution, which needs the flow parametrisation: noise added with VE formulas would
leave too much signal in the state. The schedules start at sigma = 1, as ComfyUI's do on flow models.
"""

from __future__ import annotations

import pytest
import torch

from diffusion.flow_matching import DiscreteFlow
from diffusion.samplers import get_sampler
from diffusion.schedules import compute_sigmas

FLOW = DiscreteFlow(shift=3.0)
MU, S = 0.7, 0.5


def flow_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    alpha = 1 - sigma
    return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)


class FlowGaussian:
    """The exact denoiser, naming its model sampling as a guider does."""

    model_sampling = FLOW

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return flow_denoiser(x, sigma)


def _noise(dim: int = 4000) -> torch.Tensor:
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def _run(name: str, model, steps: int) -> torch.Tensor:
    sigmas = compute_sigmas(FLOW, "normal", steps).double()
    assert float(sigmas[0]) == 1.0
    options = {"seed": 7} if get_sampler(name).takes_seed else {}
    return get_sampler(name)(model, _noise(), sigmas, disable=True, **options)


# (sampler, steps, max abs error). The VE exponential integrators (dpmpp_2m, res_multistep, uni_pc: ComfyUI
# runs them with the VE formulas on every model) converge more slowly on a flow model than on a VE one.
FLOW_ODE_CASES = [
    ("euler", 300, 0.025),
    ("ddim", 300, 0.025),
    ("euler_cfg_pp", 300, 0.025),
    ("gradient_estimation", 300, 0.025),
    ("gradient_estimation_cfg_pp", 300, 0.025),
    ("heunpp2", 100, 0.025),
    ("heun", 40, 0.005),
    ("dpm_2", 100, 0.005),
    ("lms", 40, 0.001),
    ("ipndm", 40, 0.005),
    ("ipndm_v", 40, 0.005),
    ("deis", 40, 0.005),
    ("uni_pc", 100, 0.01),
    ("uni_pc_bh2", 100, 0.001),
    ("exp_heun_2_x0", 100, 0.01),
    ("dpmpp_2m", 300, 0.005),
    ("dpmpp_2m_cfg_pp", 300, 0.005),
    ("res_multistep", 300, 0.005),
    ("res_multistep_cfg_pp", 300, 0.005),
]

# Stochastic samplers that take the flow parametrisation into account, as ComfyUI's do.
FLOW_SDE_SAMPLERS = [
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
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
    "exp_heun_2_x0_sde",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
]

# Stochastic samplers ComfyUI runs with their VE formulas on every model.
VE_ONLY_SAMPLERS = ["ddpm", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp"]


@pytest.mark.parametrize("name, steps, tolerance", FLOW_ODE_CASES)
def test_ode_samplers_follow_the_exact_flow_of_a_gaussian_on_a_flow_model(name, steps, tolerance):
    assert (_run(name, FlowGaussian(), steps) - (MU + S * _noise())).abs().max() < tolerance


@pytest.mark.parametrize("name", FLOW_SDE_SAMPLERS)
def test_stochastic_samplers_reach_the_data_distribution_on_a_flow_model(name):
    out = _run(name, FlowGaussian(), steps=300)
    # 4000 samples: the sample mean has std s / sqrt(4000) ~ 0.008, the sample std ~ 0.006.
    assert abs(out.mean().item() - MU) < 0.04
    assert abs(out.std().item() - S) < 0.03


# ER-SDE adds little noise at VE noise levels up to 1 and SA-Solver is stochastic over part of the schedule
# only, so read as VE they stay near the target; test_sampler_references checks their flow steps one by one.
NOISY_ENOUGH_TO_TELL = [name for name in FLOW_SDE_SAMPLERS if name not in ("er_sde", "sa_solver", "sa_solver_pece")]


@pytest.mark.parametrize("name", NOISY_ENOUGH_TO_TELL)
def test_read_as_a_ve_model_the_same_flow_states_come_out_wrong(name):
    """The same runs without the model sampling (VE formulas on flow states): far from the data distribution.
    This is what the flow formulas are for, and what makes the test above able to fail."""
    out = _run(name, flow_denoiser, steps=300)
    assert abs(out.mean().item() - MU) > 0.3


@pytest.mark.parametrize("name", VE_ONLY_SAMPLERS)
def test_samplers_comfyui_runs_with_ve_formulas_ignore_the_flow_parametrisation(name):
    assert torch.equal(_run(name, FlowGaussian(), steps=20), _run(name, flow_denoiser, steps=20))


def test_lcm_renoises_along_the_straight_path_of_a_flow_model():
    """With a consistency function (noisy point -> end of its ODE trajectory) LCM samples exactly."""

    class Consistency:
        model_sampling = FLOW

        def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            sigma = sigma.reshape(-1, 1)
            alpha = 1 - sigma
            return MU + S * (x - alpha * MU) / (alpha**2 * S**2 + sigma**2) ** 0.5

    out = _run("lcm", Consistency(), steps=8)
    assert abs(out.mean().item() - MU) < 0.04
    assert abs(out.std().item() - S) < 0.02
