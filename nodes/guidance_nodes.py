"""Nodes that change classifier-free guidance: MODEL patches (RescaleCFG, CFGNorm, CFGZeroStar, APG, the skip-layer
guidances of diffusion transformers) and GUIDER values over three conditionings (DualCFGGuider, PerpNegGuider),
under ComfyUI's names, inputs and categories.

A patch node clones the MODEL and adds its hook (``diffusion.guidance_rules``) to the clone's ``model_options``
the way ComfyUI's node does (``set_model_sampler_cfg_function`` ...), wrapped as a ComfyUI function
(``nodes.comfy_cfg_hooks``), so patches chain with each other and with packs' in ComfyUI's order, and every
sampler node (KSampler, the custom-sampling guiders) applies them. The guider nodes make GUIDER values for
SamplerCustomAdvanced, which bind to the latent as ``diffusion.guidance_rules`` guiders with the MODEL's hooks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from diffusion import guidance
from diffusion import guidance_rules as rules
from diffusion.chroma import ChromaTransformer
from diffusion.flow_matching import FlowPrediction
from diffusion.flux import FluxTransformer
from diffusion.mmdit import MMDiT
from diffusion.prediction import UNetFn
from diffusion.skip_layer_guidance import SkipLayerGuidance, SkipLayers, block_numbers
from graph.declare import Combo, Float, Output, Socket, String, node, spec_of
from nodes.comfy_cfg_hooks import ComfyCFGFunction, ComfyPostCFGFunction, ComfyPreCFGFunction
from nodes.model_handles import ModelHandle
from nodes.sampling import model_conditioning

__all__ = [
    "APG",
    "CFGNorm",
    "CFGZeroStar",
    "DualCFGGuider",
    "DualCFGGuiderValue",
    "PerpNegGuider",
    "PerpNegGuiderValue",
    "RescaleCFG",
    "SkipLayerGuidanceDiT",
    "SkipLayerGuidanceSD3",
]

_log = logging.getLogger(__name__)

_CFG = {"min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}


@node(category="advanced/model", outputs=[Output("MODEL")])
def RescaleCFG(model=Socket("MODEL"), multiplier=Float(0.7, min=0.0, max=1.0, step=0.01)):
    """Rescale the guided prediction towards the conditional one's spread (Lin et al. 2024): less washed-out
    colours at high CFG, for zero-terminal-SNR and v-prediction models above all. 0 is plain CFG."""
    patched = model.clone()
    rescale = rules.RescaledCFG(multiplier, flow=isinstance(model.sampling, FlowPrediction))
    patched.set_model_sampler_cfg_function(ComfyCFGFunction(rescale))
    return patched


@node(category="advanced/guidance", outputs=[Output("MODEL", "patched_model")])
def CFGNorm(model=Socket("MODEL"), strength=Float(1.0, min=0.0, max=100.0, step=0.01)):
    """Cap the guided prediction's per-pixel norm at the conditional prediction's, times ``strength``."""
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(ComfyPostCFGFunction(rules.CFGNormalisation(strength)))
    return patched


spec_of(CFGNorm).experimental = True


@node(category="advanced/guidance", outputs=[Output("MODEL", "patched_model")])
def CFGZeroStar(model=Socket("MODEL")):
    """CFG-Zero* (Fan et al. 2025): scale the unconditional prediction by its optimal projection before guiding."""
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(ComfyPostCFGFunction(rules.OptimizedScale()))
    return patched


@node(category="sampling/custom_sampling", display_name="Adaptive Projected Guidance", outputs=[Output("MODEL")])
def APG(
    model=Socket("MODEL"),
    eta=Float(
        1.0,
        min=-10.0,
        max=10.0,
        step=0.01,
        tooltip="Controls the scale of the parallel guidance vector. Default CFG behavior at a setting of 1.",
    ),
    norm_threshold=Float(
        5.0,
        min=0.0,
        max=50.0,
        step=0.1,
        tooltip="Normalize guidance vector to this value, normalization disable at a setting of 0.",
    ),
    momentum=Float(
        0.0,
        min=-5.0,
        max=1.0,
        step=0.01,
        tooltip="Controls a running average of guidance during diffusion, disabled at a setting of 0.",
    ),
):
    """Adaptive projected guidance (Sadat et al. 2025): damp the guidance along the conditional prediction,
    which oversaturates at high CFG, and optionally cap and average it over the steps."""
    patched = model.clone()
    hook = rules.AdaptiveProjection(eta, norm_threshold, momentum)
    patched.set_model_sampler_pre_cfg_function(ComfyPreCFGFunction(hook))
    return patched


#: The transformers whose blocks skip-layer guidance can skip.
_SKIPPABLE = (MMDiT, FluxTransformer, ChromaTransformer)
_PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}


def _skip_layer_guidance(
    model: ModelHandle, name: str, layers: SkipLayers, scale: float, start: float, end: float, rescaling: float
) -> ModelHandle:
    if not layers:
        return model
    if not isinstance(model.unet, _SKIPPABLE):
        _log.warning(
            "%s has no effect on a %s: it skips blocks of SD3, FLUX.1 and Chroma transformers (as in ComfyUI)",
            name,
            type(model.unet).__name__,
        )
        return model
    sampling = model.sampling
    hook = SkipLayerGuidance(layers, scale, sampling.percent_to_sigma(start), sampling.percent_to_sigma(end), rescaling)
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(ComfyPostCFGFunction(hook))
    return patched


@node(category="advanced/guidance", outputs=[Output("MODEL")])
def SkipLayerGuidanceDiT(
    model=Socket("MODEL"),
    double_layers=String("7, 8, 9", advanced=True),
    single_layers=String("7, 8, 9", advanced=True),
    scale=Float(3.0, min=0.0, max=10.0, step=0.1),
    start_percent=Float(0.01, **_PERCENT, advanced=True),
    end_percent=Float(0.15, **_PERCENT, advanced=True),
    rescaling_scale=Float(0.0, min=0.0, max=10.0, step=0.01),
):
    """Skip-layer guidance for any diffusion transformer: between start_percent and end_percent, guide away from
    the positive prompt evaluated with the listed double-stream (or joint) and single-stream blocks skipped."""
    layers = SkipLayers(block_numbers(double_layers), block_numbers(single_layers))
    return _skip_layer_guidance(
        model, "SkipLayerGuidanceDiT", layers, scale, start_percent, end_percent, rescaling_scale
    )


spec_of(SkipLayerGuidanceDiT).experimental = True


@node(category="advanced/guidance", outputs=[Output("MODEL")])
def SkipLayerGuidanceSD3(
    model=Socket("MODEL"),
    layers=String("7, 8, 9"),
    scale=Float(3.0, min=0.0, max=10.0, step=0.1),
    start_percent=Float(0.01, **_PERCENT),
    end_percent=Float(0.15, **_PERCENT),
):
    """Skip-layer guidance as Stability AI recommends it for SD3.5 Medium: the listed joint blocks skipped."""
    layers_skipped = SkipLayers(block_numbers(layers))
    return _skip_layer_guidance(model, "SkipLayerGuidanceSD3", layers_skipped, scale, start_percent, end_percent, 0.0)


spec_of(SkipLayerGuidanceSD3).experimental = True


@dataclass(frozen=True)
class DualCFGGuiderValue:
    """GUIDER of DualCFGGuider: two prompts and a negative with their scales (``diffusion.guidance_rules``)."""

    model: ModelHandle
    cond1: list[Any]
    cond2: list[Any]
    negative: list[Any]
    cfg_conds: float
    cfg_cond2_negative: float
    nested: bool

    def bind(
        self, unet_fn: UNetFn, latent: torch.Tensor, inpainting: guidance.Inpainting | None, seed: int
    ) -> rules.DualCFGGuider:
        model = self.model
        return rules.DualCFGGuider(
            unet_fn,
            model.sampling,
            latent,
            model_conditioning(model, self.cond1, latent, False, seed),
            model_conditioning(model, self.cond2, latent, True, seed),
            model_conditioning(model, self.negative, latent, True, seed),
            self.cfg_conds,
            self.cfg_cond2_negative,
            self.nested,
            inpainting,
            model.concat_builder,
            model.repeats_contexts,
            model.cfg_hooks(),
        )


@node(category="sampling/custom_sampling/guiders", outputs=[Output("GUIDER")])
def DualCFGGuider(
    model=Socket("MODEL"),
    cond1=Socket("CONDITIONING"),
    cond2=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    cfg_conds=Float(8.0, **_CFG),
    cfg_cond2_negative=Float(8.0, **_CFG),
    style=Combo(["regular", "nested"]),
):
    """Guidance by two prompts: from the negative to cond2 at cfg_cond2_negative plus from cond2 to cond1 at
    cfg_conds (regular), or the cond2-to-cond1 guidance itself guided away from the negative (nested)."""
    return DualCFGGuiderValue(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style == "nested")


@dataclass(frozen=True)
class PerpNegGuiderValue:
    """GUIDER of PerpNegGuider: a prompt, a negative and the empty prompt, with their scales."""

    model: ModelHandle
    positive: list[Any]
    negative: list[Any]
    empty: list[Any]
    cfg: float
    neg_scale: float

    def bind(
        self, unet_fn: UNetFn, latent: torch.Tensor, inpainting: guidance.Inpainting | None, seed: int
    ) -> rules.PerpNegGuider:
        model = self.model
        return rules.PerpNegGuider(
            unet_fn,
            model.sampling,
            latent,
            model_conditioning(model, self.positive, latent, False, seed),
            model_conditioning(model, self.negative, latent, True, seed),
            model_conditioning(model, self.empty, latent, True, seed),
            self.cfg,
            self.neg_scale,
            inpainting,
            model.concat_builder,
            model.repeats_contexts,
            model.cfg_hooks(),
        )


@node(category="_for_testing", outputs=[Output("GUIDER")])
def PerpNegGuider(
    model=Socket("MODEL"),
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    empty_conditioning=Socket("CONDITIONING"),
    cfg=Float(8.0, **_CFG),
    neg_scale=Float(1.0, min=0.0, max=100.0, step=0.01),
):
    """Perp-Neg (Armandpour et al. 2023): guide from the empty prompt to the positive, away from only the part
    of the negative that does not overlap the positive."""
    return PerpNegGuiderValue(model, positive, negative, empty_conditioning, cfg, neg_scale)


spec_of(PerpNegGuider).experimental = True
