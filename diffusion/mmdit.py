"""The SD3 / SD3.5 MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers") in plain torch.

Why a module of its own: SD3 is not a UNet. Image patches and text tokens travel as two streams of
tokens, each with its own weights, that meet only inside attention (one softmax over both), and
every block is modulated by one vector: the timestep's embedding plus the pooled text embedding.

Module names reproduce the `model.diffusion_model.*` keys of Stability's single files
(`sd3_medium.safetensors`, `sd3.5_medium.safetensors`, `sd3.5_large.safetensors`), so their weights
load with `strict=True`, `assign=True` and no renaming. The hyper-parameters are read from those keys
and shapes alone (`mmdit_config_from_state_dict`). The three files differ in two switches:

- qk-norm: SD3.5 normalises each head's queries and keys by RMS (`attn.ln_q`/`attn.ln_k`, scale only,
  eps 1e-6) before attention; SD3 Medium does not.
- dual attention (SD3.5 Medium, "MMDiT-X"): the image stream of the first blocks also attends to
  itself alone (`x_block.attn2`), with its own shift/scale/gate in a 9-way modulation.

The text stream's last block is "pre-only": its keys and values feed the last attention, and its own
output is never used, so it stores only its modulation (shift, scale) and `attn.qkv` (+ qk-norm).

Precision follows `diffusion.unet`: the network computes in the dtype of its layers (`dtype`), takes
inputs of any float dtype and returns the input's dtype. Linear layers are `FusedLinear` and the
patch embedding a `PackedConv2d`, so a file stored narrower than the compute dtype (fp16 computing in
fp32) may keep its weights as stored and cast them per call (`diffusion.model_memory.place`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads
from diffusion.fused_linear import FusedLinear
from diffusion.packed_conv import PackedConv2d
from diffusion.unet import timestep_embedding
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

if TYPE_CHECKING:  # the ControlNet modules build on this one
    from diffusion.flux_controlnet import BlockResiduals

__all__ = [
    "MMDiTConfig",
    "mmdit_config_from_state_dict",
    "RMSNorm",
    "StreamAttention",
    "StreamMLP",
    "StreamState",
    "StreamBlock",
    "JointBlock",
    "EmbeddingMLP",
    "PatchEmbedder",
    "FinalLayer",
    "MMDiT",
    "load_mmdit",
]

COMPONENT = "MMDiT"
NORM_EPS = 1e-6  # every LayerNorm and RMSNorm of the SD3 family
TIMESTEP_CHANNELS = 256  # width of the sinusoid the timestep goes through before `t_embedder`
TIMESTEP_SCALE = 1000.0  # the network was trained on sigma * 1000
MLP_RATIO = 4  # every released file


@dataclass(frozen=True)
class MMDiTConfig:
    """Constructor arguments of the MMDiT.

    In the released files `hidden_size` is 64 × `depth` and `num_heads` is `depth` (64-wide heads):
    SD3 Medium depth 24, SD3.5 Medium 24, SD3.5 Large 38. Both stay free here for tiny test models.
    `context_dim` is the width of the text encoders' joint sequence (4096, T5-XXL's width) and
    `pooled_dim` that of the pooled vector (2048, CLIP-L's 768 + CLIP-G's 1280).
    """

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    pos_embed_max_size: int = 192
    pooled_dim: int = 2048
    context_dim: int = 4096
    qk_norm: bool = False
    dual_attention_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"an MMDiT needs at least one joint block, not depth {self.depth}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not split into {self.num_heads} heads")
        outside = [i for i in self.dual_attention_blocks if not 0 <= i < self.depth]
        if outside:
            raise ValueError(f"dual_attention_blocks {outside} are not blocks of a depth-{self.depth} MMDiT")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_JOINT_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.")
_DUAL_ATTENTION = re.compile(r"^joint_blocks\.(\d+)\.x_block\.attn2\.")


_require = functools.partial(
    require_key, component=COMPONENT, layout="an SD3 MMDiT state dict (is `model.diffusion_model.` stripped?)"
)


def mmdit_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> MMDiTConfig:
    """Derive the MMDiT config of an original-layout state dict (keys without `model.diffusion_model.`).

    Everything is visible in the weights but the head count, which is invisible in `qkv` ([3·hidden,
    hidden] whatever the split): with qk-norm the per-head norm's width gives it; without, it follows
    SD3's own rule, one head per joint block.
    """
    patch = _require(state_dict, "x_embedder.proj.weight")
    pos_embed = _require(state_dict, "pos_embed")
    context = _require(state_dict, "context_embedder.weight")
    pooled = _require(state_dict, "y_embedder.mlp.0.weight")
    final = _require(state_dict, "final_layer.linear.weight")
    hidden, in_channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])

    blocks = {int(m.group(1)) for m in map(_JOINT_BLOCK.match, state_dict) if m}
    if not blocks:
        raise CheckpointLayoutError(COMPONENT, "joint_blocks.0.*", "no joint block found")
    depth = max(blocks) + 1
    if len(blocks) != depth:
        missing = min(set(range(depth)) - blocks)
        raise CheckpointLayoutError(COMPONENT, f"joint_blocks.{missing}.*", f"missing from a depth-{depth} MMDiT")

    positions = int(pos_embed.shape[1])
    max_size = math.isqrt(positions)
    if pos_embed.ndim != 3 or max_size * max_size != positions:
        raise CheckpointLayoutError(
            COMPONENT, "pos_embed", f"shape {tuple(pos_embed.shape)} is not [1, side², hidden] for a square grid"
        )

    ln_q = state_dict.get("joint_blocks.0.x_block.attn.ln_q.weight")
    heads = depth if ln_q is None else hidden // int(ln_q.shape[0])
    dual = sorted({int(m.group(1)) for m in map(_DUAL_ATTENTION.match, state_dict) if m})
    return MMDiTConfig(
        depth=depth,
        hidden_size=hidden,
        num_heads=heads,
        patch_size=patch_size,
        in_channels=in_channels,
        out_channels=int(final.shape[0]) // (patch_size * patch_size),
        pos_embed_max_size=max_size,
        pooled_dim=int(pooled.shape[1]),
        context_dim=int(context.shape[1]),
        qk_norm=ln_q is not None,
        dual_attention_blocks=tuple(dual),
    )


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    """The affine-free LayerNorm every adaLN in the model starts with (its scale and shift are modulated)."""
    return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)


def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `normed * (1 + scale) + shift`, shift and scale per sample ([B, 1, hidden])."""
    return torch.addcmul(shift, normed, scale + 1)


