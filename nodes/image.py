"""Image nodes that need no model: make, resize, crop, pad, stitch, invert and batch IMAGE tensors.

Class names, input names, defaults and ranges are ComfyUI's (docs/compatibility.md §5) so saved workflows run unchanged.
Resampling matches ComfyUI's choices on purpose: bilinear and bicubic without antialiasing (what
``torch.nn.functional.interpolate`` does by default), ``area`` as box averaging, and Lanczos through
Pillow on 8-bit pixels; the same workflow then gives the same pixels in both engines.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from graph.declare import Boolean, Combo, Float, Int, Output, Socket, node
from nodes.image_tensors import image_to_pil

#: The largest width or height any node accepts (ComfyUI's ``MAX_RESOLUTION`` since 2024).
MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Trim ``[..., H, W]`` symmetrically so its aspect ratio becomes ``width / height`` before resizing."""
    old_height, old_width = samples.shape[-2:]
    old_aspect, new_aspect = old_width / old_height, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * new_aspect / old_aspect) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * old_aspect / new_aspect) / 2)
    return samples[..., y : old_height - y, x : old_width - x]


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos filter on 8-bit pixels, picture by picture; torch has no Lanczos kernel."""
    resized = []
    for picture in samples:
        small = image_to_pil(picture.movedim(0, -1)).resize((width, height), Image.Resampling.LANCZOS)
        pixels = np.asarray(small, dtype=np.float32).reshape(height, width, -1) / 255.0
        resized.append(torch.from_numpy(pixels).movedim(-1, 0))
    return torch.stack(resized).to(samples.device, samples.dtype)


def resample(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize channels-first ``[B, C, H, W]`` pixels to ``width`` × ``height`` with one of ``UPSCALE_METHODS``."""
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale_method {method!r}; expected one of {', '.join(UPSCALE_METHODS)}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROP_METHODS)}")
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "lanczos":
        return _lanczos(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


@node(category="image", outputs=[Output("IMAGE")])
def EmptyImage(
    width=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    height=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    batch_size=Int(1, min=1, max=4096),
    color=Int(0, min=0, max=0xFFFFFF, step=1, display="color"),
):
    """A batch of pictures filled with one colour, given as 0xRRGGBB."""
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
    return rgb.expand(batch_size, height, width, 3).clone()


@node(category="image/upscaling", display_name="Upscale Image", outputs=[Output("IMAGE")])
def ImageScale(
    image=Socket("IMAGE"),
    upscale_method=Combo(UPSCALE_METHODS),
    width=Int(512, min=0, max=MAX_RESOLUTION, step=1),
    height=Int(512, min=0, max=MAX_RESOLUTION, step=1),
    crop=Combo(CROP_METHODS),
):
    """Resize pictures to a size; a width or height of 0 follows the other and keeps the aspect ratio."""
    if width == 0 and height == 0:
        return image
    old_height, old_width = image.shape[1:3]
    if width == 0:
        width = max(1, round(old_width * height / old_height))
    elif height == 0:
        height = max(1, round(old_height * width / old_width))
    return resample(image.movedim(-1, 1), width, height, upscale_method, crop).movedim(1, -1)


#: The sizes FLUX.1 Kontext was trained on (about one megapixel, aspect ratios from 3:7 to 7:3), as Black
#: Forest Labs' reference code lists them.
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024),
    (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip


@node(category="advanced/conditioning/flux", outputs=[Output("IMAGE")])
def FluxKontextImageScale(image=Socket("IMAGE")):
    """Resize pictures to the Kontext size of the closest aspect ratio (Lanczos, centre-cropped to it)."""
    height, width = image.shape[1:3]
    _, target_width, target_height = min((abs(width / height - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
    return resample(image.movedim(-1, 1), target_width, target_height, "lanczos", "center").movedim(1, -1)


@node(category="image/upscaling", display_name="Upscale Image By", outputs=[Output("IMAGE")])
def ImageScaleBy(
    image=Socket("IMAGE"),
    upscale_method=Combo(UPSCALE_METHODS),
    scale_by=Float(1.0, min=0.01, max=8.0, step=0.01),
):
    """Resize pictures by a factor."""
    old_height, old_width = image.shape[1:3]
    width, height = max(1, round(old_width * scale_by)), max(1, round(old_height * scale_by))
    return resample(image.movedim(-1, 1), width, height, upscale_method).movedim(1, -1)


@node(category="image", display_name="Invert Image", outputs=[Output("IMAGE")])
def ImageInvert(image=Socket("IMAGE")):
    """Turn every channel value v into 1 - v."""
    return 1.0 - image


@node(category="image", display_name="Batch Images", outputs=[Output("IMAGE")])
def ImageBatch(image1=Socket("IMAGE"), image2=Socket("IMAGE")):
    """Join two batches; the second is resized (bilinear, centre-cropped) to the first one's size."""
    if image1.shape[-1] != image2.shape[-1]:
        raise ValueError(
            f"ImageBatch: image1 has {image1.shape[-1]} channels and image2 has {image2.shape[-1]}; they must match"
        )
    if image1.shape[1:] != image2.shape[1:]:
        height, width = image1.shape[1:3]
        image2 = resample(image2.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
    return torch.cat((image1, image2.to(image1.device, image1.dtype)), dim=0)


@node(category="image/transform", display_name="Image Crop", outputs=[Output("IMAGE")])
def ImageCrop(
    image=Socket("IMAGE"),
    width=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    height=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=1),
):
    """Cut a width × height window at (x, y); a window past the edge is clipped, never padded."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y : y + height, x : x + width, :]


def outpaint_feather(
    height: int, width: int, left: int, top: int, right: int, bottom: int, feathering: int
) -> torch.Tensor:
    """The mask over the original pixels: near a padded edge it fades from 1 to 0 quadratically.

    The distance to the bottom and right edges counts from one past the last pixel (so the last row is
    at distance 1) while top and left count from 0; ComfyUI measures it that way and masks must match
    for inpainting results to match. Sides that were not padded do not feather, and feathering is
    skipped entirely when it would span more than half the picture.
    """
    if feathering <= 0 or feathering * 2 >= height or feathering * 2 >= width:
        return torch.zeros((height, width))
    # In float64 and stored as float32 once, as ComfyUI computes it (float32 throughout is one step off).
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    far_rows, far_cols = torch.full_like(rows, height), torch.full_like(cols, width)
    distance = torch.minimum(
        torch.minimum(rows if top else far_rows, height - rows if bottom else far_rows),
        torch.minimum(cols if left else far_cols, width - cols if right else far_cols),
    )
    fade = ((feathering - distance) / feathering) ** 2
    return torch.where(distance < feathering, fade, torch.zeros((), dtype=torch.float64)).float()


@node(category="image", display_name="Pad Image for Outpainting", outputs=[Output("IMAGE"), Output("MASK")])
def ImagePadForOutpaint(
    image=Socket("IMAGE"),
    left=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    top=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    right=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    bottom=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    feathering=Int(40, min=0, max=MAX_RESOLUTION, step=1),
):
    """Grow the canvas with mid-grey borders and a mask that covers the new borders (and a feathered seam)."""
    batch, height, width, channels = image.shape
    size = (batch, top + height + bottom, left + width + right, channels)
    padded = torch.full(size, 0.5, dtype=image.dtype, device=image.device)
    padded[:, top : top + height, left : left + width, :] = image
    mask = torch.ones((top + height + bottom, left + width + right), dtype=torch.float32)
    mask[top : top + height, left : left + width] = outpaint_feather(
        height, width, left, top, right, bottom, feathering
    )
    return padded, mask[None]


STITCH_DIRECTIONS = ["right", "down", "left", "up"]
#: The spacing strip's colours as RGB. White and black also fill the padding of a picture too small for
#: the other when sizes are not matched; the other colours pad with black (as ComfyUI does).
SPACING_COLORS = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
}


def _check_picture_batch(name: str, image: torch.Tensor) -> None:
    if image.ndim != 4 or 0 in image.shape:
        raise ValueError(f"ImageStitch: {name} must be a non-empty IMAGE [B, H, W, C], got shape {tuple(image.shape)}")


def _repeat_last(image: torch.Tensor, batch: int) -> torch.Tensor:
    """``image`` lengthened to ``batch`` pictures by repeating its last one."""
    extra = batch - image.shape[0]
    return image if extra <= 0 else torch.cat([image, image[-1:].expand(extra, -1, -1, -1)])


def _fit_to(image1: torch.Tensor, image2: torch.Tensor, horizontal: bool) -> torch.Tensor:
    """``image2`` resized (Lanczos) to image1's height beside it or width below it, keeping its aspect ratio.

    The other side is truncated, not rounded, and the resize always runs, quantising ``image2`` to 8 bits
    even at its own size: both as ComfyUI does, so stitched pictures match pixel for pixel.
    """
    (height1, width1), (height2, width2) = image1.shape[1:3], image2.shape[1:3]
    aspect = width2 / height2
    height, width = (height1, int(height1 * aspect)) if horizontal else (int(width1 / aspect), width1)
    if height < 1 or width < 1:
        side, other = ("height", "width") if horizontal else ("width", "height")
        raise ValueError(
            f"ImageStitch: image2 ({width2}x{height2}) scaled to image1's {side} would be 0 pixels in {other}; "
            "turn match_image_size off"
        )
    return resample(image2.movedim(-1, 1), width, height, "lanczos").movedim(1, -1)


def _pad_centred(image: torch.Tensor, size: int, dim: int, value: float) -> torch.Tensor:
    """``image`` padded along ``dim`` (1 = height, 2 = width) to ``size`` with ``value``, the odd pixel after."""
    missing = size - image.shape[dim]
    if missing <= 0:
        return image
    before = missing // 2
    shape = list(image.shape)
    shape[dim] = size
    padded = torch.full(shape, value, dtype=image.dtype, device=image.device)
    padded.narrow(dim, before, image.shape[dim]).copy_(image)
    return padded


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """``image`` with extra channels of ones (an opaque alpha for RGB beside RGBA)."""
    extra = channels - image.shape[-1]
    if extra <= 0:
        return image
    return torch.cat([image, image.new_ones((*image.shape[:-1], extra))], dim=-1)


def _spacing_strip(shape: tuple[int, int, int, int], color: str, like: torch.Tensor) -> torch.Tensor:
    """A strip of one colour: the first three channels carry the colour, a fourth (alpha) is opaque."""
    strip = torch.zeros(shape, dtype=like.dtype, device=like.device)
    coloured = min(3, shape[-1])
    strip[..., :coloured] = torch.tensor(SPACING_COLORS[color][:coloured], dtype=like.dtype)
    if shape[-1] == 4:
        strip[..., 3] = 1.0
    return strip


@node(category="image/transform", display_name="Stitch Images", outputs=[Output("IMAGE")])
def ImageStitch(
    image1=Socket("IMAGE"),
    direction=Combo(STITCH_DIRECTIONS, default="right"),
    match_image_size=Boolean(True),
    spacing_width=Int(0, min=0, max=1024, step=2, advanced=True),
    spacing_color=Combo(list(SPACING_COLORS), default="white", advanced=True),
    image2=Socket("IMAGE", optional=True),
):
    """Join image2 to image1 on the side named by direction, optionally with a coloured strip between.

    Without image2, image1 is returned as it is. match_image_size resizes image2 to image1's height (right,
    left) or width (down, up), keeping its aspect ratio; otherwise the smaller picture is padded, centred.
    A shorter batch repeats its last picture; an RGB picture beside an RGBA one gets an opaque alpha.
    An odd spacing width is rounded up to the next even number.
    """
    if image2 is None:
        return image1
    if direction not in STITCH_DIRECTIONS:
        raise ValueError(f"ImageStitch: direction {direction!r} is not one of {', '.join(STITCH_DIRECTIONS)}")
    if spacing_color not in SPACING_COLORS:
        raise ValueError(f"ImageStitch: spacing_color {spacing_color!r} is not one of {', '.join(SPACING_COLORS)}")
    if spacing_width < 0:
        raise ValueError(f"ImageStitch: spacing_width must be 0 or more, got {spacing_width}")
    _check_picture_batch("image1", image1)
    _check_picture_batch("image2", image2)
    image2 = image2.to(image1.device, image1.dtype)
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _repeat_last(image1, batch), _repeat_last(image2, batch)

    horizontal = direction in ("right", "left")
    across = 1 if horizontal else 2  # the side the two pictures must share
    if match_image_size:
        image2 = _fit_to(image1, image2, horizontal)
    else:
        size = max(image1.shape[across], image2.shape[across])
        pad_value = SPACING_COLORS[spacing_color][0] if spacing_color in ("white", "black") else 0.0
        image1, image2 = (_pad_centred(image, size, across, pad_value) for image in (image1, image2))
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _with_channels(image1, channels), _with_channels(image2, channels)

    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    spacing = spacing_width + spacing_width % 2
    if spacing:
        strip_size = (
            (batch, image1.shape[1], spacing, channels) if horizontal else (batch, spacing, image1.shape[2], channels)
        )
        parts.insert(1, _spacing_strip(strip_size, spacing_color, image1))
    return torch.cat(parts, dim=2 if horizontal else 1)
