"""Image-prompt nodes: ComfyUI's specs; CLIP vision files loaded and encoded; SDXL revision reaching the UNet's
``y`` exactly as ComfyUI computes it; FLUX.1 Redux tokens reaching the transformer's context."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusion.clip_vision import ClipVisionKind, clip_preprocess, load_clip_vision, tiny_clip_vision_tensors
from diffusion.style_model import tiny_redux_tensors
from diffusion.tiny_parts import write_tiny_file
from diffusion.unet import sdxl_adm_vector
from diffusion.unet_config import CheckpointLayoutError
from graph.registry import NodeRegistry
from nodes import image_prompts
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.image_prompts import (
    CLIPVisionEncode,
    CLIPVisionLoader,
    StyleModelApply,
    StyleModelLoader,
    unCLIPConditioning,
)
from nodes.latent import EmptyLatentImage, EmptySD3LatentImage
from nodes.loaders import CheckpointLoaderSimple, UNETLoader
from nodes.sampling import KSampler
from tests.nodes.tiny_models import tiny_checkpoint

# class_type: (category, display name, inputs as ComfyUI's object_info gives them, outputs)
SPECS: dict[str, tuple[str, str, dict[str, dict[str, Any]], list[str]]] = {
    "CLIPVisionLoader": (
        "loaders", "Load CLIP Vision", {"required": {"clip_name": [[], {"model_folder": "clip_vision"}]}},
        ["CLIP_VISION"],
    ),
    "CLIPVisionEncode": (
        "conditioning", "CLIP Vision Encode",
        {"required": {"clip_vision": ["CLIP_VISION"], "image": ["IMAGE"], "crop": [["center", "none"]]}},
        ["CLIP_VISION_OUTPUT"],
    ),
    "unCLIPConditioning": (
        "conditioning", "unCLIPConditioning",
        {"required": {
            "conditioning": ["CONDITIONING"], "clip_vision_output": ["CLIP_VISION_OUTPUT"],
            "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}],
            "noise_augmentation": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}],
        }},
        ["CONDITIONING"],
    ),
    "StyleModelLoader": (
        "loaders", "Load Style Model", {"required": {"style_model_name": [[], {"model_folder": "style_models"}]}},
        ["STYLE_MODEL"],
    ),
    "StyleModelApply": (
        "conditioning/style_model", "Apply Style Model",
        {"required": {
            "conditioning": ["CONDITIONING"], "style_model": ["STYLE_MODEL"],
            "clip_vision_output": ["CLIP_VISION_OUTPUT"],
            "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}],
            "strength_type": [["multiply", "attn_bias"]],
        }},
        ["CONDITIONING"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("class_type", list(SPECS))
def test_the_node_is_comfyuis(class_type: str) -> None:
    registry = NodeRegistry()
    registry.register_module(image_prompts)
    info = registry.object_info()[class_type]
    category, display_name, inputs, outputs = SPECS[class_type]
    assert (info["category"], info["display_name"]) == (category, display_name)
    assert info["input"] == inputs
    assert list(info["input"]["required"]) == list(inputs["required"])  # the widget order
    assert info["output"] == outputs and info["output_name"] == outputs


# ---------------------------------------------------------------- files


def clip_vision_file(folders: Folders, kind: ClipVisionKind, name: str) -> str:
    path = folders.models / "clip_vision" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_clip_vision_tensors(kind, seed=1), path)
    return name


def redux_file(folders: Folders, name: str = "flux1-redux-dev.safetensors") -> str:
    path = folders.models / "style_models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_redux_tensors(seed=2), path)
    return name


def picture(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(seed))


def test_the_loader_lists_the_folder_and_encoding_is_the_tower_on_comfyuis_preprocessing(folders: Folders) -> None:
    name = clip_vision_file(folders, "clip_vision_h", "clip_vision_h.safetensors")
    registry = NodeRegistry()
    registry.register_module(image_prompts)
    assert registry.object_info()["CLIPVisionLoader"]["input"]["required"]["clip_name"] == [
        [name],
        {"model_folder": "clip_vision"},
    ]
    clip_vision = CLIPVisionLoader(name)
    assert CLIPVisionLoader(name).model is clip_vision.model  # one load per unchanged file
    tower = load_clip_vision(tiny_clip_vision_tensors("clip_vision_h", seed=1))
    for crop, centre in (("center", True), ("none", False)):
        got = CLIPVisionEncode(clip_vision, picture(), crop)
        with torch.no_grad():
            expected = tower(clip_preprocess(picture(), 224, tower.config.image_mean, tower.config.image_std, centre))
        torch.testing.assert_close(got.image_embeds, expected.image_embeds)
        torch.testing.assert_close(got["penultimate_hidden_states"], expected.penultimate_hidden_states)
    centre_crop = CLIPVisionEncode(clip_vision, picture(), "center").image_embeds
    assert not torch.allclose(centre_crop, CLIPVisionEncode(clip_vision, picture(), "none").image_embeds)


def test_a_file_without_a_tower_is_named(folders: Folders) -> None:
    name = redux_file(folders)
    (folders.models / "clip_vision").mkdir(parents=True, exist_ok=True)
    (folders.models / "clip_vision" / name).write_bytes((folders.models / "style_models" / name).read_bytes())
    with pytest.raises(CheckpointLayoutError, match="no CLIP or SigLIP vision tower"):
        CLIPVisionLoader(name)


# ---------------------------------------------------------------- unCLIP conditioning, SDXL revision


def test_unclip_conditioning_appends_to_each_entrys_list_and_strength_0_changes_nothing() -> None:
    first, second = "first output", "second output"  # the node stores the value it is given, whatever it is
    conditioning: list[list[Any]] = [
        [torch.zeros(1, 2, 4), {"pooled_output": torch.ones(1, 4)}],
        [torch.ones(1, 2, 4), {}],
    ]
    once = unCLIPConditioning(conditioning, first, 0.5, 0.1)
    twice = unCLIPConditioning(once, second, -2.0, 0.0)
    assert twice[0][1]["unclip_conditioning"] == [
        {"clip_vision_output": first, "strength": 0.5, "noise_augmentation": 0.1},
        {"clip_vision_output": second, "strength": -2.0, "noise_augmentation": 0.0},
    ]
    assert len(twice[1][1]["unclip_conditioning"]) == 2 and len(once[0][1]["unclip_conditioning"]) == 1
    assert "unclip_conditioning" not in conditioning[0][1] and twice[0][1]["pooled_output"] is not None
    assert unCLIPConditioning(conditioning, first, 0.0, 0.5) is conditioning


STEPS, SEED = 2, 31


def _alpha_bar_0() -> float:
    """The first step of the cosine schedule with s = 0.008, capped at 0.999: 1 - beta_0."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return f(1 / 1000) / f(0.0)


