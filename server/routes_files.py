"""``/view``, ``/view_metadata/{folder}``, ``/upload/image``, ``/upload/mask`` (docs/compatibility.md §1.6).

Only the input, output and temp folders are reachable for files, and model folders for the headers
of ``.safetensors`` files (found as the loaders find them: ``nodes.model_folders.ModelPaths.find``, which
follows the owner's symlinks). Every input/output/temp path is resolved through symlinks by
``nodes.folders.resolve_inside`` before its containment check (ComfyUI #12285), file names must be
plain names (directories go in ``subfolder``), and files are served so they can never run as a page
(``server.downloads``). Uploads dedupe by SHA-256: identical bytes under a taken name return the
existing file; different bytes get ``name (1).ext``, ``name (2).ext``...
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import struct
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from nodes.folders import FOLDER_KINDS, NAME_MAX_BYTES, UnsafePathError, resolve_inside, split_annotation
from nodes.model_folders import ModelNotFoundError, UnknownModelFolderError
from server.downloads import bytes_response, file_response
from server.keys import RUNTIME
from server.request_body import BadRequestBody, check_body, decode_json, read_form
from server.responses import PATH_CONFLICTS, error_response

__all__ = ["routes", "store_upload"]

routes = web.RouteTableDef()

_PREVIEW_FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg")}


def _target(folder: Path, subfolder: str, name: str) -> Path:
    """``folder/subfolder/name`` resolved through symlinks and checked to stay inside ``folder``."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise UnsafePathError(name, folder, "a file name may not contain a directory part")
    return resolve_inside(folder, str(PurePosixPath(subfolder) / name) if subfolder else name)


def _refused(error: UnsafePathError) -> web.Response:
    # The reason, not str(error): that names the server's absolute folder, which clients need not know.
    return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")


