"""Loom server package.

Also what ComfyUI packs get for ``import server``: ``PromptServer`` and ``BinaryEventTypes``
resolve lazily (PEP 562) from ``server.prompt_server_compat``, so ``import server`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_COMFY_NAMES = frozenset({"PromptServer", "BinaryEventTypes"})


def __getattr__(name: str) -> Any:
    if name in _COMFY_NAMES:
        # Not ``from server import ...``: that asks this very function for the name first.
        return getattr(import_module("server.prompt_server_compat"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
