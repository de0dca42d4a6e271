"""Where each layer of diffusers' FLUX.1 and SD3 transformers lies in the original layout Loom's models keep.

`FluxTransformer` and `MMDiT` name their layers as Black Forest Labs' and Stability's files do; diffusers'
`FluxTransformer2DModel` and `SD3Transformer2DModel` name them otherwise, and most LoRAs for these models are
trained on diffusers' layers (PEFT's ``transformer.<layer>.lora_A.weight``). Renaming is not enough, since
diffusers splits what the original fuses:

- an attention's fused ``qkv`` is three diffusers linears, ``to_q``, ``to_k``, ``to_v`` (the text stream's
  ``add_q_proj``, ``add_k_proj``, ``add_v_proj``), each `hidden` rows of it in that order;
- a FLUX single block's ``linear1`` is ``attn.to_q``, ``attn.to_k``, ``attn.to_v`` and ``proj_mlp`` (`hidden`,
  `hidden`, `hidden` and the MLP width rows);
- the final adaLN linear (and SD3's pre-only last text block's) yields (shift, scale) in the original and
  (scale, shift) in diffusers' ``AdaLayerNormContinuous``, so its two row halves come swapped.

A diffusers layer therefore maps to an original module plus the rows of that module's weight and bias its own
weight and bias are (`RowSlice`), which is all a LoRA delta on it needs to land in the right place
(`diffusion.lora`). The maps follow from the model's config (width, MLP width, block counts, pre-only last block,
SD3.5 Medium's dual-attention blocks), so they fit any size; they were checked against diffusers' single-file
converters (`convert_flux_transformer_checkpoint_to_diffusers`, `convert_sd3_transformer_checkpoint_to_diffusers`)
by `tests/diffusion/test_lora_dit_layouts.py`, which runs both models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from diffusion.flux import FluxConfig
from diffusion.mmdit import MMDiTConfig

__all__ = ["OriginalLayer", "RowSlice", "flux_diffusers_layers", "mmdit_diffusers_layers"]


@dataclass(frozen=True)
class RowSlice:
    """Rows ``[start, stop)`` of an original weight (or bias) that one diffusers layer's weight (or bias) is;
    ``swapped`` when that layer holds the slice's two halves in the opposite order."""

    start: int
    stop: int
    swapped: bool = False

    def part_shape(self, shape: Sequence[int]) -> torch.Size:
        """The shape of the diffusers layer's tensor, given the original's."""
        if not 0 <= self.start < self.stop <= shape[0]:
            raise ValueError(f"rows {self.start}:{self.stop} are not rows of a tensor of shape {tuple(shape)}")
        return torch.Size((self.stop - self.start, *shape[1:]))

    def place(self, part: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The original-layout tensor of ``shape`` that is ``part`` in these rows and zero elsewhere."""
        if part.shape != self.part_shape(shape):
            raise ValueError(f"a {tuple(part.shape)} tensor does not fill rows {self.start}:{self.stop} of {shape}")
        if self.swapped:
            first, second = part.chunk(2)
            part = torch.cat((second, first))
        if self.stop - self.start == shape[0]:
            return part
        full = part.new_zeros(tuple(shape))
        full[self.start : self.stop] = part
        return full


@dataclass(frozen=True)
class OriginalLayer:
    """An original-layout module (``double_blocks.0.img_attn.qkv``) and, when a diffusers layer is only part of
    it or holds it in another order, which rows."""

    module: str
    rows: RowSlice | None = None


def _renamed(diffusers_prefix: str, original_prefix: str, names: Mapping[str, str]) -> dict[str, OriginalLayer]:
    return {f"{diffusers_prefix}{new}": OriginalLayer(f"{original_prefix}{old}") for new, old in names.items()}


def _stacked(module: str, parts: Sequence[tuple[str, int]]) -> dict[str, OriginalLayer]:
    """Diffusers layers whose weights, stacked in the given order, are ``module``'s weight."""
    layers, start = {}, 0
    for name, rows in parts:
        layers[name] = OriginalLayer(module, RowSlice(start, start + rows))
        start += rows
    return layers


def _scale_shift(module: str, hidden: int) -> OriginalLayer:
    """An adaLN linear diffusers computes as (scale, shift) and the original as (shift, scale)."""
    return OriginalLayer(module, RowSlice(0, 2 * hidden, swapped=True))


def _qkv(diffusers_prefix: str, names: Sequence[str], module: str, hidden: int) -> dict[str, OriginalLayer]:
    return _stacked(module, [(f"{diffusers_prefix}{name}", hidden) for name in names])


_QKV = ("to_q", "to_k", "to_v")
_ADDED_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")

_FLUX_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "proj_out": "final_layer.linear",
}
_FLUX_GUIDANCE = {
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}


