"""Load third-party node packs from ``custom_nodes`` folders so that one broken pack breaks nothing else.

A plugin is an entry of a plugin folder: a package (a folder with ``__init__.py``) or a single
``.py`` file, as in ComfyUI (docs/compatibility.md §3.10). Each is imported as ComfyUI imports it: as a
top-level module named after the folder (or file), registered in ``sys.modules`` under that name, so
relative imports of sub-packages work and one pack can ``import other_pack.utils`` a pack loaded
before it. A name that is taken, by a pack of the same name in an earlier folder or by a module that
already exists (``nodes``, ``torch``, ``json``...), is never shadowed: the pack is imported under an
alias (``json__2``) and its report says why. A pack exports nodes through
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` (V1 classes), through module-level
functions declared with Loom's ``@node`` (its own or listed in ``LOOM_NODES``), and browser code
through ``WEB_DIRECTORY``.

ComfyUI's V3 nodes are recognised by their shape, so the engine needs none of the ``comfy_api``
modules packs import: a V3 node class has ``define_schema`` and ``execute``, its schema a
``node_id`` and a ``display_name``, and the class answers the V1 attributes itself (``INPUT_TYPES``,
``RETURN_TYPES``, ``FUNCTION`` ..., as ComfyUI's ``io.ComfyNode`` does), so the V1 reader reads it
and only its title comes from the schema. A module without ``NODE_CLASS_MAPPINGS`` may list them
through ``comfy_entrypoint()``, a (coroutine) function returning an extension whose ``on_load()``
and ``get_node_list()`` are awaited here, at load time, in an event loop of their own.

Plugin code is untrusted in the reliability sense: any exception while importing (a missing
dependency, a bug, even ``sys.exit``) fails that pack alone, and a node class whose ``INPUT_TYPES``
raises, that cannot be read as a spec, or that reuses a built-in's name is refused alone while the
pack's other nodes load. Every outcome is a ``PluginReport`` the server can log, serve and show.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from graph.registry import ExportedNode, ModuleExportError, NodeRegistry, RegistrationError, exported_nodes
from graph.spec import NodeSpec
from graph.v1 import spec_from_v1_class

__all__ = [
    "MODULE_PREFIX",
    "NodeRefusal",
    "PluginEntry",
    "PluginReport",
    "PluginStatus",
    "discover_plugins",
    "import_times_table",
    "load_plugins",
]

log = logging.getLogger(__name__)

#: Prefix of a plugin node's ``python_module`` in ``/object_info``, as ComfyUI's ``RELATIVE_PYTHON_MODULE``:
#: the frontend tells plugin nodes from core ones by it.
MODULE_PREFIX = "custom_nodes"
DISABLED_SUFFIX = ".disabled"

#: The modules this loader put into ``sys.modules``, by name: a later load may replace these, never others.
_PLUGIN_MODULES: dict[str, ModuleType] = {}


class PluginStatus(str, Enum):
    LOADED = "loaded"
    #: Importing raised: nothing from the pack is registered.
    FAILED = "failed"
    #: Not imported: named ``*.disabled``, or plugins are disabled and it is not whitelisted.
    DISABLED = "disabled"
    #: Not a loadable pack: a folder without ``__init__.py``, or a module that exports nothing.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class PluginEntry:
    """One candidate in a plugin folder; ``name`` is the folder name or the file's stem."""

    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.is_dir()

    @property
    def root(self) -> Path:
        """The folder the pack owns: its package folder, or the folder a single file sits in."""
        return self.path if self.is_package else self.path.parent


@dataclass(frozen=True)
class NodeRefusal:
    """A node a pack exports that was not registered, and why."""

    class_type: str
    reason: str
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"class_type": self.class_type, "reason": self.reason, "traceback": self.traceback}


