"""Sampler registry: ComfyUI sampler names to functions sharing k-diffusion's contract.

Every sampler is ``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None,
**options) -> x`` where ``model(x, sigma, **extra_args)`` returns the denoised estimate and
``callback`` receives ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` once per step. Adding a
sampler is one function and one ``SamplerSpec`` below.

Two optional extras of the model are read where a sampler needs them, and a bare denoiser works
without them: ``model.with_uncond`` (``UncondDenoiser``) gives CFG++ samplers the unconditional
estimate of a call, and ``model.model_sampling`` (``ParametrisedDenoiser``) tells the samplers that
step in half-log-SNR, and the ancestral ones, whether the model is a rectified-flow one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from diffusion.samplers.cfg_pp import (
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
)
from diffusion.samplers.dpm_solver import sample_dpm_adaptive_flat, sample_dpm_fast
from diffusion.samplers.dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from diffusion.samplers.er_sde import sample_er_sde
from diffusion.samplers.euler import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_heunpp2,
)
from diffusion.samplers.multistep import (
    sample_deis,
    sample_gradient_estimation,
    sample_gradient_estimation_cfg_pp,
    sample_ipndm,
    sample_ipndm_v,
    sample_lms,
)
from diffusion.samplers.noise import BrownianTreeNoiseSampler, NoiseSampler, gaussian_noise_sampler
from diffusion.samplers.ode import Denoiser, ParametrisedDenoiser, StepCallback, UncondDenoiser
from diffusion.samplers.res_multistep import (
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from diffusion.samplers.sa_solver import sample_sa_solver, sample_sa_solver_pece
from diffusion.samplers.seeds import sample_exp_heun_2_x0, sample_exp_heun_2_x0_sde, sample_seeds_2, sample_seeds_3
from diffusion.samplers.stochastic import sample_ddpm, sample_lcm
from diffusion.samplers.unipc import sample_uni_pc, sample_uni_pc_bh2

__all__ = [
    "BrownianTreeNoiseSampler",
    "Denoiser",
    "NoiseSampler",
    "ParametrisedDenoiser",
    "SAMPLER_NAMES",
    "SamplerSpec",
    "StepCallback",
    "UncondDenoiser",
    "UnknownSamplerError",
    "gaussian_noise_sampler",
    "get_sampler",
]

SamplerFn = Callable[..., Tensor]


class UnknownSamplerError(ValueError):
    """A sampler name that is not in the registry."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown sampler {name!r}; known: {', '.join(SAMPLER_NAMES)}")


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler and what the pipeline must know about it.

    ``discard_penultimate_sigma``: ComfyUI computes one extra step for these samplers and drops
    the second-to-last sigma, because their final step (a second-order midpoint, or UniPC's
    first-order landing) gains more from a longer last step than from one more short one.

    ``options``: keyword arguments bound to every call of ``function`` (``with_options``), as
    ComfyUI's sampler-option nodes (``SamplerEulerAncestral``'s eta, ...) bind them to a sampler.
    """

    name: str
    function: SamplerFn
    discard_penultimate_sigma: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def with_options(self, **options: Any) -> SamplerSpec:
        """This sampler with ``options`` bound to its calls; a name its function does not take is refused here."""
        parameters = inspect.signature(self.function).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            unknown = sorted(set(options) - set(parameters))
            if unknown:
                raise TypeError(f"sampler {self.name!r} takes no option {', '.join(map(repr, unknown))}")
        return replace(self, options={**self.options, **options})

    @property
    def takes_seed(self) -> bool:
        """Whether the sampler draws noise of its own (ancestral, SDE, churn) and so needs the seed."""
        return "seed" in inspect.signature(self.function).parameters

    def __call__(self, *args, **kwargs) -> Tensor:
        return self.function(*args, **{**self.options, **kwargs})


# ComfyUI's "_gpu" samplers draw their Brownian-tree noise on the model's device instead of the CPU, so a
# seed gives other noise there than on the CPU. Loom draws every Brownian tree on the CPU from a seeded
# generator (diffusion.samplers.noise), the same on any device, so each "_gpu" name is its twin's function.
_SPECS = (
    SamplerSpec("euler", sample_euler),
    SamplerSpec("euler_cfg_pp", sample_euler_cfg_pp),
    SamplerSpec("euler_ancestral", sample_euler_ancestral),
    SamplerSpec("euler_ancestral_cfg_pp", sample_euler_ancestral_cfg_pp),
    SamplerSpec("heun", sample_heun),
    SamplerSpec("heunpp2", sample_heunpp2),
    SamplerSpec("exp_heun_2_x0", sample_exp_heun_2_x0),
    SamplerSpec("exp_heun_2_x0_sde", sample_exp_heun_2_x0_sde),
    SamplerSpec("dpm_2", sample_dpm_2, discard_penultimate_sigma=True),
    SamplerSpec("dpm_2_ancestral", sample_dpm_2_ancestral, discard_penultimate_sigma=True),
    SamplerSpec("lms", sample_lms),
    SamplerSpec("dpm_fast", sample_dpm_fast),
    SamplerSpec("dpm_adaptive", sample_dpm_adaptive_flat),
    SamplerSpec("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral),
    SamplerSpec("dpmpp_2s_ancestral_cfg_pp", sample_dpmpp_2s_ancestral_cfg_pp),
    SamplerSpec("dpmpp_sde", sample_dpmpp_sde),
    SamplerSpec("dpmpp_sde_gpu", sample_dpmpp_sde),
    SamplerSpec("dpmpp_2m", sample_dpmpp_2m),
    SamplerSpec("dpmpp_2m_cfg_pp", sample_dpmpp_2m_cfg_pp),
    SamplerSpec("dpmpp_2m_sde", sample_dpmpp_2m_sde),
    SamplerSpec("dpmpp_2m_sde_gpu", sample_dpmpp_2m_sde),
    SamplerSpec("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde_heun),
    SamplerSpec("dpmpp_2m_sde_heun_gpu", sample_dpmpp_2m_sde_heun),
    SamplerSpec("dpmpp_3m_sde", sample_dpmpp_3m_sde),
    SamplerSpec("dpmpp_3m_sde_gpu", sample_dpmpp_3m_sde),
    SamplerSpec("ddpm", sample_ddpm),
    SamplerSpec("lcm", sample_lcm),
    SamplerSpec("ipndm", sample_ipndm),
    SamplerSpec("ipndm_v", sample_ipndm_v),
    SamplerSpec("deis", sample_deis),
    SamplerSpec("res_multistep", sample_res_multistep),
    SamplerSpec("res_multistep_cfg_pp", sample_res_multistep_cfg_pp),
    SamplerSpec("res_multistep_ancestral", sample_res_multistep_ancestral),
    SamplerSpec("res_multistep_ancestral_cfg_pp", sample_res_multistep_ancestral_cfg_pp),
    SamplerSpec("gradient_estimation", sample_gradient_estimation),
    SamplerSpec("gradient_estimation_cfg_pp", sample_gradient_estimation_cfg_pp),
    SamplerSpec("er_sde", sample_er_sde),
    SamplerSpec("seeds_2", sample_seeds_2),
    SamplerSpec("seeds_3", sample_seeds_3),
    SamplerSpec("sa_solver", sample_sa_solver),
    SamplerSpec("sa_solver_pece", sample_sa_solver_pece),
    # ComfyUI's ddim is Euler that re-noises the kept cells of an inpainting with fresh noise each
    # step; Loom holds them with the start noise, as for every other sampler (diffusion.guidance.Inpainting).
    SamplerSpec("ddim", sample_euler),
    SamplerSpec("uni_pc", sample_uni_pc, discard_penultimate_sigma=True),
    SamplerSpec("uni_pc_bh2", sample_uni_pc_bh2, discard_penultimate_sigma=True),
)

_REGISTRY: dict[str, SamplerSpec] = {spec.name: spec for spec in _SPECS}

SAMPLER_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""The sampler names served to clients, in ComfyUI's order (ddim and the UniPC pair last)."""


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler called ``name``; raises ``UnknownSamplerError`` otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSamplerError(name) from None
