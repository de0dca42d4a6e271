"""The Z-Image transformer (Tongyi-MAI 2025, "S3-DiT") in plain torch, loaded from the original files.

Users put `z_image_turbo_bf16.safetensors` (ComfyUI's repackaging of Z-Image-Turbo) in `models/diffusion_models/`.
Its keys are the original release's, which this module's parameter names reproduce (`x_embedder`, `t_embedder`,
`cap_embedder`, `x_pad_token`, `cap_pad_token`, `noise_refiner.N`, `context_refiner.N`, `layers.N`,
`final_layer`), so a state dict loads with `strict=True, assign=True` and no renaming; every size is read back
from the shapes (`zimage_config_from_state_dict`).

The network, in the order it runs:

- The latent is cut into 2x2 patches, each a token of ``4 x C`` features ordered ``(dy, dx, c)``: channel-last,
  unlike FLUX's channel-major patches. `x_embedder` projects them to the model width.
- Time: sinusoids of ``t x 1000`` through `t_embedder` (256 -> 1024 -> 256). Its output is the adaLN input of
  every modulated block as it is (their projection has no SiLU before it; the final layer's has one).
- Text: the caption encoder's hidden states (Qwen3-4B, 2560 wide) through `cap_embedder`, an RMSNorm and a linear.
- Both sequences are padded to a multiple of 32 tokens with a learned token each (`x_pad_token`,
  `cap_pad_token`). Padding tokens are tokens like any other: every token attends to them.
- The image tokens go through the `noise_refiner` blocks (time-modulated), the text tokens through the
  `context_refiner` blocks (not modulated), each sequence attending to itself only.
- The main `layers` run on the joint sequence ``[image, text]``, all time-modulated: one stream, one set of
  weights for both modalities (the "single-stream" of S3-DiT).
- `final_layer` (LayerNorm scaled by ``1 + linear(silu(time))``, then a linear) projects the image tokens back.

Every block norms before and after each sublayer (RMSNorm, sandwich-style); a modulated one scales the input of
each sublayer by ``1 + scale`` and its normed output by ``tanh(gate)``. Attention has a fused `qkv`, per-head
QK RMSNorm and no biases; the MLP is SwiGLU (Shazeer 2020).

Positions enter only through 3-axis rotary embeddings (theta 256; a 128-wide head splits 32 / 48 / 48) with ids
``(index, row, col)``: text token j is ``(1 + j, 0, 0)`` over the padded text length P, padding tokens included;
image token ``(r, c)`` is ``(P + 1, r, c)``; image padding tokens are ``(0, 0, 0)``.

Time and sign. Z-Image was trained with t = 0 at pure noise and t = 1 at the data, predicting the velocity
``data - noise``. Loom's flow models take sigma (1 at pure noise) and predict ``noise - data``
(`diffusion.flow_matching`), so `forward` conditions on ``t = 1 - sigma`` and negates the output; the diffusers
pipeline and ComfyUI do the same around this network.

Text lengths. A batch's texts come as one ``[B, T, 2560]`` tensor and by default all T tokens of every item are
text, which is what ComfyUI computes (it ignores the attention mask it is given). Prompts of different lengths
may share a batch through `context_lengths`: item i's text is then its first ``context_lengths[i]`` tokens,
padded to a multiple of 32 on its own, and the positions that only make the batch rectangular are masked out
of attention, so each item computes what it computes alone (the reference's variable-length lists). Repeating a
shorter context to a common length, as cross-attention models allow, is not exact here: the repeated tokens
get new positions and attend to each other.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads, split_heads
from diffusion.flux import RotaryEmbedding
from diffusion.fused_linear import FusedLinear
from diffusion.unet import timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

__all__ = [
    "ZImageConfig",
    "ZImageTransformer",
    "load_zimage",
    "zimage_config_from_state_dict",
]

PATCH = 2
#: Both sequences are padded to a multiple of this many tokens, as the model was trained.
SEQUENCE_MULTIPLE = 32
_COMPONENT = "Z-Image"
# The release's time conditioning: 256 sinusoids of t x 1000.
_SINUSOID_DIM = 256
_TIME_FACTOR = 1000.0
_NORM_EPS = 1e-5
_FINAL_NORM_EPS = 1e-6
_DEFAULT_AXES_DIM = (32, 48, 48)
# Lumina 2's top-level RMSNorm, which the network never applies; a file may still carry it.
_UNUSED_KEYS = frozenset({"norm_final.weight"})
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class ZImageConfig:
    """Constructor arguments of the Z-Image transformer; the defaults are Z-Image-Turbo's (6.15 B parameters).

    `in_channels` and `out_channels` count latent channels (the FLUX VAE's 16), not token features.
    `adaln_dim` is the width of the time embedding that modulates the blocks (``min(hidden, 256)`` in the
    release code), `time_hidden_size` that of the time MLP's middle layer. `axes_dim` splits a head's width
    between the RoPE axes (index, row, col) and `theta` is RoPE's base; neither is in the weights.
    """

    in_channels: int = 16
    out_channels: int = 16
    hidden_size: int = 3840
    num_heads: int = 30
    depth: int = 30
    noise_refiner_depth: int = 2
    context_refiner_depth: int = 2
    context_dim: int = 2560
    mlp_hidden_size: int = 10240
    adaln_dim: int = 256
    time_hidden_size: int = 1024
    axes_dim: tuple[int, ...] = _DEFAULT_AXES_DIM
    theta: float = 256.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden size {self.hidden_size} is not a multiple of {self.num_heads} heads")
        if sum(self.axes_dim) != self.head_dim or any(dim % 2 for dim in self.axes_dim):
            raise ValueError(f"RoPE axes {self.axes_dim} must be even and sum to the head width {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_LAYER = re.compile(r"^layers\.(\d+)\.")
_NOISE_REFINER = re.compile(r"^noise_refiner\.(\d+)\.")
_CONTEXT_REFINER = re.compile(r"^context_refiner\.(\d+)\.")

_required = functools.partial(
    require_key, component=_COMPONENT, layout="a Z-Image transformer in the original layout (prefix stripped?)"
)


def _block_count(state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    indices = [int(match.group(1)) for key in state_dict if (match := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def zimage_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], axes_dim: tuple[int, ...] | None = None
) -> ZImageConfig:
    """The config of a Z-Image state dict in the original layout (keys without `model.diffusion_model.`).

    Everything but RoPE is in the shapes: the head width is that of the QK-norm weights (128 in the release,
    hence 30 heads of a 3840-wide model). `axes_dim` defaults to the release's (32, 48, 48), which only fits
    128-wide heads; give it for other widths.
    """
    x_embedder = _required(state_dict, "x_embedder.weight")
    hidden, patch_features = int(x_embedder.shape[0]), int(x_embedder.shape[1])
    head_dim = int(_required(state_dict, "layers.0.attention.q_norm.weight").shape[0])
    final = _required(state_dict, "final_layer.linear.weight")
    for key, features in (("x_embedder.weight", patch_features), ("final_layer.linear.weight", final.shape[0])):
        if features % (PATCH * PATCH):
            raise CheckpointLayoutError(_COMPONENT, key, f"{features} features are not {PATCH}x{PATCH} patches")
    if hidden % head_dim:
        raise CheckpointLayoutError(
            _COMPONENT, "layers.0.attention.q_norm.weight", f"head width {head_dim} does not divide {hidden}"
        )
    if axes_dim is None:
        if head_dim != sum(_DEFAULT_AXES_DIM):
            raise ValueError(f"heads are {head_dim} wide: give the RoPE axes_dim, the default fits 128 only")
        axes_dim = _DEFAULT_AXES_DIM
    time_out = _required(state_dict, "t_embedder.mlp.2.weight")
    return ZImageConfig(
        in_channels=patch_features // (PATCH * PATCH),
        out_channels=int(final.shape[0]) // (PATCH * PATCH),
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        depth=_block_count(state_dict, _LAYER),
        noise_refiner_depth=_block_count(state_dict, _NOISE_REFINER),
        context_refiner_depth=_block_count(state_dict, _CONTEXT_REFINER),
        context_dim=int(_required(state_dict, "cap_embedder.1.weight").shape[1]),
        mlp_hidden_size=int(_required(state_dict, "layers.0.feed_forward.w1.weight").shape[0]),
        adaln_dim=int(time_out.shape[0]),
        time_hidden_size=int(time_out.shape[1]),
        axes_dim=tuple(axes_dim),
    )


# ---------------------------------------------------------------- layers


def _finite_in_fp16(x: torch.Tensor) -> torch.Tensor:
    """Infinities to fp16's largest values, NaN to 0, in fp16 only: ComfyUI clamps Z-Image's attention and MLP
    outputs so when it computes in fp16, whose range (±65504) they can exceed; any other dtype is left as it is."""
    if x.dtype != torch.float16:
        return x
    return torch.nan_to_num(x, nan=0.0, posinf=_FP16_MAX, neginf=-_FP16_MAX)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned `weight` (Zhang & Sennrich 2019), normalised in fp32."""

    def __init__(self, dim: int, eps: float = _NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * self.weight.to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused `qkv`, per-head QK RMSNorm, rotary positions, `out`; no biases."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = FusedLinear(dim, 3 * dim, bias=False)
        self.out = FusedLinear(dim, dim, bias=False)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, L, dim]; mask: [B, 1, 1, L], True where a key may be attended to, or None for all."""
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        q, k = rope.rotate(self.q_norm(q)), rope.rotate(self.k_norm(k))
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class FeedForward(nn.Module):
    """SwiGLU MLP ``w2(silu(w1 x) * w3 x)`` without biases; `w1` is the gate, `w3` the value."""

    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = FusedLinear(dim, hidden, bias=False)
        self.w2 = FusedLinear(hidden, dim, bias=False)
        self.w3 = FusedLinear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.w1(x))
        # The product is fused into the value projection's matmul where oneDNN runs it.
        return self.w2(_finite_in_fp16(self.w3.times(x, gate)))


class ZImageBlock(nn.Module):
    """Sandwich-normed attention and SwiGLU; time-modulated when built with an `adaln_dim`.

    `adaLN_modulation.0` turns the time embedding into ``(scale, gate)`` for attention, then for the MLP: a
    sublayer sees ``norm1(x) * (1 + scale)`` and adds ``tanh(gate) * norm2(output)``.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, adaln_dim: int | None) -> None:
        super().__init__()
        self.modulated = adaln_dim is not None
        self.attention = SelfAttention(dim, heads)
        self.feed_forward = FeedForward(dim, mlp_hidden)
        self.attention_norm1 = RMSNorm(dim)
        self.ffn_norm1 = RMSNorm(dim)
        self.attention_norm2 = RMSNorm(dim)
        self.ffn_norm2 = RMSNorm(dim)
        if adaln_dim is not None:
            self.adaLN_modulation = nn.Sequential(FusedLinear(adaln_dim, 4 * dim))

    def forward(
        self, x: torch.Tensor, rope: RotaryEmbedding, mask: torch.Tensor | None, adaln: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.modulated:
            x = x + self.attention_norm2(_finite_in_fp16(self.attention(self.attention_norm1(x), rope, mask)))
            return x + self.ffn_norm2(_finite_in_fp16(self.feed_forward(self.ffn_norm1(x))))
        if adaln is None:
            raise ValueError("a time-modulated Z-Image block needs the time embedding")
        scale_attn, gate_attn, scale_mlp, gate_mlp = self.adaLN_modulation(adaln)[:, None, :].chunk(4, dim=-1)
        attended = self.attention(self.attention_norm1(x) * (1 + scale_attn), rope, mask)
        x = torch.addcmul(x, gate_attn.tanh(), self.attention_norm2(_finite_in_fp16(attended)))
        fed = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp))
        return torch.addcmul(x, gate_mlp.tanh(), self.ffn_norm2(_finite_in_fp16(fed)))


