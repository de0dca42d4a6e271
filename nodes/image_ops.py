"""ComfyUI's core image utilities: size, scale, pad, batch, blend, filter, quantize, composite, transform.

Names, inputs, defaults, ranges, widget order and categories are those of ComfyUI's current schemas
(``comfy_extras/nodes_images.py``, ``nodes_post_processing.py``, ``nodes_mask.py``,
``nodes_compositing.py``, ``nodes_rebatch.py``), so saved workflows load unchanged
(docs/compatibility.md §5). The pixel rules follow ComfyUI too, quirks included, and each is
stated where it is implemented: resampling goes through ``nodes.image.resample`` (ComfyUI's
``common_upscale``), sizes are rounded or truncated where ComfyUI rounds or truncates, and batches
are broadcast, repeated or cut as ComfyUI does.

Three of these nodes use input kinds of ComfyUI's V3 schema that the editor draws specially: a combo
whose choice brings its own widgets (``DynamicCombo``), a socket list that grows as links are added
(``Autogrow``) and a socket taking one of several types whose output has the type linked in
(``MatchType``). The prompt carries their parts under dotted names (``format.bit_depth``,
``images.image0``); ``expands_dynamic_inputs`` folds those into one dict per input, as ComfyUI's
executor does, before the node function runs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from graph.declare import Boolean, Combo, Float, Hidden, Input, Int, Output, Socket, node, spec_of
from graph.spec import InputSpec, OutputSpec
from graph.types import BOOLEAN, COMBO, FLOAT, INT, STRING
from nodes.image import CROP_METHODS, MAX_RESOLUTION, UPSCALE_METHODS, resample

# --- V3 input kinds ----------------------------------------------------------------------------------

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
AUTOGROW = "COMFY_AUTOGROW_V3"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"

Declared = tuple[str, Input]


def v1_input_dict(inputs: Sequence[Declared]) -> dict[str, dict[str, Any]]:
    """``{"required": {...}, "optional": {...}}`` as ComfyUI nests a V3 input group in ``/object_info``."""
    sections: dict[str, dict[str, Any]] = {"required": {}}
    for name, declaration in inputs:
        entry = declaration.to_spec(name)
        sections.setdefault(entry.section, {})[name] = entry.object_info_entry()
    return sections


def _checked(declaration: Input, key: str, value: Any) -> Any:
    """A nested widget value checked like a top-level one: its type, range or choices."""
    spec = declaration.to_spec(key)
    try:
        if spec.type == INT:
            value = int(value)
        elif spec.type == FLOAT:
            value = float(value)
        elif spec.type == STRING:
            value = str(value)
        elif spec.type == BOOLEAN:
            value = bool(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key}: {value!r} is not a valid {spec.type}") from error
    minimum, maximum = spec.options.get("min"), spec.options.get("max")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key}: {value} is smaller than the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{key}: {value} is bigger than the maximum {maximum}")
    if spec.type == COMBO and value not in (spec.choices or ()):
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(str, spec.choices or ()))}")
    return value


def _flatten(path: str, nested: Mapping[str, Any], own_key: str) -> dict[str, Any]:
    """An already nested value (a V1-class call passes one) back in the prompt's dotted form."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if key == own_key:
            flat[path] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(f"{path}.{key}", value, key))
        else:
            flat[f"{path}.{key}"] = value
    return flat


def _drop_stale(path: str, values: dict[str, Any]) -> None:
    """Values the prompt holds for parts not chosen (another option's widgets) are ignored, as in ComfyUI."""
    for key in [key for key in values if key.startswith(path + ".")]:
        del values[key]


class DynamicCombo(Input):
    """A combo whose chosen option brings its own inputs; the node gets ``{id: choice, input: value...}``."""

    type = DYNAMIC_COMBO

    def __init__(
        self, options: Sequence[tuple[str, Sequence[Declared]]], *, tooltip: str | None = None, **extra: Any
    ) -> None:
        self.choices = {key: tuple(inputs) for key, inputs in options}
        wire = [{"key": key, "inputs": v1_input_dict(inputs)} for key, inputs in options]
        super().__init__(tooltip=tooltip, options=wire, **extra)

    def fold(self, path: str, values: dict[str, Any]) -> dict[str, Any]:
        """Take this input's parts out of ``values`` (dotted keys) and return them nested."""
        own_key = path.rsplit(".", 1)[-1]
        if isinstance(values.get(path), Mapping):
            values.update(_flatten(path, values.pop(path), own_key))
        if path not in values:
            raise ValueError(f"{path}: required input is missing")
        choice = values.pop(path)
        if choice not in self.choices:
            raise ValueError(f"{path}: {choice!r} is not one of {', '.join(self.choices)}")
        nested: dict[str, Any] = {own_key: choice}
        for name, declaration in self.choices[choice]:
            key = f"{path}.{name}"
            if isinstance(declaration, (DynamicCombo, Autogrow)):
                nested[name] = declaration.fold(key, values)
            elif key in values:
                nested[name] = _checked(declaration, key, values.pop(key))
            elif declaration.optional:
                nested[name] = None
            else:
                raise ValueError(f"{key}: required input is missing")
        _drop_stale(path, values)
        return nested