def flux_diffusers_layers(config: FluxConfig) -> dict[str, OriginalLayer]:
    """``FluxTransformer2DModel`` layer name (``transformer_blocks.0.attn.to_q``) -> where it lies in Black Forest
    Labs' layout, for every linear layer of a FLUX.1 transformer of this config."""
    hidden = config.hidden_size
    layers = _renamed("", "", _FLUX_TOP)
    if config.guidance_embed:
        layers |= _renamed("", "", _FLUX_GUIDANCE)
    layers["norm_out.linear"] = _scale_shift("final_layer.adaLN_modulation.1", hidden)
    for i in range(config.depth):
        block, original = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        layers |= _renamed(block, original, _FLUX_DOUBLE)
        layers |= _qkv(f"{block}attn.", _QKV, f"{original}img_attn.qkv", hidden)
        layers |= _qkv(f"{block}attn.", _ADDED_QKV, f"{original}txt_attn.qkv", hidden)
    for i in range(config.depth_single_blocks):
        block, original = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        layers |= _renamed(block, original, _FLUX_SINGLE)
        linear1 = [(f"{block}attn.{name}", hidden) for name in _QKV] + [(f"{block}proj_mlp", config.mlp_hidden_size)]
        layers |= _stacked(f"{original}linear1", linear1)
    return layers


_MMDIT_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "proj_out": "final_layer.linear",
}
_MMDIT_IMAGE = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
}
# Text-stream layers of every block but the last, whose text stream is pre-only (no output, no MLP).
_MMDIT_TEXT = {
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_add_out": "context_block.attn.proj",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}


def mmdit_diffusers_layers(config: MMDiTConfig) -> dict[str, OriginalLayer]:
    """``SD3Transformer2DModel`` layer name -> where it lies in Stability's layout, for every linear layer (and
    the patch embedding convolution) of an SD3 / SD3.5 MMDiT of this config."""
    hidden = config.hidden_size
    layers = _renamed("", "", _MMDIT_TOP)
    layers["norm_out.linear"] = _scale_shift("final_layer.adaLN_modulation.1", hidden)
    for i in range(config.depth):
        block, original = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        layers |= _renamed(block, original, _MMDIT_IMAGE)
        layers |= _qkv(f"{block}attn.", _QKV, f"{original}x_block.attn.qkv", hidden)
        layers |= _qkv(f"{block}attn.", _ADDED_QKV, f"{original}context_block.attn.qkv", hidden)
        if i == config.depth - 1:
            # The pre-only text stream ends in diffusers' AdaLayerNormContinuous: (scale, shift).
            layers[f"{block}norm1_context.linear"] = _scale_shift(f"{original}context_block.adaLN_modulation.1", hidden)
        else:
            layers |= _renamed(block, original, _MMDIT_TEXT)
        if i in config.dual_attention_blocks:
            layers |= _qkv(f"{block}attn2.", _QKV, f"{original}x_block.attn2.qkv", hidden)
            layers[f"{block}attn2.to_out.0"] = OriginalLayer(f"{original}x_block.attn2.proj")
    return layers
