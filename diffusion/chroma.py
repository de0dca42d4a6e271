"""Chroma (lodestone-rock 2025), FLUX.1-schnell's blocks without their modulation MLPs, loaded from the original files.

Users have `Chroma1-HD.safetensors` (and its fp8 variants) in the original layout, the one ComfyUI reads: FLUX.1's
key names (`img_in`, `txt_in`, `double_blocks.N.*`, `single_blocks.N.*`, `final_layer.linear`) minus every
modulation projection (`img_mod`, `txt_mod`, `modulation`, `final_layer.adaLN_modulation`) and minus `time_in`,
`vector_in` and `guidance_in`, plus `distilled_guidance_layer.*`. Module names here reproduce those keys, so a state
dict loads strictly with no renaming.

What differs from FLUX.1 (`diffusion.flux`, whose blocks, RoPE and patching are reused as they are):

- No pooled CLIP vector and no per-block adaLN projections. One MLP, the "distilled guidance layer" (an
  approximator: `in_proj`, then residual `layers.N` of linear-SiLU-linear each after an RMSNorm `norms.N`, then
  `out_proj`), maps one input row per modulation vector to that vector. A row is the concatenation of three
  sinusoids (cosines first): of sigma x 1000 (a quarter of the input width, 16), of the guidance, always 0 (a
  quarter, 16), and of the vector's index x 1000 (half, 32).
- There are ``3 x single + 12 x double + 2`` vectors (344 for the release), in this order: each single block's
  (shift, scale, gate); each double block's image-stream (shift, scale, gate) for attention then for the MLP;
  the same for the text stream; then the final layer's shift and scale.
- T5's padding is masked: the transformer attends to each prompt's tokens (its end token included) and to one
  padding token after them, never to the rest (Chroma's model card, "MMDiT masking": with no padding at all the
  model falls out of distribution). Tokens past that are dropped before the blocks, which is exact: text tokens
  all sit at RoPE position 0, so nothing else depends on how many there are.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from diffusion.flux import (
    PATCH,
    DoubleStreamBlock,
    MLPEmbedder,
    Modulated,
    RMSNorm,
    RotaryEmbedding,
    SingleStreamBlock,
    block_shapes,
    blocks_to_skip,
    image_position_ids,
    pad_to_patches,
    patchify,
    unpatchify,
)
from diffusion.fused_linear import FusedLinear
from diffusion.unet import timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

__all__ = ["ATTENDED_PADDING", "ChromaConfig", "ChromaTransformer", "chroma_config_from_state_dict", "load_chroma"]

_COMPONENT = "Chroma"
_LAYOUT = "a Chroma transformer in the original (lodestone / ComfyUI) layout (prefix stripped?)"
_required = functools.partial(require_key, component=_COMPONENT, layout=_LAYOUT)
_APPROXIMATOR_LAYER = re.compile(r"^distilled_guidance_layer\.layers\.(\d+)\.")
# Sigma, and the index of each modulation vector, enter the sinusoids times 1000, as in FLUX.1's time embedding.
_TIME_FACTOR = 1000.0
_NORM_EPS = 1e-6
#: Padding tokens after each prompt that the transformer attends to (Chroma's training rule).
ATTENDED_PADDING = 1


@dataclass(frozen=True)
class ChromaConfig:
    """Constructor arguments of the Chroma transformer; the defaults are Chroma1-HD's (and every Chroma1 release's).

    `in_channels` and `out_channels` count token features (16 latent channels x a 2x2 patch). The approximator
    maps `approximator_in_dim` sinusoid features through `approximator_depth` residual layers
    `approximator_hidden` wide to one `hidden_size`-wide vector per modulation.
    """

    in_channels: int = 64
    out_channels: int = 64
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    context_dim: int = 4096
    axes_dim: tuple[int, ...] = (16, 56, 56)
    mlp_ratio: float = 4.0
    theta: float = 10000.0
    approximator_in_dim: int = 64
    approximator_hidden: int = 5120
    approximator_depth: int = 5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not a multiple of {self.num_heads} heads")
        if sum(self.axes_dim) != self.head_dim or any(dim % 2 for dim in self.axes_dim):
            raise ValueError(f"RoPE axes {self.axes_dim} must be even and sum to the head width {self.head_dim}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % (PATCH * PATCH):
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of the {PATCH}x{PATCH} patch")
        if self.approximator_in_dim % 8:
            raise ValueError(
                f"approximator_in_dim {self.approximator_in_dim} must split into sinusoids of 1/4, 1/4 and 1/2 of it,"
                " each of even width"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def latent_channels(self) -> int:
        return self.in_channels // (PATCH * PATCH)

    @property
    def modulation_count(self) -> int:
        """Modulation vectors the approximator yields: 3 per single block, 2 x 6 per double block, 2 final."""
        return 3 * self.depth_single_blocks + 12 * self.depth + 2


def chroma_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None
) -> ChromaConfig:
    """The config of a Chroma state dict in the original layout (keys without `model.diffusion_model.`).

    Everything but the RoPE split is in the shapes (`diffusion.flux.block_shapes`); the approximator's widths are
    those of `distilled_guidance_layer.in_proj`, its depth the number of `layers.N`. `axes_dim` defaults to the
    release's (16, 56, 56), which only fits 128-wide heads.
    """
    in_proj = _required(state_dict, "distilled_guidance_layer.in_proj.weight")
    shapes = block_shapes(state_dict, axes_dim, _COMPONENT, _LAYOUT)
    out_proj = _required(state_dict, "distilled_guidance_layer.out_proj.weight")
    if int(out_proj.shape[0]) != shapes.hidden_size:
        raise CheckpointLayoutError(
            _COMPONENT,
            "distilled_guidance_layer.out_proj.weight",
            f"yields {int(out_proj.shape[0])}-wide vectors for a {shapes.hidden_size}-wide model",
        )
    layers = {int(match.group(1)) for key in state_dict if (match := _APPROXIMATOR_LAYER.match(key))}
    return ChromaConfig(
        **shapes._asdict(),
        approximator_in_dim=int(in_proj.shape[1]),
        approximator_hidden=int(in_proj.shape[0]),
        approximator_depth=max(layers) + 1 if layers else 0,
    )


class Approximator(nn.Module):
    """`distilled_guidance_layer`: sinusoid rows -> modulation vectors, through residual MLPs after RMSNorms.

    The norms use FLUX.1's RMSNorm (eps 1e-6), as the original code does; diffusers' `nn.RMSNorm` takes the
    dtype's epsilon instead, a difference far below the parity tolerance.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int) -> None:
        super().__init__()
        self.in_proj = FusedLinear(in_dim, hidden)
        self.layers = nn.ModuleList(MLPEmbedder(hidden, hidden) for _ in range(depth))
        self.norms = nn.ModuleList(RMSNorm(hidden) for _ in range(depth))
        self.out_proj = FusedLinear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms):
            x = x + layer(norm(x))
        return self.out_proj(x)


