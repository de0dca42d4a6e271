"""ComfyUI's ``latent_preview`` for node packs that run their own sampling loops: step previews through Loom's.

Supported: ``get_previewer(device, latent_format)`` gives an object whose
``decode_latent_to_preview_image(format, x0)`` returns ``(format, PIL image, MAX_PREVIEW_RESOLUTION)``
as Loom's samplers report it, drawn the way the runtime's ``--preview-method`` says
(``nodes.previews``: TAESD when its decoder file is there, else latent2rgb); None with previews off
or for a latent space without preview factors. ``latent_format`` is Loom's (a MODEL's
``latent_format``, a ``diffusion.vae.LatentFormat``) or a family name (``"sd1"``, ``"sdxl"`` ...).
``prepare_callback(model, steps, x0_output_dict=None)`` takes one of Loom's MODEL values and returns
ComfyUI's ``callback(step, x0, x, total_steps)``, which reports progress with a preview through
``comfy.utils.ProgressBar`` (so it is an interruption point too) and keeps ``x0`` in the dict.

Not supported: ComfyUI's ``comfy.latent_formats`` objects (packs cannot import them in Loom) and
its previewer classes (``TAESDPreviewerImpl``, ``Latent2RGBPreviewer``); previews are drawn on the
sampling thread (ComfyUI's ``--preview-stream`` is not provided). ``device`` is ignored: TAESD
previews compute where Loom loaded the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from diffusion.latent_preview import LATENT_RGB_FACTORS
from diffusion.sampling import Previewer
from nodes.comfy_compat.comfy.utils import ProgressBar
from nodes.comfy_compat.pack_runtime import pack_runtime
from nodes.sampling import PREVIEW_MAX_SIZE

__all__ = ["MAX_PREVIEW_RESOLUTION", "LatentPreviewer", "get_previewer", "prepare_callback"]

MAX_PREVIEW_RESOLUTION = PREVIEW_MAX_SIZE
_FORMATS = ("JPEG", "PNG")


class LatentPreviewer:
    """Draws the first item of a step's x0 estimate ``[B, C, H, W]`` (in the model's latent space)."""

    def __init__(self, render: Previewer) -> None:
        self._render = render

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        return Image.fromarray(self._render(x0))

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> tuple[str, Image.Image, int]:
        chosen = preview_format if preview_format in _FORMATS else "JPEG"
        return chosen, self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION


def _family(latent_format: Any) -> str | None:
    if isinstance(latent_format, str):
        return latent_format
    name = getattr(latent_format, "name", None)
    return name if isinstance(name, str) else None


def get_previewer(device: Any, latent_format: Any) -> LatentPreviewer | None:
    """The runtime's previewer for ``latent_format``'s family; None when previews are off or it has none."""
    family = _family(latent_format)
    if family not in LATENT_RGB_FACTORS:
        return None
    runtime = pack_runtime()
    render = runtime.previews.previewer_for(family, runtime.model_paths)
    return None if render is None else LatentPreviewer(render)


def prepare_callback(
    model: Any, steps: int, x0_output_dict: dict[str, Any] | None = None
) -> Callable[[int, torch.Tensor, torch.Tensor, int], None]:
    """ComfyUI's sampler callback for one of Loom's MODEL values: progress and a preview at every step."""
    previewer = get_previewer(None, getattr(model, "latent_format", None))
    bar = ProgressBar(steps)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        preview = None if previewer is None else previewer.decode_latent_to_preview_image("JPEG", x0)
        bar.update_absolute(step + 1, total_steps, preview)

    return callback
