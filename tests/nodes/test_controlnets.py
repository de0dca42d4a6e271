"""ControlNet nodes: ComfyUI's specs, loading, and sampling that equals a hand-written loop calling the UNet with
the ControlNet's residuals at the steps inside its window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from diffusion import guidance
from diffusion.control_lora import tiny_control_lora_tensors
from diffusion.controlnet import ControlNet, ControlResiduals, fit_hint, load_controlnet, tiny_controlnet_tensors
from diffusion.controlnet_union import tiny_controlnet_union_tensors
from diffusion.samplers import get_sampler
from diffusion.sampling import prepare_noise, sample
from diffusion.schedules import denoise_sigmas
from diffusion.t2i_adapter import T2IAdapter, fit_adapter_hint, tiny_t2i_adapter_tensors
from diffusion.tiny import tiny_checkpoint_tensors, tiny_unet_config
from diffusion.tiny_parts import write_tiny_file
from diffusion.unet_config import CheckpointLayoutError
from graph.registry import NodeRegistry
from nodes import controlnets
from nodes.conditioning import CLIPTextEncode
from nodes.controlnet_handles import ControlNetHandle, ControlNetMismatchError
from nodes.controlnets import (
    ControlNetApply,
    ControlNetApplyAdvanced,
    ControlNetLoader,
    DiffControlNetLoader,
    SetUnionControlNetType,
)
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple, LoraLoaderModelOnly, UNETLoader
from nodes.model_handles import ModelHandle
from nodes.runtime import Runtime
from nodes.sampling import KSampler
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora

STRENGTH = {"min": 0.0, "max": 10.0, "step": 0.01}
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
# class_type: (category, display name, inputs as ComfyUI's object_info gives them, outputs, output names, deprecated)
SPECS: dict[str, tuple[str, str, dict[str, dict[str, Any]], list[str], list[str], bool]] = {
    "ControlNetLoader": (
        "loaders", "Load ControlNet Model", {"required": {"control_net_name": [[], {"model_folder": "controlnet"}]}},
        ["CONTROL_NET"], ["CONTROL_NET"], False,
    ),
    "DiffControlNetLoader": (
        "loaders", "Load ControlNet Model (diff)",
        {"required": {"model": ["MODEL"], "control_net_name": [[], {"model_folder": "controlnet"}]}},
        ["CONTROL_NET"], ["CONTROL_NET"], False,
    ),
    "ControlNetApply": (
        "conditioning/controlnet", "Apply ControlNet (OLD)",
        {"required": {
            "conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
            "strength": ["FLOAT", {"default": 1.0, **STRENGTH}],
        }},
        ["CONDITIONING"], ["CONDITIONING"], True,
    ),
    "ControlNetApplyAdvanced": (
        "conditioning/controlnet", "Apply ControlNet",
        {
            "required": {
                "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
                "image": ["IMAGE"], "strength": ["FLOAT", {"default": 1.0, **STRENGTH}],
                "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}],
                "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}],
            },
            "optional": {"vae": ["VAE"]},
        },
        ["CONDITIONING", "CONDITIONING"], ["positive", "negative"], False,
    ),
    "ControlNetApplySD3": (
        "conditioning/controlnet", "Apply Controlnet with VAE",
        {"required": {
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
            "vae": ["VAE"], "image": ["IMAGE"], "strength": ["FLOAT", {"default": 1.0, **STRENGTH}],
            "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}],
            "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}],
        }},
        ["CONDITIONING", "CONDITIONING"], ["positive", "negative"], True,
    ),
    "ControlNetInpaintingAliMamaApply": (
        "conditioning/controlnet", "ControlNetInpaintingAliMamaApply",
        {"required": {
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
            "vae": ["VAE"], "image": ["IMAGE"], "mask": ["MASK"], "strength": ["FLOAT", {"default": 1.0, **STRENGTH}],
            "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}],
            "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}],
        }},
        ["CONDITIONING", "CONDITIONING"], ["positive", "negative"], False,
    ),
    "SetUnionControlNetType": (
        "conditioning/controlnet", "SetUnionControlNetType",
        {"required": {"control_net": ["CONTROL_NET"], "type": [[
            "auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
            "segment", "tile", "repaint",
        ]]}},
        ["CONTROL_NET"], ["CONTROL_NET"], False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("class_type", list(SPECS))
def test_the_node_is_comfyuis(class_type: str) -> None:
    registry = NodeRegistry()
    registry.register_module(controlnets)
    info = registry.object_info()[class_type]
    category, display_name, inputs, outputs, output_names, deprecated = SPECS[class_type]
    assert info["category"] == category and info["display_name"] == display_name
    assert info["input"] == inputs
    for section, declared in inputs.items():
        assert list(info["input"][section]) == list(declared)
    assert info["output"] == outputs and info["output_name"] == output_names
    assert info.get("deprecated", False) is deprecated


# ---------------------------------------------------------------- fixtures and the hand-written loop


@pytest.fixture
def sd15(folders: Folders) -> tuple[ModelHandle, Any]:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    return model, clip


def controlnet_file(folders: Folders, name: str, family: str = "sd15", seed: int = 0) -> str:
    write_tiny_file(folders.models / "controlnet" / name, family, "controlnet", seed=seed)
    return name


def picture(seed: int = 0, size: tuple[int, int] = (48, 40)) -> torch.Tensor:
    return torch.rand(1, *size, 3, generator=torch.Generator().manual_seed(seed))


Control = tuple[ControlNet | T2IAdapter, torch.Tensor, float, float, float]  # module, IMAGE, strength, start, end


class HandGuider:
    """CFG written out: one UNet call per side, each with the residuals of the ControlNets given for it, at the
    steps inside each one's window (checked on sigma, as ComfyUI converts percents)."""

    inpainting: guidance.Inpainting | None = None

    def __init__(
        self,
        model: ModelHandle,
        positive: torch.Tensor,
        negative: torch.Tensor,
        cfg: float,
        controls: tuple[list[Control], list[Control]],
    ) -> None:
        self.model_sampling = model.sampling
        self.unet = model.unet
        self.sides = ((positive, controls[0]), (negative, controls[1]))
        self.cfg = cfg
        self.controlled_steps = 0

    def residuals(
        self, x_in: torch.Tensor, sigma: float, t: torch.Tensor, context: torch.Tensor, controls: list[Control]
    ):
        total: ControlResiduals | None = None
        for module, image, strength, start, end in controls:
            window = self.model_sampling.percent_to_sigma(end) <= sigma <= self.model_sampling.percent_to_sigma(start)
            if window:
                if isinstance(module, T2IAdapter):
                    own = module(fit_adapter_hint(image.movedim(-1, 1), x_in.shape[-2], x_in.shape[-1], module.config))
                else:
                    hint = fit_hint(image.movedim(-1, 1), 8 * x_in.shape[-2], 8 * x_in.shape[-1])
                    own = module(x_in, hint, t, context)
                own = own.scaled(strength).mapped(lambda r: r.expand(x_in.shape[0], *r.shape[1:]))
                total = own if total is None else own + total
        return total

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sampling = self.model_sampling
        x_in, t = sampling.calculate_input(sigma, x), sampling.timestep(sigma)
        denoised = []
        with torch.no_grad():
            for context, controls in self.sides:
                control = self.residuals(x_in, float(sigma[0]), t, context, controls)
                self.controlled_steps += control is not None
                eps = self.unet(x_in, t, context) if control is None else self.unet(x_in, t, context, control=control)
                denoised.append(sampling.calculate_denoised(sigma, eps, x))
        return denoised[1] + (denoised[0] - denoised[1]) * self.cfg


