"""Where each layer of diffusers' FLUX.1, SD3, Chroma and Z-Image transformers lies in the original layout Loom's
models keep.

`FluxTransformer`, `MMDiT`, `ChromaTransformer` and `ZImageTransformer` name their layers as Black Forest Labs',
Stability's, lodestone's and Tongyi-MAI's files do; diffusers' `FluxTransformer2DModel`, `SD3Transformer2DModel`,
`ChromaTransformer2DModel` and `ZImageTransformer2DModel` name them otherwise, and most LoRAs for these models are
trained on diffusers' layers (PEFT's ``transformer.<layer>.lora_A.weight``). Renaming is not enough, since
diffusers splits what the original fuses:

- an attention's fused ``qkv`` is three diffusers linears, ``to_q``, ``to_k``, ``to_v`` (the text stream's
  ``add_q_proj``, ``add_k_proj``, ``add_v_proj``), each `hidden` rows of it in that order; Z-Image's
  ``attention.qkv`` too (``attention.to_q``, ``to_k``, ``to_v``; its ``attention.out`` is ``attention.to_out.0``);
- a FLUX (and Chroma) single block's ``linear1`` is ``attn.to_q``, ``attn.to_k``, ``attn.to_v`` and ``proj_mlp``
  (`hidden`, `hidden`, `hidden` and the MLP width rows);
- the final adaLN linear (and SD3's pre-only last text block's) yields (shift, scale) in the original and
  (scale, shift) in diffusers' ``AdaLayerNormContinuous``, so its two row halves come swapped. Z-Image's final
  adaLN yields a scale only and Chroma has none (its approximator, ``distilled_guidance_layer``, yields every
  modulation; diffusers calls the residual layers' ``in_layer``/``out_layer`` ``linear_1``/``linear_2``).

A diffusers layer therefore maps to an original module plus the rows of that module's weight and bias its own
weight and bias are (`RowSlice`), which is all a LoRA delta on it needs to land in the right place
(`diffusion.lora`). The maps follow from the model's config (width, MLP width, block counts, pre-only last block,
SD3.5 Medium's dual-attention blocks, Z-Image's refiner depths), so they fit any size; they were checked against
diffusers' single-file converters (`convert_flux_transformer_checkpoint_to_diffusers`,
`convert_sd3_transformer_checkpoint_to_diffusers`, `convert_chroma_transformer_checkpoint_to_diffusers`,
`convert_z_image_transformer_checkpoint_to_diffusers`) by `tests/diffusion/test_lora_dit_layouts.py`, which runs
both models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from diffusion.chroma import ChromaConfig
from diffusion.flux import FluxConfig
from diffusion.mmdit import MMDiTConfig
from diffusion.zimage import PATCH as ZIMAGE_PATCH
from diffusion.zimage import ZImageConfig

__all__ = [
    "OriginalLayer",
    "RowSlice",
    "chroma_diffusers_layers",
    "flux_diffusers_layers",
    "mmdit_diffusers_layers",
    "zimage_diffusers_layers",
]


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
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_FLUX_DOUBLE_MODULATION = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin"}
_FLUX_SINGLE = {"proj_out": "linear2"}
_FLUX_SINGLE_MODULATION = {"norm.linear": "modulation.lin"}


def _flux_blocks(
    depth: int, depth_single_blocks: int, hidden: int, mlp_hidden: int, modulated: bool
) -> dict[str, OriginalLayer]:
    """The double and single blocks FLUX.1 and Chroma share; Chroma's have no modulation projections."""
    layers: dict[str, OriginalLayer] = {}
    for i in range(depth):
        block, original = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        layers |= _renamed(block, original, _FLUX_DOUBLE | (_FLUX_DOUBLE_MODULATION if modulated else {}))
        layers |= _qkv(f"{block}attn.", _QKV, f"{original}img_attn.qkv", hidden)
        layers |= _qkv(f"{block}attn.", _ADDED_QKV, f"{original}txt_attn.qkv", hidden)
    for i in range(depth_single_blocks):
        block, original = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        layers |= _renamed(block, original, _FLUX_SINGLE | (_FLUX_SINGLE_MODULATION if modulated else {}))
        linear1 = [(f"{block}attn.{name}", hidden) for name in _QKV] + [(f"{block}proj_mlp", mlp_hidden)]
        layers |= _stacked(f"{original}linear1", linear1)
    return layers


