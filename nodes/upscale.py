"""Model-based upscaling: ``UpscaleModelLoader`` and ``ImageUpscaleWithModel`` (ComfyUI's comfy_extras names).

Models live in the ``upscale_models`` model folders. An ncnn pair is listed once, by its ``.param``
name, and its ``.bin`` is found beside it. Upscaling runs in 512-pixel tiles overlapping by 32 and halves the
tile on out-of-memory down to 128, as docs/compatibility.md §5 describes; each tile is a progress step, which is also
where ``/interrupt`` stops it.
"""

from __future__ import annotations

import torch

from diffusion.upscalers import UpscaleModel, load_upscale_model, upscale_tiled
from graph.declare import Combo, Output, Socket, node
from graph.progress import report_progress
from nodes.runtime import current_runtime, find_model, list_models

FOLDER_KEY = "upscale_models"


def upscale_model_names() -> list[str]:
    """The folder's models, an ncnn pair once: a ``.bin`` beside a listed ``.param`` is its data, not a model."""
    names = list_models(FOLDER_KEY)
    params = {name[: -len(".param")] for name in names if name.endswith(".param")}
    return [name for name in names if not (name.endswith(".bin") and name[: -len(".bin")] in params)]


@node(category="loaders", display_name="Load Upscale Model", outputs=[Output("UPSCALE_MODEL")])
def UpscaleModelLoader(model_name=Combo(upscale_model_names, model_folder=FOLDER_KEY)):
    """Load an ESRGAN-family upscaler (.pth, .safetensors, or an ncnn .param/.bin pair)."""
    return load_upscale_model(find_model(FOLDER_KEY, model_name))


@node(category="image/upscaling", display_name="Upscale Image (using Model)", outputs=[Output("IMAGE")])
def ImageUpscaleWithModel(upscale_model=Socket("UPSCALE_MODEL"), image=Socket("IMAGE")):
    """Upscale pictures with a loaded model, tile by tile."""
    model: UpscaleModel = upscale_model
    if image.shape[-1] != model.in_channels:
        raise ValueError(
            f"ImageUpscaleWithModel: the image has {image.shape[-1]} channels but {model.source.name} "
            f"takes {model.in_channels}"
        )
    device = current_runtime().compute.device
    model.module.to(device)
    try:
        pixels = image.movedim(-1, 1).to(device, torch.float32)
        upscaled = upscale_tiled(model, pixels, model.scale, on_progress=report_progress)
    finally:
        model.module.to("cpu")
    return upscaled.clamp(0.0, 1.0).movedim(1, -1).cpu()
