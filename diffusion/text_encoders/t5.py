"""The T5 v1.1 encoder (Raffel et al. 2020), the T5-XXL text encoder of FLUX and Stable Diffusion 3.x.

What sets T5 apart from the CLIP towers (``clip_model.py``), each a place where a plain transformer would be
silently wrong:

- no position embeddings: every attention adds a learned bias per head, looked up by the bucketed distance
  between query and key (32 buckets, half for each direction; distances below 8 exact, then logarithmic up to
  128, beyond which all share the last bucket). Only the first block stores the table, and its bias serves
  every block;
- the q·k logits are not scaled by 1/sqrt(d_kv): the scale was folded into the initialisation of q;
- RMS norms (Zhang & Sennrich 2019): no mean subtraction, no bias, the statistic computed in fp32;
- v1.1's gated-GELU feed-forward (Shazeer 2020): ``wo(gelu_tanh(wi_0 x) * wi_1 x)``, without biases
  (T5 v1.0's ReLU ``wi`` layout is not supported).

The encoder outputs the last block's states through the final norm; padding is excluded from attention by an
optional mask. T5 overflows in fp16: activations of T5-XXL's feed-forward exceed 65,504 (transformers keeps
``wo`` in fp32 and clamps, ComfyUI upcasts), so compute in fp32 or bf16; the caller chooses by placing the
model (``diffusion.model_memory.place``), and the weights may stay as stored (fp16, fp8) to be cast per call.

Module and parameter names follow transformers' `T5EncoderModel` (``shared``, ``encoder.block.N.layer.0.
SelfAttention.q`` ...), the layout of the `t5xxl_*.safetensors` files and of LoRA keys, so a file loads with
`strict=True` and no renaming.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads, split_heads
from diffusion.fused_linear import FusedLinear
from diffusion.stored_weights import StoredEmbedding, WeightScaleError, attach_weight_scales, split_weight_scales
from diffusion.weight_streaming import KEEP_RESIDENT

__all__ = [
    "T5Encoder",
    "T5EncoderConfig",
    "T5LayoutError",
    "load_t5_encoder",
    "relative_position_buckets",
    "t5_config_from_state_dict",
]

_BLOCK_KEY = re.compile(r"^encoder\.block\.(\d+)\.")
_BIAS_KEY = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
# transformers ties the encoder's embedding to `shared`; a file may store it under either name, or both.
_TIED_EMBEDDING = "encoder.embed_tokens.weight"


@dataclass(frozen=True)
class T5EncoderConfig:
    d_model: int
    layers: int
    heads: int
    d_kv: int
    d_ff: int
    vocab_size: int
    relative_buckets: int = 32
    # Not stored in the weights: every released T5 uses 128.
    relative_max_distance: int = 128
    layer_norm_eps: float = 1e-6


class T5LayoutError(ValueError):
    """A state dict that does not fit the T5 v1.1 encoder."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"T5 encoder state dict: {reason}")
        self.reason = reason


