"""Rename diffusers-format UNet and VAE weights to the LDM single-file layout.

diffusers folders (`unet/diffusion_pytorch_model.safetensors`, `vae/...`) store the same tensors
as single-file checkpoints under different names: blocks are grouped per resolution level
(`down_blocks.i.resnets.j`) where the LDM numbers every stage in one flat list
(`input_blocks.N`). The flat index follows from `layers_per_block`, the one config value the
conversion needs. Tensors are passed through untouched except the VAE attention projections,
which diffusers stores as Linear [C, C] and the LDM as 1x1 conv [C, C, 1, 1].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from diffusion.unet_config import CheckpointLayoutError

__all__ = ["unet_to_ldm", "vae_to_ldm"]

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_UNET_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_PARAM = re.compile(r"^(.+)\.(weight|bias)$")


def _resnet_part(rest: str, key: str) -> str:
    match = _PARAM.match(rest)
    if not match or match.group(1) not in _RESNET:
        raise CheckpointLayoutError("diffusers UNet", key, "not a known ResNet parameter")
    return f"{_RESNET[match.group(1)]}.{match.group(2)}"


@dataclass(frozen=True)
class _StageNumbering:
    """Where diffusers' per-level blocks land in the LDM's flat `input_blocks` / `output_blocks` lists.

    Each down level holds its ResBlocks then (except the last) a downsampler stage; the first input
    block is `conv_in`. Up levels hold one ResBlock more, the last of which carries the upsampler,
    after the transformer when the level has one.
    """

    down_layers: tuple[int, ...]
    attention_up_levels: frozenset[int]
    mid_has_attention: bool

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> _StageNumbering:
        levels = len(config["block_out_channels"])
        layers = config["layers_per_block"]
        down = (int(layers),) * levels if isinstance(layers, int) else tuple(int(n) for n in layers)
        attention_up = frozenset(
            int(match.group(1)) for key in state_dict if (match := re.match(r"^up_blocks\.(\d+)\.attentions\.", key))
        )
        return cls(down, attention_up, any(k.startswith("mid_block.attentions.") for k in state_dict))

    def input_block(self, level: int, index: int) -> int:
        return 1 + sum(n + 1 for n in self.down_layers[:level]) + index

    def output_block(self, level: int, index: int) -> int:
        up_layers = [n + 1 for n in reversed(self.down_layers)]
        return sum(up_layers[:level]) + index

    def last_output_block(self, level: int) -> int:
        return self.output_block(level, self.down_layers[::-1][level])

    def key(self, key: str) -> str:
        param = _PARAM.match(key)
        if param and param.group(1) in _UNET_TOP:
            return f"{_UNET_TOP[param.group(1)]}.{param.group(2)}"
        mid = _UNET_MID.match(key)
        if mid:
            kind, index, rest = mid.group(1), int(mid.group(2)), mid.group(3)
            if kind == "attentions":
                return f"middle_block.1.{rest}"
            return f"middle_block.{index * (2 if self.mid_has_attention else 1)}.{_resnet_part(rest, key)}"
        block = _UNET_BLOCK.match(key)
        if not block:
            raise CheckpointLayoutError("diffusers UNet", key, "no LDM counterpart (unsupported UNet feature?)")
        side, kind, rest = block.group(1), block.group(3), block.group(5)
        level, index = int(block.group(2)), int(block.group(4))
        if kind == "downsamplers":
            return f"input_blocks.{self.input_block(level, self.down_layers[level])}.0.{rest.replace('conv.', 'op.')}"
        if kind == "upsamplers":
            slot = 2 if level in self.attention_up_levels else 1
            return f"output_blocks.{self.last_output_block(level)}.{slot}.{rest}"
        stage = self.input_block(level, index) if side == "down_blocks" else self.output_block(level, index)
        prefix = f"{'input' if side == 'down_blocks' else 'output'}_blocks.{stage}"
        if kind == "attentions":
            return f"{prefix}.1.{rest}"
        return f"{prefix}.0.{_resnet_part(rest, key)}"


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers `UNet2DConditionModel` weights -> `model.diffusion_model.*` keys (prefix not added).

    `config` is the model's `config.json` (`block_out_channels`, `layers_per_block`).
    """
    numbering = _StageNumbering.of(state_dict, config)
    return {numbering.key(key): tensor for key, tensor in state_dict.items()}


_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# Current diffusers names first, then the names of diffusers releases before 0.14.
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_KEY = re.compile(
    r"^(encoder|decoder)\.(?:(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\."
    r"|mid_block\.(resnets|attentions)\.(\d+)\.|)(.+)\.(weight|bias)$"
)


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderKL` weights -> `first_stage_model.*` keys (prefix not added).

    diffusers numbers the decoder's up blocks in execution order; the LDM numbers them by
    resolution level, so `up_blocks.i` becomes `up.{levels - 1 - i}`.
    """
    up_levels = 1 + max((int(k.split(".")[2]) for k in state_dict if k.startswith("decoder.up_blocks.")), default=-1)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            converted[key] = tensor
            continue
        new_key = _vae_key(key, up_levels)
        if ".attn_1." in new_key and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[new_key] = tensor
    return converted


def _vae_key(key: str, up_levels: int) -> str:
    match = _VAE_KEY.match(key)
    if not match:
        raise CheckpointLayoutError("diffusers VAE", key, "no LDM counterpart")
    coder, side, level, kind, index, mid_kind, mid_index, name, param = match.groups()
    if side is not None:
        stage = int(level) if side == "down_blocks" else up_levels - 1 - int(level)
        group = "down" if side == "down_blocks" else "up"
        if kind == "resnets" and name in _VAE_RESNET:
            return f"{coder}.{group}.{stage}.block.{index}.{_VAE_RESNET[name]}.{param}"
        if kind in ("downsamplers", "upsamplers") and name == "conv":
            sample = "downsample" if kind == "downsamplers" else "upsample"
            return f"{coder}.{group}.{stage}.{sample}.conv.{param}"
    elif mid_kind == "resnets" and name in _VAE_RESNET:
        return f"{coder}.mid.block_{int(mid_index) + 1}.{_VAE_RESNET[name]}.{param}"
    elif mid_kind == "attentions" and name in _VAE_ATTENTION:
        return f"{coder}.mid.attn_1.{_VAE_ATTENTION[name]}.{param}"
    elif mid_kind is None and name in _VAE_TOP:
        return f"{coder}.{_VAE_TOP[name]}.{param}"
    raise CheckpointLayoutError("diffusers VAE", key, "no LDM counterpart")