class TimeEmbedder(nn.Module):
    """Sinusoids of the scaled time through linear, SiLU, linear (`mlp.0`, `mlp.2`)."""

    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(FusedLinear(_SINUSOID_DIM, hidden), nn.SiLU(), FusedLinear(hidden, out))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, _SINUSOID_DIM).to(dtype))


class FinalLayer(nn.Module):
    """LayerNorm scaled by ``1 + adaLN_modulation(time)`` (no shift), then the projection to patches."""

    def __init__(self, dim: int, adaln_dim: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=_FINAL_NORM_EPS)
        self.linear = FusedLinear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), FusedLinear(adaln_dim, dim))

    def forward(self, x: torch.Tensor, adaln: torch.Tensor) -> torch.Tensor:
        scale = self.adaLN_modulation(adaln)[:, None, :]
        return self.linear(self.norm_final(x) * (1 + scale))


# ---------------------------------------------------------------- tokens and positions


def _padded(length: int) -> int:
    return -(-length // SEQUENCE_MULTIPLE) * SEQUENCE_MULTIPLE


def _pad_to_patches(x: torch.Tensor) -> torch.Tensor:
    """Pad odd sides to even by wrapping around (bottom/right), as ComfyUI does; the output is cropped back."""
    pad_h, pad_w = x.shape[-2] % PATCH, x.shape[-1] % PATCH
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x


def _patchify(x: torch.Tensor) -> torch.Tensor:
    """[B, C, 2h, 2w] -> [B, h * w, 4 * C], features ordered (dy, dx, c)."""
    b, c, height, width = x.shape
    patches = x.reshape(b, c, height // PATCH, PATCH, width // PATCH, PATCH).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (height // PATCH) * (width // PATCH), PATCH * PATCH * c)


def _unpatchify(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[B, rows * cols, 4 * C] -> [B, C, 2 rows, 2 cols]."""
    b = tokens.shape[0]
    patches = tokens.reshape(b, rows, cols, PATCH, PATCH, -1).permute(0, 5, 1, 3, 2, 4)
    return patches.reshape(b, -1, rows * PATCH, cols * PATCH)


def _append_padding(tokens: torch.Tensor, pad_token: torch.Tensor, length: int) -> torch.Tensor:
    """[B, n, dim] -> [B, length, dim], the learned padding token after the n tokens."""
    missing = length - tokens.shape[1]
    if not missing:
        return tokens
    padding = pad_token.to(tokens.dtype).expand(tokens.shape[0], missing, -1)
    return torch.cat((tokens, padding), dim=1)


def _text_tokens(embedded: torch.Tensor, pad_token: torch.Tensor, lengths: Sequence[int], length: int) -> torch.Tensor:
    """[B, T, dim] -> [B, length, dim]: each item's first `lengths[i]` tokens, the padding token after them."""
    if embedded.shape[1] < length:
        embedded = F.pad(embedded, (0, 0, 0, length - embedded.shape[1]))
    positions = torch.arange(length, device=embedded.device)
    is_text = positions < torch.tensor(lengths, device=embedded.device)[:, None]
    return torch.where(is_text[..., None], embedded[:, :length], pad_token.to(embedded.dtype))


def _joint_ids(
    text_lengths: Sequence[int], rows: int, cols: int, image_length: int, text_length: int, device: torch.device
) -> torch.Tensor:
    """[len(text_lengths), image_length + text_length, 3] RoPE ids of ``[image, text]`` (module docstring), one
    row per padded text length: the image's index axis sits just after its item's text."""
    ids = torch.zeros(len(text_lengths), image_length + text_length, 3, dtype=torch.float32, device=device)
    grid = rows * cols
    ids[:, :grid, 0] = torch.tensor(text_lengths, dtype=torch.float32, device=device)[:, None] + 1
    ids[:, :grid, 1] = torch.arange(rows, dtype=torch.float32, device=device).repeat_interleave(cols)
    ids[:, :grid, 2] = torch.arange(cols, dtype=torch.float32, device=device).repeat(rows)
    ids[:, image_length:, 0] = torch.arange(1, text_length + 1, dtype=torch.float32, device=device)
    return ids


def _batched_rope(ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> RotaryEmbedding:
    """Rotations for ids [n, L, 3], shaped [n, 1, L, head_dim / 2] to broadcast over the heads."""
    n, length, _ = ids.shape
    flat = RotaryEmbedding.of(ids.reshape(n * length, 3), axes_dim, theta)
    return RotaryEmbedding(flat.cos.reshape(n, 1, length, -1), flat.sin.reshape(n, 1, length, -1))


def _key_mask(keep: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] keys to attend to -> the [B, 1, 1, L] mask SDPA broadcasts over heads and queries."""
    return None if keep is None else keep[:, None, None, :]


def _text_lengths(lengths: Sequence[int] | torch.Tensor | None, batch: int, tokens: int) -> list[int]:
    if lengths is None:
        return [tokens] * batch
    values = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    if len(values) != batch or not all(1 <= n <= tokens for n in values):
        raise ValueError(
            f"context_lengths must be {batch} counts in [1, {tokens}] (the context's tokens), got {values}"
        )
    return values


def _per_sample(value: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1).expand(batch)


# ---------------------------------------------------------------- the model


class ZImageTransformer(nn.Module):
    """`zimage(x, timesteps, context, context_lengths=None)` -> the flow (velocity) prediction.

    Computes in the dtype of its layers (`dtype`); inputs are cast at the entry and the output is cast back to
    ``x``'s dtype. The weights may be stored narrower than they compute (`diffusion.stored_weights`).
    """

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        self.config = config
        dim, heads, mlp_hidden = config.hidden_size, config.num_heads, config.mlp_hidden_size
        self.x_embedder = FusedLinear(PATCH * PATCH * config.in_channels, dim)
        self.t_embedder = TimeEmbedder(config.time_hidden_size, config.adaln_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(config.context_dim), FusedLinear(config.context_dim, dim))
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.noise_refiner = nn.ModuleList(
            ZImageBlock(dim, heads, mlp_hidden, config.adaln_dim) for _ in range(config.noise_refiner_depth)
        )
        self.context_refiner = nn.ModuleList(
            ZImageBlock(dim, heads, mlp_hidden, None) for _ in range(config.context_refiner_depth)
        )
        self.layers = nn.ModuleList(ZImageBlock(dim, heads, mlp_hidden, config.adaln_dim) for _ in range(config.depth))
        self.final_layer = FinalLayer(dim, config.adaln_dim, PATCH * PATCH * config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.computes_in

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        context_lengths: Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow of a latent.

        x: [B, in_channels, H, W]; odd H or W are padded and the output cropped back. timesteps: [B] (or a
        scalar) sigma in [0, 1], 1 being pure noise. context: [B, T, context_dim] caption-encoder states.
        context_lengths: how many leading tokens of each item's context are text (module docstring); None for
        all T. Returns [B, out_channels, H, W], ``noise - data`` as `diffusion.flow_matching` expects.
        """
        config = self.config
        self._check_inputs(x, context)
        batch, _, height, width = x.shape
        out_dtype, dtype, device = x.dtype, self.dtype, x.device
        lengths = _text_lengths(context_lengths, batch, context.shape[1])
        padded_lengths = [_padded(length) for length in lengths]
        text_length = max(padded_lengths)

        t = 1 - _per_sample(timesteps, batch, device)
        adaln = self.t_embedder(t * _TIME_FACTOR, dtype)

        rows, cols = -(-height // PATCH), -(-width // PATCH)
        image_tokens = rows * cols
        img = self.x_embedder(_patchify(_pad_to_patches(x.to(dtype))))
        img = _append_padding(img, self.x_pad_token, _padded(image_tokens))
        image_length = img.shape[1]
        txt = self.cap_embedder(context[:, :text_length].to(dtype))
        txt = _text_tokens(txt, self.cap_pad_token, lengths, text_length)

        uniform = len(set(padded_lengths)) == 1
        ids = _joint_ids(
            padded_lengths[:1] if uniform else padded_lengths, rows, cols, image_length, text_length, device
        )
        rope = _batched_rope(ids, config.axes_dim, config.theta)
        img_rope = RotaryEmbedding(rope.cos[:, :, :image_length], rope.sin[:, :, :image_length])
        txt_rope = RotaryEmbedding(rope.cos[:, :, image_length:], rope.sin[:, :, image_length:])
        text_keys = None
        if not uniform:
            text_keys = torch.arange(text_length, device=device) < torch.tensor(padded_lengths, device=device)[:, None]

        for block in self.noise_refiner:
            img = block(img, img_rope, None, adaln)
        for block in self.context_refiner:
            txt = block(txt, txt_rope, _key_mask(text_keys))
        joint = torch.cat((img, txt), dim=1)
        joint_keys = None
        if text_keys is not None:
            joint_keys = torch.cat((text_keys.new_ones(batch, image_length), text_keys), dim=1)
        for block in self.layers:
            joint = block(joint, rope, _key_mask(joint_keys), adaln)

        out = self.final_layer(joint[:, :image_tokens], adaln)
        return -_unpatchify(out, rows, cols)[:, :, :height, :width].to(out_dtype)

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor) -> None:
        config = self.config
        if x.ndim != 4 or x.shape[1] != config.in_channels:
            raise ValueError(f"x must be [B, {config.in_channels}, H, W], got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != config.context_dim or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context must be [{x.shape[0]}, T, {config.context_dim}] (one caption per latent), "
                f"got {tuple(context.shape)}"
            )
        if not context.shape[1]:
            raise ValueError("context has no tokens; an empty prompt still encodes to its template's tokens")


def load_zimage(state_dict: Mapping[str, torch.Tensor], config: ZImageConfig | None = None) -> ZImageTransformer:
    """Build a Z-Image transformer around original-layout weights (prefix `model.diffusion_model.` stripped).

    The config is read from the weights unless given. The module adopts the tensors as they are (their dtype
    included), built on the meta device, so loading costs no initialisation and no second copy. A top-level
    `norm_final.weight`, which the network never uses, is dropped. A state dict of another layout raises
    `CheckpointLayoutError` naming the first key missing, unexpected or misshapen.
    """
    weights = {key: tensor for key, tensor in state_dict.items() if key not in _UNUSED_KEYS}
    config = zimage_config_from_state_dict(weights) if config is None else config
    with torch.device("meta"):
        model = ZImageTransformer(config)
    load_exact(model, weights, _COMPONENT)
    return model