class RMSNorm(nn.Module):
    """Root-mean-square norm over each head's channels with a learnt scale (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), eps=NORM_EPS)


class StreamAttention(nn.Module):
    """One stream's attention weights: fused `qkv`, optional per-head qk-norm, output `proj`.

    In a joint block the two streams' queries, keys and values are concatenated and attended
    together (`JointBlock`); called on its own (`attn2`) it is plain self-attention. A pre-only
    stream has no `proj`: its attention output is never used.
    """

    def __init__(self, hidden: int, heads: int, qk_norm: bool, pre_only: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = FusedLinear(hidden, 3 * hidden)
        self.ln_q: nn.Module = RMSNorm(hidden // heads) if qk_norm else nn.Identity()
        self.ln_k: nn.Module = RMSNorm(hidden // heads) if qk_norm else nn.Identity()
        self.proj = None if pre_only else FusedLinear(hidden, hidden)

    def heads_of(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, heads, N, head_dim] of [B, N, hidden] tokens, q and k normalised."""
        b, n, _ = tokens.shape
        # The fused projection's rows are q, then k, then v, each head-major.
        q, k, v = self.qkv(tokens).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.ln_q(q), self.ln_k(k), v

    def project_out(self, attended: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            raise RuntimeError("a pre-only attention has no output projection")
        return self.proj(attended)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.project_out(merge_heads(F.scaled_dot_product_attention(*self.heads_of(tokens))))


class StreamMLP(nn.Module):
    """`fc1`, tanh-approximated GELU, `fc2`, at 4× width (timm's `Mlp`, hence the key names)."""

    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = FusedLinear(hidden, MLP_RATIO * hidden)
        self.fc2 = FusedLinear(MLP_RATIO * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1.gelu(x, approximate="tanh"))


class StreamState(NamedTuple):
    """What a stream keeps from before attention to after it: its modulation chunks ([B, 1, hidden]
    each) and its normalised input, which dual attention modulates a second time."""

    modulation: tuple[torch.Tensor, ...]
    normed: torch.Tensor


class StreamBlock(nn.Module):
    """One stream's half of a joint block (`x_block` for the image, `context_block` for the text).

    `adaLN_modulation` (SiLU, then a linear layer; index 1 holds the weights) turns the conditioning
    vector into shift/scale/gate triples: attention then MLP (6 chunks), plus the second attention's
    (9, dual attention), or one shift/scale pair alone (2, pre-only).
    """

    #: Calls its layers' methods (`heads_of`, `pre_attention`) in its own forward, so it is streamed whole
    #: (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(
        self, hidden: int, heads: int, qk_norm: bool, pre_only: bool = False, dual_attention: bool = False
    ) -> None:
        super().__init__()
        if pre_only and dual_attention:
            raise ValueError("a pre-only stream has no residual for a second attention to add to")
        self.chunks = 2 if pre_only else 9 if dual_attention else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), FusedLinear(hidden, self.chunks * hidden))
        self.attn = StreamAttention(hidden, heads, qk_norm, pre_only)
        self.attn2 = StreamAttention(hidden, heads, qk_norm) if dual_attention else None
        self.mlp = None if pre_only else StreamMLP(hidden)

    @property
    def pre_only(self) -> bool:
        return self.mlp is None

    def pre_attention(
        self, tokens: torch.Tensor, c: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], StreamState]:
        """This stream's queries, keys and values for the joint attention, and the state `post_attention` needs."""
        modulation = tuple(self.adaLN_modulation(c).unsqueeze(1).chunk(self.chunks, dim=-1))
        normed = _layer_norm(tokens)
        shift, scale = modulation[:2]
        return self.attn.heads_of(_modulate(normed, shift, scale)), StreamState(modulation, normed)

    def post_attention(self, tokens: torch.Tensor, attended: torch.Tensor, state: StreamState) -> torch.Tensor:
        """The residual updates: gated attention output, gated second attention, gated MLP."""
        if self.mlp is None:
            raise RuntimeError("a pre-only stream is not updated after attention")
        _, _, gate, shift_mlp, scale_mlp, gate_mlp, *second = state.modulation
        tokens = torch.addcmul(tokens, gate, self.attn.project_out(attended))
        if self.attn2 is not None:
            shift2, scale2, gate2 = second
            tokens = torch.addcmul(tokens, gate2, self.attn2(_modulate(state.normed, shift2, scale2)))
        return torch.addcmul(tokens, gate_mlp, self.mlp(_modulate(_layer_norm(tokens), shift_mlp, scale_mlp)))