def _recorded_y(model: Any) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.unet.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["y"].clone()), with_kwargs=True)
    return seen


def test_sdxl_revision_puts_the_noised_weighted_bigg_embedding_in_the_unets_y(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "xl.safetensors", family="sdxl")
    model, clip, _ = CheckpointLoaderSimple("xl.safetensors")
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "clip_vision_g", "clip_vision_g.safetensors"))
    image_prompt = CLIPVisionEncode(clip_vision, picture(), "center")
    embeds = image_prompt.image_embeds
    assert embeds.shape == (1, 1280)
    strength = 0.6
    positive = unCLIPConditioning(CLIPTextEncode("a cat", clip), image_prompt, strength, 0.0)
    negative = CLIPTextEncode("", clip)
    seen = _recorded_y(model)
    KSampler(model, SEED, STEPS, 5.0, "euler", "normal", positive, negative, EmptyLatentImage(64, 64, 1), 1.0)

    # By hand: level 0 of the schedule, noise from the seed minus 10, weighted; the tiny model's pooled width (64
    # here, 1280 in every real SDXL) taken from the front; then the size sinusoids of a 64 x 64 picture.
    noise = torch.randn(1, 1280, generator=torch.Generator().manual_seed(SEED - 10))
    a = _alpha_bar_0()
    pooled = (strength * (math.sqrt(a) * embeds + math.sqrt(1 - a) * noise))[:, :64]
    expected = sdxl_adm_vector(pooled, (64, 64), (0, 0), (64, 64))
    assert len(seen) == STEPS
    for y in seen:
        assert any(torch.allclose(row, expected[0], rtol=1e-5, atol=1e-6) for row in y)
    text_only = sdxl_adm_vector(CLIPTextEncode("a cat", clip)[0][1]["pooled_output"], (64, 64), (0, 0), (64, 64))
    assert not any(torch.allclose(row, text_only[0], atol=1e-3) for row in seen[0])