@dataclass
class PluginReport:
    """What loading one entry did: the server logs it, serves it and shows it in the editor."""

    name: str
    path: Path
    status: PluginStatus
    #: The name it is imported as (``sys.modules`` key): its folder or file name, or an alias;
    #: ``None`` when it was never imported.
    module_name: str | None = None
    #: Why it was imported under an alias rather than its own name; ``None`` when it was not.
    alias_reason: str | None = None
    #: Commands the pack ran to install packages while it was imported (pip), as logged.
    installs: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    refused: list[NodeRefusal] = field(default_factory=list)
    #: Absolute folder of browser code, served at ``/extensions/<key>/``.
    web_directory: Path | None = None
    #: Why a declared ``WEB_DIRECTORY`` was not accepted (the nodes still load).
    web_error: str | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def key(self) -> str:
        """A name unique among the loaded packs (``foo``, ``foo__2``); the URL segment of its web files."""
        return self.module_name if self.module_name is not None else self.name

    @property
    def python_module(self) -> str:
        """What ``/object_info`` reports as its nodes' ``python_module``: ``custom_nodes.<key>``."""
        return f"{MODULE_PREFIX}.{self.key}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "path": str(self.path),
            "status": self.status.value,
            "module": self.module_name,
            "alias_reason": self.alias_reason,
            "installs": list(self.installs),
            "nodes": list(self.nodes),
            "refused": [refusal.to_json() for refusal in self.refused],
            "web_directory": str(self.web_directory) if self.web_directory is not None else None,
            "web_error": self.web_error,
            "error": self.error,
            "traceback": self.traceback,
            "seconds": round(self.seconds, 4),
        }


def discover_plugins(folders: Iterable[Path]) -> list[PluginEntry]:
    """Every entry of the folders in name order (stable across file systems, unlike ``listdir``).

    Ignored silently: ``__pycache__``, hidden names (``.git``), files that are not ``.py``.
    Folders without ``__init__.py`` and ``*.disabled`` names are returned so they can be reported.
    """
    entries: list[PluginEntry] = []
    for folder in folders:
        folder = Path(folder).resolve()
        if not folder.is_dir():
            log.warning("plugin folder %s does not exist; skipped", folder)
            continue
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.name == "__pycache__" or path.name.startswith("."):
                continue
            name = path.name.removesuffix(DISABLED_SUFFIX)
            if path.is_dir():
                entries.append(PluginEntry(name, path))
            elif name.endswith(".py"):
                entries.append(PluginEntry(name.removesuffix(".py"), path))
    return entries


def load_plugins(
    registry: NodeRegistry,
    folders: Iterable[Path],
    *,
    disable_all: bool = False,
    whitelist: Collection[str] = (),
    before_import: Callable[[], None] | None = None,
) -> list[PluginReport]:
    """Import every plugin in ``folders`` and register its nodes; never raises for a plugin's fault.

    ``disable_all`` (``--disable-custom-nodes``) imports nothing except the packs named in
    ``whitelist`` (by folder name, file stem or file name). Built-ins must be registered first, so
    that their names are protected. Among packs the later one wins a shared node name, as in ComfyUI.
    ``before_import`` is called once, just before the first pack is imported (not at all when none
    is): the host makes the modules packs import (ComfyUI's ``folder_paths``, ``comfy``...) importable
    there, so that the engine need not know them and no pack can take their names.
    """
    reports: list[PluginReport] = []
    taken: set[str] = set()
    origins: dict[str, str] = {}
    for entry in discover_plugins(folders):
        passed_over = _not_imported(entry, disable_all, whitelist)
        if passed_over is not None:
            report = PluginReport(entry.name, entry.path, passed_over[0], error=passed_over[1])
        else:
            if before_import is not None:
                before_import()
                before_import = None
            module_name, alias_reason = _module_name(entry, taken)
            report = _load_entry(registry, entry, module_name, origins)
            report.alias_reason = alias_reason
        _log_report(report)
        reports.append(report)
    log.info("%s", import_times_table(reports))
    return reports


def import_times_table(reports: Iterable[PluginReport]) -> str:
    """The startup summary: one line per imported pack, slowest first, failures flagged."""
    lines = ["Plugin import times:"]
    for report in sorted(reports, key=lambda r: r.seconds, reverse=True):
        if report.status is PluginStatus.DISABLED:
            continue
        flag = {PluginStatus.FAILED: " (IMPORT FAILED)", PluginStatus.SKIPPED: " (SKIPPED)"}.get(report.status, "")
        extra = f", {len(report.refused)} refused" if report.refused else ""
        lines.append(f"{report.seconds:9.3f} s  {report.path}{flag}  [{len(report.nodes)} nodes{extra}]")
    return "\n".join(lines)


def _not_imported(entry: PluginEntry, disable_all: bool, whitelist: Collection[str]) -> tuple[PluginStatus, str] | None:
    """Why an entry is passed over without running any of its code, or ``None`` to import it."""
    if entry.path.name.endswith(DISABLED_SUFFIX):
        return PluginStatus.DISABLED, f"its name ends in {DISABLED_SUFFIX!r}"
    if disable_all and entry.name not in whitelist and entry.path.name not in whitelist:
        return PluginStatus.DISABLED, f"custom nodes are disabled and {entry.name!r} is not whitelisted"
    if entry.is_package and not (entry.path / "__init__.py").is_file():
        return PluginStatus.SKIPPED, "the folder has no __init__.py, so it is not a Python package"
    return None


