"""The ComfyUI modules node packs import (``folder_paths``, ``comfy.utils`` ...), answered by Loom's runtime.

Packs written for ComfyUI import a handful of its internals by their top-level names. Loom's layout
has no such top-level packages, so the modules live here and ``install_comfy_modules()`` makes them
importable under ComfyUI's names:

==============================  ==========================================
ComfyUI name                    Loom module
==============================  ==========================================
``folder_paths``                ``nodes.comfy_compat.folder_paths``
``node_helpers``                ``nodes.comfy_compat.node_helpers``
``latent_preview``              ``nodes.comfy_compat.latent_preview``
``comfy``                       ``nodes.comfy_compat.comfy`` (only the submodules below)
``comfy.utils``                 ``nodes.comfy_compat.comfy.utils``
``comfy.model_management``      ``nodes.comfy_compat.comfy.model_management``
``comfy.samplers``              ``nodes.comfy_compat.comfy.samplers``
``comfy.cli_args``              ``nodes.comfy_compat.comfy.cli_args``
``comfy.sd``                    ``nodes.comfy_compat.comfy.sd``
``comfy_execution``             ``nodes.comfy_compat.comfy_execution``
``comfy_execution.graph``       ``nodes.comfy_compat.comfy_execution.graph``
``comfy_execution.graph_utils`` ``nodes.comfy_compat.comfy_execution.graph_utils``
``comfy_api``                   ``nodes.comfy_compat.comfy_api`` (ComfyUI's V3 node API)
``comfy_api.latest``            ``nodes.comfy_compat.comfy_api.latest`` (``io``, ``ui``, ``ComfyExtension``)
``comfy_api.latest._io``        ``nodes.comfy_compat.comfy_api.latest._io``
``comfy_api.latest._ui``        ``nodes.comfy_compat.comfy_api.latest._ui``
``comfy_api.v0_0_2``            ``nodes.comfy_compat.comfy_api.v0_0_2`` (the same objects as ``latest``)
==============================  ==========================================

Installing adds one finder to ``sys.meta_path`` and imports nothing: a module (and torch with it) is
imported when a pack first imports it, and ``import folder_paths`` then gives the very module object
``nodes.comfy_compat.folder_paths``, so both names share one state. Other ``comfy.*`` modules
(``comfy.model_patcher``, ``comfy.sample`` ...) are not provided and fail to import as any missing
module does.

The finder goes first in ``sys.meta_path``, so these names mean Loom's modules even where a ComfyUI
checkout happens to be importable: a real ``comfy.model_management`` would manage devices and
memory beside Loom's runtime instead of through it, and ``folder_paths`` would answer from another
installation's folders. A name already in ``sys.modules`` when installing is left alone, with a
warning, since replacing a module some code already holds would split its state in two.

Importing this package is cheap (no torch): the server calls ``install_comfy_modules`` before it
loads plugins.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Mapping, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodes.runtime import Runtime

__all__ = ["COMFY_MODULES", "install_comfy_modules"]

log = logging.getLogger(__name__)

_HERE = __name__

#: ComfyUI module name -> the Loom module imported under it.
COMFY_MODULES: Mapping[str, str] = {
    "folder_paths": f"{_HERE}.folder_paths",
    "node_helpers": f"{_HERE}.node_helpers",
    "latent_preview": f"{_HERE}.latent_preview",
    "comfy": f"{_HERE}.comfy",
    "comfy.utils": f"{_HERE}.comfy.utils",
    "comfy.model_management": f"{_HERE}.comfy.model_management",
    "comfy.samplers": f"{_HERE}.comfy.samplers",
    "comfy.cli_args": f"{_HERE}.comfy.cli_args",
    "comfy.sd": f"{_HERE}.comfy.sd",
    "comfy_execution": f"{_HERE}.comfy_execution",
    "comfy_execution.graph": f"{_HERE}.comfy_execution.graph",
    "comfy_execution.graph_utils": f"{_HERE}.comfy_execution.graph_utils",
    "comfy_api": f"{_HERE}.comfy_api",
    "comfy_api.latest": f"{_HERE}.comfy_api.latest",
    "comfy_api.latest._io": f"{_HERE}.comfy_api.latest._io",
    "comfy_api.latest._ui": f"{_HERE}.comfy_api.latest._ui",
    "comfy_api.v0_0_2": f"{_HERE}.comfy_api.v0_0_2",
}
_PACKAGES = frozenset({"comfy", "comfy_execution", "comfy_api", "comfy_api.latest", "comfy_api.v0_0_2"})


class _AliasLoader(importlib.abc.Loader):
    """Loads a ComfyUI name as the Loom module it stands for: the same object, not a copy."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: ModuleSpec | None = None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamps the alias's spec on the module it was handed; the module is
        # already executed under its own name and keeps its own spec (importlib.reload needs it).
        module.__spec__ = self._own_spec


class _ComfyModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the names of ``COMFY_MODULES``; every other name is left to the finders after it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        loom_name = COMFY_MODULES.get(fullname)
        if loom_name is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(loom_name), is_package=fullname in _PACKAGES)


def install_comfy_modules(default_runtime: Runtime | None = None) -> None:
    """Make ComfyUI's module names importable (see the module doc); calling it again changes nothing.

    ``default_runtime`` is what the modules answer from where no runtime is lent, that is outside a
    prompt or request: while a pack is imported, and in threads a pack starts itself. The server
    passes its own runtime; a later call with another one replaces it. Without any, they answer with
    the folders and device ``loom serve`` uses by default (``nodes.comfy_compat.pack_runtime``).
    """
    if default_runtime is not None:
        from nodes.comfy_compat.pack_runtime import set_default_runtime

        set_default_runtime(default_runtime)
    if any(isinstance(finder, _ComfyModuleFinder) for finder in sys.meta_path):
        return
    for name, loom_name in COMFY_MODULES.items():
        present = sys.modules.get(name)
        if present is not None and present is not sys.modules.get(loom_name):
            log.warning(
                "module %r was imported before Loom's ComfyUI modules were installed (%r); "
                "packs importing it get that module, not Loom's",
                name,
                getattr(present, "__file__", present),
            )
    sys.meta_path.insert(0, _ComfyModuleFinder())