def test_the_revision_noise_follows_the_sampler_seed(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "xl.safetensors", family="sdxl")
    model, clip, _ = CheckpointLoaderSimple("xl.safetensors")
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "clip_vision_g", "g.safetensors"))
    positive = unCLIPConditioning(CLIPTextEncode("", clip), CLIPVisionEncode(clip_vision, picture(), "none"), 1.0, 0.3)
    seen = _recorded_y(model)
    for seed in (5, 5, 6):
        KSampler(model, seed, 1, 1.0, "euler", "normal", positive, positive, EmptyLatentImage(64, 64, 1), 1.0)
    assert torch.equal(seen[0], seen[1]) and not torch.allclose(seen[0], seen[2])


def test_unclip_conditioning_on_a_model_without_an_image_input_is_named(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "clip_vision_h", "h.safetensors"))
    positive = unCLIPConditioning(CLIPTextEncode("", clip), CLIPVisionEncode(clip_vision, picture(), "center"), 1.0, 0)
    with pytest.raises(ValueError, match="unCLIPConditioning.*sd15"):
        KSampler(model, 1, 1, 1.0, "euler", "normal", positive, positive, EmptyLatentImage(64, 64, 1), 1.0)


# ---------------------------------------------------------------- FLUX.1 Redux


@pytest.fixture
def flux(folders: Folders) -> Path:
    return write_tiny_file(folders.models / "diffusion_models" / "flux1-dev.safetensors", "flux_dev", "diffusion_model")


def _flux_conditioning(seed: int) -> list[list[Any]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 5, 4096, generator=generator), {"pooled_output": torch.randn(1, 768, generator=generator)}]]


def _redux_tokens(folders: Folders, image: torch.Tensor) -> torch.Tensor:
    """Redux by hand: the SigLIP tower's normalised states, then down(silu(up(.))) from the file's tensors."""
    states = load_clip_vision(tiny_clip_vision_tensors("siglip_vision", seed=1)).encode_image(image).last_hidden_state
    redux = tiny_redux_tensors(seed=2)
    hidden = F.silu(F.linear(states, redux["redux_up.weight"], redux["redux_up.bias"]))
    return F.linear(hidden, redux["redux_down.weight"], redux["redux_down.bias"])


def test_redux_multiply_appends_the_scaled_tokens_and_flux_samples_with_them(folders: Folders, flux: Path) -> None:
    model = UNETLoader(flux.name, "default")
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "siglip_vision", "sigclip_vision_patch14_384.safetensors"))
    style_model = StyleModelLoader(redux_file(folders))
    images = torch.cat((picture(0), picture(1)))
    positive = _flux_conditioning(0)
    styled = StyleModelApply(positive, style_model, CLIPVisionEncode(clip_vision, images, "center"), 0.4, "multiply")

    tokens = _redux_tokens(folders, images)  # [2, 729, 4096]: both pictures' tokens in one row
    expected_context = torch.cat((positive[0][0], 0.4 * tokens.reshape(1, 2 * 729, 4096)), dim=1)
    torch.testing.assert_close(styled[0][0], expected_context, rtol=1e-5, atol=1e-5)
    assert styled[0][1] == positive[0][1] and styled[0][1] is not positive[0][1]

    latent = EmptySD3LatentImage(32, 32, 1)
    by_hand = [[expected_context, positive[0][1]]]
    got = KSampler(model, 9, STEPS, 1.0, "euler", "simple", styled, styled, latent, 1.0)["samples"]
    expected = KSampler(model, 9, STEPS, 1.0, "euler", "simple", by_hand, by_hand, latent, 1.0)["samples"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = KSampler(model, 9, STEPS, 1.0, "euler", "simple", positive, positive, latent, 1.0)["samples"]
    assert not torch.allclose(got, plain, atol=1e-4)


def test_attn_bias_at_strength_1_is_the_plain_tokens_without_a_mask(folders: Folders) -> None:
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "siglip_vision", "siglip.safetensors"))
    style_model = StyleModelLoader(redux_file(folders))
    output = CLIPVisionEncode(clip_vision, picture(), "center")
    positive = _flux_conditioning(1)
    unbiased = StyleModelApply(positive, style_model, output, 1.0, "attn_bias")
    assert torch.equal(unbiased[0][0], StyleModelApply(positive, style_model, output, 1.0, "multiply")[0][0])
    assert "attention_mask" not in unbiased[0][1]


