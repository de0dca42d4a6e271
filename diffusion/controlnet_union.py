"""Union ControlNets (xinsir's "ControlNet++", controlnet-union-sdxl-1.0 and its ProMax), in plain torch.

A union ControlNet is an ordinary SDXL ControlNet that also learnt which kind of control image it is given
(pose, depth, edges ...). Two extra parts carry that: the one-hot type vector, each entry through a sinusoid
and an MLP (`control_add_embedding`), is added to the time embedding; and the embedded hint's spatial mean plus
the type's learnt `task_embedding` goes through a small transformer (`transformer_layes`, the published spelling)
whose output, projected (`spatial_ch_projs`), is added to every position of the embedded hint.

Loom computes this as ComfyUI does: the transformer sees one token, the hint's. xinsir's code and diffusers'
`ControlNetUnionModel` also feed it a token of the latent's first features, but their attention runs over the
batch axis (`nn.MultiheadAttention` without `batch_first`), so in a batch of one each token meets only itself and
the two agree. With no type chosen ("auto", ComfyUI's empty type list) the type vector is all zeros and the hint
enters unmixed; they have no such case.

Files are published in the diffusers layout only; `load_union_controlnet` renames the ControlNet part as
`diffusion.controlnet` does and keeps the union part's names, with PyTorch's fused attention projection
(`attn.in_proj_weight`) split into a module (`attn.in_proj.weight`), as ComfyUI stores it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.controlnet import (
    ControlNet,
    ControlNetConfig,
    ControlResiduals,
    controlnet_layout,
    controlnet_to_ldm,
    detect_controlnet_config,
)
from diffusion.fused_linear import FusedLinear
from diffusion.unet import timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, UNetConfig, load_exact, require_key

__all__ = [
    "UNION_CONTROLNET_TYPES",
    "UnionConfig",
    "UnionControlNet",
    "detect_union_config",
    "is_union_controlnet",
    "load_union_controlnet",
    "tiny_controlnet_union_tensors",
]

#: ComfyUI's control type names (comfy/cldm/control_types.py), in its order, and the type index each selects.
UNION_CONTROLNET_TYPES: dict[str, int] = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}
#: Attention heads of the type transformer: xinsir's and ComfyUI's 8 (the weights do not tell).
UNION_HEADS = 8
_UNION_PREFIXES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


@dataclass(frozen=True)
class UnionConfig:
    """`types` control types, tokens `width` wide through `layers` transformer blocks of `heads` heads, each
    type flag through a `type_embed_dim`-wide sinusoid."""

    types: int
    width: int
    layers: int
    type_embed_dim: int
    heads: int = UNION_HEADS


class _TokenAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = FusedLinear(width, 3 * width)
        self.out_proj = FusedLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = (
            part.reshape(batch, tokens, self.heads, -1).transpose(1, 2) for part in self.in_proj(x).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        return self.out_proj(out)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _TokenBlock(nn.Module):
    """A pre-norm transformer block (CLIP's, QuickGELU MLP), as xinsir's `ResidualAttentionBlock`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = _TokenAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", FusedLinear(width, 4 * width))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", FusedLinear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _TypeEmbedding(nn.Module):
    def __init__(self, union: UnionConfig, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = FusedLinear(union.type_embed_dim * union.types, out_dim)
        self.linear_2 = FusedLinear(out_dim, out_dim)

    def forward(self, flags: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(flags)))


class UnionControlNet(ControlNet):
    """`controlnet(x, hint, timesteps, context, y, union_type=None)` -> `ControlResiduals`, as `ControlNet` does;
    `union_type` is the index of the control type the hint is (`UNION_CONTROLNET_TYPES`), None to choose none."""

    def __init__(self, config: ControlNetConfig, union: UnionConfig) -> None:
        super().__init__(config)
        if union.width != config.unet.model_channels:
            raise ValueError(f"union tokens are {union.width} wide, the hint {config.unet.model_channels}")
        self.union = union
        self.task_embedding = nn.Parameter(torch.empty(union.types, union.width))
        self.transformer_layes = nn.Sequential(*(_TokenBlock(union.width, union.heads) for _ in range(union.layers)))
        self.spatial_ch_projs = FusedLinear(union.width, union.width)
        self.control_add_embedding = _TypeEmbedding(union, config.unet.time_embed_dim)

    def _type_embedding(self, union_type: int | None, device: torch.device) -> torch.Tensor:
        """The embedding of the one-hot type vector (all zeros for no type), added to every row's time embedding."""
        flags = torch.zeros(self.union.types, device=device)
        if union_type is not None:
            if not 0 <= union_type < self.union.types:
                raise ValueError(
                    f"this union ControlNet knows {self.union.types} control types (0 to {self.union.types - 1}), "
                    f"got type {union_type}"
                )
            flags[union_type] = 1.0
        sinusoids = timestep_embedding(flags, self.union.type_embed_dim).reshape(1, -1)
        return self.control_add_embedding(sinusoids.to(self.dtype))

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        union_type: int | None = None,
    ) -> ControlResiduals:
        hint = self._check_inputs(x, hint, y)
        emb = self._embedding(x, timesteps, y) + self._type_embedding(union_type, x.device)
        guided = self.input_hint_block(hint.to(self.dtype))
        if union_type is not None:
            token = guided.mean(dim=(2, 3)) + self.task_embedding[union_type]
            mixed = self.transformer_layes(token[:, None])[:, 0]
            guided = guided + self.spatial_ch_projs(mixed)[:, :, None, None]
        return self._encode(x, guided, emb, context)