def _encode_variant(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """Apply ``channel`` (rgb | a | rgba) and ``preview=webp;90`` re-encoding with Pillow."""
    image: Image.Image
    with Image.open(path) as image:
        image.load()
    if channel == "rgb":
        image = image.convert("RGB")
    elif channel == "a":
        alpha = image.convert("RGBA").getchannel("A")
        image = Image.merge("RGBA", (alpha, alpha, alpha, Image.new("L", alpha.size, 255)))
    fmt, mime = "PNG", "image/png"
    options: dict[str, Any] = {}
    if preview:
        kind, _, quality = preview.partition(";")
        fmt, mime = _PREVIEW_FORMATS.get(kind.lower(), ("WEBP", "image/webp"))
        if fmt == "JPEG" and image.mode == "RGBA":
            fmt, mime = "WEBP", "image/webp"  # JPEG has no alpha
        options["quality"] = int(quality) if quality.isdigit() else 90
        if fmt == "JPEG":
            image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue(), mime


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    query = request.query
    name, kind = split_annotation(query.get("filename", ""), query.get("type", "output"))  # type: ignore[arg-type]
    if kind not in FOLDER_KINDS:
        return error_response(400, "bad_request", f"type {kind!r} is not one of {', '.join(FOLDER_KINDS)}")
    folders = request.app[RUNTIME].folders
    try:
        path = _target(folders.directory(kind), query.get("subfolder", ""), name)
    except UnsafePathError as error:
        return _refused(error)
    if not path.is_file():
        return error_response(404, "not_found", f"No file {name!r} in {kind}")
    channel = query.get("channel", "rgba")
    preview = query.get("preview")
    if channel == "rgba" and not preview:
        return file_response(path)
    try:
        data, mime = await asyncio.to_thread(_encode_variant, path, preview, channel)
    except (OSError, ValueError) as error:
        return error_response(400, "bad_request", f"Cannot convert {name!r}", str(error))
    return bytes_response(data, path.name, mime)


def _safetensors_metadata(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            return None
        header = json.loads(handle.read(length))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


@routes.get("/view_metadata/{folder}")
async def view_metadata(request: web.Request) -> web.Response:
    name = request.query.get("filename", "")
    if not name.endswith(".safetensors"):
        return error_response(404, "not_found", "Only .safetensors files carry metadata")
    try:
        path = await asyncio.to_thread(request.app[RUNTIME].model_paths.find, request.match_info["folder"], name)
    except UnsafePathError as error:
        return _refused(error)
    except (UnknownModelFolderError, ModelNotFoundError):
        return error_response(404, "not_found", f"No model {name!r} in {request.match_info['folder']!r}")
    try:
        metadata = await asyncio.to_thread(_safetensors_metadata, path)
    except (OSError, ValueError, struct.error) as error:
        return error_response(400, "bad_request", f"{name!r} is not a readable safetensors file", str(error))
    if metadata is None:
        return error_response(404, "not_found", f"{name!r} has no __metadata__")
    return web.json_response(metadata)


def _numbered(stem: str, counter: int, suffix: str) -> str:
    """``stem (N).suffix``, the stem shortened (whole characters) so the name still fits the file system."""
    tail = f" ({counter}){suffix}"
    room = NAME_MAX_BYTES - len(os.fsencode(tail))
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem + tail


def store_upload(directory: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write ``data`` as ``name`` in ``directory``; dedupe by hash, else rename ``name (N).ext``."""
    directory.mkdir(parents=True, exist_ok=True)
    if overwrite:
        (directory / name).write_bytes(data)
        return name
    digest = hashlib.sha256(data).digest()
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, counter = name, 0
    while (directory / candidate).exists():
        if hashlib.sha256((directory / candidate).read_bytes()).digest() == digest:
            return candidate
        counter += 1
        candidate = _numbered(stem, counter, suffix)
    with (directory / candidate).open("xb") as handle:
        handle.write(data)
    return candidate


async def _read_upload(request: web.Request) -> tuple[dict[str, str], str, bytes]:
    form = await read_form(request)
    upload = form.get("image")
    if not isinstance(upload, web.FileField):
        raise BadRequestBody("Bad upload", "multipart field 'image' with a file is required")
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    return fields, upload.filename or "", upload.file.read()


async def _upload(request: web.Request, mask: bool) -> web.Response:
    try:
        fields, name, data = await _read_upload(request)
        reference = _mask_reference(fields.get("original_ref", "")) if mask else None
    except BadRequestBody as error:
        return error.response()
    kind = fields.get("type", "input")
    if kind not in FOLDER_KINDS:
        return error_response(400, "bad_request", f"type {kind!r} is not one of {', '.join(FOLDER_KINDS)}")
    subfolder = fields.get("subfolder", "")
    folders = request.app[RUNTIME].folders
    try:
        base = folders.directory(kind)
        target = _target(base, subfolder, name)
        if reference is not None:
            data = await asyncio.to_thread(_apply_mask, folders, reference, data)
    except UnsafePathError as error:
        return _refused(error)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return error_response(400, "bad_request", "Bad mask upload", str(error))
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    try:
        stored = await asyncio.to_thread(store_upload, target.parent, target.name, data, overwrite)
    except PATH_CONFLICTS as error:
        where = str(PurePosixPath(subfolder) / name)
        return error_response(409, "conflict", "Cannot store the upload there", f"{where!r}: {error.strerror}")
    return web.json_response({"name": stored, "subfolder": subfolder, "type": kind})


def _mask_reference(original_ref: str) -> dict[str, Any]:
    """The ``original_ref`` form field: JSON naming the image the mask applies to."""
    reference: dict[str, Any] = decode_json(original_ref or "{}", "original_ref")
    check_body(reference, "MaskReference", "original_ref")  # the schema makes it an object
    return reference


def _apply_mask(folders: Any, reference: dict[str, Any], mask_png: bytes) -> bytes:
    """The original image's RGB with the uploaded image's alpha as its alpha (the mask editor's save).

    The original's PNG text chunks are kept, as ComfyUI keeps them: a masked picture that came out of a
    workflow still carries the workflow that made it.
    """
    name, kind = split_annotation(reference["filename"], reference.get("type", "input"))
    original_path = _target(folders.directory(kind), reference.get("subfolder") or "", name)
    chunks = PngInfo()
    with Image.open(original_path) as original, Image.open(io.BytesIO(mask_png)) as mask:
        for key, text in getattr(original, "text", {}).items():
            chunks.add_text(key, text)
        result = ImageOps.exif_transpose(original).convert("RGBA")
        alpha = mask.convert("RGBA").getchannel("A").resize(result.size)
    result.putalpha(alpha)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    return await _upload(request, mask=False)


@routes.post("/upload/mask")
async def upload_mask(request: web.Request) -> web.Response:
    return await _upload(request, mask=True)
