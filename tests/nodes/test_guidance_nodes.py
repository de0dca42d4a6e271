"""The guidance nodes: ComfyUI's names, inputs, defaults, categories and outputs, and what each does to sampling
on the tiny SD1.5 checkpoint through KSampler or SamplerCustomAdvanced."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from diffusion import guidance_rules as rules
from graph.registry import NodeRegistry
from nodes import guidance_nodes
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.guidance_nodes import APG, CFGNorm, CFGZeroStar, DualCFGGuider, PerpNegGuider, RescaleCFG
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple
from nodes.sampling import BasicScheduler, CFGGuider, KSampler, KSamplerSelect, RandomNoise, SamplerCustomAdvanced
from tests.nodes.tiny_models import tiny_checkpoint

CFG = {"min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}
APG_TIPS = {
    "eta": "Controls the scale of the parallel guidance vector. Default CFG behavior at a setting of 1.",
    "norm_threshold": "Normalize guidance vector to this value, normalization disable at a setting of 0.",
    "momentum": "Controls a running average of guidance during diffusion, disabled at a setting of 0.",
}

PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}

# class_type: (category, display name, inputs after "model"/sockets as ComfyUI's object_info gives them,
#              outputs, output names, experimental)
SPECS: dict[str, tuple[str, str, dict[str, Any], list[str], list[str], bool]] = {
    "RescaleCFG": (
        "advanced/model", "RescaleCFG",
        {"model": ["MODEL"], "multiplier": ["FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}]},
        ["MODEL"], ["MODEL"], False,
    ),
    "CFGNorm": (
        "advanced/guidance", "CFGNorm",
        {"model": ["MODEL"], "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}]},
        ["MODEL"], ["patched_model"], True,
    ),
    "CFGZeroStar": ("advanced/guidance", "CFGZeroStar", {"model": ["MODEL"]}, ["MODEL"], ["patched_model"], False),
    "APG": (
        "sampling/custom_sampling", "Adaptive Projected Guidance",
        {
            "model": ["MODEL"],
            "eta": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": APG_TIPS["eta"]}],
            "norm_threshold": [
                "FLOAT", {"default": 5.0, "min": 0.0, "max": 50.0, "step": 0.1, "tooltip": APG_TIPS["norm_threshold"]}
            ],
            "momentum": [
                "FLOAT", {"default": 0.0, "min": -5.0, "max": 1.0, "step": 0.01, "tooltip": APG_TIPS["momentum"]}
            ],
        },
        ["MODEL"], ["MODEL"], False,
    ),
    "DualCFGGuider": (
        "sampling/custom_sampling/guiders", "DualCFGGuider",
        {
            "model": ["MODEL"], "cond1": ["CONDITIONING"], "cond2": ["CONDITIONING"], "negative": ["CONDITIONING"],
            "cfg_conds": ["FLOAT", {"default": 8.0, **CFG}], "cfg_cond2_negative": ["FLOAT", {"default": 8.0, **CFG}],
            "style": [["regular", "nested"]],
        },
        ["GUIDER"], ["GUIDER"], False,
    ),
    "PerpNegGuider": (
        "_for_testing", "PerpNegGuider",
        {
            "model": ["MODEL"], "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
            "empty_conditioning": ["CONDITIONING"], "cfg": ["FLOAT", {"default": 8.0, **CFG}],
            "neg_scale": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}],
        },
        ["GUIDER"], ["GUIDER"], True,
    ),
    "SkipLayerGuidanceDiT": (
        "advanced/guidance", "SkipLayerGuidanceDiT",
        {
            "model": ["MODEL"],
            "double_layers": ["STRING", {"default": "7, 8, 9", "advanced": True}],
            "single_layers": ["STRING", {"default": "7, 8, 9", "advanced": True}],
            "scale": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}],
            "start_percent": ["FLOAT", {"default": 0.01, **PERCENT, "advanced": True}],
            "end_percent": ["FLOAT", {"default": 0.15, **PERCENT, "advanced": True}],
            "rescaling_scale": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01}],
        },
        ["MODEL"], ["MODEL"], True,
    ),
    "SkipLayerGuidanceSD3": (
        "advanced/guidance", "SkipLayerGuidanceSD3",
        {
            "model": ["MODEL"],
            "layers": ["STRING", {"default": "7, 8, 9"}],
            "scale": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}],
            "start_percent": ["FLOAT", {"default": 0.01, **PERCENT}],
            "end_percent": ["FLOAT", {"default": 0.15, **PERCENT}],
        },
        ["MODEL"], ["MODEL"], True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("class_type", list(SPECS))
def test_the_node_is_comfyuis(class_type: str) -> None:
    registry = NodeRegistry()
    registry.register_module(guidance_nodes)
    info = registry.object_info()[class_type]
    category, display_name, inputs, outputs, output_names, experimental = SPECS[class_type]
    assert info["category"] == category and info["display_name"] == display_name
    assert info["input"] == {"required": inputs} and list(info["input"]["required"]) == list(inputs)
    assert info["output"] == outputs and info["output_name"] == output_names
    assert info.get("experimental", False) is experimental


@pytest.fixture
def sd15(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    return model, clip


def ksample(model: Any, clip: Any, cfg: float = 6.0, sampler: str = "euler") -> torch.Tensor:
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    latent = EmptyLatentImage(64, 64, 1)
    return KSampler(model, 7, 3, cfg, sampler, "normal", positive, negative, latent, 1.0)["samples"]


def custom(model: Any, guider: Any) -> torch.Tensor:
    sigmas = BasicScheduler(model, "normal", 3, 1.0)
    output, _ = SamplerCustomAdvanced(
        RandomNoise(3), guider, KSamplerSelect("euler"), sigmas, EmptyLatentImage(64, 64, 1)
    )
    return output["samples"]


class TestModelPatches:
    def test_each_patch_is_a_clone_with_its_hook_in_comfyuis_place(self, sd15) -> None:
        model, _ = sd15
        rescaled = RescaleCFG(model, 0.7)
        assert isinstance(rescaled.cfg_hooks().cfg_function, rules.RescaledCFG)
        (norm,) = CFGNorm(model, 1.0).cfg_hooks().post_cfg
        (zero_star,) = CFGZeroStar(model).cfg_hooks().post_cfg
        (apg,) = APG(model, 1.0, 5.0, 0.0).cfg_hooks().pre_cfg
        assert isinstance(norm, rules.CFGNormalisation) and isinstance(zero_star, rules.OptimizedScale)
        assert isinstance(apg, rules.AdaptiveProjection)
        assert model.model_options == {"transformer_options": {}} and rescaled.unet is model.unet
        chained = CFGZeroStar(CFGNorm(model, 0.5))
        assert [type(hook) for hook in chained.cfg_hooks().post_cfg] == [rules.CFGNormalisation, rules.OptimizedScale]

    @pytest.mark.parametrize(
        "patch", [lambda m: RescaleCFG(m, 0.7), lambda m: CFGNorm(m, 0.5), CFGZeroStar, lambda m: APG(m, 0.0, 5.0, 0.5)]
    )
    def test_a_patch_changes_what_ksampler_makes(self, sd15, patch) -> None:
        model, clip = sd15
        baseline = ksample(model, clip)
        patched = ksample(patch(model), clip)
        assert patched.shape == baseline.shape and bool(torch.isfinite(patched).all())
        assert not torch.allclose(patched, baseline, rtol=1e-3, atol=1e-3)
        assert torch.equal(ksample(model, clip), baseline)

    def test_rescale_multiplier_zero_is_plain_cfg(self, sd15) -> None:
        model, clip = sd15
        torch.testing.assert_close(ksample(RescaleCFG(model, 0.0), clip), ksample(model, clip), rtol=1e-4, atol=1e-3)

    def test_apg_with_eta_one_and_nothing_else_is_cfg_one_scale_higher(self, sd15) -> None:
        model, clip = sd15
        apg = APG(model, 1.0, 0.0, 0.0)
        torch.testing.assert_close(ksample(apg, clip, cfg=5.0), ksample(model, clip, cfg=6.0), rtol=1e-4, atol=1e-3)

    def test_patches_reach_cfg_pp_samplers(self, sd15) -> None:
        model, clip = sd15
        baseline = ksample(model, clip, sampler="euler_cfg_pp")
        assert not torch.allclose(ksample(CFGZeroStar(model), clip, sampler="euler_cfg_pp"), baseline)


class TestGuiders:
    def test_dual_cfg_with_the_same_two_prompts_is_cfg_from_the_negative(self, sd15) -> None:
        model, clip = sd15
        prompt, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
        expected = custom(model, CFGGuider(model, prompt, negative, 5.0))
        regular = custom(model, DualCFGGuider(model, prompt, prompt, negative, 3.0, 5.0, "regular"))
        torch.testing.assert_close(regular, expected, rtol=1e-4, atol=1e-3)

    def test_dual_cfg_guides_towards_cond1_and_nested_differs_from_regular(self, sd15) -> None:
        model, clip = sd15
        cond1, cond2 = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("a red boat", clip)
        negative = CLIPTextEncode("fog", clip)
        plain = custom(model, CFGGuider(model, cond2, negative, 5.0))
        regular = custom(model, DualCFGGuider(model, cond1, cond2, negative, 3.0, 5.0, "regular"))
        nested = custom(model, DualCFGGuider(model, cond1, cond2, negative, 3.0, 5.0, "nested"))
        assert not torch.allclose(regular, plain, rtol=1e-3, atol=1e-3)
        assert not torch.allclose(nested, regular, rtol=1e-3, atol=1e-3)

    def test_perp_neg_at_neg_scale_zero_is_cfg_from_the_empty_prompt(self, sd15) -> None:
        model, clip = sd15
        positive, negative, empty = (CLIPTextEncode(text, clip) for text in ("a lighthouse", "fog", ""))
        expected = custom(model, CFGGuider(model, positive, empty, 5.0))
        torch.testing.assert_close(
            custom(model, PerpNegGuider(model, positive, negative, empty, 5.0, 0.0)), expected, rtol=1e-4, atol=1e-3
        )
        assert not torch.allclose(custom(model, PerpNegGuider(model, positive, negative, empty, 5.0, 1.0)), expected)

    def test_guiders_apply_the_models_patches(self, sd15) -> None:
        model, clip = sd15
        positive, negative, empty = (CLIPTextEncode(text, clip) for text in ("a lighthouse", "fog", ""))
        for make in (
            lambda m: DualCFGGuider(m, positive, positive, negative, 3.0, 5.0, "regular"),
            lambda m: PerpNegGuider(m, positive, negative, empty, 5.0, 1.0),
        ):
            assert not torch.allclose(custom(model, make(CFGZeroStar(model))), custom(model, make(model)))
