"""Which kind of control model a file holds, and loading it: what ComfyUI's ControlNetLoader tells apart.

A file in a `controlnet` folder may hold an ordinary ControlNet (`diffusion.controlnet`, original or diffusers
layout, or a "difference" one that needs the UNet it is added to), a union ControlNet
(`diffusion.controlnet_union`), a Control-LoRA (`diffusion.control_lora`, built over the sampled UNet later) or a
T2I-Adapter (`diffusion.t2i_adapter`). Each is told by its keys, in the order ComfyUI tells them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from diffusion.control_lora import ControlLora, is_control_lora
from diffusion.controlnet import ControlNet, controlnet_layout, load_controlnet
from diffusion.controlnet_union import UnionControlNet, is_union_controlnet, load_union_controlnet
from diffusion.t2i_adapter import T2IAdapter, is_t2i_adapter, load_t2i_adapter

__all__ = ["ControlModel", "load_control_model"]

#: Every control model a conditioning entry's control can run.
ControlModel = ControlNet | UnionControlNet | ControlLora | T2IAdapter


def load_control_model(
    state_dict: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None = None
) -> ControlModel:
    """The control model of a file's weights. `base` is what a difference ControlNet is added to
    (`load_controlnet`); other kinds ignore it. Raises `CheckpointLayoutError` for weights of no kind Loom builds."""
    if is_control_lora(state_dict):
        return ControlLora(state_dict)
    if is_union_controlnet(state_dict):
        return load_union_controlnet(state_dict)
    if controlnet_layout(state_dict) is None and is_t2i_adapter(state_dict):
        return load_t2i_adapter(state_dict)
    return load_controlnet(state_dict, base)