def _module_name(entry: PluginEntry, taken: set[str]) -> tuple[str, str | None]:
    """The name to import ``entry`` as, and why it is an alias (``None`` when it is the pack's own name).

    The pack's own name, as ComfyUI imports it, unless an earlier folder's pack took it or it would
    shadow a module that exists apart from the plugins: then ``<name>__2``, ``__3``... Dots would make
    importlib look for a parent package, so they become ``_``.
    """
    base = entry.name.replace(".", "_")
    reason = _why_taken(base, entry, taken)
    candidate, number = base, 1
    while _why_taken(candidate, entry, taken) is not None:
        number += 1
        candidate = f"{base}__{number}"
    taken.add(candidate)
    return candidate, reason


def _why_taken(name: str, entry: PluginEntry, taken: set[str]) -> str | None:
    """Why ``entry`` may not be imported as ``name``; ``None`` when it may."""
    if name in taken:
        return f"a pack named {name!r} was loaded before this one"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if loaded is _PLUGIN_MODULES.get(name):
            return None  # a pack of an earlier load: this load replaces it
        return f"a module named {name!r} is already imported ({_origin(loaded)}); the pack must not replace it"
    if name in sys.stdlib_module_names:
        return f"{name!r} is a module of Python's standard library; the pack must not shadow it"
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a broken finder or package: nothing there to shadow
        found = None
    if found is not None and not _is_entry(found.origin, entry):
        where = found.origin or "a namespace package"
        return f"a module named {name!r} is importable ({where}); the pack must not shadow it"
    return None


def _is_entry(origin: str | None, entry: PluginEntry) -> bool:
    """Whether an importable module's file is the entry itself (its folder is on ``sys.path``)."""
    return origin is not None and Path(origin).resolve() == _init_file(entry).resolve()


def _origin(module: ModuleType) -> str:
    return str(getattr(module, "__file__", None) or "built into Python")


def _init_file(entry: PluginEntry) -> Path:
    return entry.path / "__init__.py" if entry.is_package else entry.path


def _load_entry(registry: NodeRegistry, entry: PluginEntry, module_name: str, origins: dict[str, str]) -> PluginReport:
    report = PluginReport(entry.name, entry.path, PluginStatus.LOADED, module_name=module_name)
    started = time.perf_counter()
    _watch_installs()
    importing = _IMPORTING.set(report)
    try:
        module = _import(entry, module_name)
        # Read before anything is registered: reading runs plugin code, which may raise.
        exports = _titled_v3_nodes(module, exported_nodes(module))
        extension_nodes, extension_problem = _extension_nodes(module)
        exports += extension_nodes
    # SystemExit too: a pack that calls sys.exit() when a dependency is missing must not stop the server.
    except (Exception, SystemExit) as error:
        _forget_modules(module_name)
        report.status = PluginStatus.FAILED
        report.error = _import_error_text(error)
        report.traceback = traceback.format_exc()
    else:
        _register_exports(registry, entry, module, exports, report, origins, extension_problem)
    finally:
        _IMPORTING.reset(importing)
    report.seconds = time.perf_counter() - started
    return report


#: The pack being imported in this context, so a process it starts can be told apart from Loom's own.
_IMPORTING: ContextVar[PluginReport | None] = ContextVar("loom_importing_plugin", default=None)


@functools.cache
def _watch_installs() -> None:
    """Audit subprocesses, from the first pack on: packs that pip-install at import change Loom's environment
    behind its back (ComfyUI's manager does that on request; a pack doing it on every start is worth a loud
    log line and a mark in its report). An audit hook cannot be removed, so it is added once."""
    sys.addaudithook(_on_audit_event)


