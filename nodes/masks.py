"""MASK nodes: make, invert, grow, feather, combine, threshold, crop and preview masks, and convert
between masks and pictures.

A MASK is float32 ``[B, H, W]`` (docs/compatibility.md §3.1); older nodes and plugins also hand over
``[H, W]`` or ``[B, 1, H, W]``, which the nodes that reshape in ComfyUI read as ``[B, H, W]`` too.
Names, inputs, defaults and the values computed are ComfyUI's (``comfy_extras/nodes_mask.py``), so a
saved workflow gives the same mask in both engines; where ComfyUI fails later on an input that makes
no sense (an empty crop, a source batch that cannot cover the destination), these raise ``ValueError``
naming the input instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from graph.declare import Boolean, Combo, Float, Hidden, Int, NodeOutput, Output, Socket, node
from nodes.image import MAX_RESOLUTION
from nodes.io import PREVIEW_COMPRESS_LEVEL, preview_prefix, write_pngs

__all__ = [
    "MASK_CHANNELS", "MASK_OPERATIONS", "CropMask", "FeatherMask", "GrowMask", "ImageColorToMask", "ImageToMask",
    "InvertMask", "MaskComposite", "MaskPreview", "MaskToImage", "SolidMask", "ThresholdMask", "mask_batch",
    "mask_to_image",
]  # fmt: skip

#: ImageToMask's channel choices, in ComfyUI's order (the index is the channel's position in RGBA).
MASK_CHANNELS = ["red", "green", "blue", "alpha"]


def mask_batch(mask: torch.Tensor, node_name: str, input_name: str = "mask") -> torch.Tensor:
    """``mask`` as ``[B, H, W]``: ``[H, W]`` becomes a batch of one, ``[B, 1, H, W]`` drops its channel."""
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2 or mask.numel() == 0:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{node_name}: {input_name} must be a non-empty MASK [B, H, W], got {shape}")
    return mask.reshape(-1, *mask.shape[-2:])


def mask_to_image(mask: torch.Tensor, node_name: str) -> torch.Tensor:
    """A mask as a grey RGB picture ``[B, H, W, 3]``, each channel the mask's value."""
    return mask_batch(mask, node_name)[..., None].expand(-1, -1, -1, 3).contiguous()


