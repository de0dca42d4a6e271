"""Third-party plugins in the server: loaded with the app, reported at ``/loom/plugins``, their browser code served.

The plugin folders are the repository's ``custom_nodes/`` and then ``config.extra_custom_node_dirs``
(ComfyUI reads extra folders from ``extra_model_paths.yaml``; Loom takes them from flags). Loading
itself is ``graph.plugins``: a broken pack is reported, never fatal, so the server always starts.
Before the first pack is imported, the names ComfyUI packs import are made importable
(``nodes.comfy_compat.install_comfy_modules``: ``folder_paths``, ``comfy.*``...), and the registry
being filled becomes the one ``nodes.NODE_CLASS_MAPPINGS`` shows, so a pack sees the built-ins and
the packs loaded before it, as in ComfyUI.

A pack's ``WEB_DIRECTORY`` is served at ``/extensions/<key>/<file>`` and its ``.js`` files are listed
by ``/extensions``, which is how both Loom's editor and ComfyUI's frontend find extension scripts
(docs/compatibility.md §3.10). These folders belong to code the server already runs with its own rights, so unlike
user uploads their scripts are sent with a JavaScript content type; the containment check still
resolves symlinks first, so a link inside a pack cannot publish a file from elsewhere on disk.
``/extensions/<name>/...`` for a name that is not a loaded pack is served from the frontend root's
``extensions/`` folder, where frontend-only extensions live.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from graph.plugins import PluginReport, PluginStatus, load_plugins
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.folders import UnsafePathError, list_files, resolve_inside
from nodes.runtime import Runtime
from nodes.v1_classes import expose_registry
from server.config import REPO_ROOT, ServerConfig, is_loopback_host
from server.responses import error_response

__all__ = [
    "PLUGIN_REPORTS",
    "REPO_CUSTOM_NODES",
    "add_plugin_routes",
    "configured_registry",
    "install_comfy_modules",
    "load_configured_plugins",
    "load_plugin_folders",
    "plugin_folders",
    "plugin_scripts",
    "reports_for_client",
]

log = logging.getLogger(__name__)

#: The reports of every plugin entry found at start, in load order.
PLUGIN_REPORTS = web.AppKey("loom_plugin_reports", list[PluginReport])

REPO_CUSTOM_NODES = REPO_ROOT / "custom_nodes"
#: What ``/extensions`` lists, as ComfyUI does; an ``.mjs`` helper a script imports is served, not listed.
LISTED_SUFFIXES = frozenset({".js"})
SCRIPT_SUFFIXES = frozenset({".js", ".mjs"})
JS_CONTENT_TYPE = "text/javascript"
#: Headers a reverse proxy adds: a request carrying one came from elsewhere, whatever its peer address.
_PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def configured_registry(
    config: ServerConfig, runtime: Runtime | None = None
) -> tuple[NodeRegistry, list[PluginReport]]:
    """The built-in nodes plus the plugins ``config`` allows, and what happened to each plugin.

    ``runtime`` is the installation packs see through ComfyUI's modules while they are imported.
    """
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry, load_configured_plugins(registry, config, runtime)


def plugin_folders(config: ServerConfig) -> list[Path]:
    return [REPO_CUSTOM_NODES, *config.extra_custom_node_dirs]


def load_configured_plugins(
    registry: NodeRegistry, config: ServerConfig, runtime: Runtime | None = None
) -> list[PluginReport]:
    """Load the configured folders into ``registry``, which must already hold the built-ins."""
    return load_plugin_folders(
        registry,
        plugin_folders(config),
        runtime,
        disable_all=config.disable_custom_nodes,
        whitelist=config.custom_node_whitelist,
    )


def load_plugin_folders(
    registry: NodeRegistry,
    folders: Sequence[Path],
    runtime: Runtime | None = None,
    *,
    disable_all: bool = False,
    whitelist: Collection[str] = (),
) -> list[PluginReport]:
    """Load the packs of ``folders`` into ``registry`` (built-ins already in) with what ComfyUI packs import:
    ``nodes.NODE_CLASS_MAPPINGS`` over this registry, and ComfyUI's modules answering from ``runtime``.
    The server and ``loom run`` both load packs through here."""
    expose_registry(registry)
    return load_plugins(
        registry,
        folders,
        disable_all=disable_all,
        whitelist=whitelist,
        before_import=lambda: install_comfy_modules(runtime),
    )


def install_comfy_modules(runtime: Runtime | None = None) -> None:
    """Make ComfyUI's plugin-facing modules importable (answering from ``runtime``).

    Never fatal: without them a pack that imports ``folder_paths`` or ``comfy`` fails alone, with
    that module named in its report, as any pack with a missing dependency does.
    """
    from nodes.comfy_compat import install_comfy_modules as install

    try:
        install(runtime)
    except Exception:  # a bug there must not keep the server from starting: the packs report what is missing
        log.exception("ComfyUI's modules cannot be offered to plugins")


def _served(reports: Iterable[PluginReport]) -> dict[str, Path]:
    """``key → web folder`` of the packs whose browser code is served: loaded, with a usable folder."""
    return {
        report.key: report.web_directory
        for report in reports
        if report.status is PluginStatus.LOADED and report.web_directory is not None and report.web_directory.is_dir()
    }


def plugin_scripts(reports: Iterable[PluginReport]) -> list[str]:
    """The URL of every script in every served web folder (subfolders too, as ComfyUI lists them)."""
    return [
        f"/extensions/{key}/{name}"
        for key, folder in _served(reports).items()
        for name in list_files(folder, LISTED_SUFFIXES)
    ]


def _is_local(request: web.Request) -> bool:
    if any(header in request.headers for header in _PROXY_HEADERS):
        return False
    return is_loopback_host(request.remote or "")


def reports_for_client(reports: Sequence[PluginReport], *, local: bool) -> list[dict[str, Any]]:
    """The reports as JSON; tracebacks name files and lines of the server, so only this machine sees them."""
    bodies = [report.to_json() for report in reports]
    if not local:
        for body in bodies:
            body["traceback"] = None
            for refusal in body["refused"]:
                refusal["traceback"] = None
    return bodies


async def _list_plugins(request: web.Request) -> web.Response:
    reports = request.app[PLUGIN_REPORTS]  # not inline: mypy would infer the key's type from the parameter's
    return web.json_response(reports_for_client(reports, local=_is_local(request)))


def _content_type(path: Path) -> str:
    if path.suffix.lower() in SCRIPT_SUFFIXES:
        return JS_CONTENT_TYPE
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _web_file_handler(folders: dict[str, Path], frontend_extensions: Path) -> Handler:
    async def web_file(request: web.Request) -> web.StreamResponse:
        key, name = request.match_info["key"], request.match_info["path"]
        folder = folders.get(key)
        if folder is None:
            folder, name = frontend_extensions, f"{key}/{name}"
        try:
            path = resolve_inside(folder, name)
        except UnsafePathError as error:
            return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")
        if not await asyncio.to_thread(path.is_file):
            return error_response(404, "not_found", f"No file {name!r} in the web folder of {key!r}")
        return web.FileResponse(path, headers={"Content-Type": _content_type(path), "Cache-Control": "no-cache"})

    return web_file


def add_plugin_routes(app: web.Application, reports: list[PluginReport], frontend_root: Path) -> None:
    """Keep ``reports`` on the app and add the plugin routes; call before the frontend's catch-all static route."""
    app[PLUGIN_REPORTS] = reports
    app.router.add_get("/loom/plugins", _list_plugins)
    app.router.add_get("/api/loom/plugins", _list_plugins)
    app.router.add_get("/extensions/{key}/{path:.+}", _web_file_handler(_served(reports), frontend_root / "extensions"))
