"""ComfyUI's UNet patch nodes: FreeU, FreeU_V2, HyperTile, PatchModelAddDownscale (Kohya Deep Shrink) and the
attention guidances PerturbedAttentionGuidance and SelfAttentionGuidance.

Each returns ``model.clone()`` carrying one more patch in its ``model_options["transformer_options"]``, as a
``diffusion.unet_patches.UNetPatches`` value (``nodes/unet_patch_options.py``), which the model handle reads back
for the UNet call (``UNetModel.forward(..., patches=...)``). The loaded weights are never touched, and the
model the node was given keeps its own options (ComfyUI's ``clone`` then ``set_model_*_patch``).

Interfaces are ComfyUI's (``comfy_extras/nodes_freelunch.py``, ``nodes_hypertile.py``,
``nodes_model_downscale.py``, ``nodes_pag.py``, ``nodes_sag.py``); what each patch computes is documented in
``diffusion/unet_patches.py`` and ``diffusion/attention_guidance.py``. The two guidances add a post-CFG function
beside their attention replacement, which evaluates the model again through the guider.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from diffusion import attention_guidance
from diffusion.unet import UNetModel
from diffusion.unet_patches import (
    DownscaleAfterBlock,
    HyperTileAttention,
    UNetPatches,
    UpscaleToSkip,
    freeu_scaling,
)
from graph.declare import Boolean, Combo, Float, Int, Output, Socket, node
from nodes.comfy_cfg_hooks import ComfyPostCFGFunction
from nodes.image import resample
from nodes.latent import bislerp
from nodes.unet_patch_options import patched_model, unet_patches_of

__all__ = [
    "DOWNSCALE_METHODS",
    "FreeU",
    "FreeU_V2",
    "HyperTile",
    "PatchModelAddDownscale",
    "PerturbedAttentionGuidance",
    "SelfAttentionGuidance",
]

_log = logging.getLogger(__name__)

#: ComfyUI's PatchModelAddDownscale methods, in its order (the first is the default).
DOWNSCALE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]

_CATEGORY = "model_patches/unet"


def _unet_of(model: Any) -> UNetModel | None:
    unet = getattr(model, "unet", None)
    return unet if isinstance(unet, UNetModel) else None


def _freeu(model: Any, b1: float, b2: float, s1: float, s2: float, mean_normalised: bool, name: str) -> Any:
    unet = _unet_of(model)
    if unet is None:
        raise ValueError(
            f"{name} patches the output blocks of an SD1.x, SD2.x or SDXL UNet; this MODEL is a "
            f"{type(getattr(model, 'unet', model)).__name__}"
        )
    scaling = freeu_scaling(unet.config.model_channels, b1, b2, s1, s2, mean_normalised)
    return patched_model(model, lambda patches: patches.with_output_block_patch(scaling))


def _factor(default: float) -> Float:
    return Float(default, min=0.0, max=10.0, step=0.01, advanced=True)


@node(category=_CATEGORY, outputs=[Output("MODEL")])
def FreeU(model=Socket("MODEL"), b1=_factor(1.1), b2=_factor(1.2), s1=_factor(0.9), s2=_factor(0.2)):
    """FreeU (Si et al. 2023): at the decoder's two deepest widths, the backbone's first half of channels times
    b1 / b2 and the skip connection's lowest frequencies times s1 / s2."""
    return _freeu(model, b1, b2, s1, s2, False, "FreeU")


@node(category=_CATEGORY, outputs=[Output("MODEL")])
def FreeU_V2(model=Socket("MODEL"), b1=_factor(1.3), b2=_factor(1.4), s1=_factor(0.9), s2=_factor(0.2)):
    """FreeU v2: as FreeU, with the backbone factor weighted per position by the features' normalised channel
    mean, so the strongest features get the full b1 / b2 and the weakest none."""
    return _freeu(model, b1, b2, s1, s2, True, "FreeU_V2")


def _no_effect(model: Any, name: str) -> bool:
    if _unet_of(model) is not None:
        return False
    _log.warning(
        "%s has no effect on a %s: it patches the SD1.x, SD2.x and SDXL UNets (as in ComfyUI)",
        name,
        type(getattr(model, "unet", model)).__name__,
    )
    return True


