"""Patches that change what the LDM UNet computes without touching its weights, at ComfyUI's patch points.

A ``UNetPatches`` value holds zero or more small callables, each with the data it needs, and
``UNetModel.forward(..., patches=...)`` runs them at the points ComfyUI's UNet names:

- ``input_block_patch(h, where)``: after each input block, before its output becomes a skip;
  ``input_block_patch_after_skip(h, where)``: after the skip is kept, on the path to the next block only;
- ``output_block_patch(h, skip, where) -> (h, skip)``: before each output block concatenates its skip
  (a ControlNet's residual already added to the skip);
- ``attn1`` replacement ``(q, k, v, where) -> out``: the self-attention of every transformer block, on the
  projected queries, keys and values ``[B, N, heads * dim_head]``, returning what the output projection
  takes. The last replacement set wins, as a ComfyUI ``set_model_attn1_replace`` does.

Every call gets its place (``BlockId``: ComfyUI's ``transformer_options["block"]``, such as ``("input", 3)``),
the latent's shape (``["original_shape"]``) and the model call's timesteps: where ComfyUI hands patches the
sigmas, a patch that needs sigma maps the timesteps back through the model's sampling.

The patches ComfyUI's built-in nodes set live here too: FreeU and FreeU v2 (Si et al. 2023, "FreeU: Free
Lunch in Diffusion U-Net"), HyperTile's tiled self-attention (tfernd/HyperTile, as ComfyUI computes it) and
Kohya's "Deep Shrink" (``PatchModelAddDownscale``).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from diffusion.attention import BasicTransformerBlock, SpatialTransformer, merge_heads, split_heads

__all__ = [
    "AttentionContext",
    "Attn1Replace",
    "BlockId",
    "DownscaleAfterBlock",
    "FreeUScaling",
    "HyperTileAttention",
    "InputBlockPatch",
    "OutputBlockPatch",
    "PatchContext",
    "Resize",
    "TransformerRunner",
    "UNetPatches",
    "UpscaleToSkip",
    "attend",
    "freeu_scaling",
    "scale_low_frequencies",
]

BlockKind = Literal["input", "middle", "output"]
#: ``resize(h, width, height)``: feature maps ``[B, C, H, W]`` to a new size (Deep Shrink's methods).
Resize = Callable[[torch.Tensor, int, int], torch.Tensor]
#: Runs one ``SpatialTransformer`` on ``(x, context)`` in place of its own forward.
TransformerRunner = Callable[[SpatialTransformer, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockId:
    """A UNet stage as ComfyUI numbers them: ``input`` 0.. (0 is the first convolution), ``middle`` 0, ``output``
    0.. from the deepest."""

    kind: BlockKind
    index: int


@dataclass(frozen=True, eq=False)
class PatchContext:
    """What a patch is told about the call it runs in."""

    block: BlockId
    #: ``[B]``: the model call's timesteps (the sampler's sigmas through the model's own sampling).
    timesteps: torch.Tensor
    #: The latent's shape as the UNet received it (``[B, C, H, W]``).
    original_shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class AttentionContext(PatchContext):
    """A self-attention's place: its stage, which transformer block of that stage's transformer, its heads, and
    which side of the guidance each block of batch rows is (ComfyUI's ``cond_or_uncond``: 0 the positive, 1 the
    negative; empty when the guider does not say, ``CFGHooks.label_rows``)."""

    transformer_index: int
    heads: int
    cond_or_uncond: tuple[int, ...] = ()


class InputBlockPatch(Protocol):
    def __call__(self, h: torch.Tensor, where: PatchContext) -> torch.Tensor: ...


class OutputBlockPatch(Protocol):
    def __call__(
        self, h: torch.Tensor, skip: torch.Tensor, where: PatchContext
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class Attn1Replace(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttentionContext) -> torch.Tensor: ...


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on projected ``[B, N, heads * d]`` tensors, as ``CrossAttention`` computes it between
    its projections; ``q``'s batch may be a multiple of ``k``'s and ``v``'s only if the caller reshaped them."""
    return merge_heads(
        F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
    )