class JointBlock(nn.Module):
    """Both streams through one attention: text tokens first, then image patches, as the original
    concatenates them (the order changes nothing: there is no mask and no position inside attention)."""

    #: Calls its layers' methods (`heads_of`, `pre_attention`) in its own forward, so it is streamed whole
    #: (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, config: MMDiTConfig, index: int) -> None:
        super().__init__()
        last = index == config.depth - 1
        hidden, heads = config.hidden_size, config.num_heads
        self.context_block = StreamBlock(hidden, heads, config.qk_norm, pre_only=last)
        self.x_block = StreamBlock(hidden, heads, config.qk_norm, dual_attention=index in config.dual_attention_blocks)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, x) after the block; a pre-only text stream comes back unchanged (nothing reads it)."""
        context_qkv, context_state = self.context_block.pre_attention(context, c)
        x_qkv, x_state = self.x_block.pre_attention(x, c)
        q, k, v = (torch.cat(pair, dim=2) for pair in zip(context_qkv, x_qkv))
        attended = merge_heads(F.scaled_dot_product_attention(q, k, v))
        context_attended, x_attended = attended.split([context.shape[1], x.shape[1]], dim=1)
        if not self.context_block.pre_only:
            context = self.context_block.post_attention(context, context_attended, context_state)
        return context, self.x_block.post_attention(x, x_attended, x_state)


class EmbeddingMLP(nn.Module):
    """Linear, SiLU, linear: how the timestep sinusoid (`t_embedder`) and the pooled text vector
    (`y_embedder`) become the conditioning vector; `mlp.0` and `mlp.2` hold the weights."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(FusedLinear(in_features, hidden), nn.SiLU(), FusedLinear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PatchEmbedder(nn.Module):
    """Non-overlapping patches to tokens: a convolution with kernel = stride = patch size (`x_embedder.proj`)."""

    def __init__(self, in_channels: int, hidden: int, patch_size: int) -> None:
        super().__init__()
        self.proj = PackedConv2d(in_channels, hidden, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """adaLN (shift, scale: the original order), then each token to its patch's pixels and channels."""

    def __init__(self, hidden: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), FusedLinear(hidden, 2 * hidden))
        self.linear = FusedLinear(hidden, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(_modulate(_layer_norm(x), shift, scale))


class MMDiT(nn.Module):
    """`mmdit(x, timesteps, context, y)` -> the rectified-flow velocity, shaped like `x`.

    x: [B, in_channels, H, W] latents (sides not multiples of the patch size are padded circularly, as
    ComfyUI pads them, and the output cropped back); timesteps: [B] or scalar sigmas in [0, 1];
    context: [B, T, context_dim] text tokens; y: [B, pooled_dim] pooled text vector; skip_layers:
    joint blocks to leave out entirely (both streams pass through unchanged), which is how SD3.5's
    skip-layer guidance (ComfyUI's SkipLayerGuidanceSD3, diffusers' `skip_layers`) perturbs a
    prediction; control: ControlNet residuals (`diffusion.sd3_controlnet`), `double` holding one
    entry per joint block, added to the image tokens after that block, a skipped block's too (as
    ComfyUI and diffusers add them).
    """

    pos_embed: torch.Tensor

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.x_embedder = PatchEmbedder(config.in_channels, hidden, config.patch_size)
        # Fixed sincos positions in the original, stored in the file: a buffer loads them as they are.
        self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size**2, hidden))
        self.t_embedder = EmbeddingMLP(TIMESTEP_CHANNELS, hidden)
        self.y_embedder = EmbeddingMLP(config.pooled_dim, hidden)
        self.context_embedder = FusedLinear(config.context_dim, hidden)
        self.joint_blocks = nn.ModuleList(JointBlock(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        first = self.t_embedder.mlp[0]
        assert isinstance(first, FusedLinear)  # EmbeddingMLP builds Linear, SiLU, Linear
        return first.computes_in

    def cropped_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The [1, grid_h·grid_w, hidden] window at the centre of the stored square grid of positions."""
        side = self.config.pos_embed_max_size
        if grid_h > side or grid_w > side:
            raise ValueError(
                f"a {grid_h}x{grid_w} patch grid exceeds this model's {side}x{side} positions "
                f"(latents up to {side * self.config.patch_size} per side)"
            )
        top, left = (side - grid_h) // 2, (side - grid_w) // 2
        grid = self.pos_embed.view(1, side, side, -1)[:, top : top + grid_h, left : left + grid_w]
        return grid.reshape(1, grid_h * grid_w, -1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        skip_layers: Sequence[int] = (),
        control: BlockResiduals | None = None,
    ) -> torch.Tensor:
        skipped = set(skip_layers)
        outside = sorted(i for i in skipped if not 0 <= i < self.config.depth)
        if outside:
            raise ValueError(f"skip_layers {outside} are not blocks of this depth-{self.config.depth} MMDiT")
        out_dtype, dtype = x.dtype, self.dtype
        batch, _, height, width = x.shape
        p = self.config.patch_size
        x = x.to(dtype)
        if height % p or width % p:
            x = F.pad(x, (0, -width % p, 0, -height % p), mode="circular")
        grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p

        tokens = self.x_embedder(x) + self.cropped_pos_embed(grid_h, grid_w).to(dtype)
        residuals = () if control is None else self._control_residuals(control, tuple(tokens.shape))
        sigmas = torch.as_tensor(timesteps, device=x.device).to(torch.float32).expand(batch)
        c = self.t_embedder(timestep_embedding(sigmas * TIMESTEP_SCALE, TIMESTEP_CHANNELS).to(dtype))
        c = c + self.y_embedder(y.to(dtype))
        context = self.context_embedder(context.to(dtype))

        for index, block in enumerate(self.joint_blocks):
            if index not in skipped:
                context, tokens = block(context, tokens, c)
            if residuals and (residual := residuals[index]) is not None:
                tokens = tokens + residual.to(dtype)

        patches = self.final_layer(tokens, c)
        # Each token's outputs are (row in patch, column in patch, channel); interleave them back.
        out = patches.view(batch, grid_h, grid_w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(batch, -1, grid_h * p, grid_w * p)
        return out[:, :, :height, :width].to(out_dtype)

    def _control_residuals(self, control: BlockResiduals, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, ...]:
        """The per-block residuals of `control`, refused when made for another MMDiT or another latent."""
        if control.single:
            raise ValueError("an MMDiT has no single-stream blocks: control.single must be empty")
        if control.double and len(control.double) != self.config.depth:
            raise ValueError(f"control has {len(control.double)} residuals for {self.config.depth} joint blocks")
        for residual in control.double:
            if residual is not None and tuple(residual.shape) != shape:
                raise ValueError(f"a control residual is {tuple(residual.shape)}, the image tokens {shape}")
        return control.double


def load_mmdit(state_dict: Mapping[str, torch.Tensor], config: MMDiTConfig | None = None) -> MMDiT:
    """Build an MMDiT around original-layout weights (prefix `model.diffusion_model.` stripped).

    The config is detected from the weights unless given. The module adopts the tensors as they are
    (their dtype included) without a random initialisation first; a key or shape that does not fit
    raises `CheckpointLayoutError`.
    """
    config = mmdit_config_from_state_dict(state_dict) if config is None else config
    with torch.device("meta"):
        model = MMDiT(config)
    load_exact(model, state_dict, COMPONENT)
    return model
