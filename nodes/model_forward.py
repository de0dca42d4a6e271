"""One call shape for every diffusion model family: how ``ModelHandle.unet_fn`` calls a UNet or a flow transformer.

A forward takes ``(x, timesteps, context, y, guidance, reference latents, control)`` as
``diffusion.guidance.CFGGuider`` gives them and calls the model the way its family needs: a UNet with the
timesteps, SDXL's ``y`` and its ControlNets' residuals, a flow transformer with sigma, the pooled text vector
where it takes one, and FLUX's guidance and reference latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffusion.chroma import ChromaTransformer
from diffusion.controlnet import ControlResiduals
from diffusion.flux import FluxTransformer
from diffusion.mmdit import MMDiT
from diffusion.prediction import ModelSampling
from diffusion.skip_layer_guidance import SkipLayers
from diffusion.unet_patches import UNetPatches
from diffusion.zimage import ZImageTransformer

__all__ = ["Forward", "flow_forward", "unet_call_patches", "unet_forward"]

#: ``(x, timesteps, context, y, guidance, reference latents, control) -> output``: one model family's call.
Forward = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor | None,
        torch.Tensor | None,
        list[torch.Tensor],
        ControlResiduals | None,
    ],
    torch.Tensor,
]


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
        control: ControlResiduals | None,
    ) -> torch.Tensor:
        _no_references(unet, references)
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
        control: ControlResiduals | None,
    ) -> torch.Tensor:
        if control is not None:
            raise ValueError(
                f"a {type(model).__name__} takes no ControlNet residuals: the ControlNets Loom loads are for the "
                "SD1.x, SD2.x and SDXL UNets"
            )
        sigma = timesteps / multiplier
        if isinstance(model, FluxTransformer):
            _need_pooled(y)
            return model(x, sigma, context, y, guidance=guidance, ref_latents=references or None, **skipping)
        _no_references(model, references)
        if isinstance(model, (ZImageTransformer, ChromaTransformer)):
            return model(x, sigma, context, **skipping)
        return model(x, sigma, context, _need_pooled(y), **skipping)

    return forward