def _on_audit_event(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen":
        return
    report = _IMPORTING.get()
    if report is None:
        return
    command = [str(part) for part in (args[1] if isinstance(args[1], (list, tuple)) else [args[1]])]
    if _is_install(command):
        text = " ".join(command)
        report.installs.append(text)
        log.warning("plugin %s installs packages while it is imported: %s", report.name, text)


def _is_install(command: list[str]) -> bool:
    """``pip install ...`` in any spelling: ``pip``, ``pip3``, ``python -m pip``, ``uv pip``."""
    words = [os.path.basename(word).removesuffix(".exe") for word in command]
    return "install" in words and any(word in ("pip", "pip3", "uv", "easy_install") for word in words)


def _import(entry: PluginEntry, module_name: str) -> ModuleType:
    """Execute the plugin as ``module_name``; a package gets a search path so relative imports resolve."""
    # A second load (a test, a reload) must run the files on disk, not reuse modules of an older
    # folder that had the same name.
    _forget_modules(module_name)
    locations = [str(entry.path)] if entry.is_package else None
    spec = importlib.util.spec_from_file_location(module_name, _init_file(entry), submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot build an import spec for {entry.path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _PLUGIN_MODULES[module_name] = module
    spec.loader.exec_module(module)
    return module


def _forget_modules(module_name: str) -> None:
    """Drop a plugin's modules (its own name and its submodules); only ever called with a plugin's name."""
    for name in [name for name in sys.modules if name == module_name or name.startswith(module_name + ".")]:
        del sys.modules[name]
    _PLUGIN_MODULES.pop(module_name, None)


def _import_error_text(error: BaseException) -> str:
    if isinstance(error, ModuleExportError):
        return str(error)
    if isinstance(error, ModuleNotFoundError) and error.name:
        return f"missing Python module {error.name!r} (install the pack's requirements): {error}"
    return f"{type(error).__name__}: {error}"


def _register_exports(
    registry: NodeRegistry,
    entry: PluginEntry,
    module: ModuleType,
    exports: list[ExportedNode],
    report: PluginReport,
    origins: dict[str, str],
    extension_problem: str | None = None,
) -> None:
    web_directory = getattr(module, "WEB_DIRECTORY", None)
    if web_directory is not None:
        try:
            report.web_directory = _resolve_web_directory(entry, web_directory)
        except ValueError as error:
            report.web_error = str(error)
    if not exports and web_directory is None:
        report.status = PluginStatus.SKIPPED
        report.error = extension_problem or _nothing_exported(module)
        return
    for exported in exports:
        refusal = _register_node(registry, exported, report, origins)
        if refusal is None:
            report.nodes.append(exported.class_type)
        else:
            report.refused.append(refusal)


def _register_node(
    registry: NodeRegistry, exported: ExportedNode, report: PluginReport, origins: dict[str, str]
) -> NodeRefusal | None:
    class_type = exported.class_type
    if registry.is_builtin(class_type):
        return NodeRefusal(class_type, "a built-in node has this name, and plugins cannot replace built-in nodes")
    try:
        spec = exported.build()
        spec.python_module = report.python_module
        # Computed once now so a broken INPUT_TYPES is refused here, not found by /object_info later.
        spec.inputs()
    except Exception as error:  # plugin code: INPUT_TYPES and class attributes may raise anything
        return NodeRefusal(
            class_type, f"cannot be read as a node: {type(error).__name__}: {error}", traceback.format_exc()
        )
    try:
        registry.register(spec)
    except RegistrationError as error:
        return NodeRefusal(class_type, str(error))
    previous = origins.get(class_type)
    if previous is not None and previous != report.name:
        log.warning("node %s from plugin %s replaces the one from plugin %s", class_type, report.name, previous)
    origins[class_type] = report.name
    return None


def _resolve_web_directory(entry: PluginEntry, declared: Any) -> Path:
    """The absolute folder ``WEB_DIRECTORY`` names; it must be an existing folder inside the pack's own."""
    if not isinstance(declared, (str, os.PathLike)):
        raise ValueError(f"WEB_DIRECTORY must be a path string, not {type(declared).__name__}")
    root = entry.root.resolve()
    resolved = (root / declared).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"WEB_DIRECTORY {str(declared)!r} points outside the plugin folder {root}")
    if not resolved.is_dir():
        raise ValueError(f"WEB_DIRECTORY {str(declared)!r} is not a folder ({resolved})")
    return resolved


def _nothing_exported(module: ModuleType) -> str:
    if hasattr(module, "comfy_entrypoint"):
        return "its comfy_entrypoint() extension lists no nodes"
    return "it exports no NODE_CLASS_MAPPINGS, no comfy_entrypoint, no @node functions and no WEB_DIRECTORY"


# --- ComfyUI's V3 nodes ------------------------------------------------------------------------------

_T = TypeVar("_T")


def _is_v3_class(value: Any) -> bool:
    """Whether ``value`` is a V3 node class (ComfyUI's ``io.ComfyNode``): one that declares a schema."""
    return (
        isinstance(value, type)
        and callable(getattr(value, "define_schema", None))
        and callable(getattr(value, "execute", None))
    )


def _v3_node(class_type: str, cls: type[Any], fallback_title: str | None, module_name: str) -> ExportedNode:
    """A V3 class read as the V1 class it also is, titled by its schema's ``display_name``."""

    def build() -> NodeSpec:
        title = getattr(cls.define_schema(), "display_name", None)
        return spec_from_v1_class(class_type, cls, str(title) if title else fallback_title, module_name)

    return ExportedNode(class_type, build)


def _titled_v3_nodes(module: ModuleType, exports: list[ExportedNode]) -> list[ExportedNode]:
    """``exports`` with the V3 classes of ``NODE_CLASS_MAPPINGS`` titled by their schema.

    ComfyUI shows a V3 node under its schema's ``display_name`` whatever the module's
    ``NODE_DISPLAY_NAME_MAPPINGS`` says; here that mapping fills in for a schema without one.
    """
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, Mapping):
        return exports
    v3_classes = {str(name): cls for name, cls in mappings.items() if _is_v3_class(cls)}
    if not v3_classes:
        return exports
    titles = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None)
    titles = titles if isinstance(titles, Mapping) else {}
    return [
        _v3_node(node.class_type, v3_classes[node.class_type], titles.get(node.class_type), module.__name__)
        if node.class_type in v3_classes
        else node
        for node in exports
    ]


