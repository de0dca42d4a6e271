"""Image nodes that need no model: make, resize, crop, pad, invert and batch IMAGE tensors.

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

from graph.declare import Combo, Float, Int, Output, Socket, node
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
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    far_rows, far_cols = torch.full_like(rows, height), torch.full_like(cols, width)
    distance = torch.minimum(
        torch.minimum(rows if top else far_rows, height - rows if bottom else far_rows),
        torch.minimum(cols if left else far_cols, width - cols if right else far_cols),
    )
    fade = ((feathering - distance) / feathering) ** 2
    return torch.where(distance < feathering, fade, torch.zeros(()))


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
