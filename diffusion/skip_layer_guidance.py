"""Skip-layer guidance for diffusion transformers (Stability AI's SD3.5 recipe, ComfyUI's SkipLayerGuidanceDiT).

Inside a window of noise levels the positive prompt is evaluated a second time with some transformer blocks
skipped (each passes its input through unchanged), and the guided estimate moves away from that weaker
prediction: ``denoised + (cond - skipped) * scale``, optionally rescaled towards the conditional estimate's
spread. It is perturbed-attention guidance (``diffusion.attention_guidance``) for models whose structure lives
in their block stack rather than in one attention layer.

Block numbers are the model's own: FLUX.1 and Chroma number their double-stream and single-stream blocks
separately, SD3's MMDiT has joint blocks only, which ComfyUI calls its double blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from diffusion.cfg_hooks import CFGInputs

__all__ = ["SkipLayerGuidance", "SkipLayers", "block_numbers"]


def block_numbers(text: str) -> frozenset[int]:
    """The block numbers a node's text names: every run of digits, whatever separates them ("7, 8, 9")."""
    return frozenset(int(number) for number in re.findall(r"\d+", text))


@dataclass(frozen=True)
class SkipLayers:
    """A transformer evaluated with the blocks ``double`` (double-stream or joint) and ``single`` skipped: the
    variant a skip-layer evaluation hands the model (``diffusion.cfg_hooks.SidePredictor``)."""

    double: frozenset[int] = frozenset()
    single: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.double or self.single)


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Post-CFG function: inside ``sigma_end < sigma <= sigma_start`` (the first sample's sigma, as ComfyUI
    reads it) and for a positive ``scale``, ``denoised + (cond - cond with layers skipped) * scale``; then, for a
    non-zero ``rescaling_scale`` r, times ``r * std(cond) / std(guided) + 1 - r``."""

    layers: SkipLayers
    scale: float
    sigma_start: float
    sigma_end: float
    rescaling_scale: float = 0.0

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        sigma = float(inputs.sigma.reshape(-1)[0])
        if not (self.scale > 0 and self.sigma_end < sigma <= self.sigma_start):
            return denoised
        if inputs.predict is None or inputs.cond_conditioning is None:
            raise ValueError("SkipLayerGuidance evaluates the positive conditioning again, and this guider cannot")
        skipped = inputs.predict(inputs.cond_conditioning, inputs.x, self.layers)
        guided = denoised + (inputs.cond - skipped) * self.scale
        if self.rescaling_scale != 0:
            factor = inputs.cond.std() / guided.std()
            guided = guided * (self.rescaling_scale * factor + (1 - self.rescaling_scale))
        return guided