class FinalLayer(nn.Module):
    """LayerNorm, the approximator's last shift and scale, then the projection to patches (no weights of its own
    for the modulation, unlike FLUX.1's)."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=_NORM_EPS)
        self.linear = FusedLinear(dim, out_features)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.addcmul(shift, self.norm_final(x), 1 + scale))


def _triples(vectors: torch.Tensor, start: int, count: int) -> list[Modulated]:
    """`count` consecutive (shift, scale, gate) triples of [B, N, dim] modulation vectors from index `start`,
    each part [B, 1, dim]."""
    return [Modulated(*vectors[:, i : i + 3].split(1, dim=1)) for i in range(start, start + 3 * count, 3)]


class ChromaTransformer(nn.Module):
    """`chroma(x, timesteps, context, context_lengths=None)` -> the flow (velocity) prediction.

    Computes in the dtype of its layers (`dtype`); inputs are cast at the entry and the output is cast back to
    ``x``'s dtype. The weights may be stored narrower than they compute (`diffusion.stored_weights`).
    """

    def __init__(self, config: ChromaConfig) -> None:
        super().__init__()
        self.config = config
        dim, heads, mlp_hidden = config.hidden_size, config.num_heads, config.mlp_hidden_size
        self.img_in = FusedLinear(config.in_channels, dim)
        self.txt_in = FusedLinear(config.context_dim, dim)
        self.distilled_guidance_layer = Approximator(
            config.approximator_in_dim, config.approximator_hidden, dim, config.approximator_depth
        )
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(dim, heads, mlp_hidden, modulation=False) for _ in range(config.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(dim, heads, mlp_hidden, modulation=False) for _ in range(config.depth_single_blocks)
        )
        self.final_layer = FinalLayer(dim, config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.computes_in

    def modulations(self, sigmas: torch.Tensor) -> torch.Tensor:
        """[B] sigmas -> [B, modulation_count, hidden_size] modulation vectors, in the compute dtype.

        They depend on sigma alone, so each distinct sigma of the batch (cond and uncond share theirs) is run once.
        """
        config = self.config
        quarter = config.approximator_in_dim // 4
        distinct, which = torch.unique(sigmas, return_inverse=True)
        count, rows = distinct.shape[0], config.modulation_count
        index = torch.arange(rows, dtype=torch.float32, device=sigmas.device) * _TIME_FACTOR
        rows_in = torch.cat(
            (
                timestep_embedding(distinct * _TIME_FACTOR, quarter)[:, None].expand(count, rows, quarter),
                timestep_embedding(torch.zeros_like(distinct), quarter)[:, None].expand(count, rows, quarter),
                timestep_embedding(index, 2 * quarter)[None].expand(count, rows, 2 * quarter),
            ),
            dim=-1,
        )
        return self.distilled_guidance_layer(rows_in.to(self.dtype))[which]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        context_lengths: torch.Tensor | Sequence[int] | None = None,
        skip_double: Collection[int] = (),
        skip_single: Collection[int] = (),
    ) -> torch.Tensor:
        """Predict the flow of a latent.

        x: [B, 16, H, W] (odd H or W are padded and the output cropped back). timesteps: [B] (or a scalar) sigma in
        [0, 1]. context: [B, T, context_dim] T5 states, each prompt's tokens first, then padding. context_lengths:
        [B] tokens of each prompt, its end token included (the sum of the T5 tokenizer's attention mask); the
        model attends to those and `ATTENDED_PADDING` padding token after them. None attends to every context
        token, as ComfyUI does when the tokenizer already stops one padding token after the prompt.
        skip_double, skip_single: blocks that pass their tokens through unchanged (skip-layer guidance).
        Returns [B, 16, H, W].
        """
        config = self.config
        self._check_inputs(x, context)
        skipped_double = blocks_to_skip(skip_double, config.depth, "double")
        skipped_single = blocks_to_skip(skip_single, config.depth_single_blocks, "single")
        batch, _, height, width = x.shape
        out_dtype, dtype, device = x.dtype, self.dtype, x.device

        sigmas = torch.as_tensor(timesteps, dtype=torch.float32, device=device).reshape(-1).expand(batch)
        vectors = self.modulations(sigmas)
        kept = self._attended_text(context, context_lengths)
        txt = self.txt_in(context[:, : int(kept.max())].to(dtype))

        padded = pad_to_patches(x.to(dtype))
        rows, cols = padded.shape[-2] // PATCH, padded.shape[-1] // PATCH
        img = self.img_in(patchify(padded))
        ids = torch.cat((torch.zeros(txt.shape[1], 3, device=device), image_position_ids(rows, cols, device=device)))
        rope = RotaryEmbedding.of(ids, config.axes_dim, config.theta)
        mask = self._key_mask(kept, txt.shape[1], img.shape[1], device)

        singles, doubles = config.depth_single_blocks, config.depth
        for i, double in enumerate(cast(Sequence[DoubleStreamBlock], self.double_blocks)):
            if i in skipped_double:
                continue
            img_mods = _triples(vectors, 3 * singles + 6 * i, 2)
            txt_mods = _triples(vectors, 3 * singles + 6 * doubles + 6 * i, 2)
            img, txt = double.modulated(img, txt, img_mods, txt_mods, rope, mask)
        joint = torch.cat((txt, img), dim=1)
        for i, single in enumerate(cast(Sequence[SingleStreamBlock], self.single_blocks)):
            if i in skipped_single:
                continue
            (mod,) = _triples(vectors, 3 * i, 1)
            joint = single.modulated(joint, mod, rope, mask)
        out = self.final_layer(joint[:, txt.shape[1] :], vectors[:, -2:-1], vectors[:, -1:])
        return unpatchify(out, rows, cols)[:, :, :height, :width].to(out_dtype)

    def _attended_text(
        self, context: torch.Tensor, context_lengths: torch.Tensor | Sequence[int] | None
    ) -> torch.Tensor:
        """[B] text tokens each item attends to: its prompt and `ATTENDED_PADDING` more, within the context."""
        batch, tokens = context.shape[:2]
        if context_lengths is None:
            return torch.full((batch,), tokens, dtype=torch.long)
        lengths = torch.as_tensor(context_lengths, dtype=torch.long).reshape(-1).cpu()
        if lengths.shape[0] != batch or bool((lengths < 0).any()) or bool((lengths > tokens).any()):
            raise ValueError(
                f"context_lengths must give one length in [0, {tokens}] per batch item ({batch}),"
                f" got {lengths.tolist()}"
            )
        return torch.clamp(lengths + ATTENDED_PADDING, max=tokens)

    @staticmethod
    def _key_mask(kept: torch.Tensor, text_tokens: int, image_tokens: int, device: torch.device) -> torch.Tensor | None:
        """[B, 1, 1, text + image] True for the keys each item attends to, or None where that is every key."""
        if bool((kept == text_tokens).all()):
            return None
        text = torch.arange(text_tokens)[None, :] < kept[:, None]
        keys = torch.cat((text, torch.ones(kept.shape[0], image_tokens, dtype=torch.bool)), dim=1)
        return keys[:, None, None, :].to(device)

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor) -> None:
        config = self.config
        if x.ndim != 4 or x.shape[1] != config.latent_channels:
            raise ValueError(f"x must be [B, {config.latent_channels}, H, W], got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != config.context_dim or context.shape[0] != x.shape[0]:
            raise ValueError(f"context must be [{x.shape[0]}, T, {config.context_dim}], got {tuple(context.shape)}")


def load_chroma(state_dict: Mapping[str, torch.Tensor], config: ChromaConfig | None = None) -> ChromaTransformer:
    """Build a Chroma transformer around original-layout weights (prefix `model.diffusion_model.` stripped).

    The config is read from the weights unless given. The module adopts the tensors as they are, each in its own
    dtype (fp8 mixed files keep their fp8 linears beside bf16 norms), built on the meta device, so loading costs
    no initialisation and no second copy; a scaled-fp8 file's weight scales go to their layers. A state dict of
    another layout (FLUX.1's, diffusers') raises `CheckpointLayoutError` naming the first key missing, unexpected
    or misshapen.
    """
    config = chroma_config_from_state_dict(state_dict) if config is None else config
    with torch.device("meta"):
        model = ChromaTransformer(config)
    load_exact(model, state_dict, _COMPONENT)
    return model
