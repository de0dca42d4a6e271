"""ComfyUI's ``comfy_api.v0_0_2``: the version of the V3 API packs pin; the same objects as ``latest``."""

from __future__ import annotations

from nodes.comfy_compat.comfy_api.latest import IO, UI, ComfyExtension, io, ui

__all__ = ["IO", "UI", "ComfyExtension", "io", "ui"]
