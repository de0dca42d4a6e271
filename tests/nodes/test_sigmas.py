"""The scheduler and sigma nodes: ComfyUI's interface, and sigmas equal to the formulas, the published
tables and ComfyUI's cutting rules."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import nodes.sigmas
from diffusion.schedules import ALIGN_YOUR_STEPS, beta_sigmas
from graph.registry import NodeRegistry
from nodes.folders import Folders
from nodes.loaders import CheckpointLoaderSimple
from nodes.model_sampling import ModelSamplingSD3
from nodes.sampling import BasicScheduler
from nodes.sigmas import (
    AlignYourStepsScheduler,
    BetaSamplingScheduler,
    ExponentialScheduler,
    ExtendIntermediateSigmas,
    FlipSigmas,
    KarrasScheduler,
    LaplaceScheduler,
    ManualSigmas,
    PolyexponentialScheduler,
    SamplingPercentToSigma,
    SDTurboScheduler,
    SetFirstSigma,
    SplitSigmas,
    SplitSigmasDenoise,
    VPScheduler,
)
from tests.diffusion.kdiffusion_ref import sampling as ksampling
from tests.nodes.tiny_models import tiny_checkpoint

SCHEDULERS = "sampling/custom_sampling/schedulers"
SIGMAS = "sampling/custom_sampling/sigmas"


def unrounded(default: float, low: float, high: float, step: float) -> list[Any]:
    return ["FLOAT", {"default": default, "min": low, "max": high, "step": step, "round": False}]


STEPS = ["INT", {"default": 20, "min": 1, "max": 10000}]
SIGMA_MAX = unrounded(14.614642, 0.0, 5000.0, 0.01)
SIGMA_MIN = unrounded(0.0291675, 0.0, 5000.0, 0.01)
DENOISE = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]

#: ComfyUI's declarations: node -> (required inputs in widget order, outputs, output names, category).
SPEC: dict[str, tuple[dict[str, list[Any]], list[str], list[str], str]] = {
    "KarrasScheduler": (
        {"steps": STEPS, "sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN, "rho": unrounded(7.0, 0.0, 100.0, 0.01)},
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "ExponentialScheduler": (
        {"steps": STEPS, "sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN}, ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "PolyexponentialScheduler": (
        {"steps": STEPS, "sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN, "rho": unrounded(1.0, 0.0, 100.0, 0.01)},
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "LaplaceScheduler": (
        {
            "steps": STEPS, "sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN,
            "mu": unrounded(0.0, -10.0, 10.0, 0.1), "beta": unrounded(0.5, 0.0, 10.0, 0.1),
        },
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "VPScheduler": (
        {
            "steps": STEPS, "beta_d": unrounded(19.9, 0.0, 5000.0, 0.01),
            "beta_min": unrounded(0.1, 0.0, 5000.0, 0.01), "eps_s": unrounded(0.001, 0.0, 1.0, 0.0001),
        },
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "BetaSamplingScheduler": (
        {
            "model": ["MODEL"], "steps": STEPS,
            "alpha": unrounded(0.6, 0.0, 50.0, 0.01), "beta": unrounded(0.6, 0.0, 50.0, 0.01),
        },
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "SDTurboScheduler": (
        {
            "model": ["MODEL"], "steps": ["INT", {"default": 1, "min": 1, "max": 10}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}],
        },
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "AlignYourStepsScheduler": (
        {
            "model_type": [["SD1", "SDXL", "SVD"]], "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
            "denoise": DENOISE,
        },
        ["SIGMAS"], ["SIGMAS"], SCHEDULERS,
    ),
    "SplitSigmas": (
        {"sigmas": ["SIGMAS"], "step": ["INT", {"default": 0, "min": 0, "max": 10000}]},
        ["SIGMAS", "SIGMAS"], ["high_sigmas", "low_sigmas"], SIGMAS,
    ),
    "SplitSigmasDenoise": (
        {"sigmas": ["SIGMAS"], "denoise": DENOISE}, ["SIGMAS", "SIGMAS"], ["high_sigmas", "low_sigmas"], SIGMAS,
    ),
    "FlipSigmas": ({"sigmas": ["SIGMAS"]}, ["SIGMAS"], ["SIGMAS"], SIGMAS),
    "SetFirstSigma": (
        {"sigmas": ["SIGMAS"], "sigma": unrounded(136.0, 0.0, 20000.0, 0.001)}, ["SIGMAS"], ["SIGMAS"], SIGMAS,
    ),
    "ExtendIntermediateSigmas": (
        {
            "sigmas": ["SIGMAS"], "steps": ["INT", {"default": 2, "min": 1, "max": 100}],
            "start_at_sigma": unrounded(-1.0, -1.0, 20000.0, 0.01),
            "end_at_sigma": unrounded(12.0, 0.0, 20000.0, 0.01),
            "spacing": [["linear", "cosine", "sine"]],
        },
        ["SIGMAS"], ["SIGMAS"], SIGMAS,
    ),
    "SamplingPercentToSigma": (
        {
            "model": ["MODEL"],
            "sampling_percent": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}],
            "return_actual_sigma": ["BOOLEAN", {"default": False}],
        },
        ["FLOAT"], ["sigma_value"], SIGMAS,
    ),
    "ManualSigmas": (
        {"sigmas": ["STRING", {"default": "1, 0.5", "multiline": False}]},
        ["SIGMAS"], ["SIGMAS"], "_for_testing/custom_sampling",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    registry = NodeRegistry()
    registry.register_module(nodes.sigmas)
    return registry.object_info()


def test_the_module_has_exactly_these_nodes(object_info) -> None:
    assert sorted(object_info) == sorted(SPEC)


@pytest.mark.parametrize("name", SPEC)
def test_the_interface_is_comfyui_s(object_info, name: str) -> None:
    inputs, outputs, output_names, category = SPEC[name]
    info = object_info[name]
    required = info["input"]["required"]
    for entry in required.values():
        if len(entry) > 1:
            entry[1].pop("tooltip", None)  # tooltips are Loom's own words
    assert set(info["input"]) == {"required"} and required == inputs
    assert info["input_order"] == {"required": list(inputs)}
    assert (info["output"], info["output_name"], info["category"]) == (outputs, output_names, category)
    assert info["display_name"] == name and info["output_node"] is False
    assert info.get("experimental", False) is (name == "ManualSigmas")


def close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)


def test_karras_is_equal_steps_in_sigma_to_the_one_over_rho() -> None:
    middle = ((math.sqrt(10.0) + math.sqrt(0.1)) / 2) ** 2
    close(KarrasScheduler(3, 10.0, 0.1, 2.0), [10.0, middle, 0.1, 0.0])


def test_exponential_and_polyexponential_are_equal_steps_in_log_sigma() -> None:
    close(ExponentialScheduler(3, 10.0, 0.1), [10.0, 1.0, 0.1, 0.0])
    torch.testing.assert_close(PolyexponentialScheduler(3, 10.0, 0.1, 1.0), ExponentialScheduler(3, 10.0, 0.1))
    # rho 2: the log-sigma ramp is squared, (1/2)^2 of the way from sigma_min's log to sigma_max's.
    close(PolyexponentialScheduler(3, 10.0, 0.1, 2.0), [10.0, 0.1 * 100**0.25, 0.1, 0.0])


def test_laplace_is_clamped_laplace_quantiles_with_no_final_zero() -> None:
    # x = 0 and 1 give log-sigma -+ beta log(1e-5), far outside the range and so clamped; x = 1/2 gives mu.
    close(LaplaceScheduler(3, 10.0, 0.1, 0.0, 0.5), [10.0, 1.0, 0.1])
    quarter = math.exp(0.3 - 0.5 * math.log(0.5 + 1e-5))
    close(LaplaceScheduler(5, 100.0, 0.001, 0.3, 0.5)[1:4], [quarter, math.exp(0.3), math.exp(0.6) / quarter])


def test_vp_follows_the_variance_preserving_sde() -> None:
    expected = [math.sqrt(math.expm1(t * t * 19.9 / 2 + 0.1 * t)) for t in (1.0, 0.001)]
    close(VPScheduler(2, 19.9, 0.1, 0.001), [*expected, 0.0])


def test_the_model_free_schedulers_match_k_diffusion_s_builders() -> None:
    torch.testing.assert_close(KarrasScheduler(7, 80.0, 0.002, 5.0), ksampling.get_sigmas_karras(7, 0.002, 80.0, 5.0))
    torch.testing.assert_close(ExponentialScheduler(7, 80.0, 0.002), ksampling.get_sigmas_exponential(7, 0.002, 80.0))
    torch.testing.assert_close(
        PolyexponentialScheduler(7, 80.0, 0.002, 3.0), ksampling.get_sigmas_polyexponential(7, 0.002, 80.0, 3.0)
    )
    # k-diffusion writes exp(.) - 1, ComfyUI (and Loom) expm1, which only differs in the last bits near t = 0.
    torch.testing.assert_close(
        VPScheduler(7, 15.0, 0.2, 0.01), ksampling.get_sigmas_vp(7, 15.0, 0.2, 0.01), rtol=1e-4, atol=0
    )


def test_beta_sampling_is_the_beta_scheduler_with_its_parameters(sd15) -> None:
    model = sd15
    torch.testing.assert_close(BetaSamplingScheduler(model, 10, 0.6, 0.6), BasicScheduler(model, "beta", 10, 1.0))
    torch.testing.assert_close(BetaSamplingScheduler(model, 10, 2.0, 0.5), beta_sigmas(model.sampling, 10, 2.0, 0.5))
    assert not torch.equal(BetaSamplingScheduler(model, 10, 2.0, 0.5), BetaSamplingScheduler(model, 10, 0.6, 0.6))


@pytest.fixture
def sd15(folders: Folders) -> Any:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")[0]


@pytest.mark.parametrize(
    "steps, denoise, timesteps",
    [
        (1, 1.0, [999]),
        (4, 1.0, [999, 899, 799, 699]),
        (4, 0.5, [499, 399, 299, 199]),
        (2, 0.75, [699, 599]),  # int(7.5): the start rounds towards less denoising
        (10, 0.3, [299, 199, 99]),  # fewer steps than asked where fewer timesteps remain
        (3, 0.0, []),
    ],
)
def test_sd_turbo_takes_the_model_s_sigmas_at_every_hundredth_timestep(
    sd15, steps: int, denoise: float, timesteps: list[int]
) -> None:
    table = sd15.sampling.sigmas
    expected = [float(table[t]) for t in timesteps] + [0.0]
    torch.testing.assert_close(SDTurboScheduler(sd15, steps, denoise), torch.tensor(expected), rtol=1e-6, atol=0)


@pytest.mark.parametrize("model_type", ["SD1", "SDXL", "SVD"])
def test_align_your_steps_at_ten_steps_is_the_published_table(model_type: str) -> None:
    table = list(ALIGN_YOUR_STEPS[model_type])
    close(AlignYourStepsScheduler(model_type, 10, 1.0), table[:-1] + [0.0])
    assert ALIGN_YOUR_STEPS["SD1"][:3] == (14.6146412293, 6.4745760956, 3.8636745985)
    assert ALIGN_YOUR_STEPS["SDXL"][-2:] == (0.1114188177, 0.0291671582)
    assert ALIGN_YOUR_STEPS["SVD"][:2] == (700.0, 54.5)


def test_align_your_steps_interpolates_log_linearly_for_other_step_counts() -> None:
    table = ALIGN_YOUR_STEPS["SD1"]
    twenty = AlignYourStepsScheduler("SD1", 20, 1.0)
    assert twenty.shape == (21,) and twenty[-1] == 0
    close(twenty[0:20:2], list(table[:10]))
    # Halfway between two knots in log-sigma: their geometric mean.
    close(twenty[1:21:2], [math.sqrt(a * b) for a, b in zip(table, table[1:])])
    close(AlignYourStepsScheduler("SD1", 5, 1.0), list(table[0:10:2]) + [0.0])


def test_align_your_steps_denoise_keeps_the_rounded_tail() -> None:
    full = AlignYourStepsScheduler("SDXL", 10, 1.0)
    torch.testing.assert_close(AlignYourStepsScheduler("SDXL", 10, 0.5), full[-6:])
    torch.testing.assert_close(AlignYourStepsScheduler("SDXL", 10, 0.45), full[-5:])  # round(4.5) is 4
    torch.testing.assert_close(AlignYourStepsScheduler("SDXL", 10, 0.36), full[-5:])  # round(3.6) is 4
    assert AlignYourStepsScheduler("SDXL", 10, 0.0).numel() == 0


SCHEDULE = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])


def test_split_sigmas_shares_the_sigma_at_the_cut() -> None:
    high, low = SplitSigmas(SCHEDULE, 2)
    assert high.tolist() == [5.0, 4.0, 3.0] and low.tolist() == [3.0, 2.0, 1.0, 0.0]
    high, low = SplitSigmas(SCHEDULE, 0)
    assert high.tolist() == [5.0] and torch.equal(low, SCHEDULE)
    high, low = SplitSigmas(SCHEDULE, 20)
    assert torch.equal(high, SCHEDULE) and low.numel() == 0


def test_split_sigmas_denoise_gives_the_low_part_the_rounded_share_of_the_steps() -> None:
    high, low = SplitSigmasDenoise(SCHEDULE, 0.4)
    assert high.tolist() == [5.0, 4.0, 3.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = SplitSigmasDenoise(SCHEDULE, 1.0)
    assert high.tolist() == [5.0] and torch.equal(low, SCHEDULE)
    # As in ComfyUI: no low steps leaves the high part empty (sigmas[:-0]).
    high, low = SplitSigmasDenoise(SCHEDULE, 0.05)
    assert high.numel() == 0 and low.tolist() == [0.0]


def test_flip_sigmas_reverses_and_lifts_a_leading_zero() -> None:
    given = SCHEDULE.clone()
    assert FlipSigmas(given).tolist() == pytest.approx([0.0001, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.equal(given, SCHEDULE)
    assert FlipSigmas(torch.tensor([0.5, 1.0])).tolist() == [1.0, 0.5]
    assert FlipSigmas(torch.zeros(0)).numel() == 0


def test_set_first_sigma_replaces_only_the_first_in_a_copy() -> None:
    given = SCHEDULE.clone()
    assert SetFirstSigma(given, 136.0).tolist() == [136.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert torch.equal(given, SCHEDULE)


def test_extend_intermediate_sigmas_splits_the_steps_in_the_window() -> None:
    schedule = torch.tensor([14.0, 10.0, 5.0, 0.0])
    # Steps starting at 14 and 10 are at or above end_at_sigma 6; the one starting at 5 is not.
    close(ExtendIntermediateSigmas(schedule, 2, -1.0, 6.0, "linear"), [14.0, 12.0, 10.0, 7.5, 5.0, 0.0])
    close(ExtendIntermediateSigmas(schedule, 2, 12.0, 6.0, "linear"), [14.0, 10.0, 7.5, 5.0, 0.0])
    close(ExtendIntermediateSigmas(schedule, 1, -1.0, 0.0, "linear"), [14.0, 10.0, 5.0, 0.0])
    # "cosine" eases with sin(x pi/2), "sine" with 1 - cos(x pi/2), as ComfyUI names them.
    eased = [math.sin(math.pi / 6), math.sin(math.pi / 3)]
    close(ExtendIntermediateSigmas(schedule, 3, 20.0, 11.0, "cosine"), [14.0, *(14 - 4 * f for f in eased), 10, 5, 0])
    eased = [1 - math.cos(math.pi / 6), 1 - math.cos(math.pi / 3)]
    close(ExtendIntermediateSigmas(schedule, 3, 20.0, 11.0, "sine"), [14.0, *(14 - 4 * f for f in eased), 10, 5, 0])


def test_sampling_percent_to_sigma_is_the_model_s_sigma_at_that_point(sd15) -> None:
    sampling = sd15.sampling
    assert SamplingPercentToSigma(sd15, 0.5, False) == pytest.approx(float(sampling.sigma(torch.tensor(499.5))))
    assert SamplingPercentToSigma(sd15, 0.0, False) == 999999999.9
    assert SamplingPercentToSigma(sd15, 1.0, False) == 0.0
    assert SamplingPercentToSigma(sd15, 0.0, True) == pytest.approx(sampling.sigma_max)
    assert SamplingPercentToSigma(sd15, 1.0, True) == pytest.approx(sampling.sigma_min)
    assert SamplingPercentToSigma(sd15, 0.5, True) == SamplingPercentToSigma(sd15, 0.5, False)
    flow = ModelSamplingSD3(sd15, 3.0)
    assert SamplingPercentToSigma(flow, 0.0, False) == 1.0
    assert SamplingPercentToSigma(flow, 0.5, False) == pytest.approx(0.75)  # 3 t / (1 + 2 t) at t = 1/2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1, 0.5", [1.0, 0.5]),
        ("14.6 7.0;3,-1 +2 .5\n0", [14.6, 7.0, 3.0, -1.0, 2.0, 0.5, 0.0]),
        ("[0.9, 0.4, 0]", [0.9, 0.4, 0.0]),
        ("1e-3", [1.0, -3.0]),  # no exponents in ComfyUI's syntax
        ("none", []),
    ],
)
def test_manual_sigmas_reads_the_numbers_in_the_text(text: str, expected: list[float]) -> None:
    close(ManualSigmas(text), expected)


def test_manual_sigmas_refuses_a_number_with_two_dots_in_a_row() -> None:
    with pytest.raises(ValueError, match="ManualSigmas cannot read"):
        ManualSigmas("1..5, 0")
