"""The FLUX.1 rectified-flow transformer (Black Forest Labs 2024) in plain torch, loaded from the original files.

Users put Black Forest Labs' own single files (`flux1-dev.safetensors`, schnell, Fill, Canny/Depth, Kontext,
Krea) in `models/diffusion_models/`. Module names here reproduce those files' keys (`img_in`, `double_blocks.N.*`,
`single_blocks.N.*`, `final_layer.*`), so a state dict loads with `strict=True, assign=True` and no renaming,
and every variant is told apart by shapes alone (`flux_config_from_state_dict`).

The network, in the order it runs:

- The latent is cut into 2x2 patches, each a token of ``4 x C`` features (channel-major: ``c, dy, dx``).
- Conditioning vector ``vec``: sinusoids of ``sigma x 1000`` through `time_in`, plus the same for the distilled
  guidance scale through `guidance_in` (dev, Krea, Kontext; schnell has none), plus the pooled CLIP-L vector
  through `vector_in`.
- Double-stream blocks keep text (T5) and image tokens apart, each with its own adaLN modulation, QK RMSNorm,
  projections and tanh-GELU MLP, but attend jointly over the concatenated ``[text, image]`` sequence.
- Single-stream blocks run on that concatenation: one `linear1` yields q, k, v and the MLP input, attention and
  MLP run side by side and `linear2` merges them.
- A final adaLN layer projects the image tokens back to patches.

Positions enter only through 3-axis rotary embeddings (RoPE) on q and k: every token carries an id ``(index,
row, col)``; text tokens are all zeros, the image's are ``(0, row, col)`` in patches.

Extra input channels. Fill (384 token features: 96 latent channels) and Canny/Depth (128: 32) models take their
conditioning concatenated to the noisy latent on the channel axis *before* patchify; the caller builds that
tensor, this module only patchifies what it is given. The order is the noisy latent (16 channels) first, then,
for Fill, the VAE latent of the masked image (16) and the pixel mask packed 8x8 into 64 channels (channel
``8 * dy + dx`` of latent cell ``(r, c)`` holds pixel ``(8r + dy, 8c + dx)``); for Canny/Depth, the VAE latent
of the control image (16). The output always has `out_channels / 4` (16) channels.

Kontext reference latents become extra image tokens appended after the image's, with ids whose first axis is 1
and whose rows/cols are offset so that several references do not overlap (ComfyUI's default "offset" placement,
`reference_offsets`); only the image's own tokens are returned.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads, split_heads
from diffusion.attention_masks import TokenAttentionMask
from diffusion.fused_linear import FusedLinear
from diffusion.unet import timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

if TYPE_CHECKING:  # flux_controlnet builds on this module
    from diffusion.flux_controlnet import BlockResiduals

__all__ = [
    "BlockShapes",
    "FluxConfig",
    "FluxTransformer",
    "FluxTrunk",
    "block_shapes",
    "flux_config_from_state_dict",
    "load_flux",
    "image_position_ids",
    "pad_to_patches",
    "patchify",
    "reference_offsets",
    "unpatchify",
]

PATCH = 2
_COMPONENT = "FLUX"
# BFL's release: the time and guidance sinusoids are 256 wide and take sigma (or the guidance scale) times 1000.
_SINUSOID_DIM = 256
_TIME_FACTOR = 1000.0
_NORM_EPS = 1e-6
_DEFAULT_AXES_DIM = (16, 56, 56)


@dataclass(frozen=True)
class FluxConfig:
    """Constructor arguments of the FLUX.1 transformer; the defaults are FLUX.1-dev's.

    `in_channels` and `out_channels` count token features (latent channels x 4): 64 for text-to-image, 384 for
    Fill, 128 for Canny/Depth. `axes_dim` splits a head's width between the RoPE axes (index, row, col).
    """

    in_channels: int = 64
    out_channels: int = 64
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    context_dim: int = 4096
    vec_dim: int = 768
    guidance_embed: bool = True
    axes_dim: tuple[int, ...] = _DEFAULT_AXES_DIM
    mlp_ratio: float = 4.0
    theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not a multiple of {self.num_heads} heads")
        if sum(self.axes_dim) != self.head_dim or any(dim % 2 for dim in self.axes_dim):
            raise ValueError(f"RoPE axes {self.axes_dim} must be even and sum to the head width {self.head_dim}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % (PATCH * PATCH):
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of the {PATCH}x{PATCH} patch")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent `forward` takes: the noisy latent plus any concatenated conditioning."""
        return self.in_channels // (PATCH * PATCH)

    @property
    def out_latent_channels(self) -> int:
        return self.out_channels // (PATCH * PATCH)