STEPS, SEED, CFG = 5, 3, 6.0


def ksample(model: ModelHandle, positive: list, negative: list, cfg: float = CFG) -> torch.Tensor:
    return KSampler(model, SEED, STEPS, cfg, "euler", "normal", positive, negative, EmptyLatentImage(64, 64, 1), 1.0)[
        "samples"
    ]


def by_hand(model: ModelHandle, positive: list, negative: list, controls: tuple[list[Control], list[Control]]):
    latent = model.latent_format.to_model(torch.zeros(1, 4, 8, 8))
    sigmas = denoise_sigmas(model.sampling, "normal", STEPS, 1.0)
    guider = HandGuider(model, positive[0][0], negative[0][0], CFG, controls)
    with model.unet_fn():
        result = sample(guider, get_sampler("euler"), sigmas, latent, prepare_noise(latent, SEED), seed=SEED)
    return model.latent_format.from_model(result), guider.controlled_steps


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding, relative to the latent's scale (the tiny random model's latents reach
    hundreds): Loom batches both sides and their ControlNet rows into one call, the hand loop calls per side,
    and five steps carry the last-bit differences along. A wrong residual moves latents by whole units."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


# ---------------------------------------------------------------- sampling


def test_ksampler_with_a_windowed_controlnet_equals_the_hand_written_loop(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "control_v11p_sd15_canny.safetensors"))
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, image, 0.8, 0.2, 0.7)
    control = (control_net.module, image, 0.8, 0.2, 0.7)
    expected, controlled = by_hand(model, positive, negative, ([control], [control]))
    assert 0 < controlled < 2 * STEPS  # the window takes some steps and leaves others
    close(ksample(model, pos, neg), expected)
    assert not torch.allclose(ksample(model, pos, neg), ksample(model, positive, negative), atol=1e-3)


