"""Nodes that read pictures from the input folder and write them to the output and temp folders.

Names, inputs and the files they produce follow ComfyUI (docs/compatibility.md §5, §2.3): the editor uploads into
``input`` and offers those files in ``LoadImage``'s combo, and clients find saved files through the
``{"filename", "subfolder", "type"}`` entries of the ``ui.images`` list and restore workflows from the
PNG text chunks. Folders come from the current runtime (``nodes.runtime``) at call time.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import string
from typing import Any

import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from graph.declare import Combo, Hidden, NodeOutput, Output, Socket, String, node
from nodes.folders import (
    IMAGE_EXTENSIONS,
    FolderKind,
    UnsafePathError,
    annotated_path,
    list_files,
    save_target,
)
from nodes.image_tensors import alpha_to_mask, channel_to_mask, has_alpha, image_to_pil, pil_to_image
from nodes.runtime import current_runtime

#: Multi-picture JPEGs (phone stereo and depth shots) hold views, not frames; only the first is the photo.
_SINGLE_FRAME_FORMATS = frozenset({"MPO"})
#: zlib levels: saved files favour size, previews favour speed (ComfyUI's 4 and 1).
SAVE_COMPRESS_LEVEL = 4
PREVIEW_COMPRESS_LEVEL = 1
MASK_CHANNELS = ["alpha", "red", "green", "blue"]


def input_image_names() -> list[str]:
    """The pictures in the input folder, subfolders as ``sub/name.png``; recomputed on every request."""
    return list_files(current_runtime().folders.input, IMAGE_EXTENSIONS)


def image_fingerprint(image: str | None = None) -> str | float:
    """The sha256 of the file, so editing it on disk re-runs the loader; NaN (always re-run) when linked."""
    if image is None:
        return float("nan")
    digest = hashlib.sha256()
    with open(annotated_path(current_runtime().folders, image), "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_image_name(image: str | None = None) -> bool | str:
    """Accept any existing file, annotated (``name.png [output]``) or not; the combo list is only a hint."""
    if image is None:
        return True
    try:
        exists = annotated_path(current_runtime().folders, image).is_file()
    except UnsafePathError:
        exists = False
    return True if exists else f"Invalid image file: {image}"


def _frames(picture: Image.Image) -> list[Image.Image]:
    """Every frame, upright per its EXIF orientation; multi-view formats give their first view only."""
    frames = [ImageOps.exif_transpose(frame) for frame in ImageSequence.Iterator(picture)]
    return frames[:1] if picture.format in _SINGLE_FRAME_FORMATS else frames


@node(
    category="image",
    display_name="Load Image",
    outputs=[Output("IMAGE"), Output("MASK")],
    fingerprint=image_fingerprint,
    validate=validate_image_name,
)
def LoadImage(image=Combo(input_image_names, image_upload=True)):
    """Load a picture from the input folder; its mask is 1 where the picture is transparent."""
    with Image.open(annotated_path(current_runtime().folders, image)) as picture:
        frames = _frames(picture)
    # Frames of another size than the first cannot share a batch tensor; they are dropped, as ComfyUI does.
    frames = [frame for frame in frames if frame.size == frames[0].size]
    pixels = torch.cat([pil_to_image(frame) for frame in frames])
    if any(has_alpha(frame) for frame in frames):
        mask = torch.cat([alpha_to_mask(frame) for frame in frames])
    else:
        # A fixed 64×64 empty mask when nothing is transparent is what ComfyUI emits and masks nodes expect.
        mask = torch.zeros((len(frames), 64, 64), dtype=torch.float32)
    return pixels, mask


@node(
    category="mask",
    display_name="Load Image (as Mask)",
    outputs=[Output("MASK")],
    fingerprint=image_fingerprint,
    validate=validate_image_name,
)
def LoadImageMask(image=Combo(input_image_names, image_upload=True), channel=Combo(MASK_CHANNELS)):
    """Load one channel of a picture as a mask; the alpha channel is inverted so transparent areas are 1."""
    with Image.open(annotated_path(current_runtime().folders, image)) as picture:
        return channel_to_mask(ImageOps.exif_transpose(picture), channel)


def _png_metadata(prompt: Any, extra_pnginfo: Any) -> PngInfo:
    """``prompt`` plus one text chunk per ``extra_pnginfo`` key, JSON-encoded (ASCII, so plain tEXt;
    docs/compatibility.md §2.3)."""
    metadata = PngInfo()
    if prompt is not None:
        metadata.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        metadata.add_text(key, json.dumps(value))
    return metadata


def write_pngs(
    images: torch.Tensor, prefix: str, kind: FolderKind, prompt: Any, extra_pnginfo: Any, compress_level: int
) -> list[dict[str, str]]:
    """Write a batch as numbered PNGs into the ``kind`` folder; returns the ``ui.images`` entries."""
    if images.ndim != 4:
        raise ValueError(f"expected IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
    height, width = images.shape[1:3]
    target = save_target(prefix, current_runtime().folders.directory(kind), width, height)
    metadata = _png_metadata(prompt, extra_pnginfo)
    written = []
    for index, picture in enumerate(images):
        encoded = io.BytesIO()
        image_to_pil(picture).save(encoded, format="PNG", pnginfo=metadata, compress_level=compress_level)
        file_name = target.write_new(index, encoded.getvalue())
        written.append({"filename": file_name, "subfolder": target.subfolder, "type": kind})
    return written


@node(category="image", display_name="Save Image", output_node=True)
def SaveImage(
    images=Socket("IMAGE", tooltip="The pictures to write as PNG files."),
    filename_prefix=String(
        "ComfyUI",
        tooltip="File name start; may hold a subfolder (sub/name), %width%, %height%, %year%..%second% "
        "or %date:yyyy-MM-dd%. A number and .png are appended.",
    ),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Write the pictures into the output folder as PNGs that carry the workflow that made them."""
    return NodeOutput(
        ui={"images": write_pngs(images, filename_prefix, "output", prompt, extra_pnginfo, SAVE_COMPRESS_LEVEL)}
    )


@node(category="image", display_name="Preview Image", output_node=True)
def PreviewImage(images=Socket("IMAGE"), prompt=Hidden("PROMPT"), extra_pnginfo=Hidden("EXTRA_PNGINFO")):
    """Show the pictures in the editor; they go to the temp folder, which is cleared between sessions."""
    return NodeOutput(
        ui={"images": write_pngs(images, preview_prefix(), "temp", prompt, extra_pnginfo, PREVIEW_COMPRESS_LEVEL)}
    )


def preview_prefix() -> str:
    """The file prefix of one preview: a random suffix keeps previews of concurrent prompts (and browser caches)
    from colliding, as ComfyUI's ``ComfyUI_temp_xxxxx``."""
    return "ComfyUI_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))
