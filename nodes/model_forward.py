"""One call shape for every diffusion model family: how ``ModelHandle.unet_fn`` calls a UNet or a flow transformer.

A forward takes ``(x, timesteps, context, y, guidance, reference latents, control)`` as
``diffusion.guidance.CFGGuider`` gives them and calls the model the way its family needs: a UNet with the
timesteps, SDXL's ``y`` and its ControlNets' residuals, a flow transformer with sigma, the pooled text vector
where it takes one, FLUX's guidance and reference latents, and the residuals of its ControlNets (SD3.5's on an
MMDiT, InstantX's and XLabs' on FLUX), which it runs first on the same noisy latent, sigma, text and guidance
(``diffusion.applied_control.TransformerControl``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffusion.applied_control import TransformerControl
from diffusion.attention_masks import TokenAttentionMask
from diffusion.chroma import ChromaTransformer
from diffusion.controlnet import ControlResiduals
from diffusion.flux import FluxTransformer
from diffusion.flux_controlnet import BlockResiduals
from diffusion.mmdit import MMDiT
from diffusion.prediction import ModelSampling
from diffusion.skip_layer_guidance import SkipLayers
from diffusion.unet_patches import UNetPatches
from diffusion.zimage import ZImageTransformer

__all__ = ["Control", "Forward", "flow_forward", "unet_call_patches", "unet_forward"]

#: What a forward is given of the ControlNets: a UNet's residuals, or a flow transformer's ControlNets to run.
Control = ControlResiduals | TransformerControl

#: ``(x, timesteps, context, y, guidance, reference latents, control, attention mask) -> output``: one model
#: family's call.
Forward = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor | None,
        torch.Tensor | None,
        list[torch.Tensor],
        Control | None,
        TokenAttentionMask | None,
    ],
    torch.Tensor,
]


def _no_attention_mask(model: nn.Module, attention_mask: TokenAttentionMask | None) -> None:
    if attention_mask is not None:
        raise ValueError(
            f"this {type(model).__name__} takes no attention mask (the conditioning's attention_mask): Apply Style "
            "Model's attn_bias is for FLUX.1"
        )


def _no_references(model: nn.Module, references: list[torch.Tensor]) -> None:
    if references:
        raise ValueError(
            f"this {type(model).__name__} takes no reference latents: ReferenceLatent is for edit models "
            "such as FLUX.1 Kontext"
        )


def unet_forward(unet: nn.Module, patches: UNetPatches | None = None) -> Forward:
    """A UNet called with the sampler's timesteps, SDXL's ``y``, its ControlNets' residuals and the MODEL's UNet
    patches (FreeU, HyperTile, Deep Shrink); it takes no guidance or reference latents."""

    def forward(
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None,
        _: torch.Tensor | None,
        references: list[torch.Tensor],
        control: Control | None,
        attention_mask: TokenAttentionMask | None,
    ) -> torch.Tensor:
        _no_references(unet, references)
        _no_attention_mask(unet, attention_mask)
        if isinstance(control, TransformerControl):
            raise ValueError(f"a {type(unet).__name__} takes no ControlNet made for SD3.5 or FLUX.1 transformers")
        if control is None and patches is None:
            return unet(x, timesteps, context, y=y)
        return unet(x, timesteps, context, y=y, control=control, patches=patches)

    return forward


def unet_call_patches(
    patches: UNetPatches | None, variant: object = None, cond_or_uncond: tuple[int, ...] = ()
) -> UNetPatches | None:
    """The UNet patches of one call: the MODEL's, changed by a guidance hook's ``variant`` (a function of the
    patches, ``diffusion.cfg_hooks.SidePredictor``), told which guidance side each row block is."""
    if variant is not None:
        if not callable(variant):
            raise TypeError(f"a UNet takes a variant as a function of its UNetPatches, not a {type(variant).__name__}")
        patches = variant(patches or UNetPatches())
    if patches is not None and cond_or_uncond:
        patches = patches.for_rows(cond_or_uncond)
    return patches


def _need_pooled(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError("this flow-matching transformer needs the pooled text vector (pooled_output)")
    return y


def _skip_arguments(model: nn.Module, skip: SkipLayers | None) -> dict[str, frozenset[int]]:
    """How ``model``'s forward is told to skip ``skip``'s blocks (skip-layer guidance)."""
    if not skip:
        return {}
    if isinstance(model, (FluxTransformer, ChromaTransformer)):
        return {"skip_double": skip.double, "skip_single": skip.single}
    if isinstance(model, MMDiT) and not skip.single:
        return {"skip_layers": skip.double}
    what = "single-stream blocks" if isinstance(model, MMDiT) else "blocks skip-layer guidance can skip"
    raise ValueError(f"a {type(model).__name__} has no {what}")


def flow_forward(model: nn.Module, sampling: ModelSampling, skip: SkipLayers | None = None) -> Forward:
    """A flow transformer called with the sampler's timesteps: back to sigma; FLUX and SD3 need the pooled vector,
    Z-Image and Chroma take none. ``skip`` names blocks to pass over (a skip-layer guidance evaluation)."""
    skipping = _skip_arguments(model, skip)
    multiplier = getattr(sampling, "multiplier", None)
    if multiplier is None:
        raise ValueError(
            f"a flow-matching transformer cannot sample with {type(sampling).__name__}; "
            "use ModelSamplingSD3, ModelSamplingFlux or ModelSamplingAuraFlow"
        )

    def forward(
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None,
        guidance: torch.Tensor | None,
        references: list[torch.Tensor],
        control: Control | None,
        attention_mask: TokenAttentionMask | None,
    ) -> torch.Tensor:
        sigma = timesteps / multiplier
        residuals = None if control is None else _block_residuals(model, control, x, sigma, context, y, guidance)
        if isinstance(model, FluxTransformer):
            _need_pooled(y)
            return model(
                x,
                sigma,
                context,
                y,
                guidance=guidance,
                ref_latents=references or None,
                control=residuals,
                attention_mask=attention_mask,
                **skipping,
            )
        _no_references(model, references)
        _no_attention_mask(model, attention_mask)
        if isinstance(model, (ZImageTransformer, ChromaTransformer)):
            return model(x, sigma, context, **skipping)
        return model(x, sigma, context, _need_pooled(y), control=residuals, **skipping)

    return forward


def _block_residuals(
    model: nn.Module,
    control: Control,
    x: torch.Tensor,
    sigma: torch.Tensor,
    context: torch.Tensor,
    y: torch.Tensor | None,
    guidance: torch.Tensor | None,
) -> BlockResiduals | None:
    """The residuals of the ControlNets ``control`` holds for ``model``, run on what ``model`` is called with: the
    noisy latent (the leading channels of ``x``, without a Fill or Canny model's conditioning channels), sigma, the
    text and its pooled vector, and FLUX's guidance."""
    if isinstance(control, ControlResiduals):
        raise ValueError(
            f"a {type(model).__name__} takes no ControlNet residuals of a UNet: SD1.x, SD2.x and SDXL ControlNets "
            "drive UNets only"
        )
    if isinstance(model, FluxTransformer):
        noisy = x[:, : model.config.out_latent_channels]
    elif isinstance(model, MMDiT):
        noisy = x[:, : model.config.out_channels]
    else:
        raise ValueError(
            f"a {type(model).__name__} takes no ControlNet: Loom runs ControlNets on SD1.x, SD2.x and SDXL UNets, "
            "SD3.5 MMDiTs and FLUX.1 transformers"
        )
    return control.residuals(model, noisy, sigma, context, y, guidance)