def _extension_nodes(module: ModuleType) -> tuple[list[ExportedNode], str | None]:
    """The nodes of the module's ``comfy_entrypoint()`` extension, and why there are none if it gave none.

    As in ComfyUI, the entry point is called only when the module has no ``NODE_CLASS_MAPPINGS``.
    An exception it raises fails the pack; a listed class that is no V3 node, or whose
    ``define_schema`` raises, is refused alone.
    """
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if entrypoint is None or getattr(module, "NODE_CLASS_MAPPINGS", None) is not None:
        return [], None
    if not callable(entrypoint):
        return [], f"comfy_entrypoint is a {type(entrypoint).__name__}, not a function"
    node_list = _run_to_completion(_extension_node_list(entrypoint))
    if isinstance(node_list, str):
        return [], node_list
    return [_extension_node(cls, module.__name__) for cls in node_list], None


async def _extension_node_list(entrypoint: Callable[[], Any]) -> list[Any] | str:
    """Call the entry point and the extension's hooks; a string says what came back instead of nodes."""
    extension = entrypoint()
    if inspect.isawaitable(extension):
        extension = await extension
    if not callable(getattr(extension, "get_node_list", None)):
        return f"comfy_entrypoint() returned {type(extension).__name__}, not a ComfyExtension"
    on_load = getattr(extension, "on_load", None)
    if callable(on_load):
        loaded = on_load()
        if inspect.isawaitable(loaded):
            await loaded
    node_list = extension.get_node_list()
    if inspect.isawaitable(node_list):
        node_list = await node_list
    if not isinstance(node_list, list):
        return f"comfy_entrypoint()'s get_node_list() returned {type(node_list).__name__}, not a list of nodes"
    return node_list


def _extension_node(cls: Any, module_name: str) -> ExportedNode:
    name = str(getattr(cls, "__name__", cls))
    try:
        if not _is_v3_class(cls):
            raise TypeError(f"{name} is not a V3 node class (it needs define_schema and execute)")
        class_type = str(cls.define_schema().node_id)
    except Exception as error:  # plugin code: refused like a V1 class whose INPUT_TYPES raises
        return ExportedNode(name, _raising(error))
    return _v3_node(class_type, cls, None, module_name)


def _raising(error: Exception) -> Callable[[], NodeSpec]:
    def build() -> NodeSpec:
        raise error

    return build


def _run_to_completion(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` in an event loop of its own, on a thread of its own, in this thread's context.

    The loader may be called from inside a running loop (an async host, a test), where
    ``asyncio.run`` refuses to start; and on the caller's thread it would also leave the thread
    without a current loop. The context goes along so the pack's hooks count as its import.
    """
    context = copy_context()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = context.run(asyncio.run, coroutine)
        except BaseException as error:  # raised again on the loading thread, where the report is made
            outcome["error"] = error

    thread = threading.Thread(target=run, name="loom-comfy-entrypoint")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


def _log_report(report: PluginReport) -> None:
    if report.status is PluginStatus.FAILED:
        log.error(
            "cannot import plugin %s from %s: %s\n%s", report.name, report.path, report.error, report.traceback or ""
        )
    elif report.status is not PluginStatus.LOADED:
        log.warning("plugin %s %s: %s", report.name, report.status.value, report.error)
    for refusal in report.refused:
        log.warning("plugin %s: node %s refused: %s", report.name, refusal.class_type, refusal.reason)
    if report.web_error is not None:
        log.warning("plugin %s: web files not served: %s", report.name, report.web_error)
