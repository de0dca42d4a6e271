"""Loom's built-in nodes: typed adapters between the graph engine and the pixel/model libraries.

Modules are listed explicitly rather than discovered, so the set of built-in names (which plugins may
not replace) is fixed by this file and visible in review.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graph.registry import NodeRegistry


def builtin_modules() -> tuple[ModuleType, ...]:
    """The modules whose nodes are built in, imported on demand so ``import nodes`` stays light."""
    from nodes import (
        conditioning,
        image,
        io,
        latent,
        loaders,
        model_patches,
        model_sampling,
        primitives,
        sampling,
        upscale,
    )

    return (image, io, primitives, loaders, conditioning, latent, sampling, model_sampling, model_patches, upscale)


def register_builtin_nodes(registry: NodeRegistry) -> list[str]:
    """Register every built-in node as protected; returns the class names added, in module order."""
    names: list[str] = []
    for module in builtin_modules():
        names.extend(registry.register_module(module, builtin=True))
    return names