def test_attn_bias_lays_out_comfyuis_mask_and_keeps_an_earlier_one(folders: Folders) -> None:
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "siglip_vision", "siglip.safetensors"))
    style_model = StyleModelLoader(redux_file(folders))
    output = CLIPVisionEncode(clip_vision, picture(), "center")
    once = StyleModelApply(_flux_conditioning(1), style_model, output, 0.5, "attn_bias")
    context, options = once[0]
    assert torch.equal(context[:, 5:], _redux_tokens(folders, picture()).to(context))  # unscaled
    mask, shape = options["attention_mask"], options["attention_mask_img_shape"]
    assert mask.dtype == torch.float16 and mask.shape == (1, 5 + 729 + 1, 5 + 729 + 1) and shape == (1, 1)
    expected = torch.zeros(1, 735, 735)
    expected[:, :, 5:734] = math.log(0.5)
    expected[:, 5:734, :] = math.log(0.5)
    assert torch.equal(mask, expected.half())
    twice = StyleModelApply(once, style_model, output, 2.0, "attn_bias")
    second = twice[0][1]["attention_mask"]
    assert second.shape == (1, 735 + 729, 735 + 729)
    assert torch.equal(second[:, :734, :734], mask[:, :734, :734])  # the earlier text quadrant kept
    assert torch.equal(second[:, :734, -1], mask[:, :734, -1])  # the image column moved past the new tokens
    assert (second[:, :, 734:1463] == torch.tensor(math.log(2.0)).half()).all()


def test_attn_bias_at_strength_0_hides_the_style_tokens_from_the_picture(folders: Folders, flux: Path) -> None:
    model = UNETLoader(flux.name, "default")
    clip_vision = CLIPVisionLoader(clip_vision_file(folders, "siglip_vision", "siglip.safetensors"))
    style_model = StyleModelLoader(redux_file(folders))
    output = CLIPVisionEncode(clip_vision, picture(), "center")
    positive = _flux_conditioning(0)
    latent = EmptySD3LatentImage(32, 32, 1)

    def ksample(conditioning: list[list[Any]]) -> torch.Tensor:
        return KSampler(model, 9, STEPS, 1.0, "euler", "simple", conditioning, conditioning, latent, 1.0)["samples"]

    plain = ksample(positive)
    hidden = ksample(StyleModelApply(positive, style_model, output, 0.0, "attn_bias"))
    torch.testing.assert_close(hidden, plain, rtol=1e-5, atol=1e-5)
    weighted = ksample(StyleModelApply(positive, style_model, output, 0.5, "attn_bias"))
    scaled = ksample(StyleModelApply(positive, style_model, output, 0.5, "multiply"))
    assert not torch.allclose(weighted, plain, atol=1e-4) and not torch.allclose(weighted, scaled, atol=1e-4)


def test_an_attention_mask_on_a_model_that_takes_none_is_named(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, _ = CheckpointLoaderSimple("sd15.safetensors")
    context, options = CLIPTextEncode("a cat", clip)[0]
    masked = [[context, {**options, "attention_mask": torch.zeros(1, 78, 78), "attention_mask_img_shape": (1, 1)}]]
    with pytest.raises(ValueError, match="takes no attention mask"):
        KSampler(model, 1, 1, 1.0, "euler", "normal", masked, masked, EmptyLatentImage(64, 64, 1), 1.0)


def test_redux_on_the_wrong_tower_or_conditioning_is_named(folders: Folders) -> None:
    style_model = StyleModelLoader(redux_file(folders))
    bigg_vision = CLIPVisionLoader(clip_vision_file(folders, "clip_vision_g", "g.safetensors"))
    bigg = CLIPVisionEncode(bigg_vision, picture(), "none")
    with pytest.raises(ValueError, match="sigclip_vision_patch14_384"):
        StyleModelApply(_flux_conditioning(0), style_model, bigg, 1.0, "multiply")
    siglip_vision = CLIPVisionLoader(clip_vision_file(folders, "siglip_vision", "s.safetensors"))
    siglip = CLIPVisionEncode(siglip_vision, picture(), "center")
    sdxl_conditioning = [[torch.zeros(1, 77, 2048), {}]]
    with pytest.raises(ValueError, match="FLUX conditioning"):
        StyleModelApply(sdxl_conditioning, style_model, siglip, 1.0, "multiply")
