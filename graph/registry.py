"""The registry of node types: built-ins first, then plugins, looked up by class name.

Built-in names are protected: a plugin that registers an existing built-in class name is refused
(ComfyUI's rule), so a workflow's meaning never depends on which plugins happen to be installed.
Among plugins the later registration wins, also as in ComfyUI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

from graph.declare import SPEC_ATTRIBUTE
from graph.spec import NodeDefinitionError, NodeSpec
from graph.v1 import spec_from_v1_class

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """A node type could not be registered (a clash with a built-in, or a bad declaration)."""


class ModuleExportError(RegistrationError):
    """A module exports something no node can be read from (``NODE_CLASS_MAPPINGS`` that is not a dict)."""


class NodeRegistry:
    """Maps class names to ``NodeSpec``s; what ``/object_info`` lists and validation resolves."""

    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._builtin: set[str] = set()

    def register(self, spec: NodeSpec, *, builtin: bool = False) -> None:
        if spec.class_type in self._builtin:
            raise RegistrationError(f"node type {spec.class_type!r} is built in and cannot be replaced")
        if builtin and spec.class_type in self._specs:
            raise RegistrationError(f"built-in node type {spec.class_type!r} is registered twice")
        self._specs[spec.class_type] = spec
        if builtin:
            self._builtin.add(spec.class_type)

    def register_module(
        self, module: ModuleType, *, python_module: str | None = None, builtin: bool = False
    ) -> list[str]:
        """Register every node a module exports (read by ``exported_nodes``); returns the class names it added.

        A module exports V1 classes through ``NODE_CLASS_MAPPINGS`` (+ ``NODE_DISPLAY_NAME_MAPPINGS``)
        and declarative nodes as module-level functions decorated with ``@node`` (or listed in
        ``LOOM_NODES`` when they are defined elsewhere). Nothing is registered unless every spec builds.
        """
        try:
            specs = [exported.build() for exported in exported_nodes(module)]
        except NodeDefinitionError as error:
            raise RegistrationError(str(error)) from error
        if not specs:
            raise RegistrationError(
                f"module {module.__name__} exports no nodes (no NODE_CLASS_MAPPINGS or @node functions)"
            )
        for spec in specs:
            if python_module is not None:
                spec.python_module = python_module
            self.register(spec, builtin=builtin)
        return [spec.class_type for spec in specs]

    def get(self, class_type: object) -> NodeSpec | None:
        """The spec registered as ``class_type``, or ``None``.

        Any value is accepted because ``class_type`` comes straight from workflow files and
        requests: a list or an object there names no node type, it must not raise ``TypeError``
        (unhashable) from the dictionary lookup.
        """
        return self._specs.get(class_type) if isinstance(class_type, str) else None

    def is_builtin(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self._builtin

    def __contains__(self, class_type: object) -> bool:
        return self.get(class_type) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def object_info(self, on_error: Callable[[str, Exception], None] | None = None) -> dict[str, Any]:
        """Every node's ``/object_info`` entry; a node whose inputs cannot be computed is left out."""
        info = {}
        for class_type, spec in self._specs.items():
            try:
                info[class_type] = spec.object_info()
            except Exception as error:  # a plugin's INPUT_TYPES may raise anything
                log.warning("node %s left out of object_info: %s", class_type, error)
                if on_error is not None:
                    on_error(class_type, error)
        return info


@dataclass(frozen=True)
class ExportedNode:
    """A node a module exports, its spec not built yet.

    Building a V1 class's spec runs the class's code, which may raise; the plugin loader builds
    each one separately so that it can refuse a broken node and keep the pack's others.
    """

    class_type: str
    build: Callable[[], NodeSpec]


def exported_nodes(module: ModuleType) -> list[ExportedNode]:
    """Every node ``module`` exports: its V1 classes, then its ``@node`` functions.

    V1 classes come from ``NODE_CLASS_MAPPINGS``, their display names from
    ``NODE_DISPLAY_NAME_MAPPINGS`` when that is a dict. The ``@node`` functions are those listed in
    ``LOOM_NODES``, or else those defined in the module or its submodules (a package re-exports
    them from ``__init__``), each once; one imported from elsewhere to be reused is not exported again.
    Built-in modules and plugin packs are read by this one rule, so a node module means the same
    whichever way it is loaded. Raises ``ModuleExportError`` when ``NODE_CLASS_MAPPINGS`` is not a dict.
    """
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None and not isinstance(mappings, Mapping):
        raise ModuleExportError(f"NODE_CLASS_MAPPINGS is a {type(mappings).__name__}, not a dict of node classes")
    return list(_v1_nodes(module, mappings or {})) + list(_declared_nodes(module))


def _v1_nodes(module: ModuleType, mappings: Mapping[Any, Any]) -> Iterator[ExportedNode]:
    display_names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    for class_type, cls in mappings.items():
        display_name = display_names.get(class_type) if isinstance(display_names, Mapping) else None
        yield ExportedNode(str(class_type), partial(spec_from_v1_class, class_type, cls, display_name, module.__name__))


def _declared_nodes(module: ModuleType) -> Iterator[ExportedNode]:
    listed = getattr(module, "LOOM_NODES", None)
    if listed is not None:
        values: Iterable[Any] = listed
    else:
        own = (module.__name__, module.__name__ + ".")
        values = (v for v in vars(module).values() if str(getattr(v, "__module__", "")).startswith(own))
    seen: set[int] = set()
    for value in values:
        spec = getattr(value, SPEC_ATTRIBUTE, None)
        if isinstance(spec, NodeSpec) and id(spec) not in seen:
            seen.add(id(spec))
            yield ExportedNode(spec.class_type, _already_built(spec))


def _already_built(spec: NodeSpec) -> Callable[[], NodeSpec]:
    """A ``@node`` spec exists from declaration on; a function, so each builder closes over its own spec."""
    return lambda: spec
