"""Nodes that change how a MODEL samples without touching its weights: each returns a new handle that
shares the loaded modules.

``DifferentialDiffusion`` makes an inpainting's soft noise mask (a LATENT's ``noise_mask``, from
``SetLatentNoiseMask`` or ``InpaintModelConditioning``) a per-cell strength of change rather than a blend:
``diffusion.guidance.DifferentialMask`` thresholds it anew at every model call.
"""

from __future__ import annotations

from diffusion.guidance import DifferentialMask
from graph.declare import Float, Output, Socket, node

__all__ = ["DifferentialDiffusion"]


@node(category="_for_testing", display_name="Differential Diffusion", outputs=[Output("MODEL")])
def DifferentialDiffusion(
    model=Socket("MODEL"),
    strength=Float(1.0, min=0.0, max=1.0, step=0.01, optional=True),
):
    """Inpaint with a soft mask as the amount each pixel may change: the higher the mask, the earlier in the
    schedule it starts changing. Below 1, strength mixes the soft mask back in."""
    return model.with_mask_policy(DifferentialMask(strength=strength))
