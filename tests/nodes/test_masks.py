"""MASK nodes: ComfyUI's interfaces (comfy_extras/nodes_mask.py) and the exact masks they compute."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import nodes.masks as masks_module
from graph.registry import NodeRegistry
from nodes.folders import Folders
from nodes.image import MAX_RESOLUTION
from nodes.masks import (
    CropMask,
    FeatherMask,
    GrowMask,
    ImageColorToMask,
    ImageToMask,
    InvertMask,
    MaskComposite,
    MaskPreview,
    MaskToImage,
    SolidMask,
    ThresholdMask,
)


def _int(default: int, low: int = 0, high: int = MAX_RESOLUTION, **extra: Any) -> list[Any]:
    return ["INT", {"default": default, "min": low, "max": high, "step": 1, **extra}]


#: ComfyUI's inputs, in order, per node (comfy_extras/nodes_mask.py, current V3 schemas).
SPEC: dict[str, dict[str, Any]] = {
    "SolidMask": {
        "value": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
        "width": _int(512, 1),
        "height": _int(512, 1),
    },
    "InvertMask": {"mask": ["MASK"]},
    "GrowMask": {
        "mask": ["MASK"],
        "expand": _int(0, -MAX_RESOLUTION),
        "tapered_corners": ["BOOLEAN", {"default": True, "advanced": True}],
    },
    "FeatherMask": {"mask": ["MASK"], **{side: _int(0) for side in ("left", "top", "right", "bottom")}},
    "MaskComposite": {
        "destination": ["MASK"],
        "source": ["MASK"],
        "x": _int(0),
        "y": _int(0),
        "operation": [["multiply", "add", "subtract", "and", "or", "xor"]],
    },
    "ThresholdMask": {"mask": ["MASK"], "value": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}]},
    "ImageToMask": {"image": ["IMAGE"], "channel": [["red", "green", "blue", "alpha"]]},
    "MaskToImage": {"mask": ["MASK"]},
    "ImageColorToMask": {"image": ["IMAGE"], "color": _int(0, 0, 0xFFFFFF, display="number")},
    "CropMask": {"mask": ["MASK"], "x": _int(0), "y": _int(0), "width": _int(512, 1), "height": _int(512, 1)},
    "MaskPreview": {"mask": ["MASK"]},
}
#: (outputs, output names, display name, output node). Categories are ComfyUI's "mask", the tree Loom's
#: other core nodes follow (ComfyUI's newest code files these under "image/mask").
OUTPUTS: dict[str, tuple[list[str], list[str], str, bool]] = {
    "SolidMask": (["MASK"], ["MASK"], "SolidMask", False),
    "InvertMask": (["MASK"], ["MASK"], "InvertMask", False),
    "GrowMask": (["MASK"], ["MASK"], "Grow Mask", False),
    "FeatherMask": (["MASK"], ["MASK"], "FeatherMask", False),
    "MaskComposite": (["MASK"], ["MASK"], "MaskComposite", False),
    "ThresholdMask": (["MASK"], ["MASK"], "ThresholdMask", False),
    "ImageToMask": (["MASK"], ["MASK"], "Convert Image to Mask", False),
    "MaskToImage": (["IMAGE"], ["IMAGE"], "Convert Mask to Image", False),
    "ImageColorToMask": (["MASK"], ["MASK"], "ImageColorToMask", False),
    "CropMask": (["MASK"], ["MASK"], "CropMask", False),
    "MaskPreview": (["MASK"], ["mask"], "Preview Mask", True),
}


def test_object_info_matches_comfyui() -> None:
    registry = NodeRegistry()
    assert sorted(registry.register_module(masks_module)) == sorted(SPEC)
    info = registry.object_info()
    for name, inputs in SPEC.items():
        entry = info[name]
        assert entry["input"]["required"] == inputs, name
        assert entry["input_order"]["required"] == list(inputs), name
        assert "optional" not in entry["input"], name
        outputs, output_names, display_name, output_node = OUTPUTS[name]
        assert (entry["output"], entry["output_name"], entry["display_name"]) == (outputs, output_names, display_name)
        assert (entry["output_node"], entry["category"]) == (output_node, "mask"), name
    assert info["MaskPreview"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


# --- SolidMask, InvertMask, ThresholdMask ----------------------------------------------------------------


def test_solid_mask_is_one_mask_filled_with_the_value() -> None:
    assert torch.equal(SolidMask(0.25, 3, 2), torch.full((1, 2, 3), 0.25))
    assert SolidMask(1.0, 3, 2).dtype == torch.float32


def test_invert_mask_is_one_minus_the_mask_in_its_own_shape() -> None:
    mask = torch.tensor([[0.0, 0.25], [1.0, 0.5]])
    assert torch.equal(InvertMask(mask), torch.tensor([[1.0, 0.75], [0.0, 0.5]]))


def test_threshold_keeps_only_values_strictly_above() -> None:
    mask = torch.tensor([[[0.2, 0.5, 0.51, 1.0]]])
    assert torch.equal(ThresholdMask(mask, 0.5), torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))


# --- GrowMask --------------------------------------------------------------------------------------------


def dot(size: int = 5) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, size // 2, size // 2] = 1.0
    return mask


def test_grow_with_tapered_corners_grows_a_diamond() -> None:
    plus = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]).float()
    assert torch.equal(GrowMask(dot(), 1, True), plus[None])
    diamond = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]])
    assert torch.equal(GrowMask(dot(), 2, True), diamond[None].float())


def test_grow_without_tapered_corners_grows_a_square() -> None:
    square = torch.zeros(1, 5, 5)
    square[0, 1:4, 1:4] = 1.0
    assert torch.equal(GrowMask(dot(), 1, False), square)
    assert torch.equal(GrowMask(dot(), 2, False), torch.ones(1, 5, 5))


def test_negative_expand_shrinks_and_the_border_does_not_eat_in() -> None:
    block = torch.zeros(1, 5, 5)
    block[0, 1:4, 1:4] = 1.0
    assert torch.equal(GrowMask(block, -1, False), dot())
    # Beyond the edge the edge pixel repeats, so a full mask stays full however much it shrinks.
    assert torch.equal(GrowMask(torch.ones(2, 4, 3), -3, True), torch.ones(2, 4, 3))
    corner = torch.zeros(1, 3, 3)
    corner[0, 0, 0] = 0.5
    assert GrowMask(corner, 1, True)[0].tolist() == [[0.5, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("expand", [-2, -1, 0, 1, 3])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_equals_scipys_grey_morphology_that_comfyui_runs(expand: int, tapered: bool) -> None:
    masks = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(expand + 10 * tapered))
    corner = 0 if tapered else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]])
    expected = []
    for mask in masks.numpy():
        for _ in range(abs(expand)):
            step = ndimage.grey_erosion if expand < 0 else ndimage.grey_dilation
            mask = step(mask, footprint=footprint)
        expected.append(torch.from_numpy(mask))
    assert torch.equal(GrowMask(masks, expand, tapered), torch.stack(expected))


def test_grow_reads_any_mask_layout_as_a_batch() -> None:
    assert GrowMask(dot()[0], 1, True).shape == (1, 5, 5)
    assert GrowMask(torch.zeros(3, 1, 4, 4), 1, True).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="GrowMask: mask must be a non-empty MASK"):
        GrowMask(torch.zeros(4), 1, True)


# --- FeatherMask -----------------------------------------------------------------------------------------


def test_feather_scales_the_outer_pixels_from_one_over_n_up_to_one() -> None:
    feathered = FeatherMask(torch.ones(1, 2, 6), 3, 0, 2, 0)
    assert torch.allclose(feathered[0, 0], torch.tensor([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 0.5]))
    assert torch.equal(feathered[0, 0], feathered[0, 1])
    rows = FeatherMask(torch.ones(1, 4, 1), 0, 2, 0, 1)
    assert torch.allclose(rows[0, :, 0], torch.tensor([0.5, 1.0, 1.0, 1.0]))


def test_feathered_sides_multiply_where_they_meet_and_clip_to_the_mask() -> None:
    feathered = FeatherMask(torch.ones(1, 2, 2), 2, 2, 5, 0)
    # left: [1/2, 1]; right (cut to 2): [1, 1/2]; top: rows [1/2, 1].
    assert torch.allclose(feathered[0], torch.tensor([[0.25, 0.25], [0.5, 0.5]]))
    mask = torch.ones(1, 2, 2)
    FeatherMask(mask, 2, 2, 2, 2)
    assert torch.equal(mask, torch.ones(1, 2, 2))


# --- MaskComposite ---------------------------------------------------------------------------------------


def composite(operation: str, x: int = 0, y: int = 0, **masks: torch.Tensor) -> torch.Tensor:
    destination = masks.get("destination", torch.tensor([[[0.0, 0.25, 0.5, 1.0]] * 2]))
    source = masks.get("source", torch.tensor([[[0.5, 0.5, 1.0, 0.2]] * 2]))
    return MaskComposite(destination, source, x, y, operation)


@pytest.mark.parametrize(
    ("operation", "row"),
    [
        ("multiply", [0.0, 0.125, 0.5, 0.2]),
        ("add", [0.5, 0.75, 1.0, 1.0]),  # 1.5 and 1.2 are clipped
        ("subtract", [0.0, 0.0, 0.0, 0.8]),  # -0.5 and -0.25 are clipped
        ("and", [0.0, 0.0, 0.0, 0.0]),  # rounded: 0, 0, 0 (0.5 rounds to even), 1 vs 0, 0, 1, 0
        ("or", [0.0, 0.0, 1.0, 1.0]),
        ("xor", [0.0, 0.0, 1.0, 1.0]),
    ],
)
def test_every_operation_on_the_overlap(operation: str, row: list[float]) -> None:
    assert torch.allclose(composite(operation), torch.tensor([[row] * 2]))


def test_source_is_placed_at_x_y_and_cut_at_the_destination_edge() -> None:
    destination = torch.zeros(1, 3, 4)
    source = torch.ones(1, 2, 3)
    placed = MaskComposite(destination, source, 2, 2, "add")
    assert placed[0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]
    assert torch.equal(MaskComposite(destination, source, 4, 0, "add"), destination)
    assert not destination.any()


def test_the_whole_result_is_clipped_even_outside_the_source() -> None:
    destination = torch.tensor([[[1.5, -0.5, 0.5]]])
    assert composite("multiply", 2, 0, destination=destination, source=torch.ones(1, 1, 1))[0].tolist() == [
        [1.0, 0.0, 0.5]
    ]


def test_one_source_mask_applies_to_every_destination_mask() -> None:
    destination = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    added = MaskComposite(destination, torch.full((2, 2), 0.5), 0, 0, "add")
    assert torch.equal(added, torch.stack([torch.full((2, 2), 0.5), torch.ones(2, 2)]))
    with pytest.raises(ValueError, match="source has 3 masks and destination 2"):
        MaskComposite(destination, torch.zeros(3, 2, 2), 0, 0, "add")
    with pytest.raises(ValueError, match="operation 'max' is not one of"):
        MaskComposite(destination, destination, 0, 0, "max")


# --- conversions -----------------------------------------------------------------------------------------


def test_image_to_mask_takes_one_channel_as_it_is() -> None:
    image = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).reshape(2, 1, 2, 4) / 32
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        assert torch.equal(ImageToMask(image, channel), image[..., index])
    with pytest.raises(ValueError, match="ImageToMask: image must be an IMAGE .* at least 4 channels to hold alpha"):
        ImageToMask(image[..., :3], "alpha")


def test_mask_to_image_is_grey() -> None:
    mask = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    image = MaskToImage(mask)
    assert image.shape == (1, 2, 2, 3)
    for channel in range(3):
        assert torch.equal(image[0, ..., channel], mask)


def test_image_color_to_mask_matches_the_8_bit_colour_exactly() -> None:
    pixels = torch.tensor([[[0x12, 0x34, 0x56], [0x12, 0x34, 0x57], [0x12, 0x34, 0x56]]], dtype=torch.float32) / 255
    pixels = pixels[None].clone()
    pixels[0, 0, 2] += 0.4 / 255  # rounds back to the same 8-bit colour
    assert ImageColorToMask(pixels, 0x123456).tolist() == [[[1.0, 0.0, 1.0]]]
    white_rgba = torch.cat([torch.full((1, 1, 2, 3), 1.5), torch.zeros(1, 1, 2, 1)], dim=-1)  # clipped to 1
    assert ImageColorToMask(white_rgba, 0xFFFFFF).tolist() == [[[1.0, 1.0]]]
    with pytest.raises(ValueError, match="ImageColorToMask: image must be an IMAGE"):
        ImageColorToMask(torch.zeros(1, 2, 2, 1), 0)


def test_crop_mask_cuts_a_window_clipped_at_the_edge() -> None:
    mask = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert CropMask(mask, 1, 1, 2, 5).tolist() == [[[5.0, 6.0], [9.0, 10.0]]]
    with pytest.raises(ValueError, match="CropMask: the window at x=4, y=0 starts outside the 4x3 mask"):
        CropMask(mask, 4, 0, 2, 2)


# --- MaskPreview -----------------------------------------------------------------------------------------


def test_preview_writes_grey_pngs_to_temp_and_passes_the_mask_on(folders: Folders) -> None:
    masks = torch.tensor([[[0.0, 1.0], [0.5, 0.25]], [[1.0, 1.0], [0.0, 0.0]]])
    result = MaskPreview(masks, prompt={"1": {}}, extra_pnginfo={"workflow": {}})
    assert result.values == (masks,)
    assert result.ui is not None and result.ui["animated"] == [False]
    images = result.ui["images"]
    assert [entry["type"] for entry in images] == ["temp", "temp"]
    assert all(entry["filename"].startswith("ComfyUI_temp_") for entry in images)
    for entry, mask in zip(images, masks):
        with Image.open(folders.temp / entry["subfolder"] / entry["filename"]) as picture:
            assert picture.mode == "RGB" and "prompt" not in picture.info
            pixels = np.asarray(picture)
        # 255 * value, truncated: 0.5 -> 127, 0.25 -> 63.
        expected = (mask * 255).to(torch.uint8).numpy()
        assert all(np.array_equal(pixels[..., channel], expected) for channel in range(3))