def _picture_batch(image: torch.Tensor, node_name: str, channels: int, why: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < channels:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{node_name}: image must be an IMAGE [B, H, W, C] with {why}, got {shape}")


@node(category="mask", outputs=[Output("MASK")])
def SolidMask(
    value=Float(1.0, min=0.0, max=1.0, step=0.01),
    width=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    height=Int(512, min=1, max=MAX_RESOLUTION, step=1),
):
    """A single mask of width × height with every pixel set to value."""
    if width < 1 or height < 1:
        raise ValueError(f"SolidMask: width and height must be at least 1, got {width}x{height}")
    return torch.full((1, height, width), value, dtype=torch.float32)


@node(category="mask", outputs=[Output("MASK")])
def InvertMask(mask=Socket("MASK")):
    """Turn every mask value v into 1 - v (the shape is kept as it came)."""
    return 1.0 - mask


def _morphology_step(masks: torch.Tensor, tapered_corners: bool) -> torch.Tensor:
    """One 3 × 3 grey dilation of ``[B, H, W]``: each pixel becomes the largest value around it.

    The neighbourhood is a plus sign with tapered corners, else the full square. Pixels past the border
    repeat the border pixel, which is scipy's ``reflect`` mode for a 3 × 3 window (what ComfyUI uses),
    so the border never pulls values in from outside.
    """
    padded = F.pad(masks[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    height, width = masks.shape[-2:]
    offsets = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]
    if not tapered_corners:
        offsets += [(0, 0), (0, 2), (2, 0), (2, 2)]
    shifted = [padded[:, row : row + height, col : col + width] for row, col in offsets]
    return torch.stack(shifted).amax(dim=0)


@node(category="mask", display_name="Grow Mask", outputs=[Output("MASK")])
def GrowMask(
    mask=Socket("MASK"),
    expand=Int(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
    tapered_corners=Boolean(True, advanced=True),
):
    """Grow the mask by expand pixels (shrink it when negative), one 3 × 3 step per pixel.

    Growing takes the largest value in each pixel's neighbourhood, shrinking the smallest; with tapered
    corners the neighbourhood is a plus sign, so repeated steps grow a diamond instead of a square.
    """
    masks = mask_batch(mask, "GrowMask")
    # Erosion is dilation of the negated mask: min(v) == -max(-v).
    sign = 1.0 if expand >= 0 else -1.0
    grown = masks * sign
    for _ in range(abs(expand)):
        grown = _morphology_step(grown, tapered_corners)
    return grown * sign


def _ramp(length: int, like: torch.Tensor) -> torch.Tensor:
    """``1/length, 2/length, ..., 1``, computed in double as ComfyUI's Python floats are."""
    return ((torch.arange(length, dtype=torch.float64) + 1.0) / length).to(like.device, like.dtype)


@node(category="mask", outputs=[Output("MASK")])
def FeatherMask(
    mask=Socket("MASK"),
    left=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    top=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    right=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    bottom=Int(0, min=0, max=MAX_RESOLUTION, step=1),
):
    """Fade the mask linearly to its edges over the given number of pixels on each side.

    The outermost pixel is scaled by 1/n and the n-th from the edge by 1; sides wider than the mask are
    cut to its size, and where two sides overlap their factors multiply.
    """
    feathered = mask_batch(mask, "FeatherMask").clone()
    height, width = feathered.shape[-2:]
    left, right, top, bottom = min(left, width), min(right, width), min(top, height), min(bottom, height)
    if left:
        feathered[:, :, :left] *= _ramp(left, feathered)
    if right:
        feathered[:, :, width - right :] *= _ramp(right, feathered).flip(0)
    if top:
        feathered[:, :top, :] *= _ramp(top, feathered)[:, None]
    if bottom:
        feathered[:, height - bottom :, :] *= _ramp(bottom, feathered).flip(0)[:, None]
    return feathered


def _binary(operation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """A logical operation on masks rounded to 0/1 (``torch.round``: 0.5 rounds to 0, as in ComfyUI)."""
    return lambda a, b: operation(a.round().bool(), b.round().bool()).to(a.dtype)


#: MaskComposite's operations, in ComfyUI's order: destination ∘ source over the overlapping area.
MASK_OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "multiply": torch.mul,
    "add": torch.add,
    "subtract": torch.sub,
    "and": _binary(torch.logical_and),
    "or": _binary(torch.logical_or),
    "xor": _binary(torch.logical_xor),
}


@node(category="mask", outputs=[Output("MASK")])
def MaskComposite(
    destination=Socket("MASK"),
    source=Socket("MASK"),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    operation=Combo(list(MASK_OPERATIONS)),
):
    """Combine source into destination with its top-left corner at (x, y); the result is clipped to 0..1.

    Only the part of source that overlaps destination counts. ``and``, ``or`` and ``xor`` work on the
    masks rounded to 0 or 1. A source batch of one applies to every destination mask.
    """
    if operation not in MASK_OPERATIONS:
        raise ValueError(f"MaskComposite: operation {operation!r} is not one of {', '.join(MASK_OPERATIONS)}")
    output = mask_batch(destination, "MaskComposite", "destination").clone()
    source = mask_batch(source, "MaskComposite", "source").to(output.device)
    if source.shape[0] not in (1, output.shape[0]):
        raise ValueError(
            f"MaskComposite: source has {source.shape[0]} masks and destination {output.shape[0]}; "
            "source must hold one mask or as many as destination"
        )
    height, width = output.shape[-2:]
    right, bottom = min(x + source.shape[-1], width), min(y + source.shape[-2], height)
    if right > x and bottom > y:
        region = output[:, y:bottom, x:right]
        output[:, y:bottom, x:right] = MASK_OPERATIONS[operation](region, source[:, : bottom - y, : right - x])
    # The whole result is clipped, not just the combined area, as in ComfyUI.
    return output.clamp(0.0, 1.0)


@node(category="mask", outputs=[Output("MASK")])
def ThresholdMask(mask=Socket("MASK"), value=Float(0.5, min=0.0, max=1.0, step=0.01)):
    """1 where the mask is above value, else 0 (a value equal to it becomes 0)."""
    return (mask > value).float()


@node(category="mask", display_name="Convert Image to Mask", outputs=[Output("MASK")])
def ImageToMask(image=Socket("IMAGE"), channel=Combo(MASK_CHANNELS)):
    """One channel of the pictures as a mask, taken as it is (alpha is not inverted here)."""
    if channel not in MASK_CHANNELS:
        raise ValueError(f"ImageToMask: channel {channel!r} is not one of {', '.join(MASK_CHANNELS)}")
    index = MASK_CHANNELS.index(channel)
    _picture_batch(image, "ImageToMask", index + 1, f"at least {index + 1} channels to hold {channel}")
    return image[..., index].contiguous()


@node(category="mask", display_name="Convert Mask to Image", outputs=[Output("IMAGE")])
def MaskToImage(mask=Socket("MASK")):
    """The mask as a grey picture: red, green and blue all carry the mask's value."""
    return mask_to_image(mask, "MaskToImage")


@node(category="mask", outputs=[Output("MASK")])
def ImageColorToMask(
    image=Socket("IMAGE"),
    color=Int(0, min=0, max=0xFFFFFF, step=1, display="number"),
):
    """1 where a pixel's 8-bit colour is exactly color (0xRRGGBB), else 0.

    Pixels are clipped to 0..1 and rounded to 8 bits per channel before comparing, as ComfyUI does;
    a fourth (alpha) channel is ignored.
    """
    _picture_batch(image, "ImageColorToMask", 3, "red, green and blue channels")
    levels = (image[..., :3].clamp(0.0, 1.0) * 255.0).round().to(torch.int64)
    packed = (levels[..., 0] << 16) + (levels[..., 1] << 8) + levels[..., 2]
    return (packed == color).float()


@node(category="mask", outputs=[Output("MASK")])
def CropMask(
    mask=Socket("MASK"),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    width=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    height=Int(512, min=1, max=MAX_RESOLUTION, step=1),
):
    """Cut a width × height window at (x, y); a window past the edge is clipped, never padded."""
    masks = mask_batch(mask, "CropMask")
    mask_height, mask_width = masks.shape[-2:]
    # ComfyUI returns an empty mask here, which only fails in a later node; say why now instead.
    if x >= mask_width or y >= mask_height:
        raise ValueError(f"CropMask: the window at x={x}, y={y} starts outside the {mask_width}x{mask_height} mask")
    return masks[:, y : y + height, x : x + width]


@node(category="mask", display_name="Preview Mask", output_node=True, outputs=[Output("MASK", "mask")])
def MaskPreview(mask=Socket("MASK"), prompt=Hidden("PROMPT"), extra_pnginfo=Hidden("EXTRA_PNGINFO")):
    """Show the masks in the editor as grey pictures (written to the temp folder) and pass them on.

    As in ComfyUI, the preview files carry no workflow metadata, and the UI entry says they are not
    animated.
    """
    pictures = mask_to_image(mask, "MaskPreview")
    images = write_pngs(pictures, preview_prefix(), "temp", None, None, PREVIEW_COMPRESS_LEVEL)
    return NodeOutput(mask, ui={"images": images, "animated": [False]})