def test_strength_zero_is_no_controlnet(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "cn.safetensors"))
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 0.0, 0.0, 1.0)
    assert pos is positive and neg is negative
    assert ControlNetApply(positive, control_net, picture(), 0.0) is positive
    assert torch.equal(ksample(model, pos, neg), ksample(model, positive, negative))


def test_two_chained_controlnets_add_their_residuals(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    first = ControlNetLoader(controlnet_file(folders, "a.safetensors", seed=1))
    second = ControlNetLoader(controlnet_file(folders, "b.safetensors", seed=2))
    one, two = picture(1), picture(2, (64, 64))
    pos, neg = ControlNetApplyAdvanced(positive, negative, first, one, 0.7, 0.0, 1.0)
    pos, neg = ControlNetApplyAdvanced(pos, neg, second, two, 1.3, 0.0, 0.5)
    assert pos[0][1]["control"].previous is neg[0][1]["control"].previous is not None
    chain = [(first.module, one, 0.7, 0.0, 1.0), (second.module, two, 1.3, 0.0, 0.5)]
    expected, _ = by_hand(model, positive, negative, (chain, chain))
    close(ksample(model, pos, neg), expected)


def test_the_negative_gets_the_control_too_and_a_side_without_adds_zeros(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "cn.safetensors"))
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, image, 1.0, 0.0, 1.0)
    assert pos[0][1]["control"] is neg[0][1]["control"]  # one control, one ControlNet run for both sides
    control = (control_net.module, image, 1.0, 0.0, 1.0)
    both, _ = by_hand(model, positive, negative, ([control], [control]))
    positive_only, _ = by_hand(model, positive, negative, ([control], []))
    close(ksample(model, pos, neg), both)
    close(ksample(model, pos, negative), positive_only)
    assert not torch.allclose(both, positive_only, atol=1e-3)


def test_cfg_batching_gives_each_side_its_own_rows_of_residuals(sd15, folders: Folders) -> None:
    """Positive with a control and negative without share one UNet call: the negative's rows are zeros."""
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "cn.safetensors"))
    pos, _ = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0)
    calls: list[tuple[torch.Tensor, ControlResiduals | None]] = []
    original = model.unet_fn

    def spying_unet_fn():
        manager = original()
        call = manager.__enter__()

        def spy(x_in: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            calls.append((x_in, kwargs.get("control")))
            return call(x_in, *args, **kwargs)

        class Manager:
            def __enter__(self) -> Callable[..., torch.Tensor]:
                return spy

            def __exit__(self, *exc: Any) -> None:
                manager.__exit__(*exc)

        return Manager()

    model.unet_fn = spying_unet_fn
    ksample(model, pos, negative)
    assert len(calls) == STEPS
    for x_in, control in calls:
        assert x_in.shape[0] == 2 and control is not None
        for residual in (*control.input, control.middle):
            assert residual is not None and residual.shape[0] == 2
            assert residual[0].abs().sum() > 0 and torch.equal(residual[1], torch.zeros_like(residual[1]))


def test_the_old_apply_node_hands_the_positives_control_to_the_negative(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "cn.safetensors"))
    image = picture()
    applied = ControlNetApply(positive, control_net, image, 0.9)
    assert applied[0][1]["control_apply_to_uncond"] is True and "control" not in positive[0][1]
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, image, 0.9, 0.0, 1.0)
    assert pos[0][1]["control_apply_to_uncond"] is False
    close(ksample(model, applied, negative), ksample(model, pos, neg))


