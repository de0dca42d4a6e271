"""Loom's built-in nodes: typed adapters between the graph engine and the pixel/model libraries.

Modules are listed explicitly rather than discovered, so the set of built-in names (which plugins may
not replace) is fixed by this file and visible in review.

This package is also what ComfyUI packs get for ``import nodes``: ``MAX_RESOLUTION``,
``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS``, ``common_ksampler`` and the core node
classes under ComfyUI's names (``nodes.CLIPTextEncode().encode(clip, text)``) resolve through the
module ``__getattr__`` below, on first use, so ``import nodes`` itself stays light
(``nodes.v1_classes``).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graph.registry import NodeRegistry


def builtin_modules() -> tuple[ModuleType, ...]:
    """The modules whose nodes are built in, imported on demand so ``import nodes`` stays light."""
    from nodes import (
        canny,
        conditioning,
        controlnets,
        guidance_nodes,
        image,
        image_io_ops,
        image_ops,
        image_prompts,
        io,
        latent,
        latent_ops,
        loaders,
        logic,
        masks,
        model_merging,
        model_patches,
        model_sampling,
        model_saving,
        primitives,
        sampler_options,
        sampling,
        sigmas,
        text_ops,
        unet_patches,
        upscale,
    )

    return (
        image,
        image_ops,
        canny,
        masks,
        io,
        image_io_ops,
        primitives,
        logic,
        text_ops,
        loaders,
        conditioning,
        controlnets,
        image_prompts,
        latent,
        latent_ops,
        sampling,
        sigmas,
        sampler_options,
        model_sampling,
        model_patches,
        unet_patches,
        guidance_nodes,
        model_merging,
        model_saving,
        upscale,
    )


def register_builtin_nodes(registry: NodeRegistry) -> list[str]:
    """Register every built-in node as protected; returns the class names added, in module order."""
    names: list[str] = []
    for module in builtin_modules():
        names.extend(registry.register_module(module, builtin=True))
    return names


def __getattr__(name: str) -> Any:
    """ComfyUI's ``nodes`` module names (PEP 562); any other name is a missing attribute or a submodule."""
    if name == "MAX_RESOLUTION":
        return import_module("nodes.image").MAX_RESOLUTION
    # Not ``from nodes import ...``: that asks this very function for the name first, endlessly.
    v1_classes = import_module("nodes.v1_classes")
    if v1_classes.forwards(name):
        return v1_classes.comfy_attribute(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
