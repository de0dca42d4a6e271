"""UNet hyper-parameters, read from a checkpoint's keys and tensor shapes alone.

Single-file checkpoints carry no config, so everything the LDM `UNetModel` constructor needs
is recovered from `model.diffusion_model.*` (prefix stripped): widths from conv/linear shapes,
depths from which indices exist. Only the attention head split is invisible in the weights
(q/k/v are [inner, inner] whatever the split), so it follows the family rule of the original
configs: SD1's `v1-inference.yaml` is the only one with convolutional transformer projections and
it fixes `num_heads: 8`; every linear-projection config (SD2 `v2-inference*.yaml`, SDXL base and
refiner) fixes `num_head_channels: 64`.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.stored_weights import WeightScaleError, attach_weight_scales, split_weight_scales

__all__ = ["CheckpointLayoutError", "UNetConfig", "detect_unet_config", "load_exact", "require_key"]


class CheckpointLayoutError(ValueError):
    """A state dict does not have the keys or shapes a model expects."""

    def __init__(self, component: str, key: str, reason: str) -> None:
        super().__init__(f"{component} weights: {key}: {reason}")
        self.component = component
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of the LDM/SGM UNet.

    `transformer_depth` has one entry per input ResBlock (levels in order), `transformer_depth_output`
    one per output ResBlock, 0 meaning "no SpatialTransformer after this ResBlock". Exactly one of
    `num_heads` (fixed head count) and `num_head_channels` (fixed head width) is set.
    """

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]
    transformer_depth_middle: int
    transformer_depth_output: tuple[int, ...]
    context_dim: int
    use_linear_in_transformer: bool
    adm_in_channels: int | None = None
    num_heads: int | None = None
    num_head_channels: int | None = None

    def __post_init__(self) -> None:
        if (self.num_heads is None) == (self.num_head_channels is None):
            raise ValueError("UNetConfig needs exactly one of num_heads and num_head_channels")
        levels = len(self.channel_mult)
        if len(self.num_res_blocks) != levels:
            raise ValueError(f"num_res_blocks has {len(self.num_res_blocks)} levels, channel_mult {levels}")
        if len(self.transformer_depth) != sum(self.num_res_blocks):
            raise ValueError("transformer_depth needs one entry per input ResBlock")
        if len(self.transformer_depth_output) != sum(n + 1 for n in self.num_res_blocks):
            raise ValueError("transformer_depth_output needs one entry per output ResBlock")

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of a SpatialTransformer on `channels` features."""
        if self.num_heads is not None:
            return self.num_heads, channels // self.num_heads
        assert self.num_head_channels is not None
        return channels // self.num_head_channels, self.num_head_channels

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4


_INPUT_STAGE = re.compile(r"^input_blocks\.(\d+)\.0\.(\w+)")
_TRANSFORMER = re.compile(r"^(input_blocks\.\d+|output_blocks\.\d+|middle_block)\.1\.transformer_blocks\.(\d+)\.")


def require_key(state_dict: Mapping[str, torch.Tensor], key: str, component: str, layout: str) -> torch.Tensor:
    """``state_dict[key]``, or a ``CheckpointLayoutError`` saying the weights are not `layout` (a phrase such as
    "an LDM UNet state dict"), most often because a prefix was left on."""
    if key not in state_dict:
        raise CheckpointLayoutError(component, key, f"missing; not {layout}")
    return state_dict[key]


_require = functools.partial(require_key, component="UNet", layout="an LDM UNet state dict (prefix stripped?)")


def detect_unet_config(state_dict: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Derive the UNet config of an LDM-layout state dict (keys without `model.diffusion_model.`)."""
    conv_in = _require(state_dict, "input_blocks.0.0.weight")
    conv_out = _require(state_dict, "out.2.weight")
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])

    depth: dict[str, int] = defaultdict(int)
    for key in state_dict:
        match = _TRANSFORMER.match(key)
        if match:
            depth[match.group(1)] = max(depth[match.group(1)], int(match.group(2)) + 1)

    # First layer name of every input stage: "op" marks a downsampler, which closes a level.
    first_layers: dict[int, set[str]] = defaultdict(set)
    for key in state_dict:
        match = _INPUT_STAGE.match(key)
        if match:
            first_layers[int(match.group(1))].add(match.group(2))

    levels: list[list[int]] = [[]]
    index = 1
    while index in first_layers:
        if "op" in first_layers[index]:
            levels.append([])
        else:
            levels[-1].append(index)
        index += 1
    if any(not level for level in levels):
        raise CheckpointLayoutError("UNet", "input_blocks", "a resolution level has no ResBlock")
    channel_mult = [
        int(_require(state_dict, f"input_blocks.{level[0]}.0.in_layers.2.weight").shape[0]) // model_channels
        for level in levels
    ]
    num_res_blocks = [len(level) for level in levels]
    transformer_depth = [depth[f"input_blocks.{i}"] for level in levels for i in level]

    output_count = sum(n + 1 for n in num_res_blocks)
    transformer_depth_output = tuple(depth[f"output_blocks.{i}"] for i in range(output_count))
    _require(state_dict, f"output_blocks.{output_count - 1}.0.in_layers.2.weight")

    context_key = next((k for k in state_dict if k.endswith("attn2.to_k.weight")), None)
    proj_key = next((k for k in state_dict if k.endswith(".1.proj_in.weight")), None)
    if context_key is None or proj_key is None:
        raise CheckpointLayoutError("UNet", "*.attn2.to_k.weight", "no cross-attention layer found")
    use_linear = state_dict[proj_key].ndim == 2
    label = state_dict.get("label_emb.0.0.weight")

    return UNetConfig(
        in_channels=in_channels,
        out_channels=int(conv_out.shape[0]),
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth),
        transformer_depth_middle=depth["middle_block"],
        transformer_depth_output=transformer_depth_output,
        context_dim=int(state_dict[context_key].shape[1]),
        use_linear_in_transformer=use_linear,
        adm_in_channels=None if label is None else int(label.shape[1]),
        num_heads=None if use_linear else 8,
        num_head_channels=64 if use_linear else None,
    )


def load_exact(module: nn.Module, state_dict: Mapping[str, torch.Tensor], component: str) -> nn.Module:
    """Load weights that must match the module key for key, adopting the given tensors.

    `assign=True` keeps the caller's tensors (memory-mapped, stored dtype) instead of copying
    them into freshly initialised parameters, so a module built on the meta device costs no
    initialisation time or second copy. A scaled-fp8 file's weight scales go to their layers
    (``diffusion.stored_weights``); its other extra tensors are dropped.
    """
    try:
        state_dict, scales = split_weight_scales(state_dict)
    except WeightScaleError as error:
        raise CheckpointLayoutError(component, error.key, error.reason) from error
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise CheckpointLayoutError(component, missing[0], f"missing ({len(missing)} keys missing in all)")
    if unexpected:
        raise CheckpointLayoutError(component, unexpected[0], f"unexpected ({len(unexpected)} extra keys in all)")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointLayoutError(
                component, key, f"shape {tuple(state_dict[key].shape)} where {tuple(tensor.shape)} is expected"
            )
    module.load_state_dict(state_dict, strict=True, assign=True)
    try:
        attach_weight_scales(module, scales)
    except WeightScaleError as error:
        raise CheckpointLayoutError(component, error.key, error.reason) from error
    return module.eval().requires_grad_(False)
