"""Output nodes beyond SaveImage and PreviewImage: SaveImageAdvanced (PNG 8/16-bit, EXR, AVIF) and ImageCompare.

Inputs and UI payloads are ComfyUI's (docs/compatibility.md §5). The files differ from ComfyUI's
byte for byte (ComfyUI encodes through FFmpeg, Loom through Pillow and the small writers below) but
hold the same pixel values and the same workflow metadata, so the editor restores a workflow from
either. Names follow ComfyUI's SaveImageAdvanced: ``<prefix>_<counter:05>.<ext>``, without the
trailing underscore SaveImage writes; the counter also counts those files, so unlike ComfyUI a
second run never overwrites the first.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import string
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, features
from PIL.PngImagePlugin import PngInfo

from graph.declare import Combo, Float, Hidden, Int, NodeOutput, Output, Socket, String, node, spec_of
from nodes.folders import BATCH_NUMBER, SaveTarget, save_target
from nodes.image_ops import DynamicCombo, expands_dynamic_inputs
from nodes.image_tensors import image_to_pil
from nodes.io import PREVIEW_COMPRESS_LEVEL, SAVE_COMPRESS_LEVEL, write_pngs
from nodes.runtime import current_runtime

log = logging.getLogger(__name__)

# --- colour transfer functions (EXR stores scene-linear light) ---------------------------------------

#: BT.2100 HLG constants a, b, c (ITU-R BT.2100-2, Table 5).
HLG_A, HLG_B, HLG_C = 0.17883277, 0.28466892, 0.55991072928


def _colour_only(transfer: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Apply ``transfer`` to the colour channels; a fourth channel is alpha and stays as it is."""
    if pixels.shape[-1] == 4:
        return torch.cat([transfer(pixels[..., :3]), pixels[..., 3:]], dim=-1)
    return transfer(pixels)


