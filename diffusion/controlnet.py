"""ControlNet (Zhang, Rao & Agrawala 2023) for the LDM UNet of SD1.x, SD2.x and SDXL, in plain torch.

A ControlNet is a trainable copy of the UNet's encoder (input blocks and middle block, SDXL's
`label_emb` included) that also sees a control image. The image enters through a small conv stack
(`input_hint_block`, 8x down) and is added after the first input block; every input block's output and
the middle block's output leave through a 1x1 "zero conv". Those outputs are the residuals the UNet
adds to its skip connections and to its middle block's output (`UNetModel.forward(control=...)`).

Module names reproduce the original (`cldm`) layout, as ControlNet files carry it under
`control_model.` or bare. The diffusers layout (`controlnet_cond_embedding.*`, `down_blocks.*`,
`controlnet_down_blocks.N`, `controlnet_mid_block`) is renamed onto it: its UNet part through
`diffusion.diffusers_layout.unet_to_ldm`, its control part here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import SpatialTransformer
from diffusion.diffusers_layout import unet_to_ldm
from diffusion.fused_linear import FusedLinear
from diffusion.packed_conv import PackedConv2d
from diffusion.unet import Downsample, ResBlock, TimestepEmbedSequential, timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, UNetConfig, detect_unet_config, load_exact, require_key

__all__ = [
    "ControlNet",
    "ControlNetConfig",
    "ControlNetLayout",
    "ControlResiduals",
    "controlnet_layout",
    "controlnet_to_ldm",
    "detect_controlnet_config",
    "detect_hint_block",
    "fit_hint",
    "is_difference_controlnet",
    "load_controlnet",
    "tiny_controlnet_tensors",
]

ControlNetLayout = Literal["ldm", "diffusers"]

LDM_PREFIX = "control_model."
# conditioning_embedding_out_channels of every published SD ControlNet (the paper's 16, 32, 96, 256).
HINT_WIDTHS = (16, 32, 96, 256)


@dataclass(frozen=True)
class ControlResiduals:
    """What control models add to a UNet, in the UNet's block order.

    `input` has one entry per UNet input block (the ControlNet's zero convs, in that order): each is
    added to the skip connection that block pushed, when the decoder takes it. `middle` is added to the
    middle block's output. These are diffusers' `down_block_additional_residuals` /
    `mid_block_additional_residual` and ComfyUI's `control["output"]` / `control["middle"]`.

    `encoder` is added inside the encoder, so every later block sees it (T2I-Adapter features: diffusers'
    `down_intrablock_additional_residuals`, ComfyUI's `control["input"]`). It is indexed by encoder stage
    rather than by block, so that an adapter fits any UNet with its levels and widths, however many
    ResBlocks a level has: stage 2 l ends with level l's last ResBlock (before its downsampling), stage
    2 l + 1 is level l's Downsample; a UNet of L levels has 2 L - 1 stages. Any entry may be None
    (nothing added there).
    """

    input: tuple[torch.Tensor | None, ...]
    middle: torch.Tensor | None = None
    encoder: tuple[torch.Tensor | None, ...] = ()

    def tensors(self) -> list[torch.Tensor | None]:
        """Every entry, None included, in a fixed order (input, middle, encoder): for code that treats them alike."""
        return [*self.input, self.middle, *self.encoder]

    def mapped(self, apply: Callable[[torch.Tensor], torch.Tensor]) -> ControlResiduals:
        """`apply` on every present entry, the Nones kept where they are."""

        def one(r: torch.Tensor | None) -> torch.Tensor | None:
            return None if r is None else apply(r)

        return ControlResiduals(tuple(map(one, self.input)), one(self.middle), tuple(map(one, self.encoder)))

    def scaled(self, strength: float) -> ControlResiduals:
        """Every residual times `strength` (ControlNetApply's strength); new tensors, these untouched."""
        return self.mapped(lambda r: r * strength)

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        """Two control models' residuals applied together: summed entry by entry, None counting as zero."""
        if not isinstance(other, ControlResiduals):
            return NotImplemented
        return ControlResiduals(
            _summed(self.input, other.input, "input blocks"),
            _sum(self.middle, other.middle),
            _summed(self.encoder, other.encoder, "encoder stages"),
        )

    def to(self, device: torch.device | str) -> ControlResiduals:
        """The same residuals on `device` (these themselves where they already are)."""
        return self.mapped(lambda r: r.to(device))


def _summed(
    mine: tuple[torch.Tensor | None, ...], theirs: tuple[torch.Tensor | None, ...], what: str
) -> tuple[torch.Tensor | None, ...]:
    """Two residual tuples summed position by position; an empty one stands for all None."""
    if mine and theirs and len(mine) != len(theirs):
        raise ValueError(
            f"cannot add control residuals for {len(mine)} and {len(theirs)} {what} "
            "(control models made for different UNets?)"
        )
    count = max(len(mine), len(theirs))
    return tuple(_sum(a, b) for a, b in zip(mine or (None,) * count, theirs or (None,) * count))


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


@dataclass(frozen=True)
class ControlNetConfig:
    """The encoder is that of `unet`, the UNet the ControlNet was trained beside (its decoder fields
    mirror the encoder, as in every SD UNet); `hint_widths` are the hint stack's widths, each after a
    2x downsampling except the first."""

    unet: UNetConfig
    hint_channels: int = 3
    hint_widths: tuple[int, ...] = HINT_WIDTHS

    @property
    def hint_downscale(self) -> int:
        return 2 ** (len(self.hint_widths) - 1)


def _hint_block(config: ControlNetConfig) -> nn.Sequential:
    """Conv, SiLU, then per width step a same-width conv and a strided widening conv, each followed by
    SiLU, then the (zero-initialised in training) conv to the UNet width: with the standard four widths,
    convs at the even indices 0..14."""
    widths = config.hint_widths
    layers: list[nn.Module] = [PackedConv2d(config.hint_channels, widths[0], 3, padding=1), nn.SiLU(inplace=True)]
    for narrow, wide in zip(widths, widths[1:]):
        layers += [PackedConv2d(narrow, narrow, 3, padding=1), nn.SiLU(inplace=True)]
        layers += [PackedConv2d(narrow, wide, 3, padding=1, stride=2), nn.SiLU(inplace=True)]
    layers.append(PackedConv2d(widths[-1], config.unet.model_channels, 3, padding=1))
    return nn.Sequential(*layers)


def _zero_conv(channels: int) -> nn.Sequential:
    return nn.Sequential(PackedConv2d(channels, channels, 1))


class ControlNet(nn.Module):
    """`controlnet(x, hint, timesteps, context, y=None)` -> `ControlResiduals` for the UNet.

    x, timesteps, context and y are exactly what the controlled UNet receives at this step (the
    ControlNet has SDXL's `label_emb` when the UNet has). hint: [B or 1, hint_channels, 8 H, 8 W], the
    control image in 0..1 (`fit_hint` brings an image to that size). Computes in its parameters'
    dtype, like `UNetModel`; the residuals come back in x's dtype.
    """

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        unet = config.unet
        ch = unet.model_channels
        emb_dim = unet.time_embed_dim
        self.time_embed = nn.Sequential(FusedLinear(ch, emb_dim), nn.SiLU(), FusedLinear(emb_dim, emb_dim))
        if unet.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(FusedLinear(unet.adm_in_channels, emb_dim), nn.SiLU(), FusedLinear(emb_dim, emb_dim))
            )
        self.input_hint_block = _hint_block(config)

        # The UNet's encoder, stage for stage (`UNetModel.__init__`), with a zero conv after each stage.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(PackedConv2d(unet.in_channels, ch, 3, padding=1))])
        self.zero_convs = nn.ModuleList([_zero_conv(ch)])
        depths = iter(unet.transformer_depth)
        for level, (mult, blocks) in enumerate(zip(unet.channel_mult, unet.num_res_blocks)):
            for _ in range(blocks):
                out = unet.model_channels * mult
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, out)]
                ch = out
                self._add_transformer(layers, ch, next(depths))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.zero_convs.append(_zero_conv(ch))
            if level != len(unet.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                self.zero_convs.append(_zero_conv(ch))

        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch)]
        self._add_transformer(middle, ch, unet.transformer_depth_middle)
        middle.append(ResBlock(ch, emb_dim, ch))
        self.middle_block = TimestepEmbedSequential(*middle)
        self.middle_block_out = _zero_conv(ch)

    def _add_transformer(self, layers: list[nn.Module], channels: int, depth: int) -> None:
        if depth:
            unet = self.config.unet
            heads, dim_head = unet.heads_for(channels)
            layers.append(
                SpatialTransformer(channels, heads, dim_head, depth, unet.context_dim, unet.use_linear_in_transformer)
            )

    @property
    def dtype(self) -> torch.dtype:
        first = self.time_embed[0]
        assert isinstance(first, FusedLinear)  # __init__ builds time_embed as Linear, SiLU, Linear
        return first.computes_in

    def _check_hint(self, x: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        scale = self.config.hint_downscale
        expected = (self.config.hint_channels, x.shape[-2] * scale, x.shape[-1] * scale)
        if hint.ndim != 4 or tuple(hint.shape[1:]) != expected or hint.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"ControlNet hint must be [{x.shape[0]} or 1, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"for latents {tuple(x.shape)}, got {tuple(hint.shape)} (see fit_hint)"
            )
        return hint.expand(x.shape[0], -1, -1, -1)

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> ControlResiduals:
        hint = self._check_inputs(x, hint, y)
        emb = self._embedding(x, timesteps, y)
        return self._encode(x, self.input_hint_block(hint.to(self.dtype)), emb, context)

    def _check_inputs(self, x: torch.Tensor, hint: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The hint expanded to x's batch, after checking that y is given exactly when the encoder takes it."""
        has_adm = self.config.unet.adm_in_channels is not None
        if has_adm and y is None:
            raise ValueError(f"this ControlNet needs y: [B, {self.config.unet.adm_in_channels}] (SDXL conditioning)")
        if not has_adm and y is not None:
            raise ValueError("this ControlNet takes no y (it has no label_emb)")
        return self._check_hint(x, hint)

    def _embedding(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The time embedding (plus SDXL's label embedding) the encoder's ResBlocks take, in the module's dtype."""
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.unet.model_channels).to(self.dtype))
        return emb if y is None else emb + self.label_emb(y.to(self.dtype))

    def _encode(
        self, x: torch.Tensor, guided_hint: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
    ) -> ControlResiduals:
        """The encoder copy run on x with the embedded hint added after its first block; residuals in x's dtype."""
        out_dtype = x.dtype
        context = context.to(self.dtype)
        pending: torch.Tensor | None = guided_hint
        h = x.to(self.dtype)
        residuals = []
        for block, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = block(h, emb, context)
            if pending is not None:
                h = h + pending
                pending = None
            residuals.append(zero_conv(h).to(out_dtype))
        h = self.middle_block(h, emb, context)
        return ControlResiduals(tuple(residuals), self.middle_block_out(h).to(out_dtype))


def fit_hint(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A control image [B, C, h, w] brought to [B, C, height, width] the way ComfyUI prepares ControlNet
    hints: cropped about the centre to the target's aspect ratio, then resized nearest-exact.

    For a latent [B, 4, H, W] the ControlNet wants `fit_hint(image, 8 * H, 8 * W)`.
    """
    old_height, old_width = image.shape[-2:]
    old_aspect, new_aspect = old_width / old_height, width / height
    top = left = 0
    if old_aspect > new_aspect:
        left = round((old_width - old_width * new_aspect / old_aspect) / 2)
    elif old_aspect < new_aspect:
        top = round((old_height - old_height * old_aspect / new_aspect) / 2)
    cropped = image[..., top : old_height - top, left : old_width - left]
    if tuple(cropped.shape[-2:]) == (height, width):
        return cropped
    return F.interpolate(cropped, size=(height, width), mode="nearest-exact")


# --- layouts and loading ----------------------------------------------------------------------------

_HINT_CONV = re.compile(r"^input_hint_block\.(\d+)\.weight$")
_DIFFUSERS_HINT = re.compile(r"^controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(weight|bias)$")
_DIFFUSERS_ZERO = re.compile(r"^controlnet_down_blocks\.(\d+)\.(weight|bias)$")
_DIFFUSERS_RESNET = re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")
_LDM_LAYOUT = "an LDM ControlNet state dict (prefix control_model. stripped?)"


def controlnet_layout(state_dict: Mapping[str, torch.Tensor]) -> ControlNetLayout | None:
    """Which ControlNet layout the weights are in: "ldm" (the original, `control_model.` prefix or none),
    "diffusers" (diffusers' `ControlNetModel`), or None (T2I adapters, ControlLoRA, other families)."""
    if "input_hint_block.0.weight" in state_dict or LDM_PREFIX + "input_hint_block.0.weight" in state_dict:
        return "ldm"
    if "controlnet_cond_embedding.conv_in.weight" in state_dict:
        return "diffusers"
    return None


def _diffusers_unet_shape(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The two `config.json` values `unet_to_ldm` needs, read from the weights (ControlNet files are
    often downloaded without their config)."""
    resnets: dict[int, set[int]] = defaultdict(set)
    widths: dict[int, int] = {}
    for key, tensor in state_dict.items():
        match = _DIFFUSERS_RESNET.match(key)
        if match:
            level, index = int(match.group(1)), int(match.group(2))
            resnets[level].add(index)
            widths[level] = int(tensor.shape[0])
    if not resnets or sorted(resnets) != list(range(len(resnets))):
        raise CheckpointLayoutError("diffusers ControlNet", "down_blocks.0.resnets.0.conv1.weight", "missing")
    levels = range(len(resnets))
    return {
        "block_out_channels": tuple(widths[i] for i in levels),
        "layers_per_block": tuple(len(resnets[i]) for i in levels),
    }


def controlnet_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `ControlNetModel` weights -> the original layout (no `control_model.` prefix)."""
    hint_blocks = {int(m.group(2)) for k in state_dict if (m := _DIFFUSERS_HINT.match(k)) and m.group(2) is not None}
    # conv_in is conv 0 of the LDM stack, blocks.i conv 2 (i + 1) (SiLUs sit between), conv_out the last.
    hint_index = {"conv_in": 0, "conv_out": 2 * (len(hint_blocks) + 1)}
    converted: dict[str, torch.Tensor] = {}
    unet_part: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if hint := _DIFFUSERS_HINT.match(key):
            name, block, param = hint.groups()
            index = hint_index[name] if block is None else 2 * (int(block) + 1)
            converted[f"input_hint_block.{index}.{param}"] = tensor
        elif zero := _DIFFUSERS_ZERO.match(key):
            converted[f"zero_convs.{zero.group(1)}.0.{zero.group(2)}"] = tensor
        elif key.startswith("controlnet_mid_block."):
            converted[f"middle_block_out.0.{key.rsplit('.', 1)[1]}"] = tensor
        else:
            unet_part[key] = tensor
    try:
        converted.update(unet_to_ldm(unet_part, _diffusers_unet_shape(unet_part)))
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError("diffusers ControlNet", error.key, error.reason) from error
    return converted


def _ldm_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ControlNet's own tensors: a `control_model.` file may also bundle the whole SD model."""
    if LDM_PREFIX + "input_hint_block.0.weight" in state_dict:
        return {k[len(LDM_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(LDM_PREFIX)}
    return dict(state_dict)


def detect_hint_block(
    state_dict: Mapping[str, torch.Tensor], component: str = "ControlNet"
) -> tuple[int, tuple[int, ...]]:
    """The hint channels and hint stack widths (`ControlNetConfig`) of original-layout hint block weights."""
    first = require_key(state_dict, "input_hint_block.0.weight", component, _LDM_LAYOUT)
    convs = sorted(int(m.group(1)) for k in state_dict if (m := _HINT_CONV.match(k)))
    if len(convs) < 2 or len(convs) % 2 or convs != list(range(0, 2 * len(convs), 2)):
        raise CheckpointLayoutError(component, "input_hint_block", f"unexpected conv indices {convs}")
    # conv_in, then (same-width, strided widening) pairs, then the conv to the UNet width.
    widths = (int(first.shape[0]), *(int(state_dict[f"input_hint_block.{i}.weight"].shape[0]) for i in convs[2:-1:2]))
    return int(first.shape[1]), widths


def detect_controlnet_config(state_dict: Mapping[str, torch.Tensor]) -> ControlNetConfig:
    """The config of original-layout ControlNet weights (prefix stripped), from keys and shapes alone."""
    hint_channels, widths = detect_hint_block(state_dict)

    # The encoder is a UNet encoder: detect_unet_config reads it, given stand-ins for the two decoder keys
    # it also requires (the output count equals the input block count in every LDM UNet).
    conv_in = require_key(state_dict, "input_blocks.0.0.weight", "ControlNet", _LDM_LAYOUT)
    blocks = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("input_blocks."))
    stand_ins = {
        "out.2.weight": torch.empty(conv_in.shape[1], 0, device="meta"),
        f"output_blocks.{blocks - 1}.0.in_layers.2.weight": torch.empty(0, device="meta"),
    }
    try:
        unet = detect_unet_config({**state_dict, **stand_ins})
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError("ControlNet", error.key, error.reason) from error
    # Each decoder level mirrors its encoder level with one ResBlock more, as in every SD UNet.
    ends = [sum(unet.num_res_blocks[: i + 1]) - 1 for i in range(len(unet.num_res_blocks))]
    per_level = [(unet.transformer_depth[end], n + 1) for end, n in zip(ends, unet.num_res_blocks)]
    mirrored = tuple(depth for depth, count in reversed(per_level) for _ in range(count))
    return ControlNetConfig(replace(unet, transformer_depth_output=mirrored), hint_channels, widths)


#: Keys that mark control files of kinds `load_controlnet` does not build, and what each is.
_OTHER_KINDS = {
    "lora_controlnet": "a Control-LoRA (low-rank ControlNet weights over the base UNet's)",
    "task_embedding": "a union ControlNet (several control types in one model, chosen with SetUnionControlNetType)",
}


def is_difference_controlnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the file holds a "difference" ControlNet: weights stored minus those of the UNet it was trained
    beside (marked by a `difference` key), which only become a ControlNet added to a base UNet's own."""
    return "difference" in state_dict


def _add_base(weights: dict[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A difference ControlNet's weights plus the base UNet's of the same name, in the file's dtype (as ComfyUI
    adds them); the ControlNet's own layers (hint block, zero convs) have no counterpart and stay as stored."""
    total = dict(weights)
    for key, difference in weights.items():
        own = base.get(key)
        if own is None:
            continue
        if own.shape != difference.shape:
            raise CheckpointLayoutError(
                "difference ControlNet",
                key,
                f"has shape {tuple(difference.shape)}, the base UNet's {tuple(own.shape)}: made for another UNet",
            )
        total[key] = difference + own.to(difference.device, difference.dtype)
    return total


def load_controlnet(
    state_dict: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None = None
) -> ControlNet:
    """A ControlNet around the weights of a ControlNet file in either layout; the module adopts the
    tensors as they are (dtype included). Raises `CheckpointLayoutError` naming the first key at fault.

    A difference ControlNet (`is_difference_controlnet`) needs `base`: the weights of the UNet it is applied to,
    by LDM name without prefix (`input_blocks.1.0.in_layers.2.weight` ...), each added to the stored difference
    of the same name. `base` is ignored for an ordinary ControlNet.
    """
    for marker, kind in _OTHER_KINDS.items():
        if marker in state_dict or LDM_PREFIX + marker in state_dict:
            raise CheckpointLayoutError(
                "ControlNet", marker, f"{kind}: load it with diffusion.control_models.load_control_model"
            )
    layout = controlnet_layout(state_dict)
    if layout is None:
        raise CheckpointLayoutError(
            "ControlNet", "input_hint_block.0.weight", "missing; not a ControlNet in the original or diffusers layout"
        )
    weights = _ldm_weights(state_dict) if layout == "ldm" else controlnet_to_ldm(state_dict)
    if is_difference_controlnet(state_dict):
        if base is None:
            raise CheckpointLayoutError(
                "ControlNet",
                "difference",
                "this is a 'difference' ControlNet, stored relative to the UNet it was trained beside: load it with "
                "DiffControlNetLoader (Load ControlNet Model (diff)) and the MODEL to add it to",
            )
        weights = _add_base({k: v for k, v in weights.items() if k != "difference"}, base)
    config = detect_controlnet_config(weights)
    with torch.device("meta"):
        model = ControlNet(config)
    load_exact(model, weights, "ControlNet")
    return model


def tiny_controlnet_tensors(unet: UNetConfig, seed: int = 0, prefix: str = LDM_PREFIX) -> dict[str, torch.Tensor]:
    """A random ControlNet for `unet` (e.g. a tiny config of `diffusion.tiny`) in the original layout.

    Zero convs and norms are random too: zero residuals or identity norms would hide layout mistakes.
    """
    # Imported here: diffusion.tiny pulls in the checkpoint and text-encoder packages, which loaders of
    # ControlNet files (diffusion.checkpoint) must be able to import this module without.
    from diffusion.tiny import randomize_norms, seeded_rng

    with seeded_rng(seed):
        model = ControlNet(ControlNetConfig(unet))
        randomize_norms(model)
        with torch.no_grad():
            for conv in [*model.zero_convs, model.middle_block_out]:
                for parameter in conv.parameters():
                    parameter.normal_(0.0, 0.05 if parameter.ndim > 1 else 0.02)
    return {prefix + k: v.detach().contiguous() for k, v in model.state_dict().items()}