def test_the_controlnet_sits_on_the_device_beside_the_unet_while_sampling(
    sd15, folders: Folders, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "cn.safetensors"))
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0)
    placed: list[tuple[Any, ...]] = []
    use = runtime.memory.use

    def recording_use(*models: Any, **options: Any) -> None:
        placed.append(models)
        use(*models, **options)

    monkeypatch.setattr(runtime.memory, "use", recording_use)
    ksample(model, pos, neg)
    assert (model.unet, control_net.module) in placed
    assert runtime.memory.is_resident(control_net.module)


# ---------------------------------------------------------------- loading and bad input


def test_a_controlnet_file_loads_once_and_a_shuffle_one_pools(folders: Folders) -> None:
    name = controlnet_file(folders, "cn.safetensors")
    first, second = ControlNetLoader(name), ControlNetLoader(name)
    assert first.module is second.module and first.name == "cn.safetensors"
    assert first.loom_parts() == [first.module]
    assert not first.global_average_pooling
    assert ControlNetLoader(controlnet_file(folders, "control_v11e_sd15_shuffle.safetensors")).global_average_pooling


def test_a_file_that_is_no_controlnet_is_refused_by_name(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "model.safetensors", folder="controlnet")
    with pytest.raises(CheckpointLayoutError, match="not a ControlNet"):
        ControlNetLoader("model.safetensors")


def test_a_controlnet_for_another_model_is_refused_naming_both(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "sd2_depth.safetensors", family="sd2"))
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0)
    with pytest.raises(ControlNetMismatchError, match=r"'sd2_depth.safetensors' cannot drive this sd15 model: .*width"):
        ksample(model, pos, neg)
    with pytest.raises(ValueError, match="takes a 3-channel image as its hint"):
        ControlNetApplyAdvanced(positive, negative, control_net, torch.rand(1, 8, 8, 4), 1.0, 0.0, 1.0)


def test_a_flux_model_with_an_sd_controlnet_is_refused_naming_both(folders: Folders) -> None:
    write_tiny_file(folders.models / "diffusion_models" / "flux1-dev.safetensors", "flux_dev", "diffusion_model")
    model = UNETLoader("flux1-dev.safetensors", "default")
    conditioning = [[torch.zeros(1, 4, 4096), {"pooled_output": torch.zeros(1, 768)}]]
    control_net = ControlNetLoader(controlnet_file(folders, "canny.safetensors"))
    pos, neg = ControlNetApplyAdvanced(conditioning, conditioning, control_net, picture(), 1.0, 0.0, 1.0)
    with pytest.raises(ControlNetMismatchError, match=r"'canny.safetensors' cannot drive this flux model"):
        KSampler(model, 0, 1, 1.0, "euler", "simple", pos, neg, {"samples": torch.zeros(1, 16, 8, 8)}, 1.0)


def difference_file(path: Path, controlnet: dict[str, torch.Tensor], unet: dict[str, torch.Tensor]) -> None:
    """A difference ControlNet as published: the ControlNet minus its base UNet, key by key, plus the marker."""
    stored = {
        key: value - unet[key.removeprefix("control_model.")] if key.removeprefix("control_model.") in unet else value
        for key, value in controlnet.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**stored, "difference": torch.tensor([])}, path)


def test_a_difference_controlnet_is_added_to_the_models_weights(sd15, folders: Folders) -> None:
    model, _ = sd15
    prefix = "model.diffusion_model."
    unet = {k[len(prefix) :]: v for k, v in tiny_checkpoint_tensors("sd15").items() if k.startswith(prefix)}
    controlnet = tiny_controlnet_tensors(tiny_unet_config("sd15"), seed=4)
    difference_file(folders.models / "controlnet" / "diff_control_sd15_canny.safetensors", controlnet, unet)
    with pytest.raises(CheckpointLayoutError, match="'difference' ControlNet.*DiffControlNetLoader"):
        ControlNetLoader("diff_control_sd15_canny.safetensors")
    loaded = DiffControlNetLoader(model, "diff_control_sd15_canny.safetensors")
    expected = load_controlnet(controlnet).state_dict()
    for key, value in loaded.module.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
    plain = controlnet_file(folders, "plain.safetensors")
    assert DiffControlNetLoader(model, plain).module is ControlNetLoader(plain).module


def test_a_difference_controlnet_needs_an_sd_unet(folders: Folders) -> None:
    write_tiny_file(folders.models / "diffusion_models" / "flux1-dev.safetensors", "flux_dev", "diffusion_model")
    model = UNETLoader("flux1-dev.safetensors", "default")
    controlnet = tiny_controlnet_tensors(tiny_unet_config("sd15"))
    difference_file(folders.models / "controlnet" / "diff.safetensors", controlnet, {})
    with pytest.raises(ControlNetMismatchError, match="'diff.safetensors' cannot drive this flux model"):
        DiffControlNetLoader(model, "diff.safetensors")


