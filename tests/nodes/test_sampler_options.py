"""The sampler nodes with options: ComfyUI's interface, and every option reaching the sampler function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

import nodes.sampler_options
from diffusion.samplers import SamplerSpec, get_sampler
from diffusion.samplers.cfg_pp import sample_euler_ancestral_cfg_pp
from diffusion.samplers.dpm_solver import sample_dpm_adaptive_flat
from diffusion.samplers.dpmpp import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from diffusion.samplers.er_sde import sample_er_sde
from diffusion.samplers.euler import sample_euler_ancestral
from diffusion.samplers.multistep import sample_lms
from diffusion.samplers.sa_solver import sample_sa_solver, tau_interval
from diffusion.samplers.seeds import sample_seeds_2
from graph.registry import NodeRegistry
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.loaders import CheckpointLoaderSimple
from nodes.sampler_options import (
    SamplerDPMAdaptative,
    SamplerDPMPP_2M_SDE,
    SamplerDPMPP_2S_Ancestral,
    SamplerDPMPP_3M_SDE,
    SamplerDPMPP_SDE,
    SamplerER_SDE,
    SamplerEulerAncestral,
    SamplerEulerAncestralCFGPP,
    SamplerLMS,
    SamplerSASolver,
    SamplerSEEDS2,
)
from nodes.sampling import BasicScheduler, KSamplerSelect, SamplerCustom
from tests.nodes.tiny_models import tiny_checkpoint

CATEGORY = "sampling/custom_sampling/samplers"


def unrounded(default: float, high: float = 100.0, low: float = 0.0, step: float = 0.01) -> list[Any]:
    return ["FLOAT", {"default": default, "min": low, "max": high, "step": step, "round": False}]


ETA_NOISE = {"eta": unrounded(1.0), "s_noise": unrounded(1.0)}
NOISE_DEVICE = {"noise_device": [["gpu", "cpu"]]}

#: ComfyUI's declarations: node -> (required inputs in widget order, display name).
SPEC: dict[str, tuple[dict[str, list[Any]], str]] = {
    "SamplerEulerAncestral": (ETA_NOISE, "SamplerEulerAncestral"),
    "SamplerEulerAncestralCFGPP": (
        {"eta": unrounded(1.0, high=1.0), "s_noise": unrounded(1.0, high=10.0)}, "SamplerEulerAncestralCFG++",
    ),
    "SamplerLMS": ({"order": ["INT", {"default": 4, "min": 1, "max": 100}]}, "SamplerLMS"),
    "SamplerDPMPP_3M_SDE": ({**ETA_NOISE, **NOISE_DEVICE}, "SamplerDPMPP_3M_SDE"),
    "SamplerDPMPP_2M_SDE": (
        {"solver_type": [["midpoint", "heun"]], **ETA_NOISE, **NOISE_DEVICE}, "SamplerDPMPP_2M_SDE",
    ),
    "SamplerDPMPP_SDE": ({**ETA_NOISE, "r": unrounded(0.5), **NOISE_DEVICE}, "SamplerDPMPP_SDE"),
    "SamplerDPMPP_2S_Ancestral": (ETA_NOISE, "SamplerDPMPP_2S_Ancestral"),
    "SamplerDPMAdaptative": (
        {
            "order": ["INT", {"default": 3, "min": 2, "max": 3}],
            "rtol": unrounded(0.05), "atol": unrounded(0.0078), "h_init": unrounded(0.05),
            "pcoeff": unrounded(0.0), "icoeff": unrounded(1.0), "dcoeff": unrounded(0.0),
            "accept_safety": unrounded(0.81), "eta": unrounded(0.0), "s_noise": unrounded(1.0),
        },
        "SamplerDPMAdaptative",
    ),
    "SamplerER_SDE": (
        {
            "solver_type": [["ER-SDE", "Reverse-time SDE", "ODE"]],
            "max_stage": ["INT", {"default": 3, "min": 1, "max": 3}],
            **ETA_NOISE,
        },
        "SamplerER_SDE",
    ),
    "SamplerSASolver": (
        {
            "model": ["MODEL"],
            "eta": unrounded(1.0, high=10.0),
            "sde_start_percent": ["FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.001}],
            "sde_end_percent": ["FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.001}],
            "s_noise": unrounded(1.0),
            "predictor_order": ["INT", {"default": 3, "min": 1, "max": 6}],
            "corrector_order": ["INT", {"default": 4, "min": 0, "max": 6}],
            "use_pece": ["BOOLEAN"],
            "simple_order_2": ["BOOLEAN"],
        },
        "SamplerSASolver",
    ),
    "SamplerSEEDS2": (
        {"solver_type": [["phi_1", "phi_2"]], **ETA_NOISE, "r": unrounded(0.5, high=1.0, low=0.01)},
        "SamplerSEEDS2",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    registry = NodeRegistry()
    registry.register_module(nodes.sampler_options)
    return registry.object_info()


def test_the_module_has_exactly_these_nodes(object_info) -> None:
    assert sorted(object_info) == sorted(SPEC)


@pytest.mark.parametrize("name", SPEC)
def test_the_interface_is_comfyui_s(object_info, name: str) -> None:
    inputs, display_name = SPEC[name]
    info = object_info[name]
    required = info["input"]["required"]
    for entry in required.values():
        if len(entry) > 1:
            entry[1].pop("tooltip", None)  # tooltips are Loom's own words
    assert set(info["input"]) == {"required"} and required == inputs
    assert info["input_order"] == {"required": list(inputs)}
    assert (info["output"], info["output_name"], info["category"]) == (["SAMPLER"], ["SAMPLER"], CATEGORY)
    assert info["display_name"] == display_name and info["output_node"] is False


@pytest.fixture
def sd15(folders: Folders) -> tuple[Any, Any]:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    return model, clip


def run(sd15: tuple[Any, Any], sampler: SamplerSpec, steps: int = 3) -> torch.Tensor:
    """``SamplerCustom`` with ``sampler`` on a noisy start, cfg 5, its own noise from seed 3."""
    model, clip = sd15
    sigmas = BasicScheduler(model, "karras", steps, 1.0)
    start = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    positive, negative = CLIPTextEncode("a red cube", clip), CLIPTextEncode("blurry", clip)
    return SamplerCustom(model, True, 3, 5.0, positive, negative, sampler, sigmas, start)[0]["samples"]


def bare(function: Callable[..., torch.Tensor], **options: Any) -> SamplerSpec:
    """The sampler function itself with ``options`` as keyword arguments, outside any node."""
    return SamplerSpec("bare", functools.partial(function, **options))


#: (node, its arguments, the sampler KSamplerSelect names for the defaults, the function, its keywords).
OPTIONS: list[tuple[Callable[..., SamplerSpec], tuple[Any, ...], str, Callable[..., torch.Tensor], dict[str, Any]]] = [
    (SamplerEulerAncestral, (0.5, 0.8), "euler_ancestral", sample_euler_ancestral, {"eta": 0.5, "s_noise": 0.8}),
    (
        SamplerEulerAncestralCFGPP, (0.5, 0.8), "euler_ancestral_cfg_pp", sample_euler_ancestral_cfg_pp,
        {"eta": 0.5, "s_noise": 0.8},
    ),
    (SamplerLMS, (1,), "lms", sample_lms, {"order": 1}),
    (SamplerDPMPP_3M_SDE, (0.5, 0.8, "cpu"), "dpmpp_3m_sde", sample_dpmpp_3m_sde, {"eta": 0.5, "s_noise": 0.8}),
    (
        SamplerDPMPP_2M_SDE, ("heun", 0.5, 0.8, "cpu"), "dpmpp_2m_sde", sample_dpmpp_2m_sde,
        {"eta": 0.5, "s_noise": 0.8, "solver_type": "heun"},
    ),
    (SamplerDPMPP_SDE, (0.5, 0.8, 0.3, "cpu"), "dpmpp_sde", sample_dpmpp_sde, {"eta": 0.5, "s_noise": 0.8, "r": 0.3}),
    (
        SamplerDPMPP_2S_Ancestral, (0.5, 0.8), "dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral,
        {"eta": 0.5, "s_noise": 0.8},
    ),
    (
        SamplerDPMAdaptative, (2, 0.2, 0.05, 0.2, 0.1, 0.9, 0.05, 0.7, 0.5, 0.8), "dpm_adaptive",
        sample_dpm_adaptive_flat,
        {
            "order": 2, "rtol": 0.2, "atol": 0.05, "h_init": 0.2, "pcoeff": 0.1, "icoeff": 0.9, "dcoeff": 0.05,
            "accept_safety": 0.7, "eta": 0.5, "s_noise": 0.8,
        },
    ),
    (SamplerER_SDE, ("ER-SDE", 2, 0.5, 0.8), "er_sde", sample_er_sde, {"max_stage": 2, "s_noise": 0.8}),
    (SamplerSEEDS2, ("phi_2", 0.5, 0.8, 0.7), "seeds_2", sample_seeds_2,
     {"eta": 0.5, "s_noise": 0.8, "r": 0.7, "solver_type": "phi_2"}),
]  # fmt: skip


@pytest.mark.parametrize("node, args, name, function, options", OPTIONS, ids=[case[0].__name__ for case in OPTIONS])
def test_the_options_reach_the_sampler_function(sd15, node, args, name, function, options) -> None:
    sampler = node(*args)
    assert sampler.name == name and get_sampler(name).function is sampler.function
    torch.testing.assert_close(run(sd15, sampler), run(sd15, bare(function, **options)), rtol=0, atol=0)
    assert not torch.allclose(run(sd15, sampler), run(sd15, KSamplerSelect(name)))


@pytest.mark.parametrize("node, args, name, function, options", OPTIONS, ids=[case[0].__name__ for case in OPTIONS])
def test_with_comfyui_s_defaults_the_node_is_the_named_sampler(sd15, node, args, name, function, options) -> None:
    defaults = [
        declared.options.get("default", declared.choices[0] if hasattr(declared, "choices") else None)
        for declared in node.__defaults__
    ]
    sampler = node(*defaults)
    torch.testing.assert_close(run(sd15, sampler), run(sd15, KSamplerSelect(sampler.name)), rtol=0, atol=0)


def test_the_reverse_time_sde_and_the_ode_use_the_power_noise_scale(sd15) -> None:
    sde = SamplerER_SDE("Reverse-time SDE", 3, 0.5, 0.8)
    expected = bare(sample_er_sde, s_noise=0.8, noise_scaler=lambda lam: lam**1.5)
    torch.testing.assert_close(run(sd15, sde), run(sd15, expected), rtol=0, atol=0)
    ode = bare(sample_er_sde, s_noise=0.0, noise_scaler=lambda lam: lam)
    torch.testing.assert_close(run(sd15, SamplerER_SDE("ODE", 3, 0.5, 0.8)), run(sd15, ode), rtol=0, atol=0)
    # The reverse-time SDE at eta 0 is the ODE.
    torch.testing.assert_close(
        run(sd15, SamplerER_SDE("Reverse-time SDE", 3, 0.0, 0.8)), run(sd15, ode), rtol=0, atol=0
    )
    assert not torch.allclose(run(sd15, sde), run(sd15, KSamplerSelect("er_sde")))


def test_sa_solver_takes_its_stochastic_interval_from_the_model_s_timesteps(sd15) -> None:
    model = sd15[0]
    sampler = SamplerSASolver(model, 0.5, 0.1, 0.9, 0.8, 2, 1, True, False)
    tau = tau_interval(model.sampling.percent_to_sigma(0.1), model.sampling.percent_to_sigma(0.9), 0.5)
    expected = bare(sample_sa_solver, tau_func=tau, s_noise=0.8, predictor_order=2, corrector_order=1, use_pece=True)
    torch.testing.assert_close(run(sd15, sampler), run(sd15, expected), rtol=0, atol=0)
    assert not torch.allclose(run(sd15, sampler), run(sd15, KSamplerSelect("sa_solver")))
    # ComfyUI's defaults (20% to 80%, eta 1) are the sa_solver of the sampler list.
    defaults = SamplerSASolver(model, 1.0, 0.2, 0.8, 1.0, 3, 4, False, False)
    torch.testing.assert_close(run(sd15, defaults), run(sd15, KSamplerSelect("sa_solver")), rtol=0, atol=0)
    pece = SamplerSASolver(model, 1.0, 0.2, 0.8, 1.0, 3, 4, True, False)
    torch.testing.assert_close(run(sd15, pece), run(sd15, KSamplerSelect("sa_solver_pece")), rtol=0, atol=0)


def test_sa_solver_refuses_the_simplified_second_order_it_does_not_have(sd15) -> None:
    with pytest.raises(ValueError, match="simple_order_2"):
        SamplerSASolver(sd15[0], 1.0, 0.2, 0.8, 1.0, 3, 4, False, True)


def test_seeds_2_covers_the_exponential_heun_samplers(sd15) -> None:
    """phi_2 with r 1 is exponential Heun: eta 0 the ODE sampler, eta 1 its SDE twin."""
    ode = SamplerSEEDS2("phi_2", 0.0, 1.0, 1.0)
    torch.testing.assert_close(run(sd15, ode), run(sd15, KSamplerSelect("exp_heun_2_x0")), rtol=0, atol=0)
    sde = SamplerSEEDS2("phi_2", 1.0, 1.0, 1.0)
    torch.testing.assert_close(run(sd15, sde), run(sd15, KSamplerSelect("exp_heun_2_x0_sde")), rtol=0, atol=0)


@pytest.mark.parametrize("node", [SamplerDPMPP_3M_SDE, SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE])
def test_noise_device_picks_the_gpu_twin_which_draws_the_same_noise(sd15, node) -> None:
    widgets = [d.options.get("default", getattr(d, "choices", [None])[0]) for d in node.__defaults__][:-1]
    on_gpu, on_cpu = node(*widgets, "gpu"), node(*widgets, "cpu")
    assert on_gpu.name == f"{on_cpu.name}_gpu" and on_gpu.options == on_cpu.options
    torch.testing.assert_close(run(sd15, on_gpu), run(sd15, on_cpu), rtol=0, atol=0)


def test_bound_options_leave_the_registry_alone_and_unknown_ones_are_refused() -> None:
    sampler = SamplerEulerAncestral(0.5, 0.8)
    assert dict(sampler.options) == {"eta": 0.5, "s_noise": 0.8} and dict(get_sampler("euler_ancestral").options) == {}
    assert sampler.takes_seed
    with pytest.raises(TypeError, match="takes no option 'order'"):
        get_sampler("euler_ancestral").with_options(order=2)
    assert dict(sampler.with_options(eta=0.25).options) == {"eta": 0.25, "s_noise": 0.8}