class Autogrow(Input):
    """Sockets ``<prefix>0``, ``<prefix>1``... that grow as links are added; the node gets ``{name: value}``."""

    type = AUTOGROW

    def __init__(self, template: Declared, *, prefix: str, min: int, max: int, tooltip: str | None = None) -> None:
        self.prefix, self.minimum, self.maximum = prefix, min, max
        wire = {"input": v1_input_dict([template]), "prefix": prefix, "min": min, "max": max}
        super().__init__(tooltip=tooltip, template=wire)

    def fold(self, path: str, values: dict[str, Any]) -> dict[str, Any]:
        if isinstance(values.get(path), Mapping):
            values.update({f"{path}.{key}": value for key, value in values.pop(path).items()})
        values.pop(path, None)
        found: dict[str, Any] = {}
        for index in range(self.maximum):
            key = f"{path}.{self.prefix}{index}"
            value = values.pop(key, None)
            if value is not None:
                found[f"{self.prefix}{index}"] = value
            elif index < self.minimum:
                raise ValueError(f"{key}: required input is missing")
        _drop_stale(path, values)
        return found


class MatchType(Input):
    """A socket taking any of ``allowed`` types; served as ComfyUI's MatchType, checked as their union."""

    def __init__(self, template_id: str, allowed: Sequence[str], *, tooltip: str | None = None) -> None:
        self.type = ",".join(allowed)
        super().__init__(tooltip=tooltip, template={"template_id": template_id, "allowed_types": self.type})

    def to_spec(self, name: str) -> InputSpec:
        return replace(super().to_spec(name), declared=MATCH_TYPE)


@dataclass(frozen=True)
class MatchTypeOutput(Output):
    """An output typed like the MatchType input: served as ComfyUI's MatchType, linked as the union."""

    def to_spec(self) -> OutputSpec:
        return replace(super().to_spec(), declared=MATCH_TYPE)


def expands_dynamic_inputs(function: Callable[..., Any]) -> Callable[..., Any]:
    """Make a ``@node`` fold its DynamicCombo/Autogrow parts before it runs (decorate above ``@node``).

    The node takes every constant input (the executor passes dotted parts only to such nodes); after
    folding, whatever the node does not declare (parts of options not chosen, unknown keys) is
    dropped, as ComfyUI drops it.
    """
    spec = spec_of(function)
    parameters = inspect.signature(function).parameters
    dynamic = {name: p.default for name, p in parameters.items() if isinstance(p.default, (DynamicCombo, Autogrow))}
    run = spec.run

    def run_folded(instance: Any, kwargs: dict[str, Any]) -> Any:
        values = dict(kwargs)
        try:
            folded = {name: declaration.fold(name, values) for name, declaration in dynamic.items()}
        except ValueError as error:
            raise ValueError(f"{spec.class_type}: {error}") from error
        return run(instance, {**{k: v for k, v in values.items() if k in parameters}, **folded})

    spec.run = run_folded
    spec.accepts_all_inputs = True
    return function


# --- shared pixel helpers ----------------------------------------------------------------------------


def _require(node_name: str, name: str, value: Any, ndim: int) -> torch.Tensor:
    kind = "IMAGE [B, H, W, C]" if ndim == 4 else "MASK [B, H, W]"
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or 0 in value.shape:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{node_name}: {name} must be a non-empty {kind}, got {shape}")
    return value


