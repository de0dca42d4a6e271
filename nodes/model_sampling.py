"""Nodes that change how a MODEL turns noise levels into predictions: the time shift of flow-matching models.

A flow model's shift moves its sampling time towards the noisy end, where the composition of a large
image forms; ComfyUI's workflows set it with these nodes (``ModelSamplingSD3`` shift 3 for SD3.5,
``ModelSamplingAuraFlow`` for AuraFlow-style models such as Z-Image, ``ModelSamplingFlux`` from the image
size). As in ComfyUI, each node makes the model predict the rectified flow (``diffusion.flow_matching``)
with the new shift, whatever it predicted before; the loaded weights are shared, not copied.
"""

from __future__ import annotations

from diffusion.flow_matching import DiscreteFlow, FluxFlow, flux_shift_for_size
from graph.declare import Float, Int, Output, Socket, node
from nodes.image import MAX_RESOLUTION

__all__ = ["ModelSamplingAuraFlow", "ModelSamplingFlux", "ModelSamplingSD3"]


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingSD3(model=Socket("MODEL"), shift=Float(3.0, min=0.0, max=100.0, step=0.01)):
    """SD3's time shift over timesteps 0..1000: higher spends more of the steps at high noise."""
    return model.with_sampling(DiscreteFlow(shift=shift, multiplier=1000.0))


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingAuraFlow(model=Socket("MODEL"), shift=Float(1.73, min=0.0, max=100.0, step=0.01)):
    """The same shift for models conditioned on time in 0..1 (AuraFlow, Lumina 2, Z-Image)."""
    return model.with_sampling(DiscreteFlow(shift=shift, multiplier=1.0))


@node(category="advanced/model", outputs=[Output("MODEL")])
def ModelSamplingFlux(
    model=Socket("MODEL"),
    max_shift=Float(1.15, min=0.0, max=100.0, step=0.01),
    base_shift=Float(0.5, min=0.0, max=100.0, step=0.01),
    width=Int(1024, min=16, max=MAX_RESOLUTION, step=8),
    height=Int(1024, min=16, max=MAX_RESOLUTION, step=8),
):
    """FLUX's shift for an image size: `base_shift` at 256 tokens (256²) up to `max_shift` at 4096 (1024²)."""
    return model.with_sampling(FluxFlow(shift=flux_shift_for_size(width, height, base_shift, max_shift)))