def relative_position_buckets(length: int, buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """[length, length] bucket of the distance from query i to key j (bidirectional, as T5's encoder).

    Half the buckets are for keys after the query. In each half, distances below a quarter of `buckets` have
    one bucket each, larger ones share logarithmically wider buckets up to `max_distance`, beyond which all
    fall in the last. The log is taken in fp32 in the order Mesh TensorFlow wrote it, because the
    truncation to an integer decides the bucket at exact boundaries (16, 32, 64 for T5).
    """
    positions = torch.arange(length, dtype=torch.long, device=device)
    distance = positions[None, :] - positions[:, None]
    half = buckets // 2
    exact = half // 2
    bucket = (distance > 0).long() * half
    distance = distance.abs()
    # Clamped below so the log is finite; those distances take the exact branch anyway.
    scaled = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + scaled.long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class T5RmsNorm(nn.Module):
    """Scale-only RMS norm; the mean square is taken in fp32 whatever the activations' dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(self.weight.dtype)


class T5SelfAttention(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_bias: bool) -> None:
        super().__init__()
        inner = config.heads * config.d_kv
        self.config = config
        self.q = FusedLinear(config.d_model, inner, bias=False)
        self.k = FusedLinear(config.d_model, inner, bias=False)
        self.v = FusedLinear(config.d_model, inner, bias=False)
        self.o = FusedLinear(inner, config.d_model, bias=False)
        self.relative_attention_bias = (
            StoredEmbedding(config.relative_buckets, config.heads) if has_relative_bias else None
        )
        if self.relative_attention_bias is not None:
            # The encoder reads it for every block before any runs (T5Encoder.forward): never streamed with block 0.
            setattr(self.relative_attention_bias, KEEP_RESIDENT, True)

    def position_bias(self, length: int) -> torch.Tensor:
        """[1, heads, length, length] additive logit bias; only the first block's attention has the table."""
        if self.relative_attention_bias is None:
            raise RuntimeError("only the first T5 block holds the relative attention bias")
        table = self.relative_attention_bias
        buckets = relative_position_buckets(
            length, self.config.relative_buckets, self.config.relative_max_distance, table.weight.device
        )
        return table(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        heads = self.config.heads
        q, k, v = (split_heads(proj(x), heads) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(merge_heads(attended))


class T5AttentionLayer(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5SelfAttention(config, has_relative_bias)
        self.layer_norm = T5RmsNorm(config.d_model, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5GatedGeluFeedForward(nn.Module):
    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.wi_0 = FusedLinear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = FusedLinear(config.d_model, config.d_ff, bias=False)
        self.wo = FusedLinear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.gelu(self.wi_0(x), approximate="tanh")
        # The product is fused into the value projection's matmul where oneDNN runs it.
        return self.wo(self.wi_1.times(x, gate))


class T5FeedForwardLayer(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.DenseReluDense = T5GatedGeluFeedForward(config)
        self.layer_norm = T5RmsNorm(config.d_model, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([T5AttentionLayer(config, has_relative_bias), T5FeedForwardLayer(config)])

    @property
    def attention(self) -> T5SelfAttention:
        return cast(T5AttentionLayer, self.layer[0]).SelfAttention

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attention, feed_forward = self.layer
        return feed_forward(attention(x, bias))


class T5Stack(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.block = nn.ModuleList(T5Block(config, has_relative_bias=index == 0) for index in range(config.layers))
        self.final_layer_norm = T5RmsNorm(config.d_model, config.layer_norm_eps)

    def position_bias(self, length: int) -> torch.Tensor:
        """The relative position bias of every block, from the table of the first."""
        return cast(T5Block, self.block[0]).attention.position_bias(length)


class T5Encoder(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.shared = StoredEmbedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def forward(self, token_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] token ids to [B, T, d_model] states after the final norm.

        `attention_mask` [B, T] marks real tokens (nonzero) and padding (zero): no position attends to
        padding, so the states of the real tokens are those of the unpadded sequence. Without a mask every
        token, padding included, is attended, as when T5 is run unmasked.
        """
        x = self.shared(token_ids)
        bias = self.encoder.position_bias(token_ids.shape[-1])
        if attention_mask is not None:
            padding = (attention_mask == 0).to(bias.device)[:, None, None, :]
            # The most negative finite value, not -inf: a row of padding only (an empty mask) stays finite.
            bias = bias.masked_fill(padding, torch.finfo(bias.dtype).min)
        for block in self.encoder.block:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)


def _weights_only(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's own weights, the tied embedding under `shared.weight` once."""
    weights = dict(state_dict)
    tied = weights.pop(_TIED_EMBEDDING, None)
    if "shared.weight" not in weights and tied is not None:
        weights["shared.weight"] = tied
    return weights


def _shape(weights: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in weights:
        raise T5LayoutError(f"missing {key}")
    return tuple(weights[key].shape)


def t5_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> T5EncoderConfig:
    """Read a T5 v1.1 encoder's sizes from its weights (keys as in `T5EncoderModel`, no container prefix)."""
    weights = _weights_only(state_dict)
    if any(key.endswith(".DenseReluDense.wi.weight") for key in weights):
        raise T5LayoutError("ungated feed-forward (DenseReluDense.wi): T5 v1.0 is not supported, only v1.1")
    vocab_size, d_model = _shape(weights, "shared.weight")
    buckets, heads = _shape(weights, _BIAS_KEY)
    inner = _shape(weights, "encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    d_ff = _shape(weights, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0]
    if inner % heads:
        raise T5LayoutError(f"attention width {inner} is not a multiple of the {heads} heads of the position bias")
    blocks = {int(match.group(1)) for key in weights if (match := _BLOCK_KEY.match(key))}
    if blocks != set(range(len(blocks))):
        raise T5LayoutError(f"block indices are not contiguous from 0: {sorted(blocks)}")
    return T5EncoderConfig(
        d_model=d_model,
        layers=len(blocks),
        heads=heads,
        d_kv=inner // heads,
        d_ff=d_ff,
        vocab_size=vocab_size,
        relative_buckets=buckets,
    )


def _check_against(model: T5Encoder, weights: Mapping[str, torch.Tensor]) -> None:
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    problems = [f"missing {', '.join(missing[:8])}"] if missing else []
    problems += [f"unexpected {', '.join(unexpected[:8])}"] if unexpected else []
    if problems:
        raise T5LayoutError(f"keys do not match a {model.config.layers}-block T5 encoder: {'; '.join(problems)}")
    wrong = [f"{k} {tuple(weights[k].shape)} != {shape}" for k, shape in expected.items() if weights[k].shape != shape]
    if wrong:
        raise T5LayoutError("inconsistent shapes: " + "; ".join(wrong[:4]))


def load_t5_encoder(state_dict: Mapping[str, torch.Tensor]) -> T5Encoder:
    """Build a `T5Encoder` whose parameters are the given tensors themselves (memory-mapped ones stay mapped).

    `encoder.embed_tokens.weight` (tied to `shared.weight`) is accepted beside the weights. A scaled-fp8 file
    (`t5xxl_fp8_e4m3fn_scaled`) keeps its fp8 weights, each layer multiplying by its `scale_weight` at compute
    (``diffusion.stored_weights``).
    """
    try:
        weights, scales = split_weight_scales(state_dict)
    except WeightScaleError as error:
        raise T5LayoutError(str(error)) from error
    weights = _weights_only(weights)
    config = t5_config_from_state_dict(weights)
    with torch.device("meta"):
        model = T5Encoder(config)
    _check_against(model, weights)
    model.load_state_dict(weights, strict=True, assign=True)
    try:
        attach_weight_scales(model, scales)
    except WeightScaleError as error:
        raise T5LayoutError(str(error)) from error
    return model.requires_grad_(False).eval()