def srgb_to_linear(pixels: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding curve (IEC 61966-2-1): linear toe below 0.04045, 2.4 power above."""

    def decode(values: torch.Tensor) -> torch.Tensor:
        curve = ((values.clamp(min=0.0) + 0.055) / 1.055) ** 2.4
        return torch.where(values <= 0.04045, values / 12.92, curve)

    return _colour_only(decode, pixels)


def hlg_to_linear(pixels: torch.Tensor) -> torch.Tensor:
    """The inverse HLG OETF (BT.2100): HLG signal to scene-linear light in 0..1 (values above 1 extend)."""

    def decode(values: torch.Tensor) -> torch.Tensor:
        curve = (torch.exp((values.clamp(min=0.5) - HLG_C) / HLG_A) + HLG_B) / 12.0
        return torch.where(values <= 0.5, values * values / 3.0, curve)

    return _colour_only(decode, pixels)


#: CIE xy of the red, green, blue primaries and the D65 white point, for EXR's ``chromaticities``.
CHROMATICITIES = {
    "Rec.709": (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290),
    "Rec.2020": (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290),
}

# --- encoders ----------------------------------------------------------------------------------------


def _metadata_texts(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """``prompt`` and each ``extra_pnginfo`` entry as JSON text, the keys the editor reads back."""
    texts = {} if prompt is None else {"prompt": json.dumps(prompt)}
    for key, value in (extra_pnginfo or {}).items():
        texts[str(key)] = json.dumps(value)
    return texts


def _quantized(pixels: torch.Tensor, scale: float, dtype: Any) -> np.ndarray:
    """``pixels`` × scale, clamped and truncated (not rounded) to integers, as ComfyUI writes files."""
    scaled = torch.nan_to_num(pixels.detach().to("cpu", torch.float32) * scale).clamp(0, scale)
    return scaled.to(torch.int32).numpy().astype(dtype)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16_bytes(pixels: torch.Tensor, texts: Mapping[str, str], compress_level: int) -> bytes:
    """A 16-bit PNG (greyscale, RGB or RGBA by channel count) with ``texts`` as tEXt chunks.

    Pillow cannot write 16-bit colour PNGs, so this is the format written out directly: big-endian
    samples, every row with the "Up" filter (difference to the row above), which suits smooth
    pictures.
    """
    height, width, channels = pixels.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    samples = _quantized(pixels, 65535.0, ">u2").reshape(height, width * channels)
    rows = samples.view(np.uint8).reshape(height, width * channels * 2)
    above = np.vstack([np.zeros_like(rows[:1]), rows[:-1]])
    filtered = np.hstack([np.full((height, 1), 2, dtype=np.uint8), rows - above])
    parts = [
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)),
    ]
    for key, text in texts.items():
        parts.append(_png_chunk(b"tEXt", key.encode("latin-1", "replace")[:79] + b"\0" + text.encode("latin-1")))
    parts.append(_png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), compress_level)))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def png8_bytes(pixels: torch.Tensor, texts: Mapping[str, str], compress_level: int) -> bytes:
    metadata = PngInfo()
    for key, text in texts.items():
        metadata.add_text(key, text)
    encoded = io.BytesIO()
    image_to_pil(pixels).save(encoded, format="PNG", pnginfo=metadata, compress_level=compress_level)
    return encoded.getvalue()


def _exr_attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def exr_bytes(pixels: torch.Tensor, texts: Mapping[str, str], primaries: str | None) -> bytes:
    """A single-part scanline OpenEXR file of 32-bit float samples, uncompressed.

    Channels are named R, G, B, A (or Y for one channel) and stored in the alphabetical order the
    format requires; ``texts`` become ``string`` attributes and ``primaries`` a ``chromaticities``
    one, where ComfyUI puts its metadata.
    """
    height, width, channels = pixels.shape
    names = {1: ["Y"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}[channels]
    order = sorted(range(channels), key=lambda index: names[index])
    channel_list = b"".join(names[i].encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) for i in order) + b"\0"
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    attributes = [
        _exr_attribute("channels", "chlist", channel_list),
        _exr_attribute("compression", "compression", b"\0"),
        _exr_attribute("dataWindow", "box2i", window),
        _exr_attribute("displayWindow", "box2i", window),
        _exr_attribute("lineOrder", "lineOrder", b"\0"),
        _exr_attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _exr_attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _exr_attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
    ]
    attributes += [_exr_attribute(key, "string", text.encode()) for key, text in texts.items()]
    if primaries is not None:
        attributes.append(
            _exr_attribute("chromaticities", "chromaticities", struct.pack("<8f", *CHROMATICITIES[primaries]))
        )
    long_names = any(len(key.encode()) > 31 for key in texts)
    header = struct.pack("<ii", 20000630, 2 | (0x400 if long_names else 0)) + b"".join(attributes) + b"\0"
    samples = pixels.detach().to("cpu", torch.float32).numpy()[..., order]
    # A scanline holds each channel's row in turn: [R0..Rw-1][G0..] for RGB ordered as B, G, R.
    lines = np.ascontiguousarray(samples.transpose(0, 2, 1)).astype("<f4").reshape(height, -1)
    chunk_size = 8 + lines.shape[1] * 4
    first = len(header) + 8 * height
    offsets = struct.pack(f"<{height}Q", *(first + y * chunk_size for y in range(height)))
    chunks = b"".join(struct.pack("<ii", y, lines.shape[1] * 4) + lines[y].tobytes() for y in range(height))
    return header + offsets + chunks


def avif_bytes(
    pictures: torch.Tensor, crf: int, texts: Mapping[str, str], fps: float | None, loop_count: int | None
) -> bytes:
    """8-bit 4:2:0 AVIF through Pillow: one picture, or an animation of the batch when ``fps`` is given.

    ComfyUI drives SVT-AV1 with a CRF; Pillow's encoder takes a 0..100 quality whose 0..63 quantizer
    it derives linearly, so the CRF is mapped onto that scale (18 gives quality 71). The limited
    ("TV") range matches ComfyUI's. The workflow goes into EXIF as ComfyUI writes it: the prompt in
    ImageDescription ("prompt:{json}"), every other key counting down from Make ("workflow:{json}").
    """
    frames = [image_to_pil(picture) for picture in pictures]
    exif = Image.Exif()
    tag = 0x010F
    for key, text in texts.items():
        if key == "prompt":
            exif[0x0110] = f"prompt:{text}"
        else:
            exif[tag] = f"{key}:{text}"
            tag -= 1
    options: dict[str, Any] = {
        "quality": round(100 - crf * 100 / 63),
        "subsampling": "4:2:0",
        "range": "limited",
        "exif": exif.tobytes() if texts else b"",
    }
    if fps is not None:
        options.update(save_all=True, append_images=frames[1:], duration=round(1000 / fps))
        if loop_count:
            log.warning("SaveImageAdvanced: AVIF animations loop forever; loop_count %d is not written", loop_count)
    encoded = io.BytesIO()
    frames[0].save(encoded, format="AVIF", **options)
    return encoded.getvalue()


# --- SaveImageAdvanced ---------------------------------------------------------------------------------

EXR_COLOUR_TOOLTIP = (
    "How the input pixels are encoded; EXR files always hold scene-linear light.\n"
    "sRGB: sRGB-encoded Rec.709, decoded with the sRGB curve.\n"
    "HDR: HLG-encoded Rec.2020 (BT.2100), decoded with the inverse HLG curve.\n"
    "linear: already scene-linear Rec.709 (renderer or compositor output), written unchanged."
)

SAVE_FORMAT = DynamicCombo(
    [
        (
            "png",
            [
                ("bit_depth", Combo(["8-bit", "16-bit"], default="8-bit", advanced=True)),
                ("input_color_space", Combo(["sRGB"], default="sRGB", advanced=True)),
            ],
        ),
        (
            "exr",
            [
                ("bit_depth", Combo(["32-bit float"], default="32-bit float", advanced=True)),
                (
                    "input_color_space",
                    Combo(["sRGB", "HDR", "linear"], default="sRGB", advanced=True, tooltip=EXR_COLOUR_TOOLTIP),
                ),
            ],
        ),
        (
            "avif",
            [
                (
                    "bit_depth",
                    Combo(
                        ["auto", "8-bit YUV420", "10-bit YUV420"],
                        default="auto",
                        advanced=True,
                        tooltip="auto: 8-bit for sRGB, 10-bit for the HDR colour spaces.",
                    ),
                ),
                (
                    "input_color_space",
                    Combo(
                        ["sRGB", "HDR", "HDR PQ"],
                        default="sRGB",
                        advanced=True,
                        tooltip="How the input pixels are encoded: HDR is BT.2020 with HLG, HDR PQ BT.2020 with PQ.",
                    ),
                ),
                ("crf", Int(18, min=1, max=63, advanced=True, tooltip="Lower is better quality and a larger file.")),
                (
                    "save_mode",
                    DynamicCombo(
                        [
                            ("still images", []),
                            (
                                "animated",
                                [
                                    ("fps", Float(6.0, min=0.01, max=1000.0, step=0.01)),
                                    (
                                        "loop_count",
                                        Int(
                                            0, min=0, max=1000, advanced=True, tooltip="Times to play; 0 loops forever."
                                        ),
                                    ),
                                ],
                            ),
                        ],
                        display_name="save mode",
                    ),
                ),
            ],
        ),
    ],
    tooltip="The file format to write.",
)


def _counter_after_plain_names(folder: Path, base: str) -> int:
    """One past the highest ``<base>_NNNNN.<ext>`` number (SaveImageAdvanced's names) in ``folder``."""
    pattern = re.compile(r"\d+".join(re.escape(part) for part in base.split(BATCH_NUMBER)) + r"_(\d+)\.[^.]+$")
    numbers = [int(match[1]) for entry in os.listdir(folder) if (match := pattern.match(entry))]
    return max(numbers, default=0) + 1


def _write_numbered(target: SaveTarget, batch_index: int, counter: int, extension: str, data: bytes) -> tuple[str, int]:
    """Write ``data`` under the first free ``<base>_<counter:05>.<ext>``; returns the name and the next counter."""
    base = target.base.replace(BATCH_NUMBER, str(batch_index))
    while True:
        name = f"{base}_{counter:05d}.{extension}"
        try:
            with open(target.folder / name, "xb") as file:
                file.write(data)
            return name, counter + 1
        except FileExistsError:
            counter += 1


def _check_channels(images: torch.Tensor, allowed: tuple[int, ...], file_format: str) -> None:
    if images.shape[-1] not in allowed:
        counts = " or ".join(map(str, allowed))
        raise ValueError(f"SaveImageAdvanced: {file_format} takes {counts} channels, images has {images.shape[-1]}")


def _encoded_stills(images: torch.Tensor, choice: Mapping[str, Any], texts: dict[str, str]) -> list[bytes]:
    file_format, colour = choice["format"], choice["input_color_space"]
    if file_format == "png":
        _check_channels(images, (1, 3, 4), "png")
        encode = png16_bytes if choice["bit_depth"] == "16-bit" else png8_bytes
        return [encode(picture, texts, SAVE_COMPRESS_LEVEL) for picture in images]
    _check_channels(images, (1, 3, 4), "exr")
    decode = {"sRGB": srgb_to_linear, "HDR": hlg_to_linear, "linear": lambda pixels: pixels}[colour]
    primaries = "Rec.2020" if colour == "HDR" else "Rec.709"
    return [exr_bytes(decode(picture.float()), texts, primaries) for picture in images]


def _avif_files(images: torch.Tensor, choice: Mapping[str, Any], texts: dict[str, str]) -> list[bytes]:
    if not features.check("avif"):
        raise ValueError("SaveImageAdvanced: format avif needs Pillow built with AVIF support")
    colour = choice["input_color_space"]
    depth = choice["bit_depth"]
    if depth == "auto":
        depth = "8-bit YUV420" if colour == "sRGB" else "10-bit YUV420"
    if depth != "8-bit YUV420":
        raise ValueError("SaveImageAdvanced: format.bit_depth: Pillow writes 8-bit AVIF only, not 10-bit")
    if colour != "sRGB":
        raise ValueError(f"SaveImageAdvanced: format.input_color_space: Pillow cannot tag AVIF as {colour}")
    _check_channels(images, (1, 3), "avif")
    mode = choice["save_mode"]
    if mode["save_mode"] == "animated":
        return [avif_bytes(images, choice["crf"], texts, mode["fps"], mode["loop_count"])]
    return [avif_bytes(picture[None], choice["crf"], texts, None, None) for picture in images]


@expands_dynamic_inputs
@node(
    category="image",
    display_name="Save Image (Advanced)",
    output_node=True,
    outputs=[Output("IMAGE", "images")],
)
def SaveImageAdvanced(
    images=Socket("IMAGE", tooltip="The pictures to save."),
    filename_prefix=String(
        "ComfyUI",
        tooltip="File name start; may hold a subfolder (sub/name) and %width%, %height%, %date:yyyy-MM-dd%... "
        "A number and the extension are appended.",
    ),
    format=SAVE_FORMAT,
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Save pictures to the output folder as 8/16-bit PNG, 32-bit float EXR or AVIF, with the workflow."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or 0 in images.shape:
        raise ValueError("SaveImageAdvanced: images must be a non-empty IMAGE [B, H, W, C]")
    texts = _metadata_texts(prompt, extra_pnginfo)
    if format["format"] == "avif":
        files = _avif_files(images, format, texts)
    else:
        files = _encoded_stills(images, format, texts)
    height, width = images.shape[1:3]
    target = save_target(filename_prefix, current_runtime().folders.directory("output"), width, height)
    counter = max(target.counter, _counter_after_plain_names(target.folder, target.base))
    saved = []
    for index, data in enumerate(files):
        name, counter = _write_numbered(target, index, counter, format["format"], data)
        saved.append({"filename": name, "subfolder": target.subfolder, "type": "output"})
    ui: dict[str, list[Any]] = {"images": saved}
    if format["format"] == "avif" and format["save_mode"]["save_mode"] == "animated" and images.shape[0] > 1:
        ui["animated"] = [True]
    return NodeOutput(images, ui=ui)


# --- ImageCompare ------------------------------------------------------------------------------------


def _preview(images: torch.Tensor | None, prefix: str) -> list[dict[str, str]]:
    """Previews as ComfyUI's PreviewImage writes them for this node: temp folder, no metadata."""
    if images is None or len(images) == 0:
        return []
    suffix = "".join(random.choices(string.ascii_lowercase, k=5))
    return write_pngs(images, f"{prefix}_temp_{suffix}", "temp", None, None, PREVIEW_COMPRESS_LEVEL)


@node(
    category="image",
    display_name="Image Compare",
    description="Show two pictures on top of each other with a slider between them.",
    output_node=True,
)
def ImageCompare(
    image_a=Socket("IMAGE", optional=True),
    image_b=Socket("IMAGE", optional=True),
    compare_view=Socket("IMAGECOMPARE", socketless=True),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """The editor's compare widget reads ``a_images`` and ``b_images``: the two batches as previews."""
    return NodeOutput(
        ui={"a_images": _preview(image_a, "comfy.compare.a"), "b_images": _preview(image_b, "comfy.compare.b")}
    )


spec_of(ImageCompare).experimental = True
