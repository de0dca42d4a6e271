"""Which kind of control model a file holds, and loading it: what ComfyUI's ControlNetLoader tells apart.

A file in a `controlnet` folder may hold an ordinary ControlNet (`diffusion.controlnet`, original or diffusers
layout, or a "difference" one that needs the UNet it is added to), a union ControlNet
(`diffusion.controlnet_union`), a Control-LoRA (`diffusion.control_lora`, built over the sampled UNet later), a
T2I-Adapter (`diffusion.t2i_adapter`), or a ControlNet for a transformer: one of Stability's SD3.5 ControlNets
(`diffusion.sd3_controlnet`) or an InstantX / XLabs FLUX.1 ControlNet (`diffusion.flux_controlnet`). Each is told
by its keys, in the order ComfyUI tells them (`controlnet_blocks` marks the transformer ones).

The transformer ControlNets differ in their hint: the SD3.5 and InstantX ones take the control image's VAE latent
in their family's latent space (`hint_latent_format`), XLabs' the picture itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from diffusion.control_lora import ControlLora, is_control_lora
from diffusion.controlnet import ControlNet, controlnet_layout, load_controlnet
from diffusion.controlnet_union import UnionControlNet, is_union_controlnet, load_union_controlnet
from diffusion.flux_controlnet import FluxControlNet, is_flux_controlnet, load_flux_controlnet
from diffusion.sd3_controlnet import SD3ControlNet, load_sd3_controlnet
from diffusion.t2i_adapter import T2IAdapter, is_t2i_adapter, load_t2i_adapter
from diffusion.vae import FLUX_LATENT, SD3_LATENT, LatentFormat

__all__ = ["ControlModel", "TransformerControlNet", "hint_latent_format", "load_control_model"]

#: The ControlNets of flow transformers: their residuals are `BlockResiduals`, and they read the transformer.
TransformerControlNet = SD3ControlNet | FluxControlNet
#: Every control model a conditioning entry's control can run.
ControlModel = ControlNet | UnionControlNet | ControlLora | T2IAdapter | SD3ControlNet | FluxControlNet


def hint_latent_format(module: ControlModel) -> LatentFormat | None:
    """The latent space of the VAE latent a ControlNet takes as its hint (ComfyUI's `latent_format` of the
    control: SD3's for the SD3.5 ControlNets, FLUX's for InstantX), or None for one that takes the picture."""
    if isinstance(module, SD3ControlNet):
        return SD3_LATENT
    if isinstance(module, FluxControlNet) and module.config.style == "instantx":
        return FLUX_LATENT
    return None


def load_control_model(
    state_dict: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None = None
) -> ControlModel:
    """The control model of a file's weights. `base` is what a difference ControlNet is added to
    (`load_controlnet`); other kinds ignore it. Raises `CheckpointLayoutError` for weights of no kind Loom builds."""
    if is_control_lora(state_dict):
        return ControlLora(state_dict)
    if "controlnet_blocks.0.weight" in state_dict and "pos_embed_input.proj.weight" in state_dict:
        return load_sd3_controlnet(state_dict)  # Stability's layout, or InstantX's SD3 one, which it refuses by name
    if is_flux_controlnet(state_dict):
        return load_flux_controlnet(state_dict)
    if is_union_controlnet(state_dict):
        return load_union_controlnet(state_dict)
    if controlnet_layout(state_dict) is None and is_t2i_adapter(state_dict):
        return load_t2i_adapter(state_dict)
    return load_controlnet(state_dict, base)