_DOUBLE = re.compile(r"^double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_blocks\.(\d+)\.")


_LAYOUT = "a FLUX.1 transformer in Black Forest Labs' layout (prefix stripped?)"
_required = functools.partial(require_key, component=_COMPONENT, layout=_LAYOUT)


def _block_count(state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    indices = [int(match.group(1)) for key in state_dict if (match := pattern.match(key))]
    return max(indices) + 1 if indices else 0


class BlockShapes(NamedTuple):
    """What the weights of a transformer built from FLUX.1's blocks say about it (FLUX.1 itself, Chroma)."""

    in_channels: int
    out_channels: int
    hidden_size: int
    num_heads: int
    depth: int
    depth_single_blocks: int
    context_dim: int
    axes_dim: tuple[int, ...]
    mlp_ratio: float


def block_shapes(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None, component: str, layout: str
) -> BlockShapes:
    """The shapes of `img_in`, the blocks, `txt_in` and `final_layer.linear` in Black Forest Labs' key names.

    The head width is that of the QK-norm scales (128 in every released file, hence 24 heads of a 3072-wide
    model). `axes_dim` defaults to the release's (16, 56, 56), which only fits 128-wide heads. A missing key
    raises `CheckpointLayoutError` for `component`, saying the weights are not `layout`.
    """
    required = functools.partial(require_key, component=component, layout=layout)
    img_in = required(state_dict, "img_in.weight")
    hidden, in_channels = int(img_in.shape[0]), int(img_in.shape[1])
    depth = _block_count(state_dict, _DOUBLE)
    single_depth = _block_count(state_dict, _SINGLE)
    if depth:
        head_dim = int(required(state_dict, "double_blocks.0.img_attn.norm.query_norm.scale").shape[0])
        mlp_width = int(required(state_dict, "double_blocks.0.img_mlp.0.weight").shape[0])
    elif single_depth:
        head_dim = int(required(state_dict, "single_blocks.0.norm.query_norm.scale").shape[0])
        mlp_width = int(required(state_dict, "single_blocks.0.linear1.weight").shape[0]) - 3 * hidden
    else:
        raise CheckpointLayoutError(component, "double_blocks.0", "missing; the state dict has no transformer block")
    if hidden % head_dim:
        raise CheckpointLayoutError(
            component,
            "double_blocks.0.img_attn.norm.query_norm.scale",
            f"head width {head_dim} does not divide {hidden}",
        )
    if axes_dim is None:
        if head_dim != sum(_DEFAULT_AXES_DIM):
            raise ValueError(f"heads are {head_dim} wide: give the RoPE axes_dim, the default fits 128 only")
        axes_dim = _DEFAULT_AXES_DIM
    return BlockShapes(
        in_channels=in_channels,
        out_channels=int(required(state_dict, "final_layer.linear.weight").shape[0]),
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        depth=depth,
        depth_single_blocks=single_depth,
        context_dim=int(required(state_dict, "txt_in.weight").shape[1]),
        axes_dim=tuple(axes_dim),
        mlp_ratio=mlp_width / hidden,
    )


def flux_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None
) -> FluxConfig:
    """The config of a FLUX.1 state dict in Black Forest Labs' layout (keys without `model.diffusion_model.`).

    Everything but the RoPE split is in the shapes (`block_shapes`): the variant is `img_in`'s input width,
    guidance distillation is the presence of `guidance_in`. `axes_dim` defaults to the release's (16, 56, 56),
    which only fits 128-wide heads; give it for other widths.
    """
    shapes = block_shapes(state_dict, axes_dim, _COMPONENT, _LAYOUT)
    return FluxConfig(
        **shapes._asdict(),
        vec_dim=int(_required(state_dict, "vector_in.in_layer.weight").shape[1]),
        guidance_embed="guidance_in.in_layer.weight" in state_dict,
    )


