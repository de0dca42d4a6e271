"""ComfyUI's ``comfy_api.latest`` for V3 node packs: ``io``, ``ui`` (also ``IO``, ``UI``) and ``ComfyExtension``.

A V3 pack exports its nodes through ``async def comfy_entrypoint() -> ComfyExtension``, whose
``get_node_list()`` lists ``io.ComfyNode`` classes (``graph/plugins.py`` runs it when it loads the
pack), or lists those classes in ``NODE_CLASS_MAPPINGS``. Not provided: ``ComfyAPI`` /
``ComfyAPISync`` (report progress with ``graph.progress.report_progress``), ``Input``, ``InputImpl``,
``Types`` (video and 3D values) and ``Caching``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from nodes.comfy_compat.comfy_api.latest import _io as io
from nodes.comfy_compat.comfy_api.latest import _ui as ui

__all__ = ["IO", "UI", "ComfyExtension", "io", "ui"]

IO = io
UI = ui


class ComfyExtension(ABC):
    """What ``comfy_entrypoint`` returns: the pack's node classes, and a hook run once when it loads."""

    async def on_load(self) -> None:  # noqa: B027 (an optional hook: doing nothing is its default)
        """Set up what the pack's nodes share; called once, before ``get_node_list``."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The pack's V3 node classes."""
