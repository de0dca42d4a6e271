"""What the server knows: node definitions, models, system and feature flags (docs/compatibility.md §1.2, §1.5, §C.2).

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
from pathlib import PurePosixPath
from typing import Any

from aiohttp import web

from nodes.folders import UnsafePathError, list_files
from nodes.model_folders import UnknownModelFolderError
from server.keys import CONFIG, REGISTRY, RUNTIME
from server.plugins import PLUGIN_REPORTS, plugin_scripts
from server.responses import error_response

__all__ = ["routes", "server_features"]

routes = web.RouteTableDef()


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
            devices.append(
                {
                    "name": f"cuda:{index} {torch.cuda.get_device_name(index)}",
                    "type": "cuda",
                    "index": index,
                    "vram_total": total,
                    "vram_free": free,
                    "torch_vram_total": total,
                    "torch_vram_free": free,
                }
            )
        return devices
    total, free = _memory()
    return [
        {
            "name": "cpu",
            "type": "cpu",
            "index": 0,
            "vram_total": total,
            "vram_free": free,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
            "loom_device_setting": config_device,
        }
    ]


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
    return web.json_response(
        {
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
        }
    )


@routes.get("/features")
async def features(request: web.Request) -> web.Response:
    return web.json_response(server_features(request.app[CONFIG].max_upload_bytes))


@routes.get("/models")
async def model_folders(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].model_paths.keys())


@routes.get("/models/{folder}")
async def model_files(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    try:
        return web.json_response(await asyncio.to_thread(request.app[RUNTIME].model_paths.names, folder))
    except UnknownModelFolderError as error:
        return error_response(404, "not_found", f"No model folder {folder!r}", str(error))
    except UnsafePathError as error:
        return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")


@routes.get("/experiment/models")
async def experiment_models(request: web.Request) -> web.Response:
    folders = await asyncio.to_thread(request.app[RUNTIME].model_paths.all_folders)
    return web.json_response(
        [{"name": key, "folders": [str(path) for path in paths]} for key, paths in folders.items()]
    )


@routes.get("/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    files = await asyncio.to_thread(request.app[RUNTIME].model_paths.names, "embeddings")
    return web.json_response([str(PurePosixPath(name).with_suffix("")) for name in files])


@routes.get("/extensions")
async def extensions(request: web.Request) -> web.Response:
    root = request.app[CONFIG].frontend_root / "extensions"
    scripts = await asyncio.to_thread(list_files, root, frozenset({".js"})) if root.is_dir() else []
    reports = request.app[PLUGIN_REPORTS]  # not inline: mypy would infer the key's type from the parameter's
    from_plugins = await asyncio.to_thread(plugin_scripts, reports)
    return web.json_response([f"/extensions/{name}" for name in scripts] + from_plugins)


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
