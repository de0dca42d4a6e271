"""Text encoding and the CONDITIONING editing nodes (ComfyUI semantics, inputs never mutated)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusion.embeddings import EmbeddingFolder
from diffusion.unet import sdxl_adm_vector, sdxl_refiner_adm_vector
from graph.registry import NodeRegistry
from nodes import conditioning as conditioning_module
from nodes.conditioning import (
    CLIPTextEncode,
    CLIPTextEncodeSDXL,
    CLIPTextEncodeSDXLRefiner,
    ConditioningAverage,
    ConditioningCombine,
    ConditioningConcat,
    ConditioningSetArea,
    ConditioningSetAreaPercentage,
    ConditioningSetAreaStrength,
    ConditioningSetMask,
    ConditioningSetTimestepRange,
    ConditioningZeroOut,
    FluxGuidance,
    InpaintModelConditioning,
)
from nodes.folders import Folders
from nodes.loaders import CheckpointLoaderSimple
from nodes.sampling import model_conditioning
from tests.diffusion.toy_unet import context
from tests.diffusion.toy_unet import run as toy_run
from tests.nodes.tiny_models import tiny_checkpoint


def entry(value: float, tokens: int = 77, **options) -> list:
    return [torch.full((1, tokens, 4), value), {"pooled_output": torch.full((1, 2), value), **options}]


@pytest.fixture
def loaded(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    return CheckpointLoaderSimple("sd15.safetensors")


def test_clip_text_encode_is_the_stack_encoding_with_pooled_output(loaded) -> None:
    _, clip, _ = loaded
    ((cond, options),) = CLIPTextEncode("a (red:1.2) cube", clip)
    expected_cond, expected_pooled = clip.stack.encode("a (red:1.2) cube")
    torch.testing.assert_close(cond, expected_cond)
    torch.testing.assert_close(options["pooled_output"], expected_pooled)


def test_embedding_names_resolve_from_the_embeddings_folder(loaded, folders: Folders) -> None:
    _, clip, _ = loaded
    (folders.models / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(3, 64)}, folders.models / "embeddings" / "style.safetensors")
    ((cond, _),) = CLIPTextEncode("a embedding:style cube", clip)
    expected, _ = clip.stack.encode(
        "a embedding:style cube", resolve_embedding=EmbeddingFolder([folders.models / "embeddings"])
    )
    torch.testing.assert_close(cond, expected)
    assert not torch.equal(cond, CLIPTextEncode("a style cube", clip)[0][0])


def test_combine_concatenates_the_lists() -> None:
    first, second = [entry(1.0)], [entry(2.0), entry(3.0)]
    assert ConditioningCombine(first, second) == first + second


def test_average_blends_states_and_pooled_and_pads_the_shorter_source() -> None:
    (blended,) = ConditioningAverage([entry(1.0, tokens=154)], [entry(3.0)], 0.25)
    assert blended[0].shape == (1, 154, 4)
    torch.testing.assert_close(blended[0][:, :77], torch.full((1, 77, 4), 0.25 + 2.25))
    torch.testing.assert_close(blended[0][:, 77:], torch.full((1, 77, 4), 0.25))
    torch.testing.assert_close(blended[1]["pooled_output"], torch.full((1, 2), 2.5))


def test_concat_appends_the_source_tokens() -> None:
    source = [entry(2.0, tokens=3)]
    (joined,) = ConditioningConcat([entry(1.0, tokens=5)], source)
    assert joined[0].shape == (1, 8, 4) and torch.equal(joined[0][:, 5:], source[0][0])


def test_area_mask_and_range_edit_copies_of_the_options() -> None:
    original = [entry(1.0)]
    (area,) = ConditioningSetArea(original, 256, 128, 64, 32, 0.5)
    assert area[1]["area"] == (16, 32, 4, 8) and area[1]["strength"] == 0.5 and area[1]["set_area_to_bounds"] is False
    mask = torch.ones(32, 32)
    (masked,) = ConditioningSetMask(original, mask, 0.7, "mask bounds")
    assert (
        masked[1]["mask"].shape == (1, 32, 32) and masked[1]["mask_strength"] == 0.7 and masked[1]["set_area_to_bounds"]
    )
    (ranged,) = ConditioningSetTimestepRange(original, 0.2, 0.8)
    assert (ranged[1]["timestep_start"], ranged[1]["timestep_end"]) == (0.2, 0.8)
    assert set(original[0][1]) == {"pooled_output"}


def test_flux_guidance_sets_the_guidance_of_every_entry_on_a_copy() -> None:
    original = [entry(1.0), entry(2.0)]
    guided = FluxGuidance(original, 2.5)
    assert [options["guidance"] for _, options in guided] == [2.5, 2.5]
    assert all("guidance" not in options for _, options in original)


def test_zero_out_zeroes_states_and_pooled() -> None:
    (zeroed,) = ConditioningZeroOut([entry(1.0)])
    assert not zeroed[0].any() and not zeroed[1]["pooled_output"].any()


def test_inpaint_model_conditioning_encodes_the_blanked_picture_and_attaches_the_mask(loaded) -> None:
    _, _, vae = loaded
    image = torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    positive, negative, latent = InpaintModelConditioning([entry(1.0)], [entry(0.0)], vae, image, mask)
    blanked = image.clone()
    blanked[:, 4:12, 4:12] = 0.5
    torch.testing.assert_close(positive[0][1]["concat_latent_image"], vae.encode(blanked))
    assert negative[0][1]["concat_latent_image"] is positive[0][1]["concat_latent_image"]
    torch.testing.assert_close(latent["samples"], vae.encode(image))
    assert latent["noise_mask"].shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="mask is 64x64 but the image is 16x16.*without alpha"):
        InpaintModelConditioning([entry(1.0)], [entry(0.0)], vae, image, torch.zeros(1, 64, 64))


# -- SDXL text encoding and area nodes (ComfyUI's nodes_clip_sdxl.py and nodes.py) -------------------

#: class -> (display name, category, required inputs in order with their /object_info entries).
#: Checked against ComfyUI's current schemas: the SDXL node takes clip first, the refiner last.
SDXL_AND_AREA_SPECS: dict[str, tuple[str, str, dict[str, list]]] = {
    "CLIPTextEncodeSDXL": (
        "CLIP Text Encode (SDXL)",
        "advanced/conditioning",
        {
            "clip": ["CLIP"],
            "width": ["INT", {"default": 1024, "min": 0, "max": 16384}],
            "height": ["INT", {"default": 1024, "min": 0, "max": 16384}],
            "crop_w": ["INT", {"default": 0, "min": 0, "max": 16384, "advanced": True}],
            "crop_h": ["INT", {"default": 0, "min": 0, "max": 16384, "advanced": True}],
            "target_width": ["INT", {"default": 1024, "min": 0, "max": 16384}],
            "target_height": ["INT", {"default": 1024, "min": 0, "max": 16384}],
            "text_g": ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}],
            "text_l": ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}],
        },
    ),
    "CLIPTextEncodeSDXLRefiner": (
        "CLIP Text Encode (SDXL Refiner)",
        "advanced/conditioning",
        {
            "ascore": ["FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}],
            "width": ["INT", {"default": 1024, "min": 0, "max": 16384}],
            "height": ["INT", {"default": 1024, "min": 0, "max": 16384}],
            "text": ["STRING", {"default": "", "multiline": True, "dynamicPrompts": True}],
            "clip": ["CLIP"],
        },
    ),
    "ConditioningSetAreaPercentage": (
        "Conditioning (Set Area with Percentage)",
        "conditioning",
        {
            "conditioning": ["CONDITIONING"],
            "width": ["FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}],
            "height": ["FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}],
            "x": ["FLOAT", {"default": 0, "min": 0, "max": 1.0, "step": 0.01}],
            "y": ["FLOAT", {"default": 0, "min": 0, "max": 1.0, "step": 0.01}],
            "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}],
        },
    ),
    "ConditioningSetAreaStrength": (
        "ConditioningSetAreaStrength",
        "conditioning",
        {
            "conditioning": ["CONDITIONING"],
            "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}],
        },
    ),
}


@pytest.mark.parametrize("class_type", sorted(SDXL_AND_AREA_SPECS))
def test_sdxl_and_area_interfaces_match_comfyui(class_type: str) -> None:
    registry = NodeRegistry()
    registry.register_module(conditioning_module)
    info = registry.object_info()[class_type]
    display, category, required = SDXL_AND_AREA_SPECS[class_type]
    assert info["input"] == {"required": required}
    assert info["input_order"] == {"required": list(required)}
    assert (info["display_name"], info["category"]) == (display, category)
    assert (info["output"], info["output_name"], info["output_node"]) == (["CONDITIONING"], ["CONDITIONING"], False)


@pytest.fixture
def sdxl(folders: Folders):
    tiny_checkpoint(folders.models, "xl.safetensors", family="sdxl")
    return CheckpointLoaderSimple("xl.safetensors")


def test_clip_text_encode_sdxl_is_each_encoders_own_prompt_concatenated(sdxl) -> None:
    model, clip, _ = sdxl
    ((cond, options),) = CLIPTextEncodeSDXL(clip, 832, 1216, 16, 32, 1024, 1536, "a photo of a lighthouse", "red")
    # By hand: CLIP-L's states of text_l beside CLIP-G's states of text_g, CLIP-G's pooled output of text_g.
    l_width = clip.stack.encoders["clip_l"].config.width
    ((of_l, _),) = CLIPTextEncode("red", clip)
    ((of_g, g_options),) = CLIPTextEncode("a photo of a lighthouse", clip)
    torch.testing.assert_close(cond, torch.cat([of_l[..., :l_width], of_g[..., l_width:]], dim=-1))
    torch.testing.assert_close(options["pooled_output"], g_options["pooled_output"])
    sizes = {"width": 832, "height": 1216, "crop_w": 16, "crop_h": 32, "target_width": 1024, "target_height": 1536}
    assert {key: options[key] for key in sizes} == sizes
    # The sampler's y carries exactly these sizes: (height, width), (crop_h, crop_w), (target h, w).
    ((_, prepared),) = model_conditioning(model, [[cond, options]], torch.zeros(1, 4, 8, 8), negative=False)
    expected = sdxl_adm_vector(options["pooled_output"], (1216, 832), (32, 16), (1536, 1024))
    torch.testing.assert_close(prepared["y"], expected)


def test_clip_text_encode_sdxl_pads_the_shorter_prompt_with_the_empty_prompt(sdxl) -> None:
    _, clip, _ = sdxl
    long = ", ".join(["a very long prompt"] * 20)  # more than one 77-token window
    ((cond, _),) = CLIPTextEncodeSDXL(clip, 1024, 1024, 0, 0, 1024, 1024, long, "red")
    l_width = clip.stack.encoders["clip_l"].config.width
    ((of_long, _),) = CLIPTextEncode(long, clip)
    ((of_empty, _),) = CLIPTextEncode("", clip)
    assert cond.shape[1] == of_long.shape[1] > 77
    torch.testing.assert_close(cond[..., l_width:], of_long[..., l_width:])
    torch.testing.assert_close(cond[:, 77:154, :l_width], of_empty[:, :, :l_width])


def test_clip_text_encode_sdxl_names_a_clip_of_another_family(loaded) -> None:
    _, sd15_clip, _ = loaded
    with pytest.raises(ValueError, match="^clip: CLIPTextEncodeSDXL needs SDXL's text encoders"):
        CLIPTextEncodeSDXL(sd15_clip, 1024, 1024, 0, 0, 1024, 1024, "a", "b")


def test_the_refiner_encoding_carries_its_aesthetic_score_and_size_into_y(folders: Folders) -> None:
    tiny_checkpoint(folders.models, "refiner.safetensors", family="sdxl_refiner")
    model, clip, _ = CheckpointLoaderSimple("refiner.safetensors")
    ((cond, options),) = CLIPTextEncodeSDXLRefiner(3.5, 800, 600, "a cat", clip)
    ((expected_cond, expected_options),) = CLIPTextEncode("a cat", clip)
    torch.testing.assert_close(cond, expected_cond)
    assert (options["aesthetic_score"], options["width"], options["height"]) == (3.5, 800, 600)
    ((_, prepared),) = model_conditioning(model, [[cond, options]], torch.zeros(1, 4, 8, 8), negative=True)
    expected = sdxl_refiner_adm_vector(expected_options["pooled_output"], (600, 800), (0, 0), 3.5)
    torch.testing.assert_close(prepared["y"], expected)


def test_area_percentage_is_comfyuis_marked_tuple_on_a_copy() -> None:
    original = [entry(1.0, set_area_to_bounds=True)]
    (edited,) = ConditioningSetAreaPercentage(original, 0.5, 0.25, 0.125, 0.75, 2.0)
    assert edited[1]["area"] == ("percentage", 0.25, 0.5, 0.75, 0.125)  # height, width, y, x
    assert edited[1]["strength"] == 2.0 and edited[1]["set_area_to_bounds"] is False
    assert edited[0] is original[0][0] and "area" not in original[0][1]
    with pytest.raises(ValueError, match="^x must be a fraction from 0 to 1"):
        ConditioningSetAreaPercentage(original, 0.5, 0.5, 1.5, 0.0, 1.0)


def test_a_percentage_area_samples_as_the_same_area_in_latent_cells() -> None:
    # On the 6 x 6 toy latent, (h, w, y, x) = (2/6, 3/6, 1/6, 2/6) are the cells (2, 3, 1, 2).
    (by_fraction,) = ConditioningSetAreaPercentage([[context(3), {}]], 3 / 6, 2 / 6, 2 / 6, 1 / 6, 1.0)
    by_cells = (context(3), {"area": (2, 3, 1, 2), "strength": 1.0, "set_area_to_bounds": False})
    base = toy_run(positive=[(context(1), {})])
    fraction_result = toy_run(positive=[(context(1), {}), (by_fraction[0], by_fraction[1])])
    assert torch.equal(fraction_result, toy_run(positive=[(context(1), {}), by_cells]))
    changed = (base - fraction_result).abs().amax(dim=(0, 1)) > 1e-6
    assert changed[1:3, 2:5].all() and changed.sum() == 6


def test_a_tiny_percentage_still_covers_one_cell() -> None:
    (edited,) = ConditioningSetAreaPercentage([[context(3), {}]], 0.0, 0.0, 0.0, 0.0, 1.0)
    base = toy_run(positive=[(context(1), {})])
    changed = (base - toy_run(positive=[(context(1), {}), (edited[0], edited[1])])).abs().amax(dim=(0, 1)) > 1e-6
    assert changed[0, 0] and changed.sum() == 1


def test_area_strength_sets_only_the_strength_on_a_copy() -> None:
    original = [entry(1.0, area=(2, 2, 0, 0), strength=1.0)]
    (edited,) = ConditioningSetAreaStrength(original, 0.25)
    assert edited[1] == {**original[0][1], "strength": 0.25} and original[0][1]["strength"] == 1.0
