"""ComfyUI's sampler functions in a MODEL's ``model_options``, called with exactly ComfyUI's arguments, and the
MODEL setters that put them there (``set_model_sampler_cfg_function`` ...), with ComfyUI's clone semantics."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from diffusion.cfg_hooks import CFGInputs
from diffusion.guidance import CFGGuider
from nodes.comfy_cfg_hooks import ComfyCFGFunction, ComfyPostCFGFunction, cfg_hooks
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple
from nodes.sampling import KSampler
from tests.diffusion.known_unet import MS, KnownUNet, known_x0, latent, prompt, state
from tests.nodes.tiny_models import tiny_checkpoint

POSITIVE, NEGATIVE = prompt(1.0), prompt(-2.0)
X, SIGMA = state(), torch.tensor([2.0])
COND, UNCOND = known_x0(X, SIGMA, 1.0), known_x0(X, SIGMA, -2.0)
MODEL = object()  # what the functions get as "model": the MODEL's ComfyUI view

# The keys of ComfyUI's comfy/samplers.py: cfg_function and sampling_function.
CFG_KEYS = {"cond", "uncond", "cond_scale", "timestep", "input", "sigma", "cond_denoised", "uncond_denoised",
            "model", "model_options", "input_cond", "input_uncond"}  # fmt: skip
POST_KEYS = {"denoised", "cond", "uncond", "cond_scale", "model", "uncond_denoised", "cond_denoised", "sigma",
             "model_options", "input"}  # fmt: skip
PRE_KEYS = {"conds", "conds_out", "cond_scale", "timestep", "input", "sigma", "model", "model_options"}


def guided(model_options: dict[str, Any], cfg: float = 6.0) -> torch.Tensor:
    hooks = cfg_hooks(model_options, MODEL)
    return CFGGuider(KnownUNet(), MS, latent(), POSITIVE, NEGATIVE, cfg, hooks=hooks)(X, SIGMA)


class TestArguments:
    def test_a_cfg_function_gets_noise_space_cond_and_uncond_and_returns_input_minus_x0(self) -> None:
        seen: list[dict[str, Any]] = []

        def halfway_in_noise_space(args: dict[str, Any]) -> torch.Tensor:
            seen.append(args)
            return args["uncond"] + (args["cond"] - args["uncond"]) * 0.5

        options = {"sampler_cfg_function": halfway_in_noise_space}
        out = guided(options)
        (args,) = seen
        assert set(args) == CFG_KEYS
        torch.testing.assert_close(args["cond"], X - COND)
        torch.testing.assert_close(args["uncond"], X - UNCOND)
        torch.testing.assert_close(args["cond_denoised"], COND)
        torch.testing.assert_close(args["uncond_denoised"], UNCOND)
        assert args["input"] is X and args["sigma"] is args["timestep"] and torch.equal(args["sigma"], SIGMA)
        assert args["cond_scale"] == 6.0 and args["model"] is MODEL and args["model_options"] is options
        assert args["input_cond"] is POSITIVE and args["input_uncond"] is NEGATIVE
        # x - (x - (u + c) / 2) in x0 space.
        torch.testing.assert_close(out, (COND + UNCOND) / 2, rtol=1e-5, atol=1e-5)

    def test_post_cfg_functions_get_the_guided_x0_and_the_conditionings(self) -> None:
        seen: list[dict[str, Any]] = []

        def record(args: dict[str, Any]) -> torch.Tensor:
            seen.append(args)
            return args["denoised"] * 2.0

        out = guided({"sampler_post_cfg_function": [record, record]})
        first, second = seen
        assert set(first) == POST_KEYS
        plain = UNCOND + (COND - UNCOND) * 6.0
        torch.testing.assert_close(first["denoised"], plain)
        torch.testing.assert_close(second["denoised"], plain * 2.0)
        torch.testing.assert_close(first["cond_denoised"], COND)
        torch.testing.assert_close(first["uncond_denoised"], UNCOND)
        assert first["cond"] is POSITIVE and first["uncond"] is NEGATIVE and first["input"] is X
        torch.testing.assert_close(out, plain * 4.0)

    def test_pre_cfg_functions_get_every_sides_x0_and_return_them_changed(self) -> None:
        seen: list[dict[str, Any]] = []

        def swap(args: dict[str, Any]) -> list[torch.Tensor]:
            seen.append(args)
            cond, uncond = args["conds_out"]
            return [uncond, cond]

        out = guided({"sampler_pre_cfg_function": [swap]})
        (args,) = seen
        assert set(args) == PRE_KEYS and args["conds"] == [POSITIVE, NEGATIVE]
        torch.testing.assert_close(args["conds_out"][0], COND)
        torch.testing.assert_close(out, COND + (UNCOND - COND) * 6.0)

    def test_at_cfg_one_the_negative_is_zeros_and_none_unless_cfg1_optimization_is_disabled(self) -> None:
        seen: list[dict[str, Any]] = []

        def record(args: dict[str, Any]) -> torch.Tensor:
            seen.append(args)
            return args["cond"]

        out = guided({"sampler_cfg_function": record}, cfg=1.0)
        assert torch.equal(seen[0]["uncond"], X) and seen[0]["input_uncond"] is None
        torch.testing.assert_close(out, COND)
        guided({"sampler_cfg_function": record, "disable_cfg1_optimization": True}, cfg=1.0)
        torch.testing.assert_close(seen[1]["uncond_denoised"], UNCOND)
        assert seen[1]["input_uncond"] is NEGATIVE


def test_looms_own_hooks_are_comfyui_functions_and_are_read_back_unwrapped() -> None:
    def halfway(inputs: CFGInputs) -> torch.Tensor:
        return (inputs.cond + inputs.uncond) / 2

    wrapped = ComfyCFGFunction(halfway)
    args = {"input": X, "sigma": SIGMA, "cond_denoised": COND, "uncond_denoised": UNCOND, "cond_scale": 6.0}
    torch.testing.assert_close(wrapped(args), X - (COND + UNCOND) / 2)
    post = ComfyPostCFGFunction(lambda inputs, d: d + inputs.cond)
    torch.testing.assert_close(post({**args, "denoised": UNCOND}), UNCOND + COND)
    hooks = cfg_hooks({"sampler_cfg_function": wrapped, "sampler_post_cfg_function": [post]}, MODEL)
    assert hooks.cfg_function is halfway and hooks.post_cfg == (post.hook,)


@pytest.fixture
def sd15(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    return model, CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)


def ksample(model: Any, positive: Any, negative: Any, cfg: float = 6.0) -> torch.Tensor:
    return KSampler(model, 7, 2, cfg, "euler", "normal", positive, negative, EmptyLatentImage(64, 64, 1), 1.0)[
        "samples"
    ]


class TestModelSetters:
    def test_a_comfyui_cfg_function_samples_through_ksampler_on_a_clone_only(self, sd15) -> None:
        model, positive, negative = sd15
        baseline = ksample(model, positive, negative)
        clone = model.clone()
        clone.set_model_sampler_cfg_function(lambda args: args["uncond"] + (args["cond"] - args["uncond"]) * 2.0)
        assert "sampler_cfg_function" not in model.model_options
        changed = ksample(clone, positive, negative)
        assert not torch.allclose(changed, baseline)
        plain = model.clone()
        plain.set_model_sampler_cfg_function(
            lambda args: args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]
        )
        torch.testing.assert_close(ksample(plain, positive, negative), baseline, rtol=1e-4, atol=1e-4)
        assert torch.equal(ksample(model, positive, negative), baseline)

    def test_a_three_parameter_cfg_function_is_comfyuis_older_form(self, sd15) -> None:
        model, positive, negative = sd15
        clone = model.clone()
        clone.set_model_sampler_cfg_function(lambda cond, uncond, cond_scale: uncond + (cond - uncond) * cond_scale)
        torch.testing.assert_close(
            ksample(clone, positive, negative), ksample(model, positive, negative), rtol=1e-4, atol=1e-4
        )

    def test_post_and_pre_functions_append_to_new_lists_and_can_disable_the_cfg1_shortcut(self, sd15) -> None:
        model, positive, negative = sd15
        first, second = model.clone(), None
        first.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
        second = first.clone()
        second.set_model_sampler_post_cfg_function(lambda args: args["denoised"], disable_cfg1_optimization=True)
        second.set_model_sampler_pre_cfg_function(lambda args: args["conds_out"])
        assert len(first.model_options["sampler_post_cfg_function"]) == 1
        assert len(second.model_options["sampler_post_cfg_function"]) == 2
        assert "disable_cfg1_optimization" not in first.model_options
        assert second.model_options["disable_cfg1_optimization"] is True
        assert len(second.model_options["sampler_pre_cfg_function"]) == 1

    def test_disabling_the_cfg1_shortcut_hands_post_functions_the_real_negative(self, sd15) -> None:
        model, positive, negative = sd15
        seen: list[torch.Tensor] = []

        def record(args: dict[str, Any]) -> torch.Tensor:
            seen.append(args["uncond_denoised"])
            return args["denoised"]

        shortcut = model.clone()
        shortcut.set_model_sampler_post_cfg_function(record)
        ksample(shortcut, positive, negative, cfg=1.0)
        assert all(not bool(uncond.any()) for uncond in seen)
        seen.clear()
        full = model.clone()
        full.set_model_sampler_post_cfg_function(record, disable_cfg1_optimization=True)
        result = ksample(full, positive, negative, cfg=1.0)
        assert seen and all(bool(uncond.any()) for uncond in seen)
        # The same cfg-1 result, up to the rounding of a UNet batch of 2 rather than 1.
        torch.testing.assert_close(result, ksample(model, positive, negative, cfg=1.0), rtol=1e-4, atol=1e-4)

    def test_honoured_functions_are_not_reported_as_ignored(self, sd15, caplog: pytest.LogCaptureFixture) -> None:
        model, positive, negative = sd15
        clone = model.clone()
        clone.set_model_sampler_post_cfg_function(lambda args: args["denoised"], disable_cfg1_optimization=True)
        with caplog.at_level(logging.DEBUG, logger="nodes.model_handles"):
            ksample(clone, positive, negative)
        assert not any("sampler_post_cfg_function" in r.getMessage() for r in caplog.records)
        assert not any("disable_cfg1_optimization" in r.getMessage() for r in caplog.records)
