"""Ready-made workflows for the editor's Templates panel, and what any workflow needs to run here.

Three places hold them: the ``comfyui-workflow-templates`` distributions when they are installed (an
optional extra, never imported: only their files are read), the repository's ``examples/`` and the
user's saved workflows (``user/default/workflows``). Each listed workflow comes with what this
server lacks for it: node types the registry does not have, and model files that are not in the models
folders: those its loader nodes name (``server.model_inputs``) and those its metadata names with a source
(``server.model_downloads.model_sources``), which also gives a loader's file its URL. The same check
answers ``/loom/workflow_requirements`` for any workflow the editor opens (or API prompt), which is how
the missing-models dialog knows what to offer.

Parsed files are remembered by path, size and modification time, as what the check reads of them (no
registry, no folder listing): the official templates are a few hundred files, read again only when they
change.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

from graph.formats.editor import VIRTUAL_NODE_TYPES
from graph.formats.strict_json import JsonDocumentError, parse_json
from graph.registry import NodeRegistry
from nodes.folders import UnsafePathError, list_files, resolve_inside
from nodes.model_folders import ModelPaths
from server.config import REPO_ROOT
from server.keys import CONFIG, REGISTRY, RUNTIME
from server.model_downloads import ModelSource, model_sources, source_report, workflow_graphs, workflow_nodes
from server.model_inputs import LoaderInputs, NamedModelFile, model_file_present, named_model_files, value_nodes
from server.request_body import BadRequestBody, read_json
from server.responses import error_response

__all__ = ["EXAMPLES_DIR", "TEMPLATE_PACKAGES", "TemplateSource", "routes", "template_sources", "workflow_requirements"]

routes = web.RouteTableDef()

EXAMPLES_DIR = REPO_ROOT / "examples"
#: Where the ``comfyui-workflow-templates`` releases keep workflow files, each under ``templates/``:
#: the single package of the early releases (workflows, thumbnails and ``index.json`` together), then
#: ``comfyui_workflow_templates_json`` for the workflows beside one package per media kind, of
#: which ``media_other`` carries ``index.json`` (titles and descriptions by file stem).
TEMPLATE_PACKAGES = (
    "comfyui_workflow_templates",
    "comfyui_workflow_templates_json",
    "comfyui_workflow_templates_media_api",
    "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_video",
    "comfyui_workflow_templates_media_other",
)
_JSON = frozenset({".json"})


@dataclass(frozen=True)
class TemplateSource:
    """One place templates come from; a file is looked up in ``folders`` in order."""

    key: str
    label: str
    folders: tuple[Path, ...]
    #: Only the top of each folder is listed (the packages keep translations and data below).
    flat: bool = False


def _package_folders() -> tuple[Path, ...]:
    folders = []
    for package in TEMPLATE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if (Path(location) / "templates").is_dir():
                folders.append(Path(location) / "templates")
    return tuple(folders)


def template_sources(user_folder: Path) -> list[TemplateSource]:
    """The installed packages' templates (if any), the examples, and the user's saved workflows."""
    sources = []
    packages = _package_folders()
    if packages:
        sources.append(TemplateSource("comfyui", "ComfyUI templates", packages, flat=True))
    sources.append(TemplateSource("examples", "Examples", (EXAMPLES_DIR,), flat=True))
    sources.append(TemplateSource("user", "My workflows", (user_folder / "default" / "workflows",)))
    return sources


@dataclass(frozen=True)
class WorkflowSummary:
    """What the listing needs from one workflow file."""

    node_types: frozenset[str]
    models: tuple[ModelSource, ...]
    #: The nodes' types and values, for the files their loader inputs name (``server.model_inputs``).
    nodes: tuple[Mapping[str, Any], ...]


def node_types(workflow: Mapping[str, Any]) -> frozenset[str]:
    """Real node types of the workflow and its subgraphs (not editor-only ones, not subgraph instances), or of
    an API prompt."""
    if not isinstance(workflow.get("nodes"), list):
        return frozenset(node["class_type"] for node in value_nodes(workflow))
    graphs = workflow_graphs(workflow)
    subgraph_ids = {str(graph.get("id")) for graph in graphs[1:]}
    types = {node.get("type") for graph in graphs for node in workflow_nodes(graph)}
    return frozenset(t for t in types if isinstance(t, str) and t not in VIRTUAL_NODE_TYPES and t not in subgraph_ids)


def model_reports(
    sources: Sequence[ModelSource], loaded: Sequence[NamedModelFile], model_paths: ModelPaths
) -> list[dict[str, Any]]:
    """Every model file the workflow names, each once and marked present or not: its metadata's entries, then
    the files its loaders name that the metadata does not (no ``url``: nothing says where to fetch them)."""
    reports = []
    described = set()
    for source in sources:
        described.add(NamedModelFile(source.directory, source.name).key)
        present = model_file_present(model_paths, source.directory, source.name)
        reports.append({**source_report(source, model_paths), "present": present})
    for named in loaded:
        if named.key not in described:
            present = model_file_present(model_paths, named.directory, named.name)
            unknown = {"url": None, "hash": None, "hash_type": None, "refused": None}
            reports.append({"name": named.name, "directory": named.directory, **unknown, "present": present})
    return reports


def workflow_requirements(workflow: object, registry: NodeRegistry, model_paths: ModelPaths) -> dict[str, Any]:
    """Node types this server lacks and the model files the workflow names, each marked present or not."""
    types = node_types(workflow) if isinstance(workflow, Mapping) else frozenset()
    loaded = named_model_files(value_nodes(workflow), LoaderInputs(registry))
    return {
        "missing_node_types": sorted(t for t in types if registry.get(t) is None),
        "models": model_reports(model_sources(workflow), loaded, model_paths),
    }


@lru_cache(maxsize=4096)
def _summary(path: Path, size: int, mtime_ns: int) -> WorkflowSummary | None:
    """The file's summary, or None when it is not an editor workflow (an API prompt, an index, broken JSON)."""
    try:
        workflow = parse_json(path.read_bytes())
    except (OSError, JsonDocumentError):
        return None
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("nodes"), list):
        return None
    return WorkflowSummary(node_types(workflow), tuple(model_sources(workflow)), tuple(value_nodes(workflow)))


