"""What the server knows: node definitions, models, system and feature flags (COMPAT 1.2, 1.5, C.2).

``/object_info`` is served from the registry's specs as they are *now* (combo lists of model files
are recomputed per request); a node whose inputs cannot be computed is left out and logged, never
fails the whole list, since the frontend cannot start without this answer.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from nodes.folders import UnsafePathError, list_files, resolve_inside
from server.keys import CONFIG, FOLDERS, REGISTRY
from server.responses import error_response

__all__ = ["routes", "server_features", "MODEL_FOLDERS", "MODEL_EXTENSIONS"]

routes = web.RouteTableDef()

#: The folder keys ComfyUI clients know; any other directory under ``models/`` is listed as well.
MODEL_FOLDERS = (
    "checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusers", "diffusion_models",
    "embeddings", "gligen", "hypernetworks", "loras", "photomaker", "style_models", "text_encoders",
    "unet", "upscale_models", "vae", "vae_approx",
)
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})


def server_features(max_upload_bytes: int) -> dict[str, Any]:
    """Capabilities sent in ``feature_flags`` and ``/features``; ``loom_previews`` is Loom's own."""
    return {"supports_preview_metadata": True, "loom_previews": True, "max_upload_size": max_upload_bytes}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _devices(config_device: str) -> list[dict[str, Any]]:
    """Devices as torch sees them; torch is only asked if something already imported it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({
                "name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda", "index": index,
                "vram_total": total, "vram_free": free, "torch_vram_total": total, "torch_vram_free": free,
            })
        return devices
    total, free = _memory()
    return [{"name": "cpu", "type": "cpu", "index": 0, "vram_total": total, "vram_free": free,
             "torch_vram_total": 0, "torch_vram_free": 0, "loom_device_setting": config_device}]


@routes.get("/object_info")
async def object_info(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[REGISTRY].object_info))


@routes.get("/object_info/{class_type}")
async def object_info_one(request: web.Request) -> web.Response:
    spec = request.app[REGISTRY].get(request.match_info["class_type"])
    if spec is None:
        return web.json_response({})
    return web.json_response({spec.class_type: await asyncio.to_thread(spec.object_info)})


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    total, free = _memory()
    return web.json_response({
        "system": {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": _version("loom"),
            "loom_version": _version("loom"),
            "python_version": sys.version,
            "pytorch_version": _version("torch"),
            "embedded_python": False,
            "platform": platform.platform(),
            "argv": list(sys.argv),
        },
        "devices": _devices(config.device),
    })


@routes.get("/features")
async def features(request: web.Request) -> web.Response:
    return web.json_response(server_features(request.app[CONFIG].max_upload_bytes))


def _model_folder_names(models: Path) -> list[str]:
    present = {entry.name for entry in models.iterdir() if entry.is_dir()} if models.is_dir() else set()
    return sorted(set(MODEL_FOLDERS) | present)


@routes.get("/models")
async def model_folders(request: web.Request) -> web.Response:
    return web.json_response(_model_folder_names(request.app[FOLDERS].models))


@routes.get("/models/{folder}")
async def model_files(request: web.Request) -> web.Response:
    models = request.app[FOLDERS].models
    folder = request.match_info["folder"]
    if folder not in _model_folder_names(models):
        return error_response(404, "not_found", f"No model folder {folder!r}")
    try:
        directory = resolve_inside(models, folder)
    except UnsafePathError as error:
        return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")
    files = await asyncio.to_thread(list_files, directory, MODEL_EXTENSIONS) if directory.is_dir() else []
    return web.json_response(files)


@routes.get("/experiment/models")
async def experiment_models(request: web.Request) -> web.Response:
    models = request.app[FOLDERS].models
    return web.json_response([{"name": name, "folders": [str(models / name)]} for name in _model_folder_names(models)])


@routes.get("/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    directory = request.app[FOLDERS].models / "embeddings"
    files = await asyncio.to_thread(list_files, directory, MODEL_EXTENSIONS) if directory.is_dir() else []
    return web.json_response([str(Path(name).with_suffix("")) for name in files])


@routes.get("/extensions")
async def extensions(request: web.Request) -> web.Response:
    root = request.app[CONFIG].frontend_root / "extensions"
    scripts = await asyncio.to_thread(list_files, root, frozenset({".js"})) if root.is_dir() else []
    return web.json_response([f"/extensions/{name}" for name in scripts])


@routes.get("/i18n")
async def i18n(request: web.Request) -> web.Response:
    return web.json_response({})


@routes.get("/global_subgraphs")
async def global_subgraphs(request: web.Request) -> web.Response:
    return web.json_response({})


@routes.get("/node_replacements")
async def node_replacements(request: web.Request) -> web.Response:
    return web.json_response({})


@routes.get("/workflow_templates")
async def workflow_templates(request: web.Request) -> web.Response:
    return web.json_response({})