def test_the_apply_nodes_chain_after_the_control_an_entry_carries_and_leave_their_input_alone(
    sd15, folders: Folders
) -> None:
    _, clip = sd15
    positive = CLIPTextEncode("a lighthouse", clip) + CLIPTextEncode("a boat", clip)
    handle = ControlNetLoader(controlnet_file(folders, "cn.safetensors"))
    first = ControlNetApply(positive, handle, picture(), 0.5)
    assert first[0][1]["control"] is not first[1][1]["control"]  # the old node: a control per entry
    pos, neg = ControlNetApplyAdvanced(first, positive, handle, picture(), 1.0, 0.1, 0.9)
    assert [options["control"].previous for _, options in pos] == [options["control"] for _, options in first]
    assert neg[0][1]["control"] is neg[1][1]["control"]  # same earlier control (none): one applied control
    assert neg[0][1]["control"].previous is None and "control" not in positive[0][1]
    assert isinstance(handle, ControlNetHandle)
    with pytest.raises(TypeError, match="cannot chain after"):
        ControlNetApplyAdvanced([[positive[0][0], {"control": object()}]], positive, handle, picture(), 1.0, 0.0, 1.0)


def test_a_difference_controlnet_is_added_to_the_weights_with_the_models_loras(sd15, folders: Folders) -> None:
    model, _ = sd15
    prefix = "model.diffusion_model."
    unet = {k[len(prefix) :]: v for k, v in tiny_checkpoint_tensors("sd15").items() if k.startswith(prefix)}
    difference_file(
        folders.models / "controlnet" / "diff.safetensors", tiny_controlnet_tensors(tiny_unet_config("sd15")), unet
    )
    write_lora(folders.models / "loras" / "style.safetensors", kohya_lora_tensors(model.unet, []))
    styled = LoraLoaderModelOnly(model, "style.safetensors", 0.8)
    plain = DiffControlNetLoader(model, "diff.safetensors").module.state_dict()
    with_lora = DiffControlNetLoader(styled, "diff.safetensors").module.state_dict()
    key = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    delta = styled.computed_weights([key])[key] - model.computed_weights([key])[key]
    assert delta.abs().max() > 0
    torch.testing.assert_close(with_lora[key] - plain[key], delta, rtol=0, atol=1e-6)


def test_an_sdxl_controlnet_takes_the_unets_pooled_conditioning(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "sd_xl_base_1.0.safetensors", family="sdxl")
    model, clip, _ = CheckpointLoaderSimple("sd_xl_base_1.0.safetensors")
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    control_net = ControlNetLoader(controlnet_file(folders, "controlnet-canny-sdxl.safetensors", family="sdxl"))
    pos, neg = ControlNetApplyAdvanced(positive, negative, control_net, picture(), 1.0, 0.0, 1.0)
    controlled, plain = ksample(model, pos, neg), ksample(model, positive, negative)
    assert controlled.isfinite().all() and not torch.allclose(controlled, plain, atol=1e-3)


# ---------------------------------------------------------------- T2I-Adapters, union ControlNets, Control-LoRAs


def write_control(folders: Folders, name: str, tensors: dict[str, torch.Tensor]) -> str:
    path = folders.models / "controlnet" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, path)
    return name


def test_ksampler_with_a_t2i_adapter_equals_the_hand_written_loop(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    name = write_control(
        folders, "t2iadapter_canny_sd15v2.safetensors", tiny_t2i_adapter_tensors(tiny_unet_config("sd15"))
    )
    adapter = ControlNetLoader(name)
    assert isinstance(adapter.module, T2IAdapter) and not adapter.global_average_pooling
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, adapter, image, 0.8, 0.0, 0.6)
    control = (adapter.module, image, 0.8, 0.0, 0.6)
    expected, controlled = by_hand(model, positive, negative, ([control], [control]))
    assert 0 < controlled < 2 * STEPS
    adapted = ksample(model, pos, neg)
    close(adapted, expected)
    assert not torch.allclose(adapted, ksample(model, positive, negative), atol=1e-3)