@node(category=_CATEGORY, outputs=[Output("MODEL")])
def HyperTile(
    model=Socket("MODEL"),
    tile_size=Int(256, min=1, max=2048),
    swap_size=Int(2, min=1, max=128),
    max_depth=Int(0, min=0, max=10),
    scale_depth=Boolean(False),
):
    """Self-attention over tiles of the feature map (tfernd/HyperTile) at the UNet's first max_depth + 1
    resolutions, tiles of at least tile_size pixels: faster on large pictures."""
    if _no_effect(model, "HyperTile"):
        return model
    attention = HyperTileAttention(tile_size, swap_size, max_depth, scale_depth)
    return patched_model(model, lambda patches: patches.with_attn1_replace(attention))


def _resize(h: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    if method == "bislerp":
        return bislerp(h, width, height)
    return resample(h, width, height, method)


@node(category=_CATEGORY, display_name="PatchModelAddDownscale (Kohya Deep Shrink)", outputs=[Output("MODEL")])
def PatchModelAddDownscale(
    model=Socket("MODEL"),
    block_number=Int(3, min=1, max=32, step=1),
    downscale_factor=Float(2.0, min=0.1, max=9.0, step=0.001),
    start_percent=Float(0.0, min=0.0, max=1.0, step=0.001),
    end_percent=Float(0.35, min=0.0, max=1.0, step=0.001),
    downscale_after_skip=Boolean(True),
    downscale_method=Combo(DOWNSCALE_METHODS),
    upscale_method=Combo(DOWNSCALE_METHODS),
):
    """Kohya's Deep Shrink: from start_percent to end_percent of sampling, the features after input block
    block_number shrunk by downscale_factor and grown back where the decoder meets their skip, so pictures
    larger than the model's training size keep one composition."""
    if _no_effect(model, "PatchModelAddDownscale"):
        return model
    for method in (downscale_method, upscale_method):
        if method not in DOWNSCALE_METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(DOWNSCALE_METHODS)}")
    sampling = model.sampling
    downscale = DownscaleAfterBlock(
        block_number,
        downscale_factor,
        sigma_start=sampling.percent_to_sigma(start_percent),
        sigma_end=sampling.percent_to_sigma(end_percent),
        sigma_of_timestep=sampling.sigma,
        resize=functools.partial(_resize, method=downscale_method),
    )
    upscale = UpscaleToSkip(functools.partial(_resize, method=upscale_method))

    def add(patches: UNetPatches) -> UNetPatches:
        return patches.with_input_block_patch(downscale, after_skip=downscale_after_skip).with_output_block_patch(
            upscale
        )

    return patched_model(model, add)


@node(category=_CATEGORY, outputs=[Output("MODEL")])
def PerturbedAttentionGuidance(model=Socket("MODEL"), scale=Float(3.0, min=0.0, max=100.0, step=0.01, round=0.01)):
    """Perturbed-attention guidance (Ahn et al. 2024): each step evaluates the positive prompt again with the
    middle block's self-attention made the identity and guides away from that prediction by scale. One more
    UNet pass per step."""
    if _no_effect(model, "PerturbedAttentionGuidance"):
        return model
    patched = model.clone()
    guidance = attention_guidance.PerturbedAttentionGuidance(scale)
    patched.set_model_sampler_post_cfg_function(ComfyPostCFGFunction(guidance))
    return patched


@node(category="_for_testing", display_name="Self-Attention Guidance", outputs=[Output("MODEL")])
def SelfAttentionGuidance(
    model=Socket("MODEL"),
    scale=Float(0.5, min=-2.0, max=5.0, step=0.01),
    blur_sigma=Float(2.0, min=0.0, max=10.0, step=0.1),
):
    """Self-attention guidance (Hong et al. 2023): the negative's estimate blurred where its middle-block
    attention concentrates, evaluated again, and guided away from by scale. Evaluates the negative at cfg 1
    too, and one more UNet pass per step."""
    if _no_effect(model, "SelfAttentionGuidance"):
        return model
    current = unet_patches_of(model.model_options)
    recorder = attention_guidance.AttentionRecorder(None if current is None else current.attn1)
    patched = patched_model(model, lambda patches: patches.with_attn1_replace(recorder))
    guidance = attention_guidance.SelfAttentionGuidance(scale, blur_sigma, recorder)
    patched.set_model_sampler_post_cfg_function(ComfyPostCFGFunction(guidance), disable_cfg1_optimization=True)
    return patched
