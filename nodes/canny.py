"""ComfyUI's ``Canny`` node: edge pictures for ControlNets and FLUX.1 Canny, as ComfyUI draws them.

The interface is ComfyUI's current schema (``comfy_extras/nodes_canny.py``): display name "Detect Edges
(Canny)", category ``image/filters``, two thresholds from 0.01 to 0.99, and an optional advanced
``device`` combo whose default, ``cpu``, is where ComfyUI now runs it. Workflows saved before the combo
existed carry no value for it and get the default. ComfyUI computes in float32 with
``kornia.filters.canny`` and its default 5 × 5, σ = 1 blur; ``diffusion.canny`` is that algorithm in plain
torch, equal to kornia 0.9 bit for bit, and documents each step. The thresholds are in kornia's
unnormalised Sobel units, so on pictures in 0..1 a hard black-to-white edge measures about 2.59 and
the 0.99 maximum still keeps faint edges.
"""

from __future__ import annotations

import torch

from diffusion.canny import canny
from graph.declare import Combo, Float, Output, Socket, node
from graph.services import current_services
from nodes.runtime import Runtime

#: ComfyUI offers ``gpu`` (its default device) and ``cpu``, plus ``gpu:N`` with several GPUs configured;
#: Loom computes on one device per runtime, which ``gpu`` names.
CANNY_DEVICES = ["gpu", "cpu"]


def _compute_device(choice: str, image: torch.Tensor) -> torch.device:
    """For ``gpu`` the runtime's compute device (where the picture is when no runtime is lent), else the CPU."""
    if choice != "gpu":
        return torch.device("cpu")
    services = current_services()
    return services.compute.device if isinstance(services, Runtime) else image.device


@node(category="image/filters", display_name="Detect Edges (Canny)", outputs=[Output("IMAGE")])
def Canny(
    image=Socket("IMAGE"),
    low_threshold=Float(0.4, min=0.01, max=0.99, step=0.01),
    high_threshold=Float(0.8, min=0.01, max=0.99, step=0.01),
    device=Combo(CANNY_DEVICES, default="cpu", optional=True, advanced=True),
):
    """Canny edges as a black picture with white one-pixel lines: a weak edge (above low_threshold) is kept
    only where it connects to a strong one (above high_threshold)."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"Canny: image must be IMAGE [B, H, W, 3] (or one channel), got shape {tuple(image.shape)}; "
            "split an alpha channel off first (Split Image with Alpha)"
        )
    if low_threshold > high_threshold:
        raise ValueError(f"Canny: low_threshold {low_threshold} is above high_threshold {high_threshold}")
    pixels = image.to(device=_compute_device(device, image), dtype=torch.float32).movedim(-1, 1)
    edges = canny(pixels, low_threshold, high_threshold).edges
    return edges.to(image.device).expand(-1, 3, -1, -1).movedim(1, -1).contiguous()