def flux_diffusers_layers(config: FluxConfig) -> dict[str, OriginalLayer]:
    """``FluxTransformer2DModel`` layer name (``transformer_blocks.0.attn.to_q``) -> where it lies in Black Forest
    Labs' layout, for every linear layer of a FLUX.1 transformer of this config."""
    hidden = config.hidden_size
    layers = _renamed("", "", _FLUX_TOP)
    if config.guidance_embed:
        layers |= _renamed("", "", _FLUX_GUIDANCE)
    layers["norm_out.linear"] = _scale_shift("final_layer.adaLN_modulation.1", hidden)
    return layers | _flux_blocks(
        config.depth, config.depth_single_blocks, hidden, config.mlp_hidden_size, modulated=True
    )


_CHROMA_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "proj_out": "final_layer.linear",
    "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
    "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj",
}
_CHROMA_APPROXIMATOR_LAYER = {"linear_1": "in_layer", "linear_2": "out_layer"}


def chroma_diffusers_layers(config: ChromaConfig) -> dict[str, OriginalLayer]:
    """``ChromaTransformer2DModel`` layer name -> where it lies in the original (lodestone / ComfyUI) layout, for
    every linear layer of a Chroma transformer of this config: FLUX.1's blocks without their modulation
    projections, and the approximator in place of FLUX.1's time, vector and guidance embedders."""
    layers = _renamed("", "", _CHROMA_TOP)
    for i in range(config.approximator_depth):
        prefix = f"distilled_guidance_layer.layers.{i}."
        layers |= _renamed(prefix, prefix, _CHROMA_APPROXIMATOR_LAYER)
    return layers | _flux_blocks(
        config.depth, config.depth_single_blocks, config.hidden_size, config.mlp_hidden_size, modulated=False
    )


# diffusers keeps Z-Image's patch embedder and final layer in dicts keyed "<patch>-<frame patch>"; images have
# one frame per patch.
_ZIMAGE_PATCHES = f"{ZIMAGE_PATCH}-1"
_ZIMAGE_TOP = {
    f"all_x_embedder.{_ZIMAGE_PATCHES}": "x_embedder",
    f"all_final_layer.{_ZIMAGE_PATCHES}.linear": "final_layer.linear",
    f"all_final_layer.{_ZIMAGE_PATCHES}.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
    "t_embedder.mlp.0": "t_embedder.mlp.0",
    "t_embedder.mlp.2": "t_embedder.mlp.2",
    "cap_embedder.1": "cap_embedder.1",
}
_ZIMAGE_BLOCK = {
    "attention.to_out.0": "attention.out",
    "feed_forward.w1": "feed_forward.w1",
    "feed_forward.w2": "feed_forward.w2",
    "feed_forward.w3": "feed_forward.w3",
}
_ZIMAGE_MODULATION = {"adaLN_modulation.0": "adaLN_modulation.0"}


def zimage_diffusers_layers(config: ZImageConfig) -> dict[str, OriginalLayer]:
    """``ZImageTransformer2DModel`` layer name -> where it lies in the original (Tongyi-MAI) layout, for every
    linear layer of a Z-Image transformer of this config. Most names are the original's; the fused attention
    ``qkv`` is split, its ``out`` is ``to_out.0`` and the patch embedder and final layer sit under their patch
    size."""
    layers = _renamed("", "", _ZIMAGE_TOP)
    stacks = (
        ("noise_refiner", config.noise_refiner_depth, True),
        ("context_refiner", config.context_refiner_depth, False),
        ("layers", config.depth, True),
    )
    for stack, depth, modulated in stacks:
        for i in range(depth):
            block = f"{stack}.{i}."
            layers |= _renamed(block, block, _ZIMAGE_BLOCK | (_ZIMAGE_MODULATION if modulated else {}))
            layers |= _qkv(f"{block}attention.", _QKV, f"{block}attention.qkv", config.hidden_size)
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
