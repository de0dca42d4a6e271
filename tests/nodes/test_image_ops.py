"""ComfyUI's image utility nodes: the interface as ComfyUI serves it, and pixels on small hand-made pictures.

``SPEC`` is written from ComfyUI's current schemas (``comfy_extras/nodes_images.py``,
``nodes_post_processing.py``, ``nodes_mask.py``, ``nodes_compositing.py``, ``nodes_rebatch.py``,
``nodes_image_compare.py``) in Loom's ``/object_info`` form: V1 list combos and bare hidden kinds,
as Loom serves every built-in. Tooltips and descriptions are Loom's own wording, so they are checked
for presence, not text.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, features

import nodes.image
import nodes.image_io_ops
import nodes.image_ops
from graph.declare import spec_of
from graph.executor import Executor
from graph.registry import NodeRegistry
from graph.validation import validate_prompt
from nodes.folders import Folders
from nodes.image import MAX_RESOLUTION, resample
from nodes.image_io_ops import ImageCompare, SaveImageAdvanced
from nodes.image_ops import (
    BatchImagesNode,
    GetImageSize,
    ImageAddNoise,
    ImageBlend,
    ImageBlur,
    ImageCompositeMasked,
    ImageFlip,
    ImageFromBatch,
    ImageQuantize,
    ImageRotate,
    ImageScaleToMaxDimension,
    ImageScaleToTotalPixels,
    ImageSharpen,
    JoinImageWithAlpha,
    RebatchImages,
    RepeatImageBatch,
    ResizeAndPadImage,
    ResizeImageMaskNode,
    SplitImageWithAlpha,
    _bayer_dither,
    bayer_matrix,
)

METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def INT(default: int, lo: int, hi: int, step: int | None = None, **extra: Any) -> list[Any]:  # noqa: N802
    options = {"default": default, "min": lo, "max": hi, **({"step": step} if step is not None else {}), **extra}
    return ["INT", options]


def FLOAT(default: float, lo: float, hi: float, step: float, **extra: Any) -> list[Any]:  # noqa: N802
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def COMBO(choices: list[str], **extra: Any) -> list[Any]:  # noqa: N802
    return [choices, extra] if extra else [choices]


TIP = {"tooltip": ...}  # a tooltip is served; its text is Loom's own
CROP = COMBO(["disabled", "center"], default="center", **TIP)
SIDE = INT(512, 0, MAX_RESOLUTION, 1, **TIP)
OUTPUT_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}

#: class_type: (display_name, category, inputs by section, outputs [(type, name, is_list)], output_node)
SPEC: dict[str, tuple[str, str, dict[str, dict[str, Any]], list[tuple[str, str, bool]], bool]] = {
    "GetImageSize": (
        "Get Image Size",
        "image",
        {"required": {"image": ["IMAGE"]}, "hidden": {"unique_id": "UNIQUE_ID"}},
        [("INT", "width", False), ("INT", "height", False), ("INT", "batch_size", False)],
        False,
    ),
    "ImageScaleToTotalPixels": (
        "ImageScaleToTotalPixels",
        "image/upscaling",
        {
            "required": {
                "image": ["IMAGE"],
                "upscale_method": COMBO(METHODS),
                "megapixels": FLOAT(1.0, 0.01, 16.0, 0.01),
                "resolution_steps": INT(1, 1, 256, advanced=True),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageScaleToMaxDimension": (
        "Scale Image to Max Dimension",
        "image/upscaling",
        {
            "required": {
                "image": ["IMAGE"],
                "upscale_method": COMBO(["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
                "largest_size": INT(512, 0, MAX_RESOLUTION, 1),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ResizeAndPadImage": (
        "Resize And Pad Image",
        "image/transform",
        {
            "required": {
                "image": ["IMAGE"],
                "target_width": INT(512, 1, MAX_RESOLUTION, 1),
                "target_height": INT(512, 1, MAX_RESOLUTION, 1),
                "padding_color": COMBO(["white", "black"], advanced=True),
                "interpolation": COMBO(["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], advanced=True),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ResizeImageMaskNode": (
        "Resize Image/Mask",
        "transform",
        {
            "required": {
                "input": [
                    "COMFY_MATCHTYPE_V3",
                    {"template": {"template_id": "input_type", "allowed_types": "IMAGE,MASK"}},
                ],
                "resize_type": [
                    "COMFY_DYNAMICCOMBO_V3",
                    {
                        **TIP,
                        "options": [
                            {
                                "key": "scale dimensions",
                                "inputs": {"required": {"width": SIDE, "height": SIDE, "crop": CROP}},
                            },
                            {
                                "key": "scale by multiplier",
                                "inputs": {"required": {"multiplier": FLOAT(1.0, 0.01, 8.0, 0.01, **TIP)}},
                            },
                            {"key": "scale longer dimension", "inputs": {"required": {"longer_size": SIDE}}},
                            {"key": "scale shorter dimension", "inputs": {"required": {"shorter_size": SIDE}}},
                            {"key": "scale width", "inputs": {"required": {"width": SIDE}}},
                            {"key": "scale height", "inputs": {"required": {"height": SIDE}}},
                            {
                                "key": "scale total pixels",
                                "inputs": {"required": {"megapixels": FLOAT(1.0, 0.01, 16.0, 0.01, **TIP)}},
                            },
                            {"key": "match size", "inputs": {"required": {"match": ["IMAGE,MASK", TIP], "crop": CROP}}},
                            {
                                "key": "scale to multiple",
                                "inputs": {"required": {"multiple": INT(8, 1, MAX_RESOLUTION, 1, **TIP)}},
                            },
                        ],
                    },
                ],
                "scale_method": COMBO(METHODS, default="area", **TIP),
            }
        },
        [("COMFY_MATCHTYPE_V3", "resized", False)],
        False,
    ),
    "BatchImagesNode": (
        "Batch Images",
        "image",
        {
            "required": {
                "images": [
                    "COMFY_AUTOGROW_V3",
                    {"template": {"input": {"required": {"image": ["IMAGE"]}}, "prefix": "image", "min": 2, "max": 50}},
                ]
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageFromBatch": (
        "Get Image from Batch",
        "image/batch",
        {
            "required": {
                "image": ["IMAGE"],
                "batch_index": INT(0, -MAX_RESOLUTION, MAX_RESOLUTION),
                "length": INT(1, 1, 4096),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "RepeatImageBatch": (
        "Repeat Image Batch",
        "image/batch",
        {"required": {"image": ["IMAGE"], "amount": INT(1, 1, 4096)}},
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "RebatchImages": (
        "Rebatch Images",
        "image/batch",
        {
            "required": {
                "images": ["IMAGE"],
                "batch_size": INT(1, 1, 4096, **TIP),
                "overlap": INT(0, 0, 4096, advanced=True, **TIP),
                "merge_overlap_mode": COMBO(
                    ["truncate start", "truncate end", "fade smooth", "fade linear"],
                    default="truncate start",
                    advanced=True,
                    **TIP,
                ),
            }
        },
        [("IMAGE", "IMAGE", True)],
        False,
    ),
    "ImageBlend": (
        "Image Blend",
        "image/postprocessing",
        {
            "required": {
                "image1": ["IMAGE"],
                "image2": ["IMAGE"],
                "blend_factor": FLOAT(0.5, 0.0, 1.0, 0.01),
                "blend_mode": COMBO(["normal", "multiply", "screen", "overlay", "soft_light", "difference"]),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageBlur": (
        "Image Blur",
        "image/postprocessing",
        {"required": {"image": ["IMAGE"], "blur_radius": INT(1, 1, 31, 1), "sigma": FLOAT(1.0, 0.1, 10.0, 0.1)}},
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageSharpen": (
        "ImageSharpen",
        "image/postprocessing",
        {
            "required": {
                "image": ["IMAGE"],
                "sharpen_radius": INT(1, 1, 31, 1, advanced=True),
                "sigma": FLOAT(1.0, 0.1, 10.0, 0.01, advanced=True),
                "alpha": FLOAT(1.0, 0.0, 5.0, 0.01, advanced=True),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageQuantize": (
        "ImageQuantize",
        "image/postprocessing",
        {
            "required": {
                "image": ["IMAGE"],
                "colors": INT(256, 1, 256, 1),
                "dither": COMBO(["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageAddNoise": (
        "Add Noise to Image",
        "image/filters",
        {
            "required": {
                "image": ["IMAGE"],
                "seed": INT(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True, **TIP),
                "strength": FLOAT(0.5, 0.0, 1.0, 0.01),
            }
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageCompositeMasked": (
        "ImageCompositeMasked",
        "image",
        {
            "required": {
                "destination": ["IMAGE"],
                "source": ["IMAGE"],
                "x": INT(0, 0, MAX_RESOLUTION, 1),
                "y": INT(0, 0, MAX_RESOLUTION, 1),
                "resize_source": ["BOOLEAN", {"default": False}],
            },
            "optional": {"mask": ["MASK"]},
        },
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "JoinImageWithAlpha": (
        "Join Image with Alpha",
        "mask/compositing",
        {"required": {"image": ["IMAGE"], "alpha": ["MASK"]}},
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "SplitImageWithAlpha": (
        "Split Image with Alpha",
        "mask/compositing",
        {"required": {"image": ["IMAGE"]}},
        [("IMAGE", "IMAGE", False), ("MASK", "MASK", False)],
        False,
    ),
    "ImageRotate": (
        "Rotate Image",
        "image/transform",
        {"required": {"image": ["IMAGE"], "rotation": COMBO(["none", "90 degrees", "180 degrees", "270 degrees"])}},
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "ImageFlip": (
        "Flip Image",
        "image/transform",
        {"required": {"image": ["IMAGE"], "flip_method": COMBO(["x-axis: vertically", "y-axis: horizontally"])}},
        [("IMAGE", "IMAGE", False)],
        False,
    ),
    "SaveImageAdvanced": (
        "Save Image (Advanced)",
        "image",
        {
            "required": {
                "images": ["IMAGE", TIP],
                "filename_prefix": ["STRING", {"default": "ComfyUI", **TIP}],
                "format": [
                    "COMFY_DYNAMICCOMBO_V3",
                    {
                        **TIP,
                        "options": [
                            {
                                "key": "png",
                                "inputs": {
                                    "required": {
                                        "bit_depth": COMBO(["8-bit", "16-bit"], default="8-bit", advanced=True),
                                        "input_color_space": COMBO(["sRGB"], default="sRGB", advanced=True),
                                    }
                                },
                            },
                            {
                                "key": "exr",
                                "inputs": {
                                    "required": {
                                        "bit_depth": COMBO(["32-bit float"], default="32-bit float", advanced=True),
                                        "input_color_space": COMBO(
                                            ["sRGB", "HDR", "linear"], default="sRGB", advanced=True, **TIP
                                        ),
                                    }
                                },
                            },
                            {
                                "key": "avif",
                                "inputs": {
                                    "required": {
                                        "bit_depth": COMBO(
                                            ["auto", "8-bit YUV420", "10-bit YUV420"],
                                            default="auto",
                                            advanced=True,
                                            **TIP,
                                        ),
                                        "input_color_space": COMBO(
                                            ["sRGB", "HDR", "HDR PQ"], default="sRGB", advanced=True, **TIP
                                        ),
                                        "crf": INT(18, 1, 63, advanced=True, **TIP),
                                        "save_mode": [
                                            "COMFY_DYNAMICCOMBO_V3",
                                            {
                                                "display_name": "save mode",
                                                "options": [
                                                    {"key": "still images", "inputs": {"required": {}}},
                                                    {
                                                        "key": "animated",
                                                        "inputs": {
                                                            "required": {
                                                                "fps": FLOAT(6.0, 0.01, 1000.0, 0.01),
                                                                "loop_count": INT(0, 0, 1000, advanced=True, **TIP),
                                                            }
                                                        },
                                                    },
                                                ],
                                            },
                                        ],
                                    }
                                },
                            },
                        ],
                    },
                ],
            },
            "hidden": OUTPUT_HIDDEN,
        },
        [("IMAGE", "images", False)],
        True,
    ),
    "ImageCompare": (
        "Image Compare",
        "image",
        {
            "required": {"compare_view": ["IMAGECOMPARE", {"socketless": True}]},
            "optional": {"image_a": ["IMAGE"], "image_b": ["IMAGE"]},
            "hidden": OUTPUT_HIDDEN,
        },
        [],
        True,
    ),
}


def _matches(expected: Any, served: Any) -> bool:
    """Equality where ``...`` in the expected table stands for any served text."""
    if expected is ...:
        return isinstance(served, str) and bool(served)
    if isinstance(expected, dict):
        return (
            isinstance(served, dict)
            and expected.keys() == served.keys()
            and all(_matches(value, served[key]) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return isinstance(served, list) and len(expected) == len(served) and all(map(_matches, expected, served))
    return bool(expected == served) and type(expected) is type(served)


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    registry = NodeRegistry()
    registry.register_module(nodes.image_ops)
    registry.register_module(nodes.image_io_ops)
    return registry.object_info()


def test_the_modules_register_exactly_the_specified_nodes(object_info: dict[str, Any]) -> None:
    assert sorted(object_info) == sorted(SPEC)


@pytest.mark.parametrize("class_type", sorted(SPEC))
def test_interface_matches_comfyui(object_info: dict[str, Any], class_type: str) -> None:
    display_name, category, inputs, outputs, output_node = SPEC[class_type]
    info = object_info[class_type]
    assert _matches(inputs, info["input"]), json.dumps(info["input"], indent=1)
    assert info["input_order"] == {section: list(entries) for section, entries in inputs.items()}
    assert info["output"] == [kind for kind, _, _ in outputs]
    assert info["output_name"] == [name for _, name, _ in outputs]
    assert info["output_is_list"] == [is_list for _, _, is_list in outputs]
    assert (info["display_name"], info["category"], info["output_node"]) == (display_name, category, output_node)


def test_v3_flags_are_served(object_info: dict[str, Any]) -> None:
    assert object_info["ImageCompare"]["experimental"] is True
    assert object_info["ResizeImageMaskNode"]["output_matchtypes"] == ["input_type"]
    assert spec_of(RebatchImages).input_is_list is True


# --- helpers -------------------------------------------------------------------------------------------


def ramp(batch: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """Distinct values per pixel: easy to follow through crops, flips and rotations."""
    return torch.arange(batch * height * width * channels, dtype=torch.float32).reshape(
        batch, height, width, channels
    ) / (batch * height * width * channels)


def pictures(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, height, width, channels), generator=torch.Generator().manual_seed(seed))


def run(function: Any, **inputs: Any) -> Any:
    """Call through the spec, as the executor does (dotted dynamic inputs are folded there)."""
    return spec_of(function).run(None, inputs).values


# --- size and scaling ----------------------------------------------------------------------------------


def test_get_image_size_is_width_height_batch() -> None:
    assert GetImageSize(image=torch.zeros(2, 3, 5, 4), unique_id="7") == (5, 3, 2)


def test_total_pixels_keeps_the_aspect_ratio() -> None:
    image = ramp(1, 4, 8)
    quarter = 8 * 4 / 4 / (1024 * 1024)  # a quarter of the area: each side halves
    result = ImageScaleToTotalPixels(
        image=image, upscale_method="nearest-exact", megapixels=quarter, resolution_steps=1
    )
    assert torch.equal(result, image[:, [1, 3]][:, :, [1, 3, 5, 7]])


def test_total_pixels_rounds_each_side_to_the_steps_half_to_even() -> None:
    image = ramp(1, 2, 5)
    same_area = 10 / (1024 * 1024)
    # 5 / 2 = 2.5 steps rounds to 2 (Python rounds halves to even), 2 / 2 = 1 step.
    result = ImageScaleToTotalPixels(image=image, upscale_method="bilinear", megapixels=same_area, resolution_steps=2)
    assert result.shape == (1, 2, 4, 3)
    with pytest.raises(ValueError, match="resolution_steps 64"):
        ImageScaleToTotalPixels(image=image, upscale_method="bilinear", megapixels=same_area, resolution_steps=64)


def test_max_dimension_scales_the_longer_side_and_rounds_the_other() -> None:
    wide = ramp(1, 2, 4)
    doubled = ImageScaleToMaxDimension(image=wide, upscale_method="nearest-exact", largest_size=8)
    assert torch.equal(doubled, wide.repeat_interleave(2, 1).repeat_interleave(2, 2))
    tall = ImageScaleToMaxDimension(image=ramp(1, 4, 2), upscale_method="bilinear", largest_size=8)
    assert tall.shape == (1, 8, 4, 3)
    # 3 / 5 * 4 = 2.4 rounds to 2.
    assert ImageScaleToMaxDimension(image=ramp(1, 3, 5), upscale_method="area", largest_size=4).shape == (1, 2, 4, 3)
    assert ImageScaleToMaxDimension(image=ramp(1, 3, 3), upscale_method="area", largest_size=2).shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="largest_size 0"):
        ImageScaleToMaxDimension(image=wide, upscale_method="area", largest_size=0)


def test_resize_and_pad_fits_truncates_and_centres_the_odd_pixel_below() -> None:
    image = ramp(1, 2, 4)
    result = ResizeAndPadImage(
        image=image, target_width=6, target_height=6, padding_color="white", interpolation="nearest-exact"
    )
    # Scale min(6/4, 6/2) = 1.5: 6x3, placed at row (6 - 3) // 2 = 1; rows 4 and 5 pad below.
    expected = torch.ones(1, 6, 6, 3)
    expected[:, 1:4] = resample(image.movedim(-1, 1), 6, 3, "nearest-exact").movedim(1, -1)
    assert torch.equal(result, expected)
    black = ResizeAndPadImage(
        image=ramp(1, 3, 3), target_width=5, target_height=4, padding_color="black", interpolation="area"
    )
    # Scale min(5/3, 4/3): 4x4 at column (5 - 4) // 2 = 0, so the one padding column is the last.
    assert torch.all(black[:, :, 4] == 0.0) and black.shape == (1, 4, 5, 3)


# --- ResizeImageMaskNode --------------------------------------------------------------------------------


def resize_node(pixels: torch.Tensor, mode: str, method: str = "nearest-exact", **widgets: Any) -> torch.Tensor:
    flat = {f"resize_type.{name}": value for name, value in widgets.items()}
    (result,) = run(ResizeImageMaskNode, input=pixels, resize_type=mode, scale_method=method, **flat)
    return result


def reference(pixels: torch.Tensor, width: int, height: int, method: str = "nearest-exact", crop: str = "disabled"):
    return resample(pixels.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def test_resize_by_dimensions_follows_a_zero_side_and_crops_centred() -> None:
    image = ramp(1, 4, 8)
    assert torch.equal(resize_node(image, "scale dimensions", width=0, height=2, crop="center"), reference(image, 4, 2))
    squared = resize_node(image, "scale dimensions", width=4, height=4, crop="center")
    assert torch.equal(squared, image[:, :, 2:6])
    assert resize_node(image, "scale dimensions", width=0, height=0, crop="disabled") is image
    assert torch.equal(resize_node(image, "scale width", width=4), reference(image, 4, 2))
    assert torch.equal(resize_node(image, "scale height", height=8), reference(image, 16, 8))


def test_resize_by_multiplier_longer_and_shorter_sides() -> None:
    image = ramp(1, 3, 5)
    assert torch.equal(resize_node(image, "scale by multiplier", multiplier=2.0), reference(image, 10, 6))
    # 3 / 5 * 4 = 2.4 -> 2; 5 / 3 * 6 = 10.
    assert resize_node(image, "scale longer dimension", longer_size=4).shape == (1, 2, 4, 3)
    assert resize_node(image, "scale shorter dimension", shorter_size=6).shape == (1, 6, 10, 3)


def test_resize_to_total_pixels_truncates_the_pixel_budget() -> None:
    image = ramp(1, 1, 7)
    # 0.88 MP is 922746.88 pixels; ResizeImageMaskNode truncates it to 922746 first, ImageScaleToTotalPixels
    # does not, and on a 7x1 picture that moves the width across a rounding boundary.
    assert resize_node(image, "scale total pixels", megapixels=0.88).shape == (1, 363, 2541, 3)
    direct = ImageScaleToTotalPixels(image=image, upscale_method="nearest-exact", megapixels=0.88, resolution_steps=1)
    assert direct.shape == (1, 363, 2542, 3)


def test_resize_to_match_takes_a_mask_or_an_image_size() -> None:
    image = ramp(1, 4, 8)
    match = torch.zeros(1, 2, 2)
    result = resize_node(image, "match size", match=match, crop="center")
    assert torch.equal(result, reference(image, 2, 2, crop="center"))


def test_resize_to_multiple_covers_then_crops_centred() -> None:
    image = ramp(1, 7, 10)
    # Targets 8 x 4; width's factor 0.8 beats 4/7, so 8 x ceil(7 * 0.8) = 8 x 6, cropped rows 1..4.
    result = resize_node(image, "scale to multiple", multiple=4)
    assert torch.equal(result, reference(image, 8, 6)[:, 1:5])
    already = ramp(1, 8, 4)
    assert resize_node(already, "scale to multiple", multiple=4) is already
    assert resize_node(image, "scale to multiple", multiple=16) is image  # smaller than one multiple


def test_masks_resize_as_masks() -> None:
    mask = ramp(2, 2, 3, channels=1)[..., 0]
    result = resize_node(mask, "scale by multiplier", multiplier=2.0)
    assert result.shape == (2, 4, 6)
    assert torch.equal(result, mask.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_dynamic_parts_fold_and_are_checked() -> None:
    image = ramp(1, 2, 2)
    # Widgets of options not chosen, and inputs the node does not know, are ignored as ComfyUI ignores them.
    (result,) = run(
        ResizeImageMaskNode,
        input=image,
        resize_type="scale by multiplier",
        scale_method="nearest-exact",
        **{"resize_type.multiplier": 2.0, "resize_type.width": 7, "from_a_newer_version": 1},
    )
    assert result.shape == (1, 4, 4, 3)
    # A nested dict (what a V1-class call passes) works too.
    (nested,) = run(
        ResizeImageMaskNode,
        input=image,
        resize_type={"resize_type": "scale by multiplier", "multiplier": 2.0},
        scale_method="nearest-exact",
    )
    assert torch.equal(nested, result)
    with pytest.raises(ValueError, match="resize_type.multiplier: required input is missing"):
        run(ResizeImageMaskNode, input=image, resize_type="scale by multiplier", scale_method="area")
    with pytest.raises(ValueError, match="resize_type.multiplier: 9.0 is bigger than the maximum 8.0"):
        resize_node(image, "scale by multiplier", multiplier=9.0)
    with pytest.raises(ValueError, match="resize_type: 'stretch' is not one of"):
        run(ResizeImageMaskNode, input=image, resize_type="stretch", scale_method="area")
    with pytest.raises(ValueError, match="resize_type 'scale longer dimension'.*0x0"):
        resize_node(image, "scale longer dimension", longer_size=0)


# --- batches -------------------------------------------------------------------------------------------


def test_batch_images_joins_any_number_at_the_first_size() -> None:
    first, second, third = pictures(1, 2, 2), pictures(2, 2, 2, seed=1), pictures(1, 2, 4, seed=2)
    (joined,) = run(BatchImagesNode, **{"images.image0": first, "images.image1": second, "images.image2": third})
    assert joined.shape == (4, 2, 2, 3)
    assert torch.equal(joined[:3], torch.cat([first, second]))
    torch.testing.assert_close(joined[3:], third[:, :, 1:3])  # centre crop, then a same-size bilinear resize


def test_batch_images_gives_rgb_an_opaque_alpha_beside_rgba() -> None:
    rgb, rgba = pictures(1, 2, 2), pictures(1, 2, 2, channels=4, seed=1)
    (joined,) = run(BatchImagesNode, images={"image0": rgb, "image1": rgba})
    assert torch.equal(joined[0, ..., :3], rgb[0]) and torch.all(joined[0, ..., 3] == 1.0)
    with pytest.raises(ValueError, match="images.image1: required input is missing"):
        run(BatchImagesNode, **{"images.image0": rgb})


def test_image_from_batch_wraps_negative_indices_and_clamps() -> None:
    batch = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 1, 1, 3)
    values = lambda index, length: ImageFromBatch(image=batch, batch_index=index, length=length)[:, 0, 0, 0].tolist()  # noqa: E731
    assert values(1, 2) == [1, 2]
    assert values(-2, 5) == [3, 4]
    assert values(10, 3) == [4]
    assert values(-10, 2) == [0, 1]


def test_repeat_image_batch_repeats_the_whole_batch() -> None:
    batch = pictures(2, 1, 1)
    assert torch.equal(RepeatImageBatch(image=batch, amount=2), batch[[0, 1, 0, 1]])


def frames(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, 1, 3).contiguous()


def rebatched(batches: list[torch.Tensor], size: int, overlap: int = 0, mode: str = "truncate start") -> list[list]:
    (result,) = run(RebatchImages, images=batches, batch_size=[size], overlap=[overlap], merge_overlap_mode=[mode])
    return [batch[:, 0, 0, 0].tolist() for batch in result]


def test_rebatch_splits_and_joins() -> None:
    assert rebatched([frames(0, 1, 2, 3)], 3) == [[0, 1, 2], [3]]
    assert rebatched([frames(0, 1), frames(2, 3), frames(4)], 3) == [[0, 1, 2], [3, 4]]
    assert rebatched([], 3) == []


def test_rebatch_overlap_repeats_frames_between_outputs() -> None:
    assert rebatched([frames(0, 1, 2, 3)], 3, overlap=1) == [[0, 1, 2], [2, 3]]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("truncate start", [0, 1, 2, 12]),
        ("truncate end", [0, 10, 11, 12]),
        ("fade linear", [0, 1, 11, 12]),  # weights 0 and 1 across a two-frame seam
    ],
)
def test_rebatch_reconciles_overlapping_inputs(mode: str, expected: list[float]) -> None:
    assert rebatched([frames(0, 1, 2), frames(10, 11, 12)], 5, overlap=2, mode=mode) == [expected]


def test_rebatch_fade_smooth_uses_smoothstep_weights() -> None:
    # A three-frame seam weighs the later batch 0, 0.5, 1.
    assert rebatched([frames(0, 1, 2, 3), frames(10, 11, 12, 13)], 8, overlap=3, mode="fade smooth") == [
        [0, 1, 6.5, 12, 13]
    ]


def test_rebatch_does_not_join_different_sizes_and_checks_overlap() -> None:
    small, large = torch.zeros(1, 2, 2, 3), torch.ones(1, 3, 3, 3)
    (result,) = run(
        RebatchImages, images=[small, large], batch_size=[2], overlap=[0], merge_overlap_mode=["fade smooth"]
    )
    assert [batch.shape[1] for batch in result] == [2, 3]
    with pytest.raises(ValueError, match="overlap 2 must be smaller than batch_size 2"):
        rebatched([frames(0, 1)], 2, overlap=2)


# --- blending and filters -------------------------------------------------------------------------------

A = (0.2, 0.6, 0.8)  # image1, one value per pixel
B = (0.5, 0.3, 0.9)  # image2


def three_pixels(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, 1, 3, 1).expand(1, 1, 3, 3).contiguous()


def soft_light_d(a: float) -> float:
    return ((16 * a - 12) * a + 4) * a if a <= 0.25 else math.sqrt(a)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("normal", B),
        ("multiply", (0.1, 0.18, 0.72)),
        ("screen", (0.6, 0.72, 0.98)),
        ("overlay", (0.2, 1 - 2 * 0.4 * 0.7, 1 - 2 * 0.2 * 0.1)),
        ("soft_light", (0.2, 0.6 - 0.4 * 0.6 * 0.4, 0.8 + 0.8 * (soft_light_d(0.8) - 0.8))),
        ("difference", (0.0, 0.3, 0.0)),  # signed, so 0.2 - 0.5 clamps to 0 and 0.8 - 0.9 too
    ],
)
def test_blend_modes_at_full_factor(mode: str, expected: tuple[float, ...]) -> None:
    result = ImageBlend(image1=three_pixels(A), image2=three_pixels(B), blend_factor=1.0, blend_mode=mode)
    torch.testing.assert_close(result[0, 0, :, 0], torch.tensor(expected), atol=1e-6, rtol=0)


def test_blend_factor_mixes_before_clamping() -> None:
    result = ImageBlend(image1=three_pixels(A), image2=three_pixels(B), blend_factor=0.5, blend_mode="difference")
    # 0.5 * a + 0.5 * (a - b) = a - b / 2: -0.05 clamps to 0, then 0.45 and 0.35.
    torch.testing.assert_close(result[0, 0, :, 0], torch.tensor([0.0, 0.45, 0.35]), atol=1e-6, rtol=0)


def test_blend_fits_image2_alpha_size_and_batch() -> None:
    rgb, rgba = pictures(1, 2, 2), pictures(1, 2, 2, channels=4, seed=1)
    assert ImageBlend(image1=rgb, image2=rgba, blend_factor=1.0, blend_mode="normal").shape == (1, 2, 2, 3)
    padded = ImageBlend(image1=rgba, image2=rgb, blend_factor=1.0, blend_mode="normal")
    assert torch.equal(padded[..., :3], rgb) and torch.all(padded[..., 3] == 1.0)
    wide = pictures(1, 4, 8, seed=2)
    resized = ImageBlend(image1=pictures(1, 4, 4), image2=wide, blend_factor=1.0, blend_mode="normal")
    torch.testing.assert_close(resized, reference(wide, 4, 4, "bicubic", "center").clamp(0, 1))
    many = pictures(3, 2, 2)
    broadcast = ImageBlend(image1=many, image2=rgb, blend_factor=1.0, blend_mode="multiply")
    torch.testing.assert_close(broadcast, many * rgb)
    with pytest.raises(ValueError, match="batches of 3 and 2"):
        ImageBlend(image1=many, image2=pictures(2, 2, 2), blend_factor=1.0, blend_mode="normal")


def reference_convolution(image: torch.Tensor, kernel: np.ndarray) -> np.ndarray:
    """Per-channel correlation over a mirror-padded picture (numpy, float64)."""
    radius = kernel.shape[0] // 2
    padded = np.pad(image.double().numpy(), ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[1:3]
    out = np.zeros(image.shape)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[:, dy : dy + height, dx : dx + width]
    return out


def grid_gaussian(size: int, sigma: float) -> np.ndarray:
    """The Gaussian sampled on a -1..1 grid (sigma relative to the radius), normalised."""
    axis = np.linspace(-1, 1, size)
    weights = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma * sigma))
    return weights / weights.sum()


@pytest.mark.parametrize(("radius", "sigma"), [(1, 1.0), (2, 0.5), (3, 4.0)])
def test_blur_is_a_grid_gaussian_with_mirrored_borders(radius: int, sigma: float) -> None:
    image = pictures(2, 7, 9)
    result = ImageBlur(image=image, blur_radius=radius, sigma=sigma)
    expected = reference_convolution(image, grid_gaussian(2 * radius + 1, sigma))
    torch.testing.assert_close(result.double(), torch.from_numpy(expected), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="radius of 9"):
        ImageBlur(image=image, blur_radius=9, sigma=1.0)


@pytest.mark.parametrize(("radius", "sigma", "alpha"), [(1, 1.0, 1.0), (2, 0.3, 0.2)])
def test_sharpen_raises_the_centre_of_a_negative_gaussian(radius: int, sigma: float, alpha: float) -> None:
    image = pictures(1, 6, 6)
    kernel = grid_gaussian(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] += 1 - kernel.sum()
    expected = np.clip(reference_convolution(image, kernel), 0, 1)
    result = ImageSharpen(image=image, sharpen_radius=radius, sigma=sigma, alpha=alpha)
    torch.testing.assert_close(result.double(), torch.from_numpy(expected), atol=1e-5, rtol=0)
    flat = torch.full((1, 4, 4, 3), 0.25)
    torch.testing.assert_close(ImageSharpen(image=flat, sharpen_radius=1, sigma=1.0, alpha=3.0), flat)


def eight_bit(values: list[list[tuple[int, int, int]]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[None] / 255


def test_quantize_keeps_a_picture_that_fits_the_palette() -> None:
    image = eight_bit([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 0, 0)]])
    for dither in ("none", "floyd-steinberg", "bayer-2"):
        assert torch.equal(ImageQuantize(image=image, colors=4, dither=dither), image), dither


def test_quantize_truncates_to_eight_bits_and_reduces_colours() -> None:
    image = eight_bit([[(10, 10, 10), (12, 12, 12)], [(200, 200, 200), (202, 202, 202)]]) + 0.9 / 255
    result = ImageQuantize(image=image, colors=2, dither="none")
    assert len({tuple(pixel.tolist()) for pixel in result.reshape(-1, 3)}) == 2
    with pytest.raises(ValueError, match="must be RGB"):
        ImageQuantize(image=pictures(1, 2, 2, channels=4), colors=2, dither="none")


def test_bayer_matrix_is_the_classic_ordered_dither() -> None:
    classic = [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]
    assert (bayer_matrix(4) * 16 + 7.5).tolist() == classic
    assert bayer_matrix(2).tolist() == [[-0.375, 0.125], [0.375, -0.125]]


def test_bayer_dither_spreads_thresholds_over_one_palette_step() -> None:
    palette = Image.new("P", (1, 1))
    palette.putpalette([0, 0, 0, 255, 255, 255])
    grey = Image.new("RGB", (4, 2), (127, 127, 127))
    # 127 + 256 * m + 0.5 for m = -0.375, 0.125 / 0.375, -0.125: 31 and 95 map to black, 159 and 223 to white.
    dithered = np.asarray(_bayer_dither(grey, palette, 2).convert("L"))
    assert dithered.tolist() == [[0, 255, 0, 255], [255, 0, 255, 0]]


def test_add_noise_is_seeded_clamped_and_leaves_the_global_generator_alone() -> None:
    image = torch.full((1, 3, 3, 3), 0.5)
    state = torch.random.get_rng_state()
    result = ImageAddNoise(image=image, seed=42, strength=0.25)
    assert torch.equal(torch.random.get_rng_state(), state)
    noise = torch.randn((1, 3, 3, 3), generator=torch.manual_seed(42))
    torch.testing.assert_close(result, (0.5 + 0.25 * noise).clamp(0, 1))
    assert torch.equal(ImageAddNoise(image=image, seed=42, strength=0.25), result)
    strong = ImageAddNoise(image=image, seed=0xFFFFFFFFFFFFFFFF, strength=1.0)
    assert strong.min() >= 0 and strong.max() <= 1 and not torch.equal(strong, image)


# --- compositing ---------------------------------------------------------------------------------------


def test_composite_pastes_at_the_offset_and_clips_at_the_edge() -> None:
    destination, source = torch.zeros(1, 4, 4, 3), torch.ones(1, 2, 2, 3)
    pasted = ImageCompositeMasked(destination=destination, source=source, x=1, y=1, resize_source=False, mask=None)
    expected = torch.zeros(1, 4, 4, 3)
    expected[:, 1:3, 1:3] = 1
    assert torch.equal(pasted, expected) and torch.all(destination == 0)
    edge = ImageCompositeMasked(destination=destination, source=source, x=3, y=0, resize_source=False, mask=None)
    assert edge[0, :, :, 0].tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_composite_mask_weights_the_source_and_is_resized_bilinearly() -> None:
    destination, source = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 3)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]])
    result = ImageCompositeMasked(destination=destination, source=source, x=0, y=0, resize_source=False, mask=mask)
    assert result[0, :, :, 0].tolist() == [[1.0, 0.0], [0.5, 1.0]]
    # A 4x4 mask shrinks to 2x2 by averaging pixel pairs (bilinear, half-pixel centres, no antialias).
    big = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.2, 0.4, 0.6, 0.8], [0.2, 0.4, 0.6, 0.8]])
    result = ImageCompositeMasked(destination=destination, source=source, x=0, y=0, resize_source=False, mask=big[None])
    torch.testing.assert_close(result[0, :, :, 0], torch.tensor([[0.0, 1.0], [0.3, 0.7]]))


def test_composite_cycles_batches_resizes_and_fits_alpha() -> None:
    destination = torch.zeros(3, 2, 2, 3)
    source = torch.stack([torch.full((2, 2, 3), 0.25), torch.full((2, 2, 3), 0.75)])
    result = ImageCompositeMasked(destination=destination, source=source, x=0, y=0, resize_source=False, mask=None)
    assert result[:, 0, 0, 0].tolist() == [0.25, 0.75, 0.25]
    stretched = ImageCompositeMasked(
        destination=torch.zeros(1, 4, 4, 3),
        source=torch.full((1, 1, 1, 3), 0.5),
        x=0,
        y=0,
        resize_source=True,
        mask=None,
    )
    assert torch.all(stretched == 0.5)
    rgba = ImageCompositeMasked(
        destination=torch.zeros(1, 2, 2, 4),
        source=torch.full((1, 1, 1, 3), 0.5),
        x=0,
        y=0,
        resize_source=False,
        mask=None,
    )
    assert rgba[0, 0, 0].tolist() == [0.5, 0.5, 0.5, 1.0] and rgba[0, 1, 1].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="x and y must be 0 or more"):
        ImageCompositeMasked(destination=destination, source=source, x=-1, y=0, resize_source=False, mask=None)


def test_join_alpha_inverts_the_mask_resizes_it_and_takes_the_shorter_batch() -> None:
    image = pictures(2, 2, 2, channels=4)
    mask = torch.tensor([[[0.0, 0.0, 1.0, 1.0]] * 4])  # 1x4x4, shrinks to [[0, 1], [0, 1]]
    joined = JoinImageWithAlpha(image=image, alpha=mask)
    assert joined.shape == (1, 2, 2, 4)
    assert torch.equal(joined[..., :3], image[:1, ..., :3])
    assert joined[0, ..., 3].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_split_alpha_gives_rgb_and_an_inverted_mask() -> None:
    rgba = pictures(2, 2, 2, channels=4)
    rgb, mask = SplitImageWithAlpha(image=rgba)
    assert torch.equal(rgb, rgba[..., :3]) and torch.equal(mask, 1.0 - rgba[..., 3])
    _, opaque = SplitImageWithAlpha(image=pictures(1, 2, 3))
    assert torch.equal(opaque, torch.zeros(1, 2, 3))


# --- orientation ---------------------------------------------------------------------------------------


def grid(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)[None, :, :, None].expand(1, len(rows), len(rows[0]), 3)


@pytest.mark.parametrize(
    ("rotation", "expected"),
    [
        ("none", [[0, 1, 2], [3, 4, 5]]),
        ("90 degrees", [[3, 0], [4, 1], [5, 2]]),  # clockwise
        ("180 degrees", [[5, 4, 3], [2, 1, 0]]),
        ("270 degrees", [[2, 5], [1, 4], [0, 3]]),
    ],
)
def test_rotate_turns_clockwise(rotation: str, expected: list[list[float]]) -> None:
    image = grid([[0, 1, 2], [3, 4, 5]])
    assert ImageRotate(image=image, rotation=rotation)[0, :, :, 0].tolist() == expected


def test_flip_mirrors_about_the_named_axis() -> None:
    image = grid([[0, 1, 2], [3, 4, 5]])
    assert ImageFlip(image=image, flip_method="x-axis: vertically")[0, :, :, 0].tolist() == [[3, 4, 5], [0, 1, 2]]
    assert ImageFlip(image=image, flip_method="y-axis: horizontally")[0, :, :, 0].tolist() == [[2, 1, 0], [5, 4, 3]]


# --- SaveImageAdvanced -------------------------------------------------------------------------------------

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}}
WORKFLOW = {"nodes": [], "links": []}


def save(images: torch.Tensor, file_format: str, prefix: str = "ComfyUI", **widgets: Any) -> Any:
    flat = {f"format.{name}": value for name, value in widgets.items()}
    return spec_of(SaveImageAdvanced).run(
        None,
        {
            "images": images,
            "filename_prefix": prefix,
            "format": file_format,
            "prompt": PROMPT,
            "extra_pnginfo": {"workflow": WORKFLOW},
            **flat,
        },
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append((data[position + 4 : position + 8], data[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def decode_png16(data: bytes) -> np.ndarray:
    """Samples of a 16-bit PNG by the PNG specification (filters None, Sub, Up handled)."""
    chunks = png_chunks(data)
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 16
    channels = {0: 1, 2: 3, 6: 4}[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels * 2
    previous = np.zeros(stride, dtype=np.int32)
    rows = []
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        values = np.frombuffer(line[1:], dtype=np.uint8).astype(np.int32)
        if line[0] == 2:
            values = (values + previous) % 256
        else:
            assert line[0] == 0
        rows.append(values)
        previous = values
    samples = np.array(rows, dtype=np.uint8).reshape(height, width * channels, 2)
    return (samples[..., 0].astype(np.int64) * 256 + samples[..., 1]).reshape(height, width, channels)


def read_exr(data: bytes) -> tuple[dict[str, tuple[str, bytes]], dict[str, np.ndarray]]:
    """Attributes and float channels of an uncompressed scanline OpenEXR file, by the file-layout spec."""
    assert struct.unpack("<i", data[:4])[0] == 20000630
    position, attributes = 8, {}
    while data[position] != 0:
        name_end = data.index(b"\0", position)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1 : type_end + 5])
        value = data[type_end + 5 : type_end + 5 + size]
        attributes[data[position:name_end].decode()] = (data[name_end + 1 : type_end].decode(), value)
        position = type_end + 5 + size
    names, chlist = [], attributes["channels"][1]
    cursor = 0
    while chlist[cursor] != 0:
        end = chlist.index(b"\0", cursor)
        names.append(chlist[cursor:end].decode())
        assert struct.unpack("<i", chlist[end + 1 : end + 5])[0] == 2  # FLOAT
        cursor = end + 17
    x0, y0, x1, y1 = struct.unpack("<iiii", attributes["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    offsets = struct.unpack(f"<{height}Q", data[position + 1 : position + 1 + 8 * height])
    planes = {name: np.zeros((height, width), dtype=np.float32) for name in names}
    for offset in offsets:
        y, size = struct.unpack("<ii", data[offset : offset + 8])
        line = np.frombuffer(data[offset + 8 : offset + 8 + size], dtype="<f4").reshape(len(names), width)
        for index, name in enumerate(names):
            planes[name][y] = line[index]
    return attributes, planes


def test_png_8_bit_truncates_and_carries_the_workflow(folders: Folders) -> None:
    image = torch.tensor([[[0.5, 0.999, 0.0], [1.0, 0.25, 0.1]]])[None]
    result = save(image, "png", bit_depth="8-bit", input_color_space="sRGB")
    assert result.values == (image,)
    assert result.ui == {"images": [{"filename": "ComfyUI_00001.png", "subfolder": "", "type": "output"}]}
    with Image.open(folders.output / "ComfyUI_00001.png") as saved:
        assert np.asarray(saved).tolist() == [[[127, 254, 0], [255, 63, 25]]]
        assert json.loads(saved.info["prompt"]) == PROMPT and json.loads(saved.info["workflow"]) == WORKFLOW


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_16_bit_keeps_sixteen_bits(folders: Folders, channels: int) -> None:
    image = pictures(2, 3, 5, channels=channels)
    save(image, "png", prefix="deep/%batch_num%", bit_depth="16-bit", input_color_space="sRGB")
    for index in range(2):
        data = (folders.output / "deep" / f"{index}_0000{index + 1}.png").read_bytes()
        # Scaled in float32 and truncated, as ComfyUI quantises: a float64 product could round elsewhere.
        expected = (image[index] * 65535).to(torch.int64).numpy()
        assert np.array_equal(decode_png16(data), expected)
        texts = dict(body.split(b"\0", 1) for kind, body in png_chunks(data) if kind == b"tEXt")
        assert json.loads(texts[b"prompt"]) == PROMPT and json.loads(texts[b"workflow"]) == WORKFLOW
        with Image.open(folders.output / "deep" / f"{index}_0000{index + 1}.png") as decoded:
            pixels = np.asarray(decoded)
            if channels == 1:  # Pillow reads 16-bit grey at full depth, colour reduced to the high byte
                assert np.array_equal(pixels, expected[..., 0])
            else:
                assert np.array_equal(pixels, expected >> 8)


@pytest.mark.parametrize(
    ("space", "decode", "primaries"),
    [
        ("sRGB", lambda v: v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4, (0.64, 0.33)),
        (
            "HDR",
            lambda v: v * v / 3 if v <= 0.5 else (math.exp((v - 0.55991072928) / 0.17883277) + 0.28466892) / 12,
            (0.708, 0.292),
        ),
        ("linear", lambda v: v, (0.64, 0.33)),
    ],
)
def test_exr_holds_scene_linear_floats(folders: Folders, space: str, decode: Any, primaries: tuple) -> None:
    values = [0.0, 0.02, 0.25, 0.5, 0.75, 1.0]
    image = torch.tensor(values).reshape(1, 2, 3, 1).expand(1, 2, 3, 4).clone()
    image[..., 3] = 0.5  # alpha is never decoded
    save(image, "exr", bit_depth="32-bit float", input_color_space=space)
    attributes, planes = read_exr((folders.output / "ComfyUI_00001.exr").read_bytes())
    assert list(planes) == ["A", "B", "G", "R"]
    expected = np.array([decode(v) for v in values], dtype=np.float64).reshape(2, 3)
    for name in "RGB":
        np.testing.assert_allclose(planes[name], expected, rtol=1e-6, atol=1e-7)
    assert np.all(planes["A"] == 0.5)
    assert json.loads(attributes["prompt"][1]) == PROMPT and attributes["workflow"][0] == "string"
    np.testing.assert_allclose(struct.unpack("<8f", attributes["chromaticities"][1])[:2], primaries, rtol=1e-6)


def test_saving_never_overwrites_and_counts_both_name_styles(folders: Folders) -> None:
    (folders.output / "ComfyUI_00004_.png").write_bytes(b"saved by SaveImage")
    image = pictures(1, 2, 2)
    first = save(image, "png", bit_depth="8-bit", input_color_space="sRGB").ui["images"][0]["filename"]
    second = save(image, "exr", bit_depth="32-bit float", input_color_space="linear").ui["images"][0]["filename"]
    assert (first, second) == ("ComfyUI_00005.png", "ComfyUI_00006.exr")


def test_save_refuses_unsupported_channels_and_bad_formats() -> None:
    with pytest.raises(ValueError, match="png takes 1 or 3 or 4 channels, images has 2"):
        save(pictures(1, 2, 2, channels=2), "png", bit_depth="8-bit", input_color_space="sRGB")
    with pytest.raises(ValueError, match="format: 'jpeg' is not one of png, exr, avif"):
        save(pictures(1, 2, 2), "jpeg")
    with pytest.raises(ValueError, match="format.bit_depth: '16-bit' is not one of 32-bit float"):
        save(pictures(1, 2, 2), "exr", bit_depth="16-bit", input_color_space="sRGB")


@pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")
def test_avif_still_and_animated(folders: Folders) -> None:
    image = torch.zeros(2, 16, 16, 3)
    image[..., 0] = 1.0  # red
    still = save(image, "avif", bit_depth="auto", input_color_space="sRGB", crf=10, save_mode="still images")
    assert [entry["filename"] for entry in still.ui["images"]] == ["ComfyUI_00001.avif", "ComfyUI_00002.avif"]
    with Image.open(folders.output / "ComfyUI_00001.avif") as decoded:
        red, green, blue = np.asarray(decoded.convert("RGB")).reshape(-1, 3).mean(axis=0)
        assert red > 240 and green < 15 and blue < 15
        assert json.loads(decoded.getexif()[0x0110].removeprefix("prompt:")) == PROMPT
    animated = save(
        image,
        "avif",
        bit_depth="8-bit YUV420",
        input_color_space="sRGB",
        crf=30,
        save_mode="animated",
        **{"save_mode.fps": 4.0, "save_mode.loop_count": 0},
    )
    assert animated.ui == {
        "images": [{"filename": "ComfyUI_00003.avif", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    with Image.open(folders.output / "ComfyUI_00003.avif") as decoded:
        assert decoded.n_frames == 2
    with pytest.raises(ValueError, match="8-bit AVIF only"):
        save(image, "avif", bit_depth="10-bit YUV420", input_color_space="sRGB", crf=10, save_mode="still images")


def test_a_prompt_with_dotted_dynamic_inputs_runs_end_to_end(folders: Folders) -> None:
    registry = NodeRegistry()
    for module in (nodes.image, nodes.image_ops, nodes.image_io_ops):
        registry.register_module(module)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 2, "batch_size": 1, "color": 0xFF0000}},
        "2": {
            "class_type": "ResizeImageMaskNode",
            "inputs": {
                "input": ["1", 0],
                "resize_type": "scale by multiplier",
                "resize_type.multiplier": 2.0,
                "scale_method": "nearest-exact",
            },
        },
        "3": {
            "class_type": "SaveImageAdvanced",
            "inputs": {
                "images": ["2", 0],
                "filename_prefix": "run",
                "format": "png",
                "format.bit_depth": "8-bit",
                "format.input_color_space": "sRGB",
            },
        },
    }
    checked = validate_prompt(prompt, registry)
    assert checked.ok, checked.node_errors
    record = Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="p")
    assert record.error is None, record.error
    with Image.open(folders.output / "run_00001.png") as saved:
        assert saved.size == (8, 4) and saved.getpixel((7, 3)) == (255, 0, 0)


# --- ImageCompare ------------------------------------------------------------------------------------------


def test_compare_previews_both_batches_in_temp(folders: Folders) -> None:
    result = spec_of(ImageCompare).run(
        None, {"image_a": pictures(2, 2, 2), "image_b": None, "compare_view": None, "prompt": PROMPT}
    )
    assert result.values == () and set(result.ui) == {"a_images", "b_images"}
    assert result.ui["b_images"] == []
    names = [entry["filename"] for entry in result.ui["a_images"]]
    assert [entry["type"] for entry in result.ui["a_images"]] == ["temp", "temp"]
    assert all(
        name.startswith("comfy.compare.a_temp_") and name.endswith(("_00001_.png", "_00002_.png")) for name in names
    )
    with Image.open(Path(folders.temp) / names[0]) as preview:
        assert "prompt" not in preview.info  # ComfyUI saves these previews without the workflow


def test_a_prompt_gives_batch_images_its_growing_inputs_as_parts_and_they_validate_and_run() -> None:
    from nodes import register_builtin_nodes

    registry = NodeRegistry()
    register_builtin_nodes(registry)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0xFFFFFF}},
        "3": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0], "images.image1": ["2", 0]}},
        "4": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}},
    }
    checked = validate_prompt(prompt, registry)
    assert checked.ok, checked.node_errors
    record = Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="batch")
    assert record.error is None and record.outputs["5"] == {"text": ["3"]}