def test_an_sdxl_adapter_on_an_sd15_model_is_refused_naming_both(sd15, folders: Folders) -> None:
    model, clip = sd15
    positive = CLIPTextEncode("a lighthouse", clip)
    name = write_control(
        folders, "t2i-adapter-canny-sdxl.safetensors", tiny_t2i_adapter_tensors(tiny_unet_config("sdxl"))
    )
    pos, neg = ControlNetApplyAdvanced(positive, positive, ControlNetLoader(name), picture(), 1.0, 0.0, 1.0)
    with pytest.raises(
        ControlNetMismatchError,
        match=r"'t2i-adapter-canny-sdxl.safetensors' cannot drive this sd15 model: it is a T2I-Adapter for SDXL",
    ):
        ksample(model, pos, neg)


def test_the_union_type_changes_the_result_and_a_plain_controlnet_has_none(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "sd_xl_base_1.0.safetensors", family="sdxl")
    model, clip, _ = CheckpointLoaderSimple("sd_xl_base_1.0.safetensors")
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    union = ControlNetLoader(
        write_control(folders, "union-promax.safetensors", tiny_controlnet_union_tensors(tiny_unet_config("sdxl")))
    )
    results = {}
    for choice in ("auto", "depth", "tile"):
        typed = SetUnionControlNetType(union, choice)
        assert typed.module is union.module and union.union_type is None
        pos, neg = ControlNetApplyAdvanced(positive, negative, typed, picture(), 1.0, 0.0, 1.0)
        results[choice] = ksample(model, pos, neg)
    assert SetUnionControlNetType(union, "tile").union_type == 6
    assert not torch.allclose(results["auto"], results["depth"], atol=1e-3)
    assert not torch.allclose(results["depth"], results["tile"], atol=1e-3)
    plain = ControlNetLoader(controlnet_file(folders, "canny.safetensors", family="sdxl"))
    assert SetUnionControlNetType(plain, "auto").module is plain.module
    with pytest.raises(ValueError, match=r"'canny.safetensors' is not a union ControlNet.*'depth'"):
        SetUnionControlNetType(plain, "depth")


def test_a_control_lora_is_built_over_the_sampled_model_like_the_controlnet_of_its_weights(
    sd15, folders: Folders
) -> None:
    model, clip = sd15
    positive, negative = CLIPTextEncode("a lighthouse", clip), CLIPTextEncode("fog", clip)
    prefix = "model.diffusion_model."
    base = {k[len(prefix) :]: v for k, v in tiny_checkpoint_tensors("sd15").items() if k.startswith(prefix)}
    stored = tiny_control_lora_tensors(tiny_unet_config("sd15"), base, seed=5)
    handle = ControlNetLoader(write_control(folders, "control-lora-canny-rank4.safetensors", stored))
    image = picture()
    pos, neg = ControlNetApplyAdvanced(positive, negative, handle, image, 0.9, 0.0, 1.0)
    sampled = ksample(model, pos, neg)
    built = handle.module.bound
    assert built is not None
    expected = {}
    for key in built.state_dict():
        module = key.removesuffix(".weight")
        if f"{module}.up" in stored:
            change = stored[f"{module}.up"].flatten(1) @ stored[f"{module}.down"].flatten(1)
            expected[key] = base[key] + change.reshape(base[key].shape)
        else:
            expected[key] = stored[key] if key in stored else base[key]
    for key, value in built.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    control = (built, image, 0.9, 0.0, 1.0)
    close(sampled, by_hand(model, positive, negative, ([control], [control]))[0])


def test_a_control_lora_for_another_model_is_refused_naming_it_and_why(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "sd2.safetensors", family="sd2")
    model, clip, _ = CheckpointLoaderSimple("sd2.safetensors")
    positive = CLIPTextEncode("a lighthouse", clip)
    prefix = "model.diffusion_model."
    base = {k[len(prefix) :]: v for k, v in tiny_checkpoint_tensors("sd15").items() if k.startswith(prefix)}
    name = write_control(
        folders, "control-lora-sd15.safetensors", tiny_control_lora_tensors(tiny_unet_config("sd15"), base)
    )
    pos, neg = ControlNetApplyAdvanced(positive, positive, ControlNetLoader(name), picture(), 1.0, 0.0, 1.0)
    with pytest.raises(
        ControlNetMismatchError,
        match=r"'control-lora-sd15.safetensors' cannot drive this sd2 model: it is a Control-LoRA.*the UNet's",
    ):
        ksample(model, pos, neg)