# --- layouts and loading ----------------------------------------------------------------------------


def is_union_controlnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the weights are a union ControlNet (`task_embedding` marks them, prefixed or not)."""
    return "task_embedding" in state_dict or "control_model.task_embedding" in state_dict


def _union_part(key: str) -> bool:
    return key.removeprefix("control_model.").startswith(_UNION_PREFIXES)


def detect_union_config(state_dict: Mapping[str, torch.Tensor]) -> UnionConfig:
    """The union part's config from its (Loom-named) weights."""
    task = require_key(state_dict, "task_embedding", "union ControlNet", "a union ControlNet")
    types, width = (int(n) for n in task.shape)
    flags = require_key(state_dict, "control_add_embedding.linear_1.weight", "union ControlNet", "a union ControlNet")
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"^transformer_layes\.(\d+)\.", k))}
    if not layers or sorted(layers) != list(range(len(layers))):
        raise CheckpointLayoutError(
            "union ControlNet", "transformer_layes", f"unexpected block indices {sorted(layers)}"
        )
    return UnionConfig(types, width, len(layers), int(flags.shape[1]) // types)


def load_union_controlnet(state_dict: Mapping[str, torch.Tensor]) -> UnionControlNet:
    """A union ControlNet around weights in the diffusers layout (or the original one, `control_model.` or bare);
    raises `CheckpointLayoutError` naming the first key at fault."""
    union = {
        key.removeprefix("control_model.").replace(".attn.in_proj_", ".attn.in_proj."): tensor
        for key, tensor in state_dict.items()
        if _union_part(key)
    }
    rest = {key: tensor for key, tensor in state_dict.items() if not _union_part(key)}
    layout = controlnet_layout(rest)
    if layout is None:
        raise CheckpointLayoutError("union ControlNet", "controlnet_cond_embedding.conv_in.weight", "missing")
    weights = (
        controlnet_to_ldm(rest)
        if layout == "diffusers"
        else {k.removeprefix("control_model."): v for k, v in rest.items()}
    )
    model_config = detect_controlnet_config(weights)
    union_config = detect_union_config(union)
    with torch.device("meta"):
        model = UnionControlNet(model_config, union_config)
    load_exact(model, {**weights, **union}, "union ControlNet")
    return model


_RESNET_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _diffusers_prefixes(config: ControlNetConfig) -> dict[str, tuple[str, bool]]:
    """Original-layout module prefixes -> (diffusers prefix, whether the module is a ResBlock)."""
    unet = config.unet
    prefixes = {
        "time_embed.0.": ("time_embedding.linear_1.", False),
        "time_embed.2.": ("time_embedding.linear_2.", False),
        "label_emb.0.0.": ("add_embedding.linear_1.", False),
        "label_emb.0.2.": ("add_embedding.linear_2.", False),
        "input_blocks.0.0.": ("conv_in.", False),
        "middle_block.0.": ("mid_block.resnets.0.", True),
        "middle_block.1.": ("mid_block.attentions.0.", False),
        "middle_block.2.": ("mid_block.resnets.1.", True),
        "middle_block_out.0.": ("controlnet_mid_block.", False),
        "input_hint_block.0.": ("controlnet_cond_embedding.conv_in.", False),
        f"input_hint_block.{2 * (2 * len(config.hint_widths) - 1)}.": ("controlnet_cond_embedding.conv_out.", False),
    }
    for index in range(2 * len(config.hint_widths) - 2):
        prefixes[f"input_hint_block.{2 * (index + 1)}."] = (f"controlnet_cond_embedding.blocks.{index}.", False)
    block = 1
    for level, count in enumerate(unet.num_res_blocks):
        for index in range(count):
            prefixes[f"input_blocks.{block}.0."] = (f"down_blocks.{level}.resnets.{index}.", True)
            prefixes[f"input_blocks.{block}.1."] = (f"down_blocks.{level}.attentions.{index}.", False)
            block += 1
        if level != len(unet.num_res_blocks) - 1:
            prefixes[f"input_blocks.{block}.0.op."] = (f"down_blocks.{level}.downsamplers.0.conv.", False)
            block += 1
    for index in range(block):
        prefixes[f"zero_convs.{index}.0."] = (f"controlnet_down_blocks.{index}.", False)
    return prefixes


def _to_diffusers(tensors: Mapping[str, torch.Tensor], config: ControlNetConfig) -> dict[str, torch.Tensor]:
    """Loom's names of a union ControlNet -> those of xinsir's files (diffusers' `ControlNetUnionModel`)."""
    prefixes = _diffusers_prefixes(config)
    renamed = {}
    for key, tensor in tensors.items():
        if _union_part(key):
            renamed[key.replace(".attn.in_proj.", ".attn.in_proj_")] = tensor
            continue
        prefix = next(p for p in sorted(prefixes, key=len, reverse=True) if key.startswith(p))
        target, resnet = prefixes[prefix]
        rest = key[len(prefix) :]
        if resnet:
            module, param = rest.rsplit(".", 1)
            rest = f"{_RESNET_NAMES[module]}.{param}"
        renamed[target + rest] = tensor
    return renamed


def tiny_controlnet_union_tensors(unet: UNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random union ControlNet (ProMax's 8 types, xinsir's hint widths) for `unet` (a tiny config of
    `diffusion.tiny`, SDXL-style), in the diffusers layout xinsir publishes. Zero convs, norms and the type
    projection are random too: zeros or identities would hide layout mistakes."""
    from diffusion.tiny import randomize_norms, seeded_rng

    config = ControlNetConfig(unet, hint_widths=(48, 96, 192, 384))
    union = UnionConfig(types=len(UNION_CONTROLNET_TYPES), width=unet.model_channels, layers=1, type_embed_dim=256)
    with seeded_rng(seed):
        model = UnionControlNet(config, union)
        randomize_norms(model)
        with torch.no_grad():
            model.task_embedding.normal_(0.0, 1.0)
            for conv in [*model.zero_convs, model.middle_block_out, model.spatial_ch_projs]:
                for parameter in conv.parameters():
                    parameter.normal_(0.0, 0.05 if parameter.ndim > 1 else 0.02)
    return _to_diffusers({k: v.detach().contiguous() for k, v in model.state_dict().items()}, config)
