"""FLUX.1 ControlNets in plain torch: InstantX / Shakker-Labs (diffusers' layout) and XLabs (Black Forest Labs').

Both are a shortened copy of the FLUX transformer (a few double-stream blocks, maybe single-stream blocks, no final
layer) that sees the control signal added to its image tokens; after each block a linear "zero" layer
(`controlnet_blocks.N`, `controlnet_single_blocks.N`) turns the image tokens into a residual that the real
transformer adds to its own image tokens after its blocks (`FluxTransformer.forward(control=...)`).

The two published kinds differ in what the control signal is and how their few residuals spread over the
transformer's 19 double (and 38 single) blocks:

- InstantX (`InstantX/FLUX.1-dev-Controlnet-Canny`, `-Union`; `Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro`,
  `-Depth`), files in the layout of diffusers' `FluxControlNetModel` (`transformer_blocks.N.attn.to_q`,
  `controlnet_x_embedder`, ...). The hint is a **VAE latent** of the control image: ComfyUI's
  ControlNetApplyAdvanced takes the `vae` input, fits the image to 8x the latent's size, encodes it and applies
  FLUX's latent format `process_in`, ``(z - 0.1159) * 0.3611`` (diffusers: ``(z - shift_factor) *
  scaling_factor``). That latent is patchified like the noisy one and enters through `controlnet_x_embedder`
  (`pos_embed_input` here). Residual k of n serves the ``ceil(19 / n)`` consecutive blocks from
  ``k * ceil(19 / n)`` on (likewise for single blocks). Union models (`controlnet_mode_embedder`) take a mode
  index whose embedding is prepended to the text tokens (RoPE id zero); ComfyUI's SetUnionControlNetType sets it,
  and without one no token is added ("auto").
- XLabs (`XLabs-AI/flux-controlnet-*-v3`), files in Black Forest Labs' names (`double_blocks.N.img_attn.qkv`)
  plus `controlnet_blocks.N`, `pos_embed_input` and `input_hint_block`. The hint is the **control image**
  itself, [B, 3, 8H, 8W] in 0..1 (no VAE: ComfyUI loads it with `compression_ratio` 8 and no latent format);
  it is mapped to -1..1 and brought to the latent's size by `input_hint_block` (eight 3x3 convolutions to 16
  channels, three of them strided), then patchified to 64 features. Its two residuals **cycle** over the
  double blocks (block i takes residual ``i mod n``, XLabs' own ``index_block % 2``); it has no single blocks.

ComfyUI adds these residuals where this module's `BlockResiduals` puts them (its ControlNetFlux expands them to
one per block the same way), and so does diffusers' `FluxTransformer2DModel` (`controlnet_block_samples`,
`controlnet_single_block_samples`, `controlnet_blocks_repeat` for XLabs). The ControlNet takes exactly what the
transformer takes at that step: the noisy latent (flow models scale nothing), sigma, T5 states, pooled CLIP-L
and the distilled guidance.

TheMisto.ai's Mistoline (`controlnet_blocks.N.linear`) is refused by name: Loom does not load it yet.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from diffusion.dit_diffusers_layout import OriginalLayer, flux_diffusers_layers
from diffusion.flux import (
    PATCH,
    FluxConfig,
    FluxTransformer,
    FluxTrunk,
    RotaryEmbedding,
    image_position_ids,
    pad_to_patches,
    patchify,
)
from diffusion.fused_linear import FusedLinear
from diffusion.packed_conv import PackedConv2d
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

__all__ = [
    "BlockResiduals",
    "FluxControlNet",
    "FluxControlNetConfig",
    "FluxControlNetStyle",
    "flux_controlnet_config_from_state_dict",
    "flux_controlnet_style",
    "instantx_to_original",
    "is_flux_controlnet",
    "load_flux_controlnet",
    "original_to_instantx",
    "spread_over_blocks",
    "tiny_flux_controlnet_tensors",
]

FluxControlNetStyle = Literal["instantx", "xlabs"]

_COMPONENT = "FLUX ControlNet"
_DEFAULT_AXES_DIM = (16, 56, 56)
HINT_WIDTH = 16  # XLabs' input_hint_block works at 16 channels throughout
_HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)  # its eight convolutions, at indices 0, 2, ..., 14 (SiLUs between)


# ---------------------------------------------------------------- residuals


@dataclass(frozen=True)
class BlockResiduals:
    """What ControlNets add to a DiT's image tokens: one entry per transformer block, None where nothing is added.

    `double` holds one entry per double-stream block (an MMDiT's joint blocks, FLUX's `double_blocks`) or is
    empty; `single` one per FLUX single-stream block or is empty. Each tensor is [B, image tokens, hidden] and is
    added to the block's image tokens right after the block (for a single block, to the image part of the joint
    sequence). These are ComfyUI's `control["input"]` / `control["output"]` for DiTs.
    """

    double: tuple[torch.Tensor | None, ...]
    single: tuple[torch.Tensor | None, ...] = ()

    def tensors(self) -> list[torch.Tensor | None]:
        """Every entry, None included, double blocks first: for code that treats them alike."""
        return [*self.double, *self.single]

    def mapped(self, apply: Callable[[torch.Tensor], torch.Tensor]) -> BlockResiduals:
        """`apply` on every present entry, the Nones kept where they are."""

        def each(entries: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
            return tuple(None if r is None else apply(r) for r in entries)

        return BlockResiduals(each(self.double), each(self.single))

    def scaled(self, strength: float) -> BlockResiduals:
        """Every residual times `strength` (ControlNetApply's strength); new tensors, these untouched."""
        return self.mapped(lambda r: r * strength)

    def __add__(self, other: BlockResiduals) -> BlockResiduals:
        """Two ControlNets applied together: summed block by block, None counting as zero."""
        if not isinstance(other, BlockResiduals):
            return NotImplemented
        return BlockResiduals(
            _sum_all(self.double, other.double, "double"), _sum_all(self.single, other.single, "single")
        )

    def to(self, device: torch.device | str) -> BlockResiduals:
        """The same residuals on `device` (these themselves where they already are)."""
        return self.mapped(lambda r: r.to(device))


def _sum_all(
    mine: tuple[torch.Tensor | None, ...], theirs: tuple[torch.Tensor | None, ...], kind: str
) -> tuple[torch.Tensor | None, ...]:
    if not mine or not theirs:
        return mine or theirs
    if len(mine) != len(theirs):
        raise ValueError(
            f"cannot add residuals for {len(mine)} and {len(theirs)} {kind} blocks (made for different transformers?)"
        )
    return tuple(b if a is None else a if b is None else a + b for a, b in zip(mine, theirs))


def spread_over_blocks(outputs: Sequence[torch.Tensor], blocks: int, cycle: bool = False) -> tuple[torch.Tensor, ...]:
    """A ControlNet's per-block `outputs` laid over a transformer's `blocks`, ComfyUI's way.

    Stretched (default): each output serves ``ceil(blocks / len(outputs))`` consecutive blocks, the last ones
    possibly fewer (diffusers' ``index // ceil(interval)``). Cycled (XLabs): block i takes output ``i mod n``.
    """
    if not outputs:
        return ()
    if cycle:
        return tuple(outputs[i % len(outputs)] for i in range(blocks))
    run = -(-blocks // len(outputs))
    return tuple(outputs[i // run] for i in range(blocks))


# ---------------------------------------------------------------- config and detection


@dataclass(frozen=True)
class FluxControlNetConfig:
    """A FLUX ControlNet: its transformer part (`blocks`: `depth` double and `depth_single_blocks` single blocks,
    no final layer, whose `out_channels` means nothing here), its `style`, how many token features the hint gives
    `pos_embed_input` (64: a 16-channel latent or XLabs' 16 hint channels, patchified) and the union modes
    (`controlnet_mode_embedder` rows; 0 for single-purpose ControlNets)."""

    blocks: FluxConfig
    style: FluxControlNetStyle
    hint_features: int = 64
    union_modes: int = 0

    def __post_init__(self) -> None:
        if self.style == "xlabs" and self.hint_features != HINT_WIDTH * PATCH * PATCH:
            raise ValueError(f"an XLabs hint is {HINT_WIDTH * PATCH * PATCH} features, not {self.hint_features}")
        if self.hint_features % (PATCH * PATCH):
            raise ValueError(f"hint_features {self.hint_features} is not a multiple of the {PATCH}x{PATCH} patch")

    @property
    def hint_channels(self) -> int:
        """Channels of the latent hint an InstantX ControlNet takes (16; 17 for those taking a mask too)."""
        return self.hint_features // (PATCH * PATCH)


_DOUBLE = re.compile(r"^double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_blocks\.(\d+)\.")
_DIFFUSERS_DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.")
_DIFFUSERS_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.")
_MISTOLINE_MARKER = "controlnet_blocks.0.linear.weight"


def flux_controlnet_style(state_dict: Mapping[str, torch.Tensor]) -> FluxControlNetStyle | None:
    """Which FLUX ControlNet a file holds, by ComfyUI's markers: "xlabs" (Black Forest Labs' block names with
    `controlnet_blocks`), "instantx" (diffusers' layout with `controlnet_x_embedder`), or None."""
    if "controlnet_blocks.0.weight" not in state_dict:
        return None
    if "double_blocks.0.img_attn.norm.key_norm.scale" in state_dict:
        return "xlabs"
    if "controlnet_x_embedder.weight" in state_dict:
        return "instantx"
    return None


def is_flux_controlnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the weights are a FLUX ControlNet ComfyUI's loader recognises: InstantX, XLabs or Mistoline (the last
    refused by `load_flux_controlnet`)."""
    return flux_controlnet_style(state_dict) is not None or _MISTOLINE_MARKER in state_dict


def _count(state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    indices = [int(m.group(1)) for key in state_dict if (m := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def _axes_for(head_dim: int, axes_dim: tuple[int, ...] | None) -> tuple[int, ...]:
    if axes_dim is not None:
        return tuple(axes_dim)
    if head_dim != sum(_DEFAULT_AXES_DIM):
        raise ValueError(f"heads are {head_dim} wide: give the RoPE axes_dim, the default fits 128 only")
    return _DEFAULT_AXES_DIM


def _diffusers_blocks_config(state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None) -> FluxConfig:
    """The transformer part of an InstantX (diffusers-layout) ControlNet, read from its shapes."""

    def required(key: str) -> torch.Tensor:
        return require_key(state_dict, key, _COMPONENT, "an InstantX FLUX ControlNet in diffusers' layout")

    hidden, in_channels = required("x_embedder.weight").shape
    depth, single = _count(state_dict, _DIFFUSERS_DOUBLE), _count(state_dict, _DIFFUSERS_SINGLE)
    prefix = "transformer_blocks.0." if depth else "single_transformer_blocks.0."
    head_dim = int(required(f"{prefix}attn.norm_q.weight").shape[0])
    mlp = required("transformer_blocks.0.ff.net.0.proj.weight" if depth else f"{prefix}proj_mlp.weight")
    return _blocks_config(
        hidden=int(hidden),
        in_channels=int(in_channels),
        head_dim=head_dim,
        blocks=(depth, single),
        context_dim=int(required("context_embedder.weight").shape[1]),
        vec_dim=int(required("time_text_embed.text_embedder.linear_1.weight").shape[1]),
        guidance_embed="time_text_embed.guidance_embedder.linear_1.weight" in state_dict,
        mlp_width=int(mlp.shape[0]),
        axes_dim=axes_dim,
    )


def _blocks_config(
    *,
    hidden: int,
    in_channels: int,
    head_dim: int,
    blocks: tuple[int, int],
    context_dim: int,
    vec_dim: int,
    guidance_embed: bool,
    mlp_width: int,
    axes_dim: tuple[int, ...] | None,
) -> FluxConfig:
    """The transformer part of a ControlNet from what its file's shapes say, in either key layout; ``blocks``
    is (double, single)."""
    return FluxConfig(
        in_channels=in_channels,
        out_channels=in_channels,
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        depth=blocks[0],
        depth_single_blocks=blocks[1],
        context_dim=context_dim,
        vec_dim=vec_dim,
        guidance_embed=guidance_embed,
        axes_dim=_axes_for(head_dim, axes_dim),
        mlp_ratio=mlp_width / hidden,
    )


def flux_controlnet_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None
) -> FluxControlNetConfig:
    """The config of a FLUX ControlNet in Black Forest Labs' names (an XLabs file, or an InstantX file after
    `instantx_to_original`). `axes_dim` defaults to the release's RoPE split, which fits 128-wide heads only."""
    style: FluxControlNetStyle = "xlabs" if "input_hint_block.0.weight" in state_dict else "instantx"

    def required(key: str) -> torch.Tensor:
        return require_key(state_dict, key, _COMPONENT, "a FLUX ControlNet in Black Forest Labs' block names")

    hidden, in_channels = required("img_in.weight").shape
    depth, single = _count(state_dict, _DOUBLE), _count(state_dict, _SINGLE)
    if not depth and not single:
        raise CheckpointLayoutError(_COMPONENT, "double_blocks.0", "missing; the ControlNet has no transformer block")
    if depth:
        head_dim = int(required("double_blocks.0.img_attn.norm.query_norm.scale").shape[0])
        mlp_width = int(required("double_blocks.0.img_mlp.0.weight").shape[0])
    else:
        head_dim = int(required("single_blocks.0.norm.query_norm.scale").shape[0])
        mlp_width = int(required("single_blocks.0.linear1.weight").shape[0]) - 3 * int(hidden)
    blocks = _blocks_config(
        hidden=int(hidden),
        in_channels=int(in_channels),
        head_dim=head_dim,
        blocks=(depth, single),
        context_dim=int(required("txt_in.weight").shape[1]),
        vec_dim=int(required("vector_in.in_layer.weight").shape[1]),
        guidance_embed="guidance_in.in_layer.weight" in state_dict,
        mlp_width=mlp_width,
        axes_dim=axes_dim,
    )
    modes = state_dict.get("controlnet_mode_embedder.weight")
    return FluxControlNetConfig(
        blocks=blocks,
        style=style,
        hint_features=int(required("pos_embed_input.weight").shape[1]),
        union_modes=0 if modes is None else int(modes.shape[0]),
    )


# ---------------------------------------------------------------- diffusers' layout <-> Black Forest Labs'

# ControlNet layers of InstantX files outside the transformer map: renamed whole.
_CONTROL_RENAMES = {"controlnet_x_embedder": "pos_embed_input"}
_CONTROL_PREFIXES = ("controlnet_blocks.", "controlnet_single_blocks.", "controlnet_mode_embedder.")
# QK-norm scales (no linear layers, so not in the LoRA layer map): diffusers name -> Black Forest Labs' name.
_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}


def _norm_names(config: FluxConfig) -> dict[str, str]:
    """diffusers QK-norm weight key -> Black Forest Labs' scale key, for every block of `config`."""
    names = {}
    for i in range(config.depth):
        for new, old in _DOUBLE_NORMS.items():
            names[f"transformer_blocks.{i}.{new}.weight"] = f"double_blocks.{i}.{old}.scale"
    for i in range(config.depth_single_blocks):
        for new, old in _SINGLE_NORMS.items():
            names[f"single_transformer_blocks.{i}.{new}.weight"] = f"single_blocks.{i}.{old}.scale"
    return names


def _control_name(key: str) -> str | None:
    """The Black Forest Labs-side name of a ControlNet-only key (the same but for `controlnet_x_embedder`)."""
    if key.startswith(_CONTROL_PREFIXES):
        return key
    layer, _, param = key.rpartition(".")
    renamed = _CONTROL_RENAMES.get(layer)
    return None if renamed is None else f"{renamed}.{param}"


def instantx_to_original(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None
) -> dict[str, torch.Tensor]:
    """An InstantX ControlNet (diffusers' `FluxControlNetModel` keys) in Black Forest Labs' names: q, k, v (and a
    single block's MLP input) fused back into `qkv` / `linear1`, `controlnet_x_embedder` as `pos_embed_input`.
    A key that belongs to neither raises `CheckpointLayoutError`."""
    config = _diffusers_blocks_config(state_dict, axes_dim)
    layers = flux_diffusers_layers(config)
    norms = _norm_names(config)
    converted: dict[str, torch.Tensor] = {}
    parts: dict[str, list[tuple[OriginalLayer, torch.Tensor]]] = defaultdict(list)
    for key, tensor in state_dict.items():
        control = _control_name(key)
        if control is not None:
            converted[control] = tensor
            continue
        if key in norms:
            converted[norms[key]] = tensor
            continue
        layer_name, _, param = key.rpartition(".")
        layer = layers.get(layer_name)
        if layer is None:
            raise CheckpointLayoutError(_COMPONENT, key, "not a layer of an InstantX FLUX ControlNet")
        parts[f"{layer.module}.{param}"].append((layer, tensor))
    for key, pieces in parts.items():
        converted[key] = _joined(key, pieces)
    return converted


def _joined(key: str, pieces: list[tuple[OriginalLayer, torch.Tensor]]) -> torch.Tensor:
    """One original tensor from the diffusers tensors that are row ranges of it, checking they tile it."""
    sliced = [(layer.rows, part) for layer, part in pieces if layer.rows is not None]
    if not sliced:
        return pieces[0][1]
    ranges = sorted((rows.start, rows.stop) for rows, _ in sliced)
    stops = [0] + [stop for _, stop in ranges]
    if len(sliced) != len(pieces) or any(start != stop for (start, _), stop in zip(ranges, stops)):
        raise CheckpointLayoutError(_COMPONENT, key, f"its parts cover rows {ranges}, not all of it")
    full = sliced[0][1].new_empty(stops[-1], *sliced[0][1].shape[1:])
    for rows, part in sliced:
        full[rows.start : rows.stop] = torch.cat(part.chunk(2)[::-1]) if rows.swapped else part
    return full


def original_to_instantx(
    state_dict: Mapping[str, torch.Tensor], config: FluxControlNetConfig
) -> dict[str, torch.Tensor]:
    """The inverse of `instantx_to_original`: Black Forest Labs-named InstantX weights in diffusers' keys, as the
    InstantX and Shakker-Labs files store them."""
    if config.style != "instantx":
        raise ValueError("only InstantX ControlNets are stored in diffusers' layout")
    layers = flux_diffusers_layers(config.blocks)
    originals = {original: new for new, original in _norm_names(config.blocks).items()}
    renames = {old: new for new, old in _CONTROL_RENAMES.items()}
    converted = {}
    for new, layer in layers.items():
        for param in ("weight", "bias"):
            tensor = state_dict.get(f"{layer.module}.{param}")
            if tensor is not None:
                rows = layer.rows
                part = tensor if rows is None else tensor[rows.start : rows.stop]
                if rows is not None and rows.swapped:
                    part = torch.cat(part.chunk(2)[::-1])
                converted[f"{new}.{param}"] = part
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        if key in originals:
            converted[originals[key]] = tensor
        elif key.startswith(_CONTROL_PREFIXES):
            converted[key] = tensor
        elif module in renames:
            converted[f"{renames[module]}.{param}"] = tensor
    return converted


# ---------------------------------------------------------------- the model


def _hint_block() -> nn.Sequential:
    """XLabs' `input_hint_block`: 3 -> 16 channels, then seven 16 -> 16 convolutions (strided at indices 4, 8
    and 12, so 8x down in all), SiLU between them and none after the last."""
    layers: list[nn.Module] = []
    channels = 3
    for stride in _HINT_STRIDES:
        layers += [PackedConv2d(channels, HINT_WIDTH, 3, padding=1, stride=stride), nn.SiLU()]
        channels = HINT_WIDTH
    return nn.Sequential(*layers[:-1])


class FluxControlNet(FluxTrunk):
    """`controlnet(x, hint, timesteps, context, y, guidance, transformer=flux)` -> `BlockResiduals` for `flux`.

    Computes in its parameters' dtype, like `FluxTransformer`; the residuals come back in x's dtype.
    """

    def __init__(self, config: FluxControlNetConfig) -> None:
        super().__init__(config.blocks)
        self.config = config
        blocks = config.blocks
        dim = blocks.hidden_size
        self.controlnet_blocks = nn.ModuleList(FusedLinear(dim, dim) for _ in range(blocks.depth))
        self.controlnet_single_blocks = nn.ModuleList(FusedLinear(dim, dim) for _ in range(blocks.depth_single_blocks))
        self.pos_embed_input = FusedLinear(config.hint_features, dim)
        if config.union_modes:
            self.controlnet_mode_embedder = nn.Embedding(config.union_modes, dim)
        if config.style == "xlabs":
            self.input_hint_block = _hint_block()

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
        *,
        transformer: FluxTransformer,
        mode: int | None = None,
    ) -> BlockResiduals:
        """The residuals this ControlNet adds to `transformer` at this step.

        x: [B, 16, H, W], the noisy latent `transformer` receives (without Fill/Canny conditioning channels);
        odd sides are wrapped to even as the transformer wraps them. timesteps: [B] or scalar sigma in [0, 1].
        context: [B, T, context_dim] T5 states; y: [B, vec_dim] pooled CLIP-L; guidance: the distilled guidance
        scale, required when the ControlNet has `guidance_in`. hint, [1 or B, ...]:
        InstantX: the control image's VAE latent after FLUX's `process_in`, [*, hint_channels, H, W];
        XLabs: the control image, [*, 3, 8H, 8W], values in 0..1.
        mode: a union ControlNet's mode index (None: no mode token); other ControlNets take none.
        """
        config, blocks = self.config, self.config.blocks
        hint = self._checked(x, hint, context, y, transformer, mode)
        batch, _, height, width = x.shape
        out_dtype, dtype, device = x.dtype, self.dtype, x.device

        tokens = patchify(pad_to_patches(x.to(dtype)))
        if config.style == "xlabs":
            hint = self.input_hint_block(hint.to(dtype) * 2 - 1)
        control = patchify(pad_to_patches(hint.to(dtype)))
        img = self.img_in(tokens) + self.pos_embed_input(control)

        vec = self.conditioning_vector(timesteps, guidance, y, batch, device, "FLUX ControlNet")
        txt = self.txt_in(context.to(dtype))
        if mode is not None:
            embedded = self.controlnet_mode_embedder(torch.tensor([mode], device=device)).to(dtype)
            txt = torch.cat((embedded.expand(batch, 1, -1), txt), dim=1)

        rows, cols = (height + 1) // PATCH, (width + 1) // PATCH
        ids = torch.cat((torch.zeros(txt.shape[1], 3, device=device), image_position_ids(rows, cols, device=device)))
        rope = RotaryEmbedding.of(ids, blocks.axes_dim, blocks.theta)

        double = []
        for block, zero in zip(self.double_blocks, self.controlnet_blocks):
            img, txt = block(img, txt, vec, rope)
            double.append(zero(img).to(out_dtype))
        joint = torch.cat((txt, img), dim=1)
        single = []
        for block, zero in zip(self.single_blocks, self.controlnet_single_blocks):
            joint = block(joint, vec, rope)
            single.append(zero(joint[:, txt.shape[1] :]).to(out_dtype))

        cycle = config.style == "xlabs"
        target = transformer.config
        return BlockResiduals(
            spread_over_blocks(double, target.depth, cycle), spread_over_blocks(single, target.depth_single_blocks)
        )

    def _checked(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        transformer: FluxTransformer,
        mode: int | None,
    ) -> torch.Tensor:
        """The hint expanded to x's batch, after checking every input against this ControlNet."""
        config, blocks = self.config, self.config.blocks
        if transformer.config.hidden_size != blocks.hidden_size:
            raise ValueError(
                f"this ControlNet is {blocks.hidden_size} wide, the transformer {transformer.config.hidden_size}"
            )
        if x.ndim != 4 or x.shape[1] != blocks.latent_channels:
            raise ValueError(f"x must be [B, {blocks.latent_channels}, H, W] (the noisy latent), got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != blocks.context_dim:
            raise ValueError(f"context must be [B, T, {blocks.context_dim}], got {tuple(context.shape)}")
        if y.ndim != 2 or y.shape[-1] != blocks.vec_dim:
            raise ValueError(f"y must be [B, {blocks.vec_dim}] (pooled CLIP-L), got {tuple(y.shape)}")
        if mode is not None and not 0 <= mode < config.union_modes:
            raise ValueError(
                f"mode {mode} is not one of this ControlNet's {config.union_modes} union modes"
                if config.union_modes
                else "this ControlNet is not a union ControlNet: it takes no mode"
            )
        scale = 8 if config.style == "xlabs" else 1
        channels = 3 if config.style == "xlabs" else config.hint_channels
        expected = (channels, x.shape[-2] * scale, x.shape[-1] * scale)
        if hint.ndim != 4 or tuple(hint.shape[1:]) != expected or hint.shape[0] not in (1, x.shape[0]):
            what = "control image" if config.style == "xlabs" else "control image's VAE latent"
            raise ValueError(
                f"the hint ({what}) must be [1 or {x.shape[0]}, {', '.join(map(str, expected))}] for latents "
                f"{tuple(x.shape)}, got {tuple(hint.shape)}"
            )
        return hint.expand(x.shape[0], -1, -1, -1)


# ---------------------------------------------------------------- loading


def load_flux_controlnet(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None
) -> FluxControlNet:
    """A FLUX ControlNet around the weights of an InstantX or XLabs file (detected by `flux_controlnet_style`).

    The module adopts the tensors as they are (dtype included); InstantX's separate q, k, v are fused into new
    tensors. `axes_dim` as in `flux_controlnet_config_from_state_dict`. Raises `CheckpointLayoutError` naming the
    first key at fault.
    """
    if _MISTOLINE_MARKER in state_dict:
        raise CheckpointLayoutError(_COMPONENT, _MISTOLINE_MARKER, "a Mistoline ControlNet, which Loom does not load")
    style = flux_controlnet_style(state_dict)
    if style is None:
        raise CheckpointLayoutError(
            _COMPONENT, "controlnet_blocks.0.weight", "not an InstantX or XLabs FLUX ControlNet"
        )
    weights = instantx_to_original(state_dict, axes_dim) if style == "instantx" else dict(state_dict)
    config = flux_controlnet_config_from_state_dict(weights, axes_dim)
    with torch.device("meta"):
        model = FluxControlNet(config)
    load_exact(model, weights, _COMPONENT)
    return model


def tiny_flux_controlnet_tensors(
    flux_config: FluxConfig, seed: int = 0, style: FluxControlNetStyle = "instantx", union_modes: int = 0
) -> dict[str, torch.Tensor]:
    """A random ControlNet for the FLUX transformer of `flux_config`, in the key layout its style's files have.

    InstantX: diffusers' names, one double and one single block (half the tiny transformer's singles, so both
    spreads are exercised), `union_modes` mode rows if asked. XLabs: Black Forest Labs' names, two double blocks
    (as every XLabs release) and the hint block. Every weight is random, zero layers and norm scales included.
    """
    # Imported here: diffusion.tiny pulls in the checkpoint and text-encoder packages.
    from diffusion.tiny import seeded_rng

    if style == "xlabs" and union_modes:
        raise ValueError("XLabs ControlNets have no union modes")
    blocks = FluxConfig(
        in_channels=flux_config.out_channels,
        out_channels=flux_config.out_channels,
        hidden_size=flux_config.hidden_size,
        num_heads=flux_config.num_heads,
        depth=2 if style == "xlabs" else 1,
        depth_single_blocks=0 if style == "xlabs" else max(1, flux_config.depth_single_blocks // 2),
        context_dim=flux_config.context_dim,
        vec_dim=flux_config.vec_dim,
        guidance_embed=flux_config.guidance_embed,
        axes_dim=flux_config.axes_dim,
        mlp_ratio=flux_config.mlp_ratio,
    )
    config = FluxControlNetConfig(blocks, style, union_modes=union_modes)
    with seeded_rng(seed):
        model = FluxControlNet(config)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(".scale"):
                    parameter.uniform_(0.5, 1.5)
                elif name.startswith(("controlnet_", "pos_embed_input")):
                    parameter.normal_(0.0, 0.05)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return original_to_instantx(weights, config) if style == "instantx" else weights
