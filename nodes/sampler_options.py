"""Sampler nodes with options: ComfyUI's ``Sampler*`` nodes that give a SAMPLER with its keywords set.

``KSamplerSelect`` picks a sampler by name with the defaults of its function; these nodes pick one and
bind the options they expose (eta, s_noise, the solver variant, ...) to the sampler function's keyword
arguments (``SamplerSpec.with_options``), for ``SamplerCustom`` and ``SamplerCustomAdvanced``.

``noise_device`` is accepted as ComfyUI declares it and picks the ``_gpu`` twin for ``gpu``, but both
twins draw their noise on the CPU in Loom, so the choice does not change the picture.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from diffusion.samplers import SamplerSpec, get_sampler
from diffusion.samplers.sa_solver import tau_interval
from graph.declare import Boolean, Combo, Float, Int, Output, Socket, node
from nodes.sigmas import UnroundedFloat

__all__ = [
    "SAMPLERS_CATEGORY", "SamplerDPMAdaptative", "SamplerDPMPP_2M_SDE", "SamplerDPMPP_2S_Ancestral",
    "SamplerDPMPP_3M_SDE", "SamplerDPMPP_SDE", "SamplerER_SDE", "SamplerEulerAncestral",
    "SamplerEulerAncestralCFGPP", "SamplerLMS", "SamplerSASolver", "SamplerSEEDS2",
]  # fmt: skip

#: The menu path of ComfyUI's sampler nodes, as ``KSamplerSelect`` uses it.
SAMPLERS_CATEGORY = "sampling/custom_sampling/samplers"

_NOISE_DEVICES = ["gpu", "cpu"]


def _option(default: float, max: float = 100.0, tooltip: str | None = None) -> UnroundedFloat:
    """The declaration ComfyUI gives eta, s_noise and most other sampler options."""
    return UnroundedFloat(default, min=0.0, max=max, step=0.01, tooltip=tooltip)


def _on_device(name: str, noise_device: str) -> SamplerSpec:
    return get_sampler(name if noise_device == "cpu" else f"{name}_gpu")


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerEulerAncestral(eta=_option(1.0), s_noise=_option(1.0)):
    """Euler ancestral: eta scales the noise re-added each step (0 is plain Euler), s_noise scales that noise."""
    return get_sampler("euler_ancestral").with_options(eta=eta, s_noise=s_noise)


@node(category=SAMPLERS_CATEGORY, display_name="SamplerEulerAncestralCFG++", outputs=[Output("SAMPLER")])
def SamplerEulerAncestralCFGPP(eta=_option(1.0, max=1.0), s_noise=_option(1.0, max=10.0)):
    """Euler ancestral with CFG++ (renoising with the unconditional prediction)."""
    return get_sampler("euler_ancestral_cfg_pp").with_options(eta=eta, s_noise=s_noise)


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerLMS(order=Int(4, min=1, max=100)):
    """Linear multistep: the step uses the last ``order`` derivatives."""
    return get_sampler("lms").with_options(order=order)


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerDPMPP_3M_SDE(eta=_option(1.0), s_noise=_option(1.0), noise_device=Combo(_NOISE_DEVICES)):
    """DPM-Solver++(3M) SDE with its noise strength and scale."""
    return _on_device("dpmpp_3m_sde", noise_device).with_options(eta=eta, s_noise=s_noise)


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerDPMPP_2M_SDE(
    solver_type=Combo(["midpoint", "heun"]),
    eta=_option(1.0),
    s_noise=_option(1.0),
    noise_device=Combo(_NOISE_DEVICES),
):
    """DPM-Solver++(2M) SDE with its second-order correction (midpoint or Heun) and noise settings."""
    sampler = _on_device("dpmpp_2m_sde", noise_device)
    return sampler.with_options(eta=eta, s_noise=s_noise, solver_type=solver_type)


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerDPMPP_SDE(eta=_option(1.0), s_noise=_option(1.0), r=_option(0.5), noise_device=Combo(_NOISE_DEVICES)):
    """DPM-Solver++ SDE: r places the intermediate evaluation within each step."""
    return _on_device("dpmpp_sde", noise_device).with_options(eta=eta, s_noise=s_noise, r=r)


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerDPMPP_2S_Ancestral(eta=_option(1.0), s_noise=_option(1.0)):
    """DPM-Solver++(2S) ancestral with its noise strength and scale."""
    return get_sampler("dpmpp_2s_ancestral").with_options(eta=eta, s_noise=s_noise)


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerDPMAdaptative(
    order=Int(3, min=2, max=3),
    rtol=_option(0.05),
    atol=_option(0.0078),
    h_init=_option(0.05),
    pcoeff=_option(0.0),
    icoeff=_option(1.0),
    dcoeff=_option(0.0),
    accept_safety=_option(0.81),
    eta=_option(0.0),
    s_noise=_option(1.0),
):
    """Adaptive DPM-Solver: the tolerances and PID coefficients of its step-size control, and its noise."""
    return get_sampler("dpm_adaptive").with_options(
        order=order,
        rtol=rtol,
        atol=atol,
        h_init=h_init,
        pcoeff=pcoeff,
        icoeff=icoeff,
        dcoeff=dcoeff,
        accept_safety=accept_safety,
        eta=eta,
        s_noise=s_noise,
    )


def _reverse_time_sde_scaler(eta: float) -> Callable[[Tensor], Tensor]:
    """The noise scale ``phi(lambda) = lambda^(eta + 1)`` that turns ER-SDE-Solver into a solver of the plain
    reverse-time SDE with stochasticity eta (Cui et al. 2023; eta 0 is the probability-flow ODE)."""

    def scale(lam: Tensor) -> Tensor:
        return lam ** (eta + 1)

    return scale


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerER_SDE(
    solver_type=Combo(["ER-SDE", "Reverse-time SDE", "ODE"]),
    max_stage=Int(3, min=1, max=3),
    eta=_option(1.0, tooltip="How random the reverse-time SDE is (0: the ODE). The ER-SDE type does not use it."),
    s_noise=_option(1.0),
):
    """ER-SDE-Solver with its paper's noise scale, or solving the reverse-time SDE (eta) or the ODE.

    eta applies to the reverse-time SDE only; the ODE, and that SDE at eta 0, add no noise.
    """
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        eta, s_noise = 0.0, 0.0
    noise_scaler = None if solver_type == "ER-SDE" else _reverse_time_sde_scaler(eta)
    return get_sampler("er_sde").with_options(s_noise=s_noise, noise_scaler=noise_scaler, max_stage=max_stage)


_PECE = Boolean()
_SIMPLE_ORDER_2 = Boolean()
# ComfyUI declares these two switches without a default; the editor shows them off.
_PECE.options.pop("default")
_SIMPLE_ORDER_2.options.pop("default")


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerSASolver(
    model=Socket("MODEL"),
    eta=_option(1.0, max=10.0),
    sde_start_percent=Float(0.2, min=0.0, max=1.0, step=0.001),
    sde_end_percent=Float(0.8, min=0.0, max=1.0, step=0.001),
    s_noise=_option(1.0),
    predictor_order=Int(3, min=1, max=6),
    corrector_order=Int(4, min=0, max=6),
    use_pece=_PECE,
    simple_order_2=_SIMPLE_ORDER_2,
):
    """SA-Solver, stochastic (strength eta) between the two fractions of the process and an ODE outside them.

    Loom's SA-Solver has no simplified second-order coefficients, so ``simple_order_2`` is refused.
    """
    if simple_order_2:
        raise ValueError("SamplerSASolver: simple_order_2 is not supported by Loom's SA-Solver; turn it off")
    sampling = model.sampling
    tau = tau_interval(sampling.percent_to_sigma(sde_start_percent), sampling.percent_to_sigma(sde_end_percent), eta)
    return get_sampler("sa_solver").with_options(
        tau_func=tau,
        s_noise=s_noise,
        predictor_order=predictor_order,
        corrector_order=corrector_order,
        use_pece=bool(use_pece),
    )


@node(category=SAMPLERS_CATEGORY, outputs=[Output("SAMPLER")])
def SamplerSEEDS2(
    solver_type=Combo(["phi_1", "phi_2"]),
    eta=_option(1.0, tooltip="Strength of the noise each step injects (0: deterministic)."),
    s_noise=_option(1.0, tooltip="Multiplier of that noise."),
    r=UnroundedFloat(
        0.5, min=0.01, max=1.0, step=0.01, tooltip="Where in each step the second model call falls, as a fraction."
    ),
):
    """SEEDS-2: r places the second model call within each step; phi_2 with r 1 and eta 0 is exp_heun_2_x0,
    with eta 1 exp_heun_2_x0_sde."""
    return get_sampler("seeds_2").with_options(eta=eta, s_noise=s_noise, r=r, solver_type=solver_type)