# ---------------------------------------------------------------- positions


def image_position_ids(
    rows: int,
    cols: int,
    *,
    index: int = 0,
    row_offset: int = 0,
    col_offset: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """[rows * cols, 3] RoPE ids ``(index, row_offset + r, col_offset + c)`` of a token grid, row-major."""
    r = torch.arange(rows, dtype=torch.float32, device=device) + row_offset
    c = torch.arange(cols, dtype=torch.float32, device=device) + col_offset
    ids = torch.empty(rows, cols, 3, dtype=torch.float32, device=device)
    ids[..., 0] = index
    ids[..., 1] = r[:, None]
    ids[..., 2] = c[None, :]
    return ids.reshape(rows * cols, 3)


def reference_offsets(sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Where each Kontext reference latent of ``(height, width)`` sits, in latent pixels, as ``(row, col)``.

    ComfyUI's default placement: the references share RoPE index 1 and are laid out in one plane without
    overlapping. The first sits at the origin; each next one goes beside the box the earlier ones cover: to its
    right when the reference's height plus the box's exceeds its width plus the box's, below it otherwise.
    """
    box_height = box_width = 0
    offsets = []
    for height, width in sizes:
        if height + box_height > width + box_width:
            row, col = 0, box_width
        else:
            row, col = box_height, 0
        box_height = max(box_height, height + row)
        box_width = max(box_width, width + col)
        offsets.append((row, col))
    return offsets


def _to_tokens(latent_pixels: int) -> int:
    """A latent-pixel length or offset in patches, rounding half up as ComfyUI does."""
    return (latent_pixels + PATCH // 2) // PATCH


class RotaryEmbedding(NamedTuple):
    """cos and sin of every token's rotation angles, [L, head_dim / 2] each, in fp32."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> RotaryEmbedding:
        """Angles ``id_a * theta ** (-2i / d_a)`` for each axis a of width d_a, the axes concatenated.

        Computed in fp64 as the reference does (fp32 loses the small frequencies' phase at large positions),
        except on Apple's MPS, which has no fp64.
        """
        wide = torch.float32 if ids.device.type == "mps" else torch.float64
        angles = []
        for axis, dim in enumerate(axes_dim):
            frequencies = theta ** (-torch.arange(0, dim, 2, dtype=wide, device=ids.device) / dim)
            angles.append(ids[:, axis].to(wide)[:, None] * frequencies)
        angle = torch.cat(angles, dim=-1)
        return cls(angle.cos().float(), angle.sin().float())

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate each adjacent feature pair ``(x[2i], x[2i+1])`` of [B, heads, L, head_dim] by its angle."""
        pairs = x.float().unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((self.cos * even - self.sin * odd, self.sin * even + self.cos * odd), dim=-1)
        return rotated.flatten(-2).to(x.dtype)


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RotaryEmbedding, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, heads, L, d] each -> [B, L, heads * d], positions applied to q and k; `mask` broadcast to
    [B, heads, L, L]: boolean (True where a query may attend to a key; Chroma leaves T5's padding out so) or an
    additive bias in q's dtype (a conditioning's attention mask)."""
    return merge_heads(F.scaled_dot_product_attention(rope.rotate(q), rope.rotate(k), v, attn_mask=mask))


# ---------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned `scale` (Zhang & Sennrich 2019), normalised in fp32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=_NORM_EPS).to(x.dtype)
        return normed * self.scale.to(x.dtype)


class QKNorm(nn.Module):
    """RMSNorm of queries and keys per head, which keeps the attention logits bounded at FLUX's width."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class MLPEmbedder(nn.Module):
    """Linear, SiLU, linear: how FLUX embeds the time and guidance sinusoids and the pooled CLIP vector."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_layer = FusedLinear(in_dim, hidden)
        self.out_layer = FusedLinear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class Modulated(NamedTuple):
    """One adaLN triple: a sublayer sees ``norm(x) * (1 + scale) + shift`` and its output is scaled by `gate`."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor

    def modulate(self, normed: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, normed, 1 + self.scale)


class Modulation(nn.Module):
    """`lin(silu(vec))` cut into adaLN triples: two for a double-stream half (attention, MLP), one for a single."""

    def __init__(self, dim: int, triples: int) -> None:
        super().__init__()
        self.triples = triples
        self.lin = FusedLinear(dim, 3 * triples * dim)

    def forward(self, vec: torch.Tensor) -> list[Modulated]:
        chunks = self.lin(F.silu(vec))[:, None, :].chunk(3 * self.triples, dim=-1)
        return [Modulated(*chunks[i : i + 3]) for i in range(0, len(chunks), 3)]


class StreamAttention(nn.Module):
    """One stream's half of joint attention: its own `qkv`, QK norm and output `proj`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = FusedLinear(dim, 3 * dim)
        self.norm = QKNorm(dim // heads)
        self.proj = FusedLinear(dim, dim)

    def heads_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as [B, heads, L, head_dim], q and k normalised."""
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        q, k = self.norm(q, k, v)
        return q, k, v


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    """Indices 0 and 2 match the files (`img_mlp.0`, `img_mlp.2`); index 1 is the tanh GELU."""
    return nn.Sequential(FusedLinear(dim, hidden), nn.GELU(approximate="tanh"), FusedLinear(hidden, dim))


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=_NORM_EPS)


def _no_modulation(block: nn.Module) -> RuntimeError:
    return RuntimeError(f"this {type(block).__name__} has no modulation of its own: call modulated() with its triples")


class DoubleStreamBlock(nn.Module):
    """MM-DiT block (Esser et al. 2024): text and image streams with their own weights, attending jointly.

    `modulation=False` builds it without its adaLN projections (`img_mod`, `txt_mod`), for models that compute
    every block's triples elsewhere (Chroma) and call `modulated`.
    """

    #: Calls its layers' methods (`heads_of`) in its own forward, so it is streamed whole
    #: (diffusion/weight_streaming.py).
    loom_stream_whole = True

    #: Chroma enters it through `modulated` with its own modulation (diffusion/weight_streaming.py).
    loom_stream_methods = ("modulated",)

    def __init__(self, dim: int, heads: int, mlp_hidden: int, modulation: bool = True) -> None:
        super().__init__()
        self.img_mod = Modulation(dim, 2) if modulation else None
        self.img_norm1 = _layer_norm(dim)
        self.img_attn = StreamAttention(dim, heads)
        self.img_norm2 = _layer_norm(dim)
        self.img_mlp = _mlp(dim, mlp_hidden)
        self.txt_mod = Modulation(dim, 2) if modulation else None
        self.txt_norm1 = _layer_norm(dim)
        self.txt_attn = StreamAttention(dim, heads)
        self.txt_norm2 = _layer_norm(dim)
        self.txt_mlp = _mlp(dim, mlp_hidden)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        rope: RotaryEmbedding,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.img_mod is None or self.txt_mod is None:
            raise _no_modulation(self)
        return self.modulated(img, txt, self.img_mod(vec), self.txt_mod(vec), rope, mask)

    def modulated(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        img_mods: Sequence[Modulated],
        txt_mods: Sequence[Modulated],
        rope: RotaryEmbedding,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block with the given (attention, MLP) triples of each stream; `mask` as `_attention`'s, over the
        joint ``[text, image]`` sequence."""
        img_attn_mod, img_mlp_mod = img_mods
        txt_attn_mod, txt_mlp_mod = txt_mods
        img_q, img_k, img_v = self.img_attn.heads_of(img_attn_mod.modulate(self.img_norm1(img)))
        txt_q, txt_k, txt_v = self.txt_attn.heads_of(txt_attn_mod.modulate(self.txt_norm1(txt)))
        joint = _attention(
            torch.cat((txt_q, img_q), dim=2),
            torch.cat((txt_k, img_k), dim=2),
            torch.cat((txt_v, img_v), dim=2),
            rope,
            mask,
        )
        txt_out, img_out = joint.split((txt.shape[1], img.shape[1]), dim=1)

        img = torch.addcmul(img, img_attn_mod.gate, self.img_attn.proj(img_out))
        img = torch.addcmul(img, img_mlp_mod.gate, self.img_mlp(img_mlp_mod.modulate(self.img_norm2(img))))
        txt = torch.addcmul(txt, txt_attn_mod.gate, self.txt_attn.proj(txt_out))
        txt = torch.addcmul(txt, txt_mlp_mod.gate, self.txt_mlp(txt_mlp_mod.modulate(self.txt_norm2(txt))))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention and MLP over the joint sequence (Dehghani et al. 2023), fused into two linears.

    `modulation=False` builds it without `modulation`; the caller gives its triple to `modulated` (Chroma).
    """

    #: Chroma enters it through `modulated` with its own modulation (diffusion/weight_streaming.py).
    loom_stream_methods = ("modulated",)

    def __init__(self, dim: int, heads: int, mlp_hidden: int, modulation: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.dim = dim
        self.mlp_hidden = mlp_hidden
        self.linear1 = FusedLinear(dim, 3 * dim + mlp_hidden)
        self.linear2 = FusedLinear(dim + mlp_hidden, dim)
        self.norm = QKNorm(dim // heads)
        self.pre_norm = _layer_norm(dim)
        self.modulation = Modulation(dim, 1) if modulation else None

    def forward(
        self, x: torch.Tensor, vec: torch.Tensor, rope: RotaryEmbedding, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.modulation is None:
            raise _no_modulation(self)
        (mod,) = self.modulation(vec)
        return self.modulated(x, mod, rope, mask)

    def modulated(
        self, x: torch.Tensor, mod: Modulated, rope: RotaryEmbedding, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block with the given triple; `mask` as `_attention`'s."""
        qkv, mlp_in = self.linear1(mod.modulate(self.pre_norm(x))).split((3 * self.dim, self.mlp_hidden), dim=-1)
        q, k, v = (split_heads(part, self.heads) for part in qkv.chunk(3, dim=-1))
        q, k = self.norm(q, k, v)
        merged = torch.cat((_attention(q, k, v, rope, mask), F.gelu(mlp_in, approximate="tanh")), dim=-1)
        return torch.addcmul(x, mod.gate, self.linear2(merged))


class FinalLayer(nn.Module):
    """adaLN then the projection to patches; `adaLN_modulation.1` yields shift first, then scale."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = _layer_norm(dim)
        self.linear = FusedLinear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), FusedLinear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(torch.addcmul(shift, self.norm_final(x), 1 + scale))


# ---------------------------------------------------------------- the model


def patchify(x: torch.Tensor) -> torch.Tensor:
    """[B, C, 2h, 2w] -> [B, h * w, C * 4], features ordered (c, dy, dx)."""
    b, c, height, width = x.shape
    patches = x.reshape(b, c, height // PATCH, PATCH, width // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (height // PATCH) * (width // PATCH), c * PATCH * PATCH)


def unpatchify(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[B, rows * cols, C * 4] -> [B, C, 2 rows, 2 cols]."""
    b = tokens.shape[0]
    patches = tokens.reshape(b, rows, cols, -1, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, -1, rows * PATCH, cols * PATCH)


def pad_to_patches(x: torch.Tensor) -> torch.Tensor:
    """Pad odd sides to even by wrapping around (bottom/right), as ComfyUI does; the output is cropped back."""
    pad_h, pad_w = x.shape[-2] % PATCH, x.shape[-1] % PATCH
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x


def _per_sample(value: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1).expand(batch)


def _sinusoid(value: torch.Tensor | float, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX's embedding input for a sigma or a guidance scale: 256 sinusoids of it times 1000, one row per sample."""
    return timestep_embedding(_per_sample(value, batch, device) * _TIME_FACTOR, _SINUSOID_DIM).to(dtype)


class FluxTrunk(nn.Module):
    """The layers FLUX.1 and its ControlNets share, under the same key names: the image and text input
    projections, the embedders of the conditioning vector, and the double and single blocks.

    Computes in the dtype of its layers (`dtype`); the weights may be stored narrower than they compute
    (`diffusion.stored_weights`).
    """

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        dim, heads, mlp_hidden = config.hidden_size, config.num_heads, config.mlp_hidden_size
        self.img_in = FusedLinear(config.in_channels, dim)
        self.time_in = MLPEmbedder(_SINUSOID_DIM, dim)
        self.vector_in = MLPEmbedder(config.vec_dim, dim)
        if config.guidance_embed:
            self.guidance_in = MLPEmbedder(_SINUSOID_DIM, dim)
        self.txt_in = FusedLinear(config.context_dim, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(dim, heads, mlp_hidden) for _ in range(config.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(dim, heads, mlp_hidden) for _ in range(config.depth_single_blocks)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.computes_in

    def conditioning_vector(
        self,
        timesteps: torch.Tensor | float,
        guidance: torch.Tensor | float | None,
        y: torch.Tensor,
        batch: int,
        device: torch.device,
        what: str,
    ) -> torch.Tensor:
        """The vector that modulates every block: time, then guidance (guidance-distilled models only, which
        `what` names in the error when it is missing), then the pooled text ``y`` [B, vec_dim]."""
        dtype = self.dtype
        vec = self.time_in(_sinusoid(timesteps, batch, device, dtype))
        if "guidance_in" in self._modules:
            if guidance is None:
                raise ValueError(f"this {what} is guidance-distilled (it has guidance_in): pass guidance")
            vec = vec + self.guidance_in(_sinusoid(guidance, batch, device, dtype))
        return vec + self.vector_in(y.to(dtype))


class FluxTransformer(FluxTrunk):
    """`flux(x, timesteps, context, y, guidance=None, ref_latents=None)` -> the flow (velocity) prediction.

    Computes in the dtype of its layers (`dtype`); inputs are cast at the entry and the output is cast back to
    ``x``'s dtype. The weights may be stored narrower than they compute (`diffusion.stored_weights`).
    """

    def __init__(self, config: FluxConfig) -> None:
        super().__init__(config)
        self.config = config
        self.final_layer = FinalLayer(config.hidden_size, config.out_channels)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
        ref_latents: Sequence[torch.Tensor] | None = None,
        control: BlockResiduals | None = None,
        skip_double: Collection[int] = (),
        skip_single: Collection[int] = (),
        attention_mask: TokenAttentionMask | None = None,
    ) -> torch.Tensor:
        """Predict the flow of a latent.

        x: [B, latent_channels, H, W], the noisy latent followed by any conditioning channels (module docstring);
        odd H or W are padded and the output cropped back. timesteps: [B] (or a scalar) sigma in [0, 1].
        context: [B, T, context_dim] T5 states. y: [B, vec_dim] pooled CLIP-L. guidance: [B] (or a scalar)
        distilled guidance scale, required by guidance-distilled models and ignored by schnell, so the same
        conditioning serves both. ref_latents: Kontext references, each [B or 1, latent_channels, h, w].
        control: ControlNet residuals (`diffusion.flux_controlnet`), one per double and per single block (or none
        of a kind), each added to the image tokens after its block; Kontext references get none, as in ComfyUI.
        skip_double, skip_single: blocks that pass their tokens through unchanged (skip-layer guidance); a skipped
        block's ControlNet residual is still added, as ComfyUI adds it. attention_mask: an additive bias over the
        joint [text, image] sequence (`diffusion.attention_masks`; FLUX.1 Redux's attn_bias), its image part
        stretched to this latent's tokens; not with reference latents.
        Returns [B, out_latent_channels, H, W].
        """
        config = self.config
        self._check_inputs(x, context, y, ref_latents)
        skipped_double = blocks_to_skip(skip_double, config.depth, "double")
        skipped_single = blocks_to_skip(skip_single, config.depth_single_blocks, "single")
        batch, _, height, width = x.shape
        out_dtype, dtype, device = x.dtype, self.dtype, x.device

        vec = self.conditioning_vector(timesteps, guidance, y, batch, device, "FLUX model")
        txt = self.txt_in(context.to(dtype))

        rows, cols = _to_tokens(height), _to_tokens(width)
        img = patchify(pad_to_patches(x.to(dtype)))
        image_tokens = img.shape[1]
        if control is not None:
            _check_control(control, config, (batch, image_tokens, config.hidden_size))
        ids = [torch.zeros(context.shape[1], 3, device=device), image_position_ids(rows, cols, device=device)]
        if ref_latents:
            extra = [img]
            offsets = reference_offsets([(int(ref.shape[-2]), int(ref.shape[-1])) for ref in ref_latents])
            for ref, (row, col) in zip(ref_latents, offsets):
                extra.append(patchify(pad_to_patches(ref.to(dtype))).expand(batch, -1, -1))
                ids.append(
                    image_position_ids(
                        _to_tokens(ref.shape[-2]),
                        _to_tokens(ref.shape[-1]),
                        index=1,
                        row_offset=_to_tokens(row),
                        col_offset=_to_tokens(col),
                        device=device,
                    )
                )
            img = torch.cat(extra, dim=1)
        img = self.img_in(img)
        rope = RotaryEmbedding.of(torch.cat(ids), config.axes_dim, config.theta)
        mask = None if attention_mask is None else _joint_bias(attention_mask, txt.shape[1], rows, cols, img, dtype)

        start = txt.shape[1]
        for index, double in enumerate(self.double_blocks):
            if index not in skipped_double:
                img, txt = double(img, txt, vec, rope, mask)
            if control is not None and control.double and (add := control.double[index]) is not None:
                img = _add_to_image(img, 0, add)
        joint = torch.cat((txt, img), dim=1)
        for index, single in enumerate(self.single_blocks):
            if index not in skipped_single:
                joint = single(joint, vec, rope, mask)
            if control is not None and control.single and (add := control.single[index]) is not None:
                joint = _add_to_image(joint, start, add)
        out = self.final_layer(joint[:, start : start + image_tokens], vec)
        return unpatchify(out, rows, cols)[:, :, :height, :width].to(out_dtype)

    def _check_inputs(
        self, x: torch.Tensor, context: torch.Tensor, y: torch.Tensor, ref_latents: Sequence[torch.Tensor] | None
    ) -> None:
        config = self.config
        if x.ndim != 4 or x.shape[1] != config.latent_channels:
            raise ValueError(
                f"x must be [B, {config.latent_channels}, H, W] for this model ({config.in_channels} token features:"
                f" the latent plus any Fill/Canny/Depth conditioning channels), got {tuple(x.shape)}"
            )
        if context.ndim != 3 or context.shape[-1] != config.context_dim:
            raise ValueError(f"context must be [B, T, {config.context_dim}], got {tuple(context.shape)}")
        if y.ndim != 2 or y.shape[-1] != config.vec_dim:
            raise ValueError(f"y must be [B, {config.vec_dim}] (pooled CLIP-L), got {tuple(y.shape)}")
        for ref in ref_latents or ():
            if ref.ndim != 4 or ref.shape[1] != x.shape[1] or ref.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"a reference latent must be [1 or {x.shape[0]}, {x.shape[1]}, h, w], got {tuple(ref.shape)}"
                )


def _joint_bias(
    attention_mask: TokenAttentionMask, text_tokens: int, rows: int, cols: int, img: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """A conditioning's attention mask as the additive ``[B, 1, L, L]`` bias of this call's joint sequence."""
    bias = attention_mask.over_image(rows, cols)
    expected = text_tokens + rows * cols
    if img.shape[1] != rows * cols:
        raise ValueError("an attention mask cannot be combined with reference latents (FLUX.1 Kontext)")
    if bias.shape[-1] != expected or bias.shape[0] not in (1, img.shape[0]):
        raise ValueError(
            f"the attention mask is [{bias.shape[0]}, {bias.shape[-2]}, {bias.shape[-1]}] and this call attends over "
            f"{text_tokens} text and {rows * cols} image tokens of {img.shape[0]} pictures"
        )
    return bias[:, None].to(img.device, dtype)


def blocks_to_skip(indices: Collection[int], count: int, kind: str) -> frozenset[int]:
    """``indices`` as a set of blocks of a stack of ``count`` ``kind`` blocks, refused when one is not a block."""
    outside = sorted(index for index in indices if not 0 <= index < count)
    if outside:
        raise ValueError(f"{kind} blocks {outside} cannot be skipped: this transformer has {count} {kind} blocks")
    return frozenset(indices)


def _check_control(control: BlockResiduals, config: FluxConfig, shape: tuple[int, int, int]) -> None:
    """Refuse residuals made for another transformer or another latent: a count per kind of block other than the
    model's, or a residual not shaped [B, image tokens, hidden]."""
    for kind, residuals, blocks in (
        ("double", control.double, config.depth),
        ("single", control.single, config.depth_single_blocks),
    ):
        if residuals and len(residuals) != blocks:
            raise ValueError(
                f"control has {len(residuals)} {kind}-block residuals for this model's {blocks} {kind} blocks"
            )
        for residual in residuals:
            if residual is not None and tuple(residual.shape) != shape:
                raise ValueError(f"a {kind}-block control residual is {tuple(residual.shape)}, not {shape}")


def _add_to_image(tokens: torch.Tensor, start: int, residual: torch.Tensor) -> torch.Tensor:
    """`tokens` with `residual` added to the image tokens that begin at `start`; the tokens after them (Kontext
    references) are left as they are, as ComfyUI leaves them."""
    stop = start + residual.shape[1]
    added = tokens[:, start:stop] + residual.to(tokens.dtype)
    return torch.cat((tokens[:, :start], added, tokens[:, stop:]), dim=1)


def load_flux(state_dict: Mapping[str, torch.Tensor], config: FluxConfig | None = None) -> FluxTransformer:
    """Build a FLUX.1 transformer around Black Forest Labs-layout weights (prefix `model.diffusion_model.` stripped).

    The config is read from the weights unless given. The module adopts the tensors as they are (their dtype
    included), built on the meta device, so loading costs no initialisation and no second copy. A state dict of
    another layout raises `CheckpointLayoutError` naming the first key missing, unexpected or misshapen.
    """
    config = flux_config_from_state_dict(state_dict) if config is None else config
    with torch.device("meta"):
        model = FluxTransformer(config)
    load_exact(model, state_dict, _COMPONENT)
    return model