@dataclass(frozen=True)
class UNetPatches:
    """Zero or more patches for one UNet call; immutable, so handles that share one never see another's changes."""

    input_block: tuple[InputBlockPatch, ...] = ()
    input_block_after_skip: tuple[InputBlockPatch, ...] = ()
    output_block: tuple[OutputBlockPatch, ...] = ()
    attn1: Attn1Replace | None = None
    #: Which side each block of this call's batch rows is (``AttentionContext.cond_or_uncond``): set per call.
    cond_or_uncond: tuple[int, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.input_block or self.input_block_after_skip or self.output_block) and self.attn1 is None

    def with_input_block_patch(self, patch: InputBlockPatch, after_skip: bool = False) -> UNetPatches:
        if after_skip:
            return dataclasses.replace(self, input_block_after_skip=(*self.input_block_after_skip, patch))
        return dataclasses.replace(self, input_block=(*self.input_block, patch))

    def with_output_block_patch(self, patch: OutputBlockPatch) -> UNetPatches:
        return dataclasses.replace(self, output_block=(*self.output_block, patch))

    def with_attn1_replace(self, replace: Attn1Replace) -> UNetPatches:
        return dataclasses.replace(self, attn1=replace)

    def for_rows(self, cond_or_uncond: tuple[int, ...]) -> UNetPatches:
        """These patches for one call whose row blocks are the guidance sides ``cond_or_uncond``."""
        return dataclasses.replace(self, cond_or_uncond=cond_or_uncond)

    def apply_input_block(self, h: torch.Tensor, where: PatchContext) -> torch.Tensor:
        for patch in self.input_block:
            h = patch(h, where)
        return h

    def apply_input_block_after_skip(self, h: torch.Tensor, where: PatchContext) -> torch.Tensor:
        for patch in self.input_block_after_skip:
            h = patch(h, where)
        return h

    def apply_output_block(
        self, h: torch.Tensor, skip: torch.Tensor, where: PatchContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for patch in self.output_block:
            h, skip = patch(h, skip, where)
        return h, skip

    def transformer(self, where: PatchContext) -> TransformerRunner | None:
        """How the stage at ``where`` runs its transformers: None (their own forward) without an attn1 replacement."""
        replace = self.attn1
        if replace is None:
            return None
        labels = self.cond_or_uncond

        def run(transformer: SpatialTransformer, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return _run_spatial_transformer(transformer, x, context, replace, where, labels)

        return run


# The forwards of ``diffusion.attention.SpatialTransformer`` and ``BasicTransformerBlock``, op for op, with the
# self-attention between its projections handed to the replacement (tests check that ``attend`` as the
# replacement gives the unpatched UNet's output bit for bit).


def _run_spatial_transformer(
    transformer: SpatialTransformer,
    x: torch.Tensor,
    context: torch.Tensor,
    replace: Attn1Replace,
    where: PatchContext,
    cond_or_uncond: tuple[int, ...],
) -> torch.Tensor:
    b, _, h, w = x.shape
    h_in = transformer.norm(x)
    if not transformer.use_linear:
        h_in = transformer.proj_in(h_in)
    tokens = h_in.permute(0, 2, 3, 1).reshape(b, h * w, -1)
    if transformer.use_linear:
        tokens = transformer.proj_in(tokens)
    for index, block in enumerate(transformer.transformer_blocks):
        assert isinstance(block, BasicTransformerBlock)
        at = AttentionContext(
            where.block, where.timesteps, where.original_shape, index, block.attn1.heads, cond_or_uncond
        )
        tokens = _run_transformer_block(block, tokens, context, replace, at)
    if transformer.use_linear:
        tokens = transformer.proj_out(tokens)
    out = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    if not transformer.use_linear:
        out = transformer.proj_out(out)
    return x + out


def _run_transformer_block(
    block: BasicTransformerBlock,
    x: torch.Tensor,
    context: torch.Tensor,
    replace: Attn1Replace,
    where: AttentionContext,
) -> torch.Tensor:
    attn1 = block.attn1
    n = block.norm1(x)
    x = attn1.to_out(replace(attn1.to_q(n), attn1.to_k(n), attn1.to_v(n), where)).add_(x)
    x = block.attn2(block.norm2(x), context).add_(x)
    return block.ff(block.norm3(x)).add_(x)


# FreeU (Si et al. 2023): at the decoder stages, amplify half of the backbone's channels (b) and damp the skip's
# lowest frequencies (s), so the backbone's denoising dominates the skips' high-frequency detail.


def scale_low_frequencies(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` ``[..., H, W]`` with its lowest 2D frequencies, -1 and 0 on each axis, times ``scale``.

    FreeU's Fourier filter with ComfyUI's threshold 1: the 2 x 2 block around the centre of the shifted spectrum
    (shifted rows ``H // 2 - 1`` and ``H // 2``, likewise columns) is those four unshifted frequencies. Computed in
    float32, returned in ``x``'s dtype; the real part of the inverse transform, as the published code takes it.
    """
    if scale == 1.0:
        return x
    spectrum = torch.fft.fft2(x.float())
    rows, cols = x.shape[-2:]
    mask = torch.ones(rows, cols, device=x.device)
    low_rows = torch.tensor(sorted({0, rows - 1}), device=x.device)
    low_cols = torch.tensor(sorted({0, cols - 1}), device=x.device)
    mask[low_rows[:, None], low_cols] = scale
    return torch.fft.ifft2(spectrum * mask).real.to(x.dtype)


@dataclass(frozen=True)
class FreeUScaling:
    """FreeU's ``output_block_patch``: where the decoder's features have ``channels`` (model_channels x 4 and x 2 in
    ComfyUI's nodes), the first half of the backbone ``h`` times ``backbone`` and the skip's low frequencies times
    ``skip``. With ``mean_normalised`` (FreeU v2) the backbone factor varies per position:
    ``(backbone - 1) * m + 1``, ``m`` the channel mean of ``h`` min-max normalised over each picture."""

    scales: tuple[tuple[int, float, float], ...]  # (channels, backbone, skip)
    mean_normalised: bool = False

    def __call__(self, h: torch.Tensor, skip: torch.Tensor, where: PatchContext) -> tuple[torch.Tensor, torch.Tensor]:
        found = [(backbone, s) for channels, backbone, s in self.scales if channels == h.shape[1]]
        if not found:
            return h, skip
        backbone, s = found[0]
        if backbone != 1.0:
            half = h.shape[1] // 2
            h = torch.cat([h[:, :half] * self._factor(h, backbone), h[:, half:]], dim=1)
        return h, scale_low_frequencies(skip, s)

    def _factor(self, h: torch.Tensor, backbone: float) -> float | torch.Tensor:
        if not self.mean_normalised:
            return backbone
        mean = h.mean(1, keepdim=True)
        flat = mean.reshape(mean.shape[0], -1)
        low = flat.min(dim=-1).values.reshape(-1, 1, 1, 1)
        high = flat.max(dim=-1).values.reshape(-1, 1, 1, 1)
        return (backbone - 1.0) * ((mean - low) / (high - low)) + 1.0


def freeu_scaling(
    model_channels: int, b1: float, b2: float, s1: float, s2: float, mean_normalised: bool = False
) -> FreeUScaling:
    """ComfyUI's FreeU / FreeU_V2: (b1, s1) where the decoder has 4 x model_channels, (b2, s2) where it has 2 x."""
    return FreeUScaling(((model_channels * 4, b1, s1), (model_channels * 2, b2, s2)), mean_normalised)


# HyperTile (tfernd/HyperTile): self-attention over tiles of the feature map instead of all of it.


@dataclass(frozen=True)
class HyperTileAttention:
    """HyperTile's self-attention, as ComfyUI's HyperTile node computes it.

    Applies where the attention's token count is the latent's ``H x W`` divided by ``4 ** d`` for a depth ``d`` up
    to ``max_depth``. Tiles are at least ``max(32, tile_size) // 8`` latent cells (times ``2 ** d`` with
    ``scale_depth``); the number of tiles per axis is ``n / t`` for the smallest ``swap_size`` divisors ``t`` of
    the side ``n`` from that size up, one of them drawn (ComfyUI's ``randint(0, len - 1)``, whose exclusive end
    never draws the last candidate: with ``swap_size`` 2 or less the choice is fixed).

    As ComfyUI computes it: only the queries are tiled (its attn1 patch rearranges ``q``); its attention then
    reshapes the untiled keys and values by the tiled queries' batch, so the queries of tile ``j`` (tiles in
    row-major order) attend to the ``j``-th run of consecutive tokens of the whole map. ComfyUI also takes the
    sides as ``rows = round(sqrt(N * W / H))``, ``cols = N / rows`` for the token grid it tiles, which is the
    map's width then height: on a non-square map its "tiles" are that grid's, reproduced here.

    ComfyUI draws from torch's global generator, whose state depends on everything run before; Loom draws from a
    generator seeded by the call's first timestep and the attention's place, so a prompt gives the same picture
    on every run while the tiling still changes from step to step.
    """

    tile_size: int = 256
    swap_size: int = 2
    max_depth: int = 0
    scale_depth: bool = False

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttentionContext) -> torch.Tensor:
        tiling = self.tiling(q.shape[1], where)
        if tiling is None:
            return attend(q, k, v, where.heads)
        tile_rows, tile_cols, rows, cols = tiling
        b, n, c = q.shape
        tiles, tile_h, tile_w = tile_rows * tile_cols, rows // tile_rows, cols // tile_cols
        q_tiles = q.reshape(b, tile_rows, tile_h, tile_cols, tile_w, c).transpose(2, 3).reshape(b * tiles, -1, c)
        out = attend(q_tiles, k.reshape(b * tiles, -1, c), v.reshape(b * tiles, -1, c), where.heads)
        return out.reshape(b, tile_rows, tile_cols, tile_h, tile_w, c).transpose(2, 3).reshape(b, n, c)

    def tiling(self, tokens: int, where: AttentionContext) -> tuple[int, int, int, int] | None:
        """``(tile rows, tile columns, rows, columns)`` of the token grid as ComfyUI reads it, or None where this
        attention is not tiled."""
        height, width = where.original_shape[-2:]
        depths = [d for d in range(self.max_depth + 1) if tokens == (height / 2**d) * (width / 2**d)]
        if not depths:
            return None
        aspect = width / height
        rows, cols = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        if rows * cols != tokens:
            return None
        smallest = max(32, self.tile_size) // 8 * (2 ** depths[0] if self.scale_depth else 1)
        draw = _TileDraw(where)
        tile_rows = draw.tile_count(rows, smallest, self.swap_size)
        tile_cols = draw.tile_count(cols, smallest, self.swap_size)
        if tile_rows * tile_cols <= 1:
            return None
        return tile_rows, tile_cols, rows, cols


class _TileDraw:
    """The tile-count draws of one attention call, from a generator made only when a choice exists."""

    def __init__(self, where: AttentionContext) -> None:
        self.where = where
        self.generator: torch.Generator | None = None

    def tile_count(self, side: int, smallest: int, options: int) -> int:
        smallest = min(smallest, side)
        counts = [side // size for size in range(smallest, side + 1) if side % size == 0][:options]
        if len(counts) <= 2:
            return counts[0]
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self._seed())
        return counts[int(torch.randint(0, len(counts) - 1, (1,), generator=self.generator))]

    def _seed(self) -> int:
        where = self.where
        step = float(where.timesteps.reshape(-1)[0])
        place = f"{step:.6f}/{where.block.kind}/{where.block.index}/{where.transformer_index}"
        return zlib.crc32(place.encode())


# Kohya's "Deep Shrink" (ComfyUI's PatchModelAddDownscale): early in sampling, run the deeper stages on smaller
# feature maps, so a picture larger than the model was trained on keeps one composition.


@dataclass(frozen=True)
class DownscaleAfterBlock:
    """An input-block patch: after input block ``block_number``, while the call's sigma is within
    ``[sigma_end, sigma_start]``, ``h`` resized by ``1 / factor`` (each side rounded)."""

    block_number: int
    factor: float
    sigma_start: float
    sigma_end: float
    #: The model's sampling, from the UNet's timesteps back to sigma.
    sigma_of_timestep: Callable[[torch.Tensor], torch.Tensor]
    resize: Resize

    def __call__(self, h: torch.Tensor, where: PatchContext) -> torch.Tensor:
        if where.block.index != self.block_number:
            return h
        sigma = float(self.sigma_of_timestep(where.timesteps.reshape(-1)[:1]))
        if not self.sigma_end <= sigma <= self.sigma_start:
            return h
        scale = 1.0 / self.factor
        return self.resize(h, round(h.shape[-1] * scale), round(h.shape[-2] * scale))


@dataclass(frozen=True)
class UpscaleToSkip:
    """An output-block patch: ``h`` resized to its skip's size wherever they differ (Deep Shrink's way back)."""

    resize: Resize

    def __call__(self, h: torch.Tensor, skip: torch.Tensor, where: PatchContext) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[-2:] != skip.shape[-2:]:
            h = self.resize(h, skip.shape[-1], skip.shape[-2])
        return h, skip