def _resize(pixels: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """An IMAGE ``[B, H, W, C]`` or MASK ``[B, H, W]`` resized as ComfyUI's ``common_upscale`` does."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}: both sides must be at least 1 pixel")
    if pixels.ndim == 4:
        return resample(pixels.movedim(-1, 1), width, height, method, crop).movedim(1, -1)
    return resample(pixels.unsqueeze(1), width, height, method, crop).squeeze(1)


def _fit_alpha(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give ``source`` the destination's channels: an extra alpha is dropped, a missing one is opaque."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = F.pad(source, (0, 1), value=1.0)
    return destination, source


def _repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or cycle (0, 1, 0, 1...) the first axis to ``batch`` entries, ComfyUI's ``repeat_to_batch_size``."""
    if tensor.shape[0] >= batch:
        return tensor[:batch]
    repeats = [math.ceil(batch / tensor.shape[0])] + [1] * (tensor.ndim - 1)
    return tensor.repeat(repeats)[:batch]


def _first(value: Any) -> Any:
    """A widget value of a list-input node (every input arrives as a list)."""
    return value[0] if isinstance(value, list) else value


# --- size ---------------------------------------------------------------------------------------------


@node(
    category="image",
    display_name="Get Image Size",
    description="The picture's width, height and batch size.",
    outputs=[Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size")],
)
def GetImageSize(image=Socket("IMAGE"), unique_id=Hidden("UNIQUE_ID")):
    _require("GetImageSize", "image", image, 4)
    return image.shape[2], image.shape[1], image.shape[0]


# --- scaling ------------------------------------------------------------------------------------------


@node(category="image/upscaling", outputs=[Output("IMAGE")])
def ImageScaleToTotalPixels(
    image=Socket("IMAGE"),
    upscale_method=Combo(UPSCALE_METHODS),
    megapixels=Float(1.0, min=0.01, max=16.0, step=0.01),
    resolution_steps=Int(1, min=1, max=256, advanced=True),
):
    """Resize to about ``megapixels`` × 1024² pixels, keeping the aspect ratio.

    Each side is rounded to the nearest multiple of ``resolution_steps`` (halves to even, Python's
    ``round``), so the result may land a little off the target area.
    """
    _require("ImageScaleToTotalPixels", "image", image, 4)
    height, width = image.shape[1:3]
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    new_width = round(width * scale / resolution_steps) * resolution_steps
    new_height = round(height * scale / resolution_steps) * resolution_steps
    if new_width < 1 or new_height < 1:
        raise ValueError(
            f"ImageScaleToTotalPixels: resolution_steps {resolution_steps} rounds {width}x{height} at "
            f"{megapixels} megapixels to {new_width}x{new_height}; use smaller steps or more megapixels"
        )
    return _resize(image, new_width, new_height, upscale_method)


def _longest_side_to(width: int, height: int, size: int) -> tuple[int, int]:
    if height > width:
        return round(width / height * size), size
    if width > height:
        return size, round(height / width * size)
    return size, size


def _shortest_side_to(width: int, height: int, size: int) -> tuple[int, int]:
    if height < width:
        return round(width / height * size), size
    if width < height:
        return size, round(height / width * size)
    return size, size


@node(category="image/upscaling", display_name="Scale Image to Max Dimension", outputs=[Output("IMAGE")])
def ImageScaleToMaxDimension(
    image=Socket("IMAGE"),
    # ComfyUI lists bilinear twice; the list is served as it is so saved widget values line up.
    upscale_method=Combo(["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
    largest_size=Int(512, min=0, max=MAX_RESOLUTION, step=1),
):
    """Resize so the longer side is ``largest_size``; the other side keeps the aspect ratio (rounded)."""
    _require("ImageScaleToMaxDimension", "image", image, 4)
    width, height = _longest_side_to(image.shape[2], image.shape[1], largest_size)
    if width < 1 or height < 1:
        raise ValueError(f"ImageScaleToMaxDimension: largest_size {largest_size} gives a {width}x{height} image")
    return _resize(image, width, height, upscale_method)


@node(category="image/transform", display_name="Resize And Pad Image", outputs=[Output("IMAGE")])
def ResizeAndPadImage(
    image=Socket("IMAGE"),
    target_width=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    target_height=Int(512, min=1, max=MAX_RESOLUTION, step=1),
    padding_color=Combo(["white", "black"], advanced=True),
    interpolation=Combo(["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], advanced=True),
):
    """Fit the picture inside the target size, keeping its aspect ratio, and pad the rest, centred.

    The fitted size is truncated, and the odd padding pixel goes right and below, as in ComfyUI.
    """
    _require("ResizeAndPadImage", "image", image, 4)
    batch, height, width, channels = image.shape
    scale = min(target_width / width, target_height / height)
    new_width, new_height = int(width * scale), int(height * scale)
    if new_width < 1 or new_height < 1:
        raise ValueError(
            f"ResizeAndPadImage: a {width}x{height} image fitted into {target_width}x{target_height} "
            f"would be {new_width}x{new_height} pixels"
        )
    resized = _resize(image, new_width, new_height, interpolation)
    fill = 0.0 if padding_color == "black" else 1.0
    padded = torch.full((batch, target_height, target_width, channels), fill, dtype=image.dtype, device=image.device)
    top, left = (target_height - new_height) // 2, (target_width - new_width) // 2
    padded[:, top : top + new_height, left : left + new_width] = resized.to(image.dtype)
    return padded


# ResizeImageMaskNode's modes, in ComfyUI's option order.
SCALE_DIMENSIONS = "scale dimensions"
SCALE_BY = "scale by multiplier"
SCALE_LONGER = "scale longer dimension"
SCALE_SHORTER = "scale shorter dimension"
SCALE_WIDTH = "scale width"
SCALE_HEIGHT = "scale height"
SCALE_TOTAL_PIXELS = "scale total pixels"
MATCH_SIZE = "match size"
SCALE_TO_MULTIPLE = "scale to multiple"


#: ResizeImageMaskNode's tooltips (Loom's wording; the widgets are ComfyUI's).
RESIZE_TOOLTIPS = {
    "crop": "When the aspect ratio changes: disabled stretches the picture, center cuts the overflow off.",
    "width": "New width in pixels; 0 follows the height and keeps the aspect ratio.",
    "height": "New height in pixels; 0 follows the width and keeps the aspect ratio.",
    "multiplier": "Factor for both sides: 2 doubles them, 0.5 halves them.",
    "longer_size": "New length of the longer side; the other follows the aspect ratio.",
    "shorter_size": "New length of the shorter side; the other follows the aspect ratio.",
    "scale width": "New width in pixels; the height follows the aspect ratio.",
    "scale height": "New height in pixels; the width follows the aspect ratio.",
    "megapixels": "Target area in megapixels (1.0 is 1024×1024); the aspect ratio is kept.",
    "match": "The picture or mask whose width and height to take.",
    "multiple": "Make both sides divisible by this (8 or 64 for latents): scale to cover, then crop centred.",
    "resize_type": "How the new size is chosen.",
    "scale_method": "Resampling filter: area suits shrinking, lanczos enlarging, nearest-exact pixel art.",
}


def _side(name: str, tooltip_key: str | None = None) -> Declared:
    return name, Int(512, min=0, max=MAX_RESOLUTION, step=1, tooltip=RESIZE_TOOLTIPS[tooltip_key or name])


_CROP: Declared = ("crop", Combo(CROP_METHODS, default="center", tooltip=RESIZE_TOOLTIPS["crop"]))

RESIZE_TYPE = DynamicCombo(
    [
        (SCALE_DIMENSIONS, [_side("width"), _side("height"), _CROP]),
        (SCALE_BY, [("multiplier", Float(1.0, min=0.01, max=8.0, step=0.01, tooltip=RESIZE_TOOLTIPS["multiplier"]))]),
        (SCALE_LONGER, [_side("longer_size")]),
        (SCALE_SHORTER, [_side("shorter_size")]),
        (SCALE_WIDTH, [_side("width", SCALE_WIDTH)]),
        (SCALE_HEIGHT, [_side("height", SCALE_HEIGHT)]),
        (
            SCALE_TOTAL_PIXELS,
            [("megapixels", Float(1.0, min=0.01, max=16.0, step=0.01, tooltip=RESIZE_TOOLTIPS["megapixels"]))],
        ),
        (MATCH_SIZE, [("match", Socket("IMAGE,MASK", tooltip=RESIZE_TOOLTIPS["match"])), _CROP]),
        (
            SCALE_TO_MULTIPLE,
            [("multiple", Int(8, min=1, max=MAX_RESOLUTION, step=1, tooltip=RESIZE_TOOLTIPS["multiple"]))],
        ),
    ],
    tooltip=RESIZE_TOOLTIPS["resize_type"],
)


def _to_multiple_cover(pixels: torch.Tensor, multiple: int, method: str) -> torch.Tensor:
    """Scale until both sides reach their floor multiple of ``multiple`` (covering it), then crop centred.

    The side with the larger scale factor lands exactly on its target; the other is rounded up and
    cropped. A picture already on multiples, or smaller than one multiple, is returned as it is.
    """
    if multiple <= 1:
        return pixels
    height, width = pixels.shape[1:3]
    target_width, target_height = width // multiple * multiple, height // multiple * multiple
    if target_width == 0 or target_height == 0 or (target_width, target_height) == (width, height):
        return pixels
    if target_width / width >= target_height / height:
        scaled_width, scaled_height = target_width, max(target_height, math.ceil(height * (target_width / width)))
    else:
        scaled_width, scaled_height = max(target_width, math.ceil(width * (target_height / height))), target_height
    scaled = _resize(pixels, scaled_width, scaled_height, method)
    left, top = (scaled_width - target_width) // 2, (scaled_height - target_height) // 2
    return scaled[:, top : top + target_height, left : left + target_width]


def _resized_by_type(pixels: torch.Tensor, choice: Mapping[str, Any], method: str) -> torch.Tensor:
    height, width = pixels.shape[1:3]
    mode = choice["resize_type"]
    if mode in (SCALE_DIMENSIONS, SCALE_WIDTH, SCALE_HEIGHT):
        new_width = 0 if mode == SCALE_HEIGHT else choice["width"]
        new_height = 0 if mode == SCALE_WIDTH else choice["height"]
        if new_width == 0 and new_height == 0:
            return pixels
        if new_width == 0:
            new_width = max(1, round(width * new_height / height))
        elif new_height == 0:
            new_height = max(1, round(height * new_width / width))
        return _resize(pixels, new_width, new_height, method, choice.get("crop") or "disabled")
    if mode == SCALE_BY:
        return _resize(pixels, round(width * choice["multiplier"]), round(height * choice["multiplier"]), method)
    if mode == SCALE_LONGER:
        return _resize(pixels, *_longest_side_to(width, height, choice["longer_size"]), method)
    if mode == SCALE_SHORTER:
        return _resize(pixels, *_shortest_side_to(width, height, choice["shorter_size"]), method)
    if mode == SCALE_TOTAL_PIXELS:
        # Unlike ImageScaleToTotalPixels, the pixel budget is truncated to a whole number first.
        scale = math.sqrt(int(choice["megapixels"] * 1024 * 1024) / (width * height))
        return _resize(pixels, round(width * scale), round(height * scale), method)
    if mode == MATCH_SIZE:
        match = choice["match"]
        if not isinstance(match, torch.Tensor) or match.ndim not in (3, 4):
            raise ValueError("resize_type.match must be an IMAGE or a MASK")
        return _resize(pixels, match.shape[2], match.shape[1], method, choice["crop"])
    if mode == SCALE_TO_MULTIPLE:
        return _to_multiple_cover(pixels, choice["multiple"], method)
    raise ValueError(f"resize_type {mode!r} is not a resize mode")


@expands_dynamic_inputs
@node(
    category="transform",
    display_name="Resize Image/Mask",
    description="Resize a picture or a mask by one of several rules; the output has the input's type.",
    outputs=[MatchTypeOutput("IMAGE,MASK", "resized")],
)
def ResizeImageMaskNode(
    input=MatchType("input_type", ["IMAGE", "MASK"]),
    resize_type=RESIZE_TYPE,
    scale_method=Combo(UPSCALE_METHODS, default="area", tooltip=RESIZE_TOOLTIPS["scale_method"]),
):
    """Resize an IMAGE or a MASK; the output has the type of the input."""
    if not isinstance(input, torch.Tensor) or input.ndim not in (3, 4) or 0 in input.shape:
        raise ValueError("ResizeImageMaskNode: input must be a non-empty IMAGE [B, H, W, C] or MASK [B, H, W]")
    try:
        return _resized_by_type(input, resize_type, scale_method)
    except ValueError as error:
        raise ValueError(f"ResizeImageMaskNode: resize_type {resize_type['resize_type']!r}: {error}") from error


spec_of(ResizeImageMaskNode).extra_info = {"output_matchtypes": ["input_type"]}


# --- batches ------------------------------------------------------------------------------------------


def batch_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Join pictures into one batch at the first one's size.

    Pictures with fewer channels than the most get one opaque channel (RGB beside RGBA); pictures of
    another size are resized bilinearly after a centre crop to the first one's aspect ratio.
    """
    channels = max(image.shape[-1] for image in images)
    padded = [F.pad(image, (0, 1), value=1.0) if image.shape[-1] < channels else image for image in images]
    first = padded[0]
    height, width = first.shape[1:3]
    fitted = [
        image if image.shape[1:] == first.shape[1:] else _resize(image, width, height, "bilinear", "center")
        for image in padded
    ]
    if any(image.shape[1:] != first.shape[1:] for image in fitted):
        raise ValueError(f"BatchImagesNode: channel counts {[image.shape[-1] for image in images]} cannot be joined")
    return torch.cat([image.to(first.device, first.dtype) for image in fitted])


@expands_dynamic_inputs
@node(category="image", display_name="Batch Images", outputs=[Output("IMAGE")])
def BatchImagesNode(images=Autogrow(("image", Socket("IMAGE")), prefix="image", min=2, max=50)):
    """Join any number of pictures (image0, image1, ...) into one batch at the first one's size."""
    pictures = [_require("BatchImagesNode", f"images.{name}", value, 4) for name, value in images.items()]
    if not pictures:
        raise ValueError("BatchImagesNode: images needs at least one picture")
    return batch_images(pictures)


@node(category="image/batch", display_name="Get Image from Batch", outputs=[Output("IMAGE")])
def ImageFromBatch(
    image=Socket("IMAGE"),
    batch_index=Int(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
    length=Int(1, min=1, max=4096),
):
    """``length`` pictures from ``batch_index`` on; a negative index counts from the end, both are clamped."""
    _require("ImageFromBatch", "image", image, 4)
    batch = image.shape[0]
    start = batch_index + batch if batch_index < 0 else batch_index
    start = max(0, min(batch - 1, start))
    return image[start : start + min(batch - start, length)].clone()


@node(category="image/batch", display_name="Repeat Image Batch", outputs=[Output("IMAGE")])
def RepeatImageBatch(image=Socket("IMAGE"), amount=Int(1, min=1, max=4096)):
    """The whole batch ``amount`` times over (a, b, a, b for amount 2)."""
    _require("RepeatImageBatch", "image", image, 4)
    return image.repeat((amount, 1, 1, 1))


MERGE_MODES = ["truncate start", "truncate end", "fade smooth", "fade linear"]


def _merge_batches(batches: Sequence[torch.Tensor], overlap: int, mode: str) -> torch.Tensor:
    """Concatenate batches whose ends overlap by ``overlap`` pictures, reconciling each overlap by ``mode``.

    ``truncate start`` keeps the earlier batch's pictures, ``truncate end`` the later one's, and the
    fades cross-fade from earlier to later with weights ``linspace(0, 1, overlap)`` (smoothstepped
    for ``fade smooth``).
    """
    dtype = batches[0].dtype
    for batch in batches[1:]:
        dtype = torch.promote_types(dtype, batch.dtype)
    merged = batches[0].to(dtype)
    weight = None
    if overlap and mode in ("fade smooth", "fade linear"):
        weight = torch.linspace(0, 1, overlap, dtype=dtype, device=merged.device)
        if mode == "fade smooth":
            weight = weight * weight * (3 - 2 * weight)
        weight = weight.reshape(-1, *([1] * (merged.ndim - 1)))
    for batch in batches[1:]:
        batch = batch.to(merged.device, dtype)
        if overlap:
            seam = merged[-overlap:]
            if mode == "truncate end":
                seam = batch[:overlap]
            elif weight is not None:
                seam = seam * (1 - weight) + batch[:overlap] * weight
            merged = torch.cat([merged[:-overlap], seam])
        merged = torch.cat([merged, batch[overlap:]])
    return merged


def rebatch(images: Sequence[torch.Tensor], batch_size: int, overlap: int, mode: str) -> list[torch.Tensor]:
    """Regroup a list of batches into batches of ``batch_size`` pictures, ComfyUI's RebatchImages.

    Consecutive batches are joined while the group is short and they share a picture size; a group
    that runs past ``batch_size`` is cut there and its rest, with the last ``overlap`` pictures of
    the cut repeated, starts the next group. Inputs that cannot be joined end a group early.
    """
    if not images:
        return []
    if overlap >= batch_size:
        raise ValueError(f"RebatchImages: overlap {overlap} must be smaller than batch_size {batch_size}")
    pending = list(images)
    outputs = []
    while pending:
        first = pending[0]
        count, length = 1, first.shape[0]
        while length < batch_size and count < len(pending):
            following = pending[count]
            if following.ndim != first.ndim or following.shape[1:] != first.shape[1:]:
                break
            if overlap > min(length, following.shape[0]):
                raise ValueError(f"RebatchImages: overlap {overlap} is longer than an input batch")
            length += following.shape[0] - overlap
            count += 1
        merged = _merge_batches(pending[:count], overlap, mode)
        del pending[:count]
        outputs.append(merged[:batch_size])
        if length > batch_size:
            pending.insert(0, merged[batch_size - overlap :])
    return outputs


@node(
    category="image/batch",
    display_name="Rebatch Images",
    input_is_list=True,
    outputs=[Output("IMAGE", is_list=True)],
)
def RebatchImages(
    images=Socket("IMAGE"),
    batch_size=Int(1, min=1, max=4096, tooltip="Pictures (or frames) in each output batch."),
    overlap=Int(
        0,
        min=0,
        max=4096,
        advanced=True,
        tooltip="Pictures repeated at the start of each next output batch, and shared by consecutive inputs.",
    ),
    merge_overlap_mode=Combo(
        MERGE_MODES,
        default="truncate start",
        advanced=True,
        tooltip="Which pictures the overlap of consecutive input batches keeps, or how they are cross-faded.",
    ),
):
    """Split or join a list of image batches into batches of ``batch_size`` (a list output)."""
    mode = _first(merge_overlap_mode)
    if mode not in MERGE_MODES:
        raise ValueError(f"RebatchImages: merge_overlap_mode {mode!r} is not one of {', '.join(MERGE_MODES)}")
    batches = [_require("RebatchImages", "images", batch, 4) for batch in (images or [])]
    return rebatch(batches, int(_first(batch_size)), int(_first(overlap)), mode)


# --- blending and filters -----------------------------------------------------------------------------

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def _soft_light_darken_curve(x: torch.Tensor) -> torch.Tensor:
    """The W3C soft-light ``D(x)``: a cubic below 1/4, the square root above."""
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend(base: torch.Tensor, layer: torch.Tensor, mode: str) -> torch.Tensor:
    """``layer`` over ``base`` in one of ``BLEND_MODES``; ``difference`` is signed (clamped later)."""
    if mode == "normal":
        return layer
    if mode == "multiply":
        return base * layer
    if mode == "screen":
        return 1 - (1 - base) * (1 - layer)
    if mode == "overlay":
        return torch.where(base <= 0.5, 2 * base * layer, 1 - 2 * (1 - base) * (1 - layer))
    if mode == "soft_light":
        darker = base - (1 - 2 * layer) * base * (1 - base)
        lighter = base + (2 * layer - 1) * (_soft_light_darken_curve(base) - base)
        return torch.where(layer <= 0.5, darker, lighter)
    if mode == "difference":
        return base - layer
    raise ValueError(f"blend_mode {mode!r} is not one of {', '.join(BLEND_MODES)}")


@node(category="image/postprocessing", display_name="Image Blend", outputs=[Output("IMAGE")])
def ImageBlend(
    image1=Socket("IMAGE"),
    image2=Socket("IMAGE"),
    blend_factor=Float(0.5, min=0.0, max=1.0, step=0.01),
    blend_mode=Combo(BLEND_MODES),
):
    """Mix ``image2`` blended onto ``image1`` by ``blend_factor``, clamped to 0..1.

    ``image2`` takes image1's channels (alpha dropped or made opaque) and, when its shape still
    differs (batch size included), is resized bicubically after a centre crop to image1's size. Batches
    then broadcast: one picture against many works, other mismatched sizes do not.
    """
    _require("ImageBlend", "image1", image1, 4)
    _require("ImageBlend", "image2", image2, 4)
    if blend_mode not in BLEND_MODES:
        raise ValueError(f"ImageBlend: blend_mode {blend_mode!r} is not one of {', '.join(BLEND_MODES)}")
    image1, image2 = _fit_alpha(image1, image2.to(image1.device))
    if image1.shape != image2.shape:
        image2 = _resize(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    if image2.shape[0] not in (1, image1.shape[0]) and image1.shape[0] != 1:
        raise ValueError(f"ImageBlend: batches of {image1.shape[0]} and {image2.shape[0]} pictures cannot be blended")
    blended = blend(image1, image2, blend_mode)
    return torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1)


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normalised ``size`` × ``size`` Gaussian whose taps sit on a -1..1 grid, as ComfyUI lays it out.

    ``sigma`` is therefore relative to the kernel's half-width, not in pixels: a wider radius with
    the same sigma spreads the same shape over more pixels.
    """
    axis = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    distance = torch.sqrt(rows * rows + cols * cols)
    weights = torch.exp(-(distance * distance) / (2.0 * sigma * sigma))
    return (weights / weights.sum()).to(dtype)


def _convolve_reflected(image: torch.Tensor, kernel: torch.Tensor, radius: int, node_name: str) -> torch.Tensor:
    """Each channel of ``image`` convolved with ``kernel``, the borders mirrored (no edge repeat).

    The steps are ComfyUI's (mirror by the radius, convolve with zero padding, cut the padding off)
    so the sums run in the same order and the results match to the last bit.
    """
    height, width = image.shape[1:3]
    if radius >= height or radius >= width:
        raise ValueError(
            f"{node_name}: a radius of {radius} needs a picture larger than {radius} pixels each way, "
            f"got {width}x{height}"
        )
    channels = image.shape[-1]
    weights = kernel.to(image.device, image.dtype).repeat(channels, 1, 1).unsqueeze(1)
    mirrored = F.pad(image.movedim(-1, 1), (radius, radius, radius, radius), mode="reflect")
    convolved = F.conv2d(mirrored, weights, padding=kernel.shape[-1] // 2, groups=channels)
    return convolved[:, :, radius:-radius, radius:-radius].movedim(1, -1)


@node(category="image/postprocessing", display_name="Image Blur", outputs=[Output("IMAGE")])
def ImageBlur(
    image=Socket("IMAGE"),
    blur_radius=Int(1, min=1, max=31, step=1),
    sigma=Float(1.0, min=0.1, max=10.0, step=0.1),
):
    """Gaussian blur over a (2·radius+1)² window with mirrored borders; sigma is relative to the radius."""
    _require("ImageBlur", "image", image, 4)
    if blur_radius == 0:
        return image
    kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, image.dtype)
    return _convolve_reflected(image, kernel, blur_radius, "ImageBlur")


@node(category="image/postprocessing", outputs=[Output("IMAGE")])
def ImageSharpen(
    image=Socket("IMAGE"),
    sharpen_radius=Int(1, min=1, max=31, step=1, advanced=True),
    sigma=Float(1.0, min=0.1, max=10.0, step=0.01, advanced=True),
    alpha=Float(1.0, min=0.0, max=5.0, step=0.01, advanced=True),
):
    """Unsharp-style sharpening: a Gaussian scaled by -10·alpha with its centre raised so taps sum to 1."""
    _require("ImageSharpen", "image", image, 4)
    if sharpen_radius == 0:
        return image
    size = sharpen_radius * 2 + 1
    kernel = (gaussian_kernel(size, sigma) * -(alpha * 10)).to(image.dtype)
    centre = size // 2
    kernel[centre, centre] = kernel[centre, centre] - kernel.sum() + 1.0
    return torch.clamp(_convolve_reflected(image, kernel, sharpen_radius, "ImageSharpen"), 0, 1)


DITHER_MODES = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def bayer_matrix(order: int) -> np.ndarray:
    """The ``order`` × ``order`` ordered-dither threshold matrix, centred on 0 (values in about ±0.5).

    Built recursively: each level tiles the previous one four times, offset by -1.5, +0.5, +1.5 and
    -0.5 in the classic 0, 2, 3, 1 pattern, then rescales.
    """
    matrix: np.ndarray = np.zeros((1, 1), dtype=np.float32)
    size = 1
    while size < order:
        size *= 2
        levels = size * size
        scaled = levels * matrix
        matrix = np.block([[scaled - 1.5, scaled + 0.5], [scaled + 1.5, scaled - 0.5]]) / levels
    return matrix


def _bayer_dither(picture: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    """Ordered dithering: add the Bayer pattern, spread over one palette step, then map without dithering."""
    palette_size = len(palette.getpalette() or []) // 3
    spread = 2 * 256 / palette_size
    thresholds = torch.from_numpy(spread * bayer_matrix(order) + 0.5)
    pixels = torch.from_numpy(np.array(picture).astype(np.float32))
    height, width = pixels.shape[:2]
    tiled = thresholds.tile(math.ceil(height / order), math.ceil(width / order))[:height, :width, None]
    shifted = (pixels + tiled).clamp_(0, 255).to(torch.uint8)
    return Image.fromarray(shifted.numpy()).quantize(palette=palette, dither=Image.Dither.NONE)


@node(category="image/postprocessing", outputs=[Output("IMAGE")])
def ImageQuantize(
    image=Socket("IMAGE"),
    colors=Int(256, min=1, max=256, step=1),
    dither=Combo(DITHER_MODES),
):
    """Reduce each picture to a palette of at most ``colors`` (Pillow's median cut), optionally dithered.

    Pixels are truncated to 8 bits first, as ComfyUI does; the palette is computed without dithering,
    then the picture is mapped onto it with the chosen dither.
    """
    _require("ImageQuantize", "image", image, 4)
    if image.shape[-1] != 3:
        raise ValueError(f"ImageQuantize: image must be RGB (3 channels), got {image.shape[-1]}")
    if dither not in DITHER_MODES:
        raise ValueError(f"ImageQuantize: dither {dither!r} is not one of {', '.join(DITHER_MODES)}")
    result = torch.zeros_like(image)
    for index, pixels in enumerate(image):
        picture = Image.fromarray((pixels.cpu() * 255).to(torch.uint8).numpy())
        palette = picture.quantize(colors=colors)
        if dither == "none":
            mapped = picture.quantize(palette=palette, dither=Image.Dither.NONE)
        elif dither == "floyd-steinberg":
            mapped = picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        else:
            mapped = _bayer_dither(picture, palette, int(dither.split("-")[1]))
        quantized = torch.from_numpy(np.array(mapped.convert("RGB"))).float() / 255
        result[index] = quantized.to(result.device, result.dtype)
    return result


@node(category="image/filters", display_name="Add Noise to Image", outputs=[Output("IMAGE")])
def ImageAddNoise(
    image=Socket("IMAGE"),
    seed=Int(
        0,
        min=0,
        max=0xFFFFFFFFFFFFFFFF,
        control_after_generate=True,
        tooltip="Seed of the noise; the same seed gives the same noise.",
    ),
    strength=Float(0.5, min=0.0, max=1.0, step=0.01),
):
    """Add Gaussian noise × strength, clamped to 0..1.

    The noise is drawn on the CPU in float32 from a generator seeded with ``seed``, the same numbers
    ComfyUI draws; unlike ComfyUI, the process-wide generator is left alone.
    """
    _require("ImageAddNoise", "image", image, 4)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
    return torch.clip(image + strength * noise, min=0.0, max=1.0)


# --- compositing --------------------------------------------------------------------------------------


def composite_masked(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None,
    resize_source: bool,
) -> torch.Tensor:
    """Channels-first ``source`` pasted into a copy of ``destination`` at (x, y) through ``mask``.

    The source is resized bilinearly to the destination first when asked, then cycled to the
    destination's batch size; the mask is resized bilinearly to the source and cycled likewise.
    The parts past the right and bottom edges are dropped.
    """
    output = destination.clone()
    source = source.to(output.device)
    if resize_source:
        source = F.interpolate(source, size=output.shape[-2:], mode="bilinear")
    source = _repeat_to_batch(source, output.shape[0])
    height, width = output.shape[-2:]
    left, top = min(x, width), min(y, height)
    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = F.interpolate(
            mask.to(output.device, torch.float32).reshape(-1, 1, *mask.shape[-2:]),
            size=source.shape[-2:],
            mode="bilinear",
        )
        weight = _repeat_to_batch(weight, source.shape[0]).to(source.dtype)
    visible_height, visible_width = height - top, width - left
    weight = weight[..., :visible_height, :visible_width]
    patch = source[..., :visible_height, :visible_width]
    region = output[..., top : top + patch.shape[-2], left : left + patch.shape[-1]]
    output[..., top : top + patch.shape[-2], left : left + patch.shape[-1]] = weight * patch + (1 - weight) * region
    return output


@node(category="image", outputs=[Output("IMAGE")])
def ImageCompositeMasked(
    destination=Socket("IMAGE"),
    source=Socket("IMAGE"),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=1),
    resize_source=Boolean(False),
    mask=Socket("MASK", optional=True),
):
    """Paste ``source`` onto ``destination`` at (x, y); where ``mask`` is given, 1 takes the source.

    The source takes the destination's channels (extra alpha dropped, missing alpha opaque); a
    shorter source or mask batch is cycled to the destination's.
    """
    _require("ImageCompositeMasked", "destination", destination, 4)
    _require("ImageCompositeMasked", "source", source, 4)
    if x < 0 or y < 0:
        raise ValueError(f"ImageCompositeMasked: x and y must be 0 or more, got {x}, {y}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape):
        raise ValueError("ImageCompositeMasked: mask must be a non-empty MASK [B, H, W]")
    destination, source = _fit_alpha(destination, source)
    pasted = composite_masked(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, resize_source)
    return pasted.movedim(1, -1)


@node(category="mask/compositing", display_name="Join Image with Alpha", outputs=[Output("IMAGE")])
def JoinImageWithAlpha(image=Socket("IMAGE"), alpha=Socket("MASK")):
    """RGB plus ``1 - alpha`` as the fourth channel (a MASK marks what is transparent).

    The mask is resized bilinearly to the picture; the shorter of the two batches sets the length.
    """
    _require("JoinImageWithAlpha", "image", image, 4)
    if not isinstance(alpha, torch.Tensor) or alpha.ndim not in (2, 3) or 0 in alpha.shape:
        raise ValueError("JoinImageWithAlpha: alpha must be a non-empty MASK [B, H, W]")
    masks = alpha.to(image.device).reshape(-1, 1, *alpha.shape[-2:])
    opacity = 1.0 - F.interpolate(masks, size=image.shape[1:3], mode="bilinear").squeeze(1)
    batch = min(image.shape[0], opacity.shape[0])
    return torch.cat((image[:batch, ..., :3], opacity[:batch, ..., None].to(image.dtype)), dim=-1)


@node(
    category="mask/compositing",
    display_name="Split Image with Alpha",
    outputs=[Output("IMAGE"), Output("MASK")],
)
def SplitImageWithAlpha(image=Socket("IMAGE")):
    """The RGB channels and ``1 - alpha`` as a MASK; a picture without alpha gives an all-zero mask."""
    _require("SplitImageWithAlpha", "image", image, 4)
    opacity = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return image[..., :3], 1.0 - opacity


# --- orientation --------------------------------------------------------------------------------------

ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
FLIP_METHODS = ["x-axis: vertically", "y-axis: horizontally"]


@node(category="image/transform", display_name="Rotate Image", outputs=[Output("IMAGE")])
def ImageRotate(image=Socket("IMAGE"), rotation=Combo(ROTATIONS)):
    """Rotate clockwise by a quarter turn, a half turn or three quarters."""
    _require("ImageRotate", "image", image, 4)
    if rotation not in ROTATIONS:
        raise ValueError(f"ImageRotate: rotation {rotation!r} is not one of {', '.join(ROTATIONS)}")
    # Turning from the width axis towards the height axis is clockwise on screen (rows run downwards).
    return torch.rot90(image, k=ROTATIONS.index(rotation), dims=[2, 1])


@node(category="image/transform", display_name="Flip Image", outputs=[Output("IMAGE")])
def ImageFlip(image=Socket("IMAGE"), flip_method=Combo(FLIP_METHODS)):
    """Mirror top to bottom (about the x axis) or left to right (about the y axis)."""
    _require("ImageFlip", "image", image, 4)
    if flip_method not in FLIP_METHODS:
        raise ValueError(f"ImageFlip: flip_method {flip_method!r} is not one of {', '.join(FLIP_METHODS)}")
    return torch.flip(image, dims=[1 if flip_method.startswith("x") else 2])