def _read_summary(path: Path) -> WorkflowSummary | None:
    status = path.stat()
    return _summary(path, status.st_size, status.st_mtime_ns)


def _index_entries(folders: tuple[Path, ...]) -> dict[str, Mapping[str, Any]]:
    """``index.json`` entries by template name (the file stem), with their category's title added."""
    entries: dict[str, Mapping[str, Any]] = {}
    for folder in folders:
        try:
            index = parse_json((folder / "index.json").read_bytes())
        except (OSError, JsonDocumentError):
            continue
        for category in index if isinstance(index, list) else []:
            if not isinstance(category, Mapping) or not isinstance(category.get("templates"), list):
                continue
            for entry in category["templates"]:
                if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                    entries.setdefault(entry["name"], {**entry, "category": category.get("title")})
    return entries


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def list_templates(source: TemplateSource, registry: NodeRegistry, model_paths: ModelPaths) -> list[dict[str, Any]]:
    """Every workflow of one source with its requirements, sorted by title."""
    index = _index_entries(source.folders)
    found: dict[str, Path] = {}
    for folder in source.folders:
        if not folder.is_dir():
            continue
        for name in list_files(folder, _JSON):
            if (source.flat and "/" in name) or Path(name).stem.startswith("index"):
                continue
            found.setdefault(name, folder / name)
    templates = []
    loaders = LoaderInputs(registry)
    for name, path in found.items():
        summary = _read_summary(path)
        if summary is None:
            continue
        stem = name.removesuffix(".json")
        entry = index.get(stem, {})
        templates.append(
            {
                "source": source.key,
                "path": name,
                "title": _text(entry.get("title")) or stem.removesuffix(".workflow").replace("_", " "),
                "description": _text(entry.get("description")),
                "category": _text(entry.get("category")),
                "missing_node_types": sorted(t for t in summary.node_types if registry.get(t) is None),
                "models": model_reports(summary.models, named_model_files(summary.nodes, loaders), model_paths),
            }
        )
    return sorted(templates, key=lambda template: (template["category"], template["title"].lower()))


def _catalogue(request: web.Request) -> dict[str, Any]:
    runtime, registry = request.app[RUNTIME], request.app[REGISTRY]
    sources = template_sources(runtime.folders.user)
    return {
        "downloads_enabled": request.app[CONFIG].enable_model_downloads,
        "sources": [{"key": source.key, "label": source.label} for source in sources],
        "templates": [t for source in sources for t in list_templates(source, registry, runtime.model_paths)],
    }


@routes.get("/loom/templates")
async def get_templates(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_catalogue, request))


def _template_file(sources: list[TemplateSource], key: str, name: str) -> Path | None:
    for source in sources:
        if source.key != key:
            continue
        for folder in source.folders:
            path = resolve_inside(folder, name)
            if path.is_file() and path.suffix.lower() == ".json":
                return path
    return None


@routes.get("/loom/templates/{source}/{path:.+}")
async def get_template(request: web.Request) -> web.Response:
    key, name = request.match_info["source"], request.match_info["path"]
    try:
        path = _template_file(template_sources(request.app[RUNTIME].folders.user), key, name)
    except UnsafePathError as error:
        return error_response(403, "path_refused", "Path refused", f"{error.name!r}: {error.reason}")
    if path is None:
        return error_response(404, "not_found", f"No template {name!r} in {key!r}")
    return web.Response(body=await asyncio.to_thread(path.read_bytes), content_type="application/json")


@routes.post("/loom/workflow_requirements")
async def post_requirements(request: web.Request) -> web.Response:
    try:
        body = await read_json(request, "WorkflowRequirementsRequest")
    except BadRequestBody as error:
        return error.response()
    runtime, registry = request.app[RUNTIME], request.app[REGISTRY]
    requirements = await asyncio.to_thread(workflow_requirements, body["workflow"], registry, runtime.model_paths)
    return web.json_response({"downloads_enabled": request.app[CONFIG].enable_model_downloads, **requirements})
