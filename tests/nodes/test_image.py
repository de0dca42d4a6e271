"""Image nodes: interface as served to the editor, and pixels against independent references.

The resampling references below are written from the published definitions (half-pixel centres,
Keys' cubic with a = -0.75 as PyTorch uses, box averaging) as weight matrices, so a wrong mode, a
switched-on antialias filter or a transposed width/height shows up as different numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from graph.declare import spec_of
from nodes.image import (
    MAX_RESOLUTION,
    EmptyImage,
    ImageBatch,
    ImageCrop,
    ImageInvert,
    ImagePadForOutpaint,
    ImageScale,
    ImageScaleBy,
    ImageStitch,
    resample,
)

METHODS = [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]]

#: The cubic convolution kernel's free parameter, -0.75 as in PyTorch and PIL (Keys 1981 uses -0.5).
A = -0.75


def _weights(size_in: int, size_out: int, method: str) -> np.ndarray:
    """The ``[out, in]`` matrix of one axis of a resize."""
    scale = size_in / size_out
    matrix = np.zeros((size_out, size_in))
    for out in range(size_out):
        centre = (out + 0.5) * scale - 0.5
        if method == "nearest-exact":
            matrix[out, min(math.floor((out + 0.5) * scale), size_in - 1)] = 1
        elif method == "area":
            start, end = math.floor(out * scale), math.ceil((out + 1) * scale)
            matrix[out, start:end] = 1 / (end - start)
        elif method == "bilinear":
            centre = max(centre, 0.0)
            low = math.floor(centre)
            high, t = min(low + 1, size_in - 1), centre - low
            matrix[out, low] += 1 - t
            matrix[out, high] += t
        elif method == "bicubic":
            low, t = math.floor(centre), centre - math.floor(centre)
            near = lambda x: ((A + 2) * x - (A + 3)) * x * x + 1  # noqa: E731
            far = lambda x: ((A * x - 5 * A) * x + 8 * A) * x - 4 * A  # noqa: E731
            for tap, weight in zip(range(low - 1, low + 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
                matrix[out, min(max(tap, 0), size_in - 1)] += weight
    return matrix


def reference_resize(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    rows = _weights(image.shape[1], height, method)
    cols = _weights(image.shape[2], width, method)
    out = np.einsum("yh,bhwc,xw->byxc", rows, image.double().numpy(), cols)
    return torch.from_numpy(out).float()


def pictures(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, height, width, channels), generator=torch.Generator().manual_seed(seed))


def test_interfaces_match_comfyui() -> None:
    expected = {
        EmptyImage: {
            "width": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
            "height": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}],
        },
        ImageScale: {
            "image": ["IMAGE"],
            "upscale_method": METHODS,
            "width": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
            "height": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
            "crop": [["disabled", "center"]],
        },
        ImageScaleBy: {
            "image": ["IMAGE"],
            "upscale_method": METHODS,
            "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
        },
        ImageInvert: {"image": ["IMAGE"]},
        ImageBatch: {"image1": ["IMAGE"], "image2": ["IMAGE"]},
        ImageCrop: {
            "image": ["IMAGE"],
            "width": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
            "height": ["INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}],
            "x": ["INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
            "y": ["INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
        },
        ImagePadForOutpaint: {
            "image": ["IMAGE"],
            **{
                side: ["INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}]
                for side in ("left", "top", "right", "bottom")
            },
            "feathering": ["INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
        },
    }
    for function, inputs in expected.items():
        info = spec_of(function).object_info()
        assert info["input"] == {"required": inputs}, function.__name__
        assert info["input_order"] == {"required": list(inputs)}
        assert info["output"] == (["IMAGE", "MASK"] if function is ImagePadForOutpaint else ["IMAGE"])
        assert info["output_node"] is False


def test_display_names_and_categories_match_comfyui() -> None:
    functions = (EmptyImage, ImageScale, ImageScaleBy, ImageInvert, ImageBatch, ImageCrop, ImagePadForOutpaint)
    assert [(spec_of(f).display_name, spec_of(f).category) for f in functions] == [
        ("EmptyImage", "image"),
        ("Upscale Image", "image/upscaling"),
        ("Upscale Image By", "image/upscaling"),
        ("Invert Image", "image"),
        ("Batch Images", "image"),
        ("Image Crop", "image/transform"),
        ("Pad Image for Outpainting", "image"),
    ]


def test_empty_image_is_filled_with_the_colour() -> None:
    image = EmptyImage(width=5, height=3, batch_size=2, color=0x336699)
    assert image.shape == (2, 3, 5, 3) and image.dtype == torch.float32
    assert torch.equal(image, torch.tensor([0x33, 0x66, 0x99]).float().div(255).expand(2, 3, 5, 3))


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
@pytest.mark.parametrize(("width", "height"), [(11, 7), (3, 2), (8, 12)])
def test_torch_methods_match_their_definitions(method: str, width: int, height: int) -> None:
    image = pictures(2, 6, 5)
    result = ImageScale(image=image, upscale_method=method, width=width, height=height, crop="disabled")
    assert result.shape == (2, height, width, 3)
    torch.testing.assert_close(result, reference_resize(image, width, height, method), atol=1e-5, rtol=0)


def test_downscaling_does_not_antialias() -> None:
    # Half-pixel centres of a 6 → 2 resize fall exactly on source pixels 1 and 4: without antialias the
    # result is those pixels; any blur filter would mix in their neighbours.
    image = pictures(1, 6, 6)
    result = ImageScale(image=image, upscale_method="bilinear", width=2, height=2, crop="disabled")
    torch.testing.assert_close(result, image[:, [1, 4]][:, :, [1, 4]])


def test_lanczos_is_pillows_filter_on_eight_bit_pixels() -> None:
    image = pictures(2, 9, 7)
    result = ImageScale(image=image, upscale_method="lanczos", width=4, height=13, crop="disabled")
    for index in range(2):
        eight_bit = Image.fromarray((image[index].numpy() * 255).astype(np.uint8))
        expected = np.asarray(eight_bit.resize((4, 13), Image.Resampling.LANCZOS), dtype=np.float32) / 255
        torch.testing.assert_close(result[index], torch.from_numpy(expected))


def test_lanczos_keeps_the_alpha_channel() -> None:
    assert resample(pictures(1, 4, 4, channels=4).movedim(-1, 1), 8, 8, "lanczos").shape == (1, 4, 8, 8)


def test_a_zero_side_keeps_the_aspect_ratio() -> None:
    image = pictures(1, 4, 8)
    assert ImageScale(image=image, upscale_method="area", width=0, height=2, crop="disabled").shape == (1, 2, 4, 3)
    assert ImageScale(image=image, upscale_method="area", width=16, height=0, crop="disabled").shape == (1, 8, 16, 3)
    assert ImageScale(image=image, upscale_method="area", width=0, height=0, crop="disabled") is image


def test_center_crop_trims_the_long_side_before_resizing() -> None:
    image = pictures(1, 2, 6)
    result = ImageScale(image=image, upscale_method="nearest-exact", width=2, height=2, crop="center")
    assert torch.equal(result, image[:, :, 2:4])
    tall = pictures(1, 8, 2)
    assert torch.equal(
        ImageScale(image=tall, upscale_method="nearest-exact", width=2, height=2, crop="center"), tall[:, 3:5]
    )


def test_scale_by_rounds_the_new_size() -> None:
    image = pictures(1, 3, 5)
    result = ImageScaleBy(image=image, upscale_method="nearest-exact", scale_by=2.0)
    assert torch.equal(result, image.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    assert ImageScaleBy(image=image, upscale_method="bilinear", scale_by=0.5).shape == (1, 2, 2, 3)


def test_unknown_methods_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="upscale_method 'cubic'"):
        resample(torch.zeros(1, 3, 2, 2), 4, 4, "cubic")


def test_invert() -> None:
    image = pictures(2, 3, 3)
    assert torch.equal(ImageInvert(image=image), 1 - image)


def test_batch_concatenates_and_fits_the_second_batch_to_the_first() -> None:
    first, same, wide = pictures(2, 4, 4), pictures(1, 4, 4, seed=1), pictures(3, 4, 8, seed=2)
    assert torch.equal(ImageBatch(image1=first, image2=same), torch.cat([first, same]))
    joined = ImageBatch(image1=first, image2=wide)
    assert joined.shape == (5, 4, 4, 3)
    # Centre crop of the 8-wide batch to a square, then a same-size bilinear resize: columns 2..5.
    torch.testing.assert_close(joined[2:], wide[:, :, 2:6])


def test_batch_refuses_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="3 channels and image2 has 4"):
        ImageBatch(image1=pictures(1, 2, 2), image2=pictures(1, 2, 2, channels=4))


def test_crop_cuts_a_window_and_clips_it_at_the_edge() -> None:
    image = pictures(2, 6, 8)
    assert torch.equal(ImageCrop(image=image, width=3, height=2, x=4, y=1), image[:, 1:3, 4:7])
    assert torch.equal(ImageCrop(image=image, width=512, height=512, x=6, y=0), image[:, :, 6:])
    assert torch.equal(ImageCrop(image=image, width=4, height=4, x=100, y=100), image[:, 5:, 7:])


def test_outpaint_pads_with_grey_and_feathers_the_seam() -> None:
    image = pictures(1, 6, 6)
    padded, mask = ImagePadForOutpaint(image=image, left=2, top=0, right=0, bottom=1, feathering=2)
    assert padded.shape == (1, 7, 8, 3) and mask.shape == (1, 7, 8)
    assert torch.equal(padded[:, :6, 2:], image)
    assert torch.all(padded[:, :, :2] == 0.5) and torch.all(padded[:, 6] == 0.5)
    # Distance to the left seam counts from 0, to the bottom seam from 1 (the last row is 1 away).
    column_fade = torch.tensor([1.0, 0.25, 0, 0, 0, 0])
    expected = torch.ones(7, 8)
    expected[:6, 2:] = column_fade
    expected[5, 2:] = torch.tensor([1.0, 0.25, 0.25, 0.25, 0.25, 0.25])
    torch.testing.assert_close(mask[0], expected)


def test_outpaint_does_not_feather_a_seam_wider_than_half_the_picture() -> None:
    _, mask = ImagePadForOutpaint(image=pictures(1, 4, 4), left=8, top=0, right=0, bottom=0, feathering=2)
    assert torch.equal(mask[0, :, :8], torch.ones(4, 8)) and torch.equal(mask[0, :, 8:], torch.zeros(4, 4))


def stitch(image1: torch.Tensor, image2: torch.Tensor | None, direction: str = "right", **options) -> torch.Tensor:
    settings = {"match_image_size": False, "spacing_width": 0, "spacing_color": "white", **options}
    return ImageStitch(image1=image1, direction=direction, image2=image2, **settings)


def test_stitch_interface_matches_comfyui() -> None:
    info = spec_of(ImageStitch).object_info()
    assert info["input"] == {
        "required": {
            "image1": ["IMAGE"],
            "direction": [["right", "down", "left", "up"], {"default": "right"}],
            "match_image_size": ["BOOLEAN", {"default": True}],
            "spacing_width": ["INT", {"default": 0, "min": 0, "max": 1024, "step": 2, "advanced": True}],
            "spacing_color": [["white", "black", "red", "green", "blue"], {"default": "white", "advanced": True}],
        },
        "optional": {"image2": ["IMAGE"]},
    }
    assert info["input_order"] == {
        "required": ["image1", "direction", "match_image_size", "spacing_width", "spacing_color"],
        "optional": ["image2"],
    }
    assert info["output"] == ["IMAGE"] and info["output_node"] is False
    assert (spec_of(ImageStitch).display_name, spec_of(ImageStitch).category) == ("Stitch Images", "image/transform")


def test_stitch_without_image2_returns_image1() -> None:
    image = pictures(1, 3, 4)
    assert stitch(image, None) is image


@pytest.mark.parametrize(
    ("direction", "dim", "image2_first"), [("right", 2, False), ("left", 2, True), ("down", 1, False), ("up", 1, True)]
)
def test_stitch_places_image2_on_the_named_side(direction: str, dim: int, image2_first: bool) -> None:
    image1, image2 = pictures(2, 4, 5, seed=1), pictures(2, 4, 5, seed=2)
    parts = [image2, image1] if image2_first else [image1, image2]
    assert torch.equal(stitch(image1, image2, direction), torch.cat(parts, dim=dim))


@pytest.mark.parametrize(
    ("color", "rgb"),
    [("white", (1, 1, 1)), ("black", (0, 0, 0)), ("red", (1, 0, 0)), ("green", (0, 1, 0)), ("blue", (0, 0, 1))],
)
def test_the_spacing_strip_has_the_colour_and_an_even_width(color: str, rgb: tuple[int, ...]) -> None:
    image1, image2 = pictures(1, 3, 2, seed=1), pictures(1, 3, 5, seed=2)
    result = stitch(image1, image2, "left", spacing_width=3, spacing_color=color)  # odd: rounded up to 4
    assert result.shape == (1, 3, 5 + 4 + 2, 3)
    assert torch.equal(result[:, :, :5], image2) and torch.equal(result[:, :, 9:], image1)
    assert torch.equal(result[:, :, 5:9], torch.tensor(rgb, dtype=torch.float32).expand(1, 3, 4, 3))
    below = stitch(image1, pictures(1, 1, 2, seed=2), "down", spacing_width=2, spacing_color=color)
    assert torch.equal(below[:, 3:5], torch.tensor(rgb, dtype=torch.float32).expand(1, 2, 2, 3))


def test_match_image_size_scales_image2_to_image1s_height_beside_and_width_below() -> None:
    image1, image2 = pictures(1, 6, 5, seed=1), pictures(1, 4, 7, seed=2)  # image2's aspect ratio: 1.75
    beside = stitch(image1, image2, "right", match_image_size=True)
    assert beside.shape == (1, 6, 5 + 10, 3)  # 6 * 1.75 = 10.5, truncated
    assert torch.equal(beside[:, :, :5], image1)
    torch.testing.assert_close(beside[:, :, 5:], resample(image2.movedim(-1, 1), 10, 6, "lanczos").movedim(1, -1))
    above = stitch(image1, image2, "up", match_image_size=True)
    assert above.shape == (1, 2 + 6, 5, 3)  # 5 / 1.75 = 2.86, truncated
    torch.testing.assert_close(above[:, :2], resample(image2.movedim(-1, 1), 5, 2, "lanczos").movedim(1, -1))
    assert torch.equal(above[:, 2:], image1)


def test_match_image_size_resamples_image2_even_at_its_own_size() -> None:
    """Through Lanczos on 8-bit pixels, as ComfyUI does: image2 comes back truncated to 8 bits."""
    image1, image2 = pictures(1, 4, 4, seed=1), pictures(1, 4, 4, seed=2)
    result = stitch(image1, image2, "right", match_image_size=True)
    torch.testing.assert_close(result[:, :, 4:], torch.floor(image2 * 255) / 255)


@pytest.mark.parametrize(("color", "fill"), [("white", 1.0), ("black", 0.0), ("red", 0.0), ("blue", 0.0)])
def test_without_matching_the_smaller_picture_is_padded_centred(color: str, fill: float) -> None:
    """With the spacing colour when it is white or black, with black otherwise; the odd pixel goes after."""
    image1, image2 = pictures(1, 4, 2, seed=1), pictures(1, 7, 3, seed=2)
    result = stitch(image1, image2, "right", spacing_color=color)
    assert result.shape == (1, 7, 5, 3)
    assert torch.equal(result[:, 1:5, :2], image1) and torch.equal(result[:, :, 2:], image2)
    assert torch.all(result[:, :1, :2] == fill) and torch.all(result[:, 5:, :2] == fill)
    below = stitch(image1, image2, "down", spacing_color=color)
    assert below.shape == (1, 11, 3, 3)
    assert torch.equal(below[:, :4, :2], image1) and torch.all(below[:, :4, 2:] == fill)
    assert torch.equal(below[:, 4:], image2)


def test_a_shorter_batch_repeats_its_last_picture() -> None:
    single, triple = pictures(1, 2, 2, seed=1), pictures(3, 2, 2, seed=2)
    assert torch.equal(stitch(single, triple), torch.cat([single.expand(3, -1, -1, -1), triple], dim=2))
    assert torch.equal(stitch(triple, single), torch.cat([triple, single.expand(3, -1, -1, -1)], dim=2))
    pair = pictures(2, 2, 2, seed=3)
    assert torch.equal(stitch(pair, triple)[:, :, :2], pair[[0, 1, 1]])


def test_an_rgb_picture_beside_an_rgba_one_gets_an_opaque_alpha() -> None:
    rgb, rgba = pictures(1, 2, 3, seed=1), pictures(1, 2, 3, channels=4, seed=2)
    result = stitch(rgb, rgba, "right", spacing_width=2, spacing_color="red")
    assert result.shape == (1, 2, 8, 4)
    assert torch.equal(result[:, :, :3, :3], rgb) and torch.all(result[:, :, :3, 3] == 1.0)
    assert torch.equal(result[:, :, 3:5], torch.tensor([1.0, 0, 0, 1]).expand(1, 2, 2, 4))
    assert torch.equal(result[:, :, 5:], rgba)


def test_padding_fills_every_channel_so_a_black_border_of_rgba_is_transparent() -> None:
    rgba, tall = pictures(1, 1, 2, channels=4, seed=1), pictures(1, 3, 2, channels=4, seed=2)
    result = stitch(rgba, tall, "right", spacing_color="black")
    assert torch.all(result[:, 0, :2] == 0.0) and torch.all(result[:, 2, :2] == 0.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"direction": "diagonal"}, "direction 'diagonal' is not one of right, down, left, up"),
        ({"spacing_color": "purple"}, "spacing_color 'purple' is not one of white, black, red, green, blue"),
        ({"spacing_width": -2}, "spacing_width must be 0 or more"),
        ({"image1": torch.rand(4, 4, 3)}, r"image1 must be a non-empty IMAGE \[B, H, W, C\]"),
        ({"image2": torch.rand(1, 0, 4, 3)}, r"image2 must be a non-empty IMAGE"),
        ({"image2": torch.rand(1, 1, 40, 3), "direction": "down", "match_image_size": True}, "0 pixels in height"),
    ],
)
def test_stitch_names_the_input_it_cannot_use(options: dict, message: str) -> None:
    arguments = {"image1": pictures(1, 4, 4), "image2": pictures(1, 4, 4, seed=1), **options}
    with pytest.raises(ValueError, match=message):
        stitch(**arguments)
