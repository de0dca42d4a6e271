"""Attention and transformer blocks of the LDM/SGM UNet (module names follow the checkpoint keys).

Every block here keeps the parameter names that Stable Diffusion checkpoints store under
`model.diffusion_model.*.transformer_blocks.K`, so a state dict loads with `strict=True` and no
renaming. Attention runs through `scaled_dot_product_attention`, which picks a fused kernel
(flash / memory-efficient on CUDA, a blocked kernel on CPU) instead of materialising the full
softmax matrix as the original `CrossAttention` did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.fused_linear import FusedLinear, linear_gelu, linear_times
from diffusion.packed_conv import PackedConv2d

__all__ = [
    "split_heads",
    "merge_heads",
    "CrossAttention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads*d] -> [B, heads, N, d], the layout SDPA expects."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when no context is given (Vaswani et al. 2017).

    q/k/v projections carry no bias and the output projection does, as in the LDM release;
    `to_out` is a Sequential (`to_out.0`) because the original appended a Dropout at index 1.
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = FusedLinear(query_dim, inner, bias=False)
        self.to_k = FusedLinear(context_dim, inner, bias=False)
        self.to_v = FusedLinear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(FusedLinear(inner, query_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020, "GLU Variants Improve Transformer").

    The checkpoint stores one linear layer whose output rows are the value half, then the gate
    half. It runs as two matmuls over the two (contiguous) row halves of that weight, the GELU fused
    into the gate's and the product into the value's (``diffusion.fused_linear``), so no
    double-width buffer is written and no separate elementwise pass reads one.
    """

    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = FusedLinear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value_weight, gate_weight = self.proj.compute_weight().chunk(2)
        value_bias, gate_bias = self.proj.bias.chunk(2)
        return linear_times(x, value_weight, value_bias, linear_gelu(x, gate_weight, gate_bias))


class FeedForward(nn.Module):
    """GEGLU MLP with 4x expansion; indices 0 and 2 match the checkpoint (`ff.net.0.proj`, `ff.net.2`)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), FusedLinear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention on the text context, then GEGLU MLP."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # Residuals added in place into the fresh sublayer outputs (no new token-sized buffers).
        x = self.attn1(self.norm1(x)).add_(x)
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """Transformer over the H*W positions of a feature map, with a residual around the whole stack.

    SD1 projects in and out with 1x1 convolutions on the NCHW map; SD2 and SDXL
    (`use_linear_in_transformer`) project with Linear layers after flattening. Both variants
    flatten through a permute of NCHW to NHWC, which is a free view when the activations are
    channels_last.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        use_linear: bool,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = FusedLinear(channels, inner)
            self.proj_out: nn.Module = FusedLinear(inner, channels)
        else:
            self.proj_in = PackedConv2d(channels, inner, kernel_size=1)
            self.proj_out = PackedConv2d(inner, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        h_in = self.norm(x)
        if not self.use_linear:
            h_in = self.proj_in(h_in)
        tokens = h_in.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.use_linear:
            tokens = self.proj_out(tokens)
        out = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        if not self.use_linear:
            out = self.proj_out(out)
        return x + out
