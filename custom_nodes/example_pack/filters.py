"""Image filters written with Loom's declarative API, on the IMAGE contract: float ``[B, H, W, C]`` in 0..1.

Torch is imported here at the top: a pack is imported when the server starts, after torch is
already loaded by the built-in nodes, so this costs nothing extra.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graph.declare import Float, Output, Socket, node
from graph.progress import report_progress

#: The kernel reaches this many standard deviations each side; 3σ holds 99.7 % of the weight.
TRUNCATE = 3.0

#: The widely published sepia-tone matrix (rows give R', G', B' from R, G, B).
SEPIA = torch.tensor(
    [
        [0.393, 0.769, 0.189],
        [0.349, 0.686, 0.168],
        [0.272, 0.534, 0.131],
    ]
)


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian weights over ``[-r, r]`` with ``r = int(TRUNCATE * sigma + 0.5)``."""
    radius = max(1, int(TRUNCATE * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def gaussian_blur(pictures: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``[B, H, W, C]`` pictures; edges repeat their outermost pixel so borders do not darken.

    The 2-D Gaussian is separable, so one horizontal and one vertical 1-D pass cost ``2(2r+1)``
    multiplies per pixel instead of ``(2r+1)²``.
    """
    kernel = gaussian_kernel(sigma, pictures.dtype).to(pictures.device)
    radius = kernel.numel() // 2
    batch, height, width, channels = pictures.shape
    planes = pictures.movedim(-1, 1).reshape(batch * channels, 1, height, width)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return planes.reshape(batch, channels, height, width).movedim(1, -1)


def sepia(pictures: torch.Tensor, strength: float) -> torch.Tensor:
    """Mix the sepia-toned colours in by ``strength``; channels after RGB (alpha) pass through."""
    rgb = pictures[..., :3]
    toned = (rgb @ SEPIA.to(rgb).T).clamp(0.0, 1.0)
    mixed = torch.lerp(rgb, toned, strength)
    return torch.cat([mixed, pictures[..., 3:]], dim=-1)


@node(category="example_pack/image", display_name="Gaussian Blur (example)", outputs=[Output("IMAGE")])
def ExampleGaussianBlur(
    image=Socket("IMAGE"),
    sigma=Float(2.0, min=0.1, max=64.0, step=0.1, tooltip="Standard deviation of the blur, in pixels."),
):
    """Soften pictures with a Gaussian blur.

    Works picture by picture to show progress reporting: the editor draws a bar for this node, and
    ``report_progress`` is also where a press of Cancel stops the loop.
    """
    blurred = []
    for index in range(image.shape[0]):
        blurred.append(gaussian_blur(image[index : index + 1], sigma))
        report_progress(index + 1, image.shape[0])
    return torch.cat(blurred)


@node(category="example_pack/image", display_name="Sepia (example)", outputs=[Output("IMAGE")])
def ExampleSepia(
    image=Socket("IMAGE"),
    strength=Float(1.0, min=0.0, max=1.0, step=0.01, display="slider"),
):
    """Give pictures the warm brown tone of old photographs."""
    return sepia(image, strength)
