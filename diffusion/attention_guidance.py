"""Guidance that contrasts a UNet with a copy of itself whose self-attention is weakened, as ComfyUI's nodes do it.

- Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
  Guidance"): the positive prompt is evaluated a second time with the self-attention of the middle block replaced
  by the identity (every token attends only to itself, so attention returns its values); the guided estimate
  moves away from that structure-less prediction, ``denoised + (cond - perturbed) * scale``.
- Self-attention guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using Self-Attention
  Guidance"): during the ordinary call the negative side's attention in the first transformer block of the middle
  block is recorded; the tokens that receive more than their share of it (summed over queries, averaged over
  heads, above 1) mark where the negative's x0 estimate is blurred; that degraded estimate is noised back to the
  call's level and evaluated again, and the guided estimate moves away from what the model makes of it,
  ``denoised + (degraded - prediction) * scale``.

Both run through ``diffusion.cfg_hooks``: a post-CFG function that asks the guider to evaluate a conditioning again
(``CFGInputs.predict``), the UNet changed through its attention replacement (``diffusion.unet_patches``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from diffusion.attention import merge_heads, split_heads
from diffusion.canny import gaussian_taps
from diffusion.cfg_hooks import CFGInputs, Conditioning, SidePredictor
from diffusion.unet_patches import AttentionContext, Attn1Replace, BlockId, UNetPatches, attend

__all__ = [
    "AttentionRecorder",
    "PerturbedAttentionGuidance",
    "PerturbedMiddleAttention",
    "SelfAttentionGuidance",
    "blur_where_attended",
    "perturb_middle_attention",
]

MIDDLE = BlockId("middle", 0)
#: ComfyUI's self-attention guidance blurs with a 9-tap Gaussian and marks tokens whose attention sum exceeds 1.
SAG_KERNEL = 9
SAG_THRESHOLD = 1.0
NEGATIVE = 1  # the negative side's label in ``cond_or_uncond``


def _previous(replace: Attn1Replace | None, q: Tensor, k: Tensor, v: Tensor, where: AttentionContext) -> Tensor:
    return attend(q, k, v, where.heads) if replace is None else replace(q, k, v, where)


@dataclass(frozen=True)
class PerturbedMiddleAttention:
    """An attn1 replacement: identity attention (the values) in every transformer block of the middle block,
    the replacement it wraps (or plain attention) elsewhere."""

    previous: Attn1Replace | None = None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, where: AttentionContext) -> Tensor:
        if where.block == MIDDLE:
            return v
        return _previous(self.previous, q, k, v, where)


def perturb_middle_attention(patches: UNetPatches) -> UNetPatches:
    """The variant of a UNet's patches that perturbed-attention guidance evaluates (``SidePredictor``)."""
    return patches.with_attn1_replace(PerturbedMiddleAttention(patches.attn1))


def _require_predict(inputs: CFGInputs, node: str) -> SidePredictor:
    if inputs.predict is None:
        raise ValueError(f"{node} evaluates the model again, and this guider cannot (a pack called Loom's hook)")
    return inputs.predict


def _require_side(conditioning: Conditioning | None, node: str, side: str) -> Conditioning:
    if conditioning is None:
        raise ValueError(f"{node} evaluates the {side} conditioning again, and this sampling has none")
    return conditioning


@dataclass(frozen=True)
class PerturbedAttentionGuidance:
    """Post-CFG function: ``denoised + (cond - cond with perturbed middle attention) * scale``; 0 changes nothing
    and costs nothing."""

    scale: float

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        if self.scale == 0:
            return denoised
        node = "PerturbedAttentionGuidance"
        predict = _require_predict(inputs, node)
        positive = _require_side(inputs.cond_conditioning, node, "positive")
        perturbed = predict(positive, inputs.x, perturb_middle_attention)
        return denoised + (inputs.cond - perturbed) * self.scale


@dataclass(eq=False)
class AttentionRecorder:
    """An attn1 replacement that keeps the negative side's attention probabilities ``[B, heads, N, N]`` from the
    first transformer block of the middle block (where the rows say which side they are), computing that
    attention explicitly; the replacement it wraps (or plain attention) everywhere else. Holds the latest
    recording, as ComfyUI's node keeps it between the model call and its post-CFG function."""

    previous: Attn1Replace | None = None
    recorded: Tensor | None = field(default=None, repr=False)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, where: AttentionContext) -> Tensor:
        if where.block != MIDDLE or where.transformer_index != 0 or NEGATIVE not in where.cond_or_uncond:
            return _previous(self.previous, q, k, v, where)
        heads = where.heads
        q_h, k_h, v_h = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
        scale = q_h.shape[-1] ** -0.5
        probabilities = (q_h.float() @ k_h.float().transpose(-1, -2) * scale).softmax(dim=-1)
        rows = q.shape[0] // len(where.cond_or_uncond)
        start = where.cond_or_uncond.index(NEGATIVE) * rows
        self.recorded = probabilities[start : start + rows]
        return merge_heads(probabilities.to(v.dtype) @ v_h)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Every channel of ``[B, C, H, W]`` blurred by a 9-tap Gaussian, mirrored borders; sigma 0 leaves it as is
    (ComfyUI's kernel divides by sigma and turns to NaN there)."""
    if sigma == 0:
        return x
    taps = gaussian_taps(SAG_KERNEL, sigma, dtype=x.dtype, device=x.device)
    channels, radius = x.shape[1], SAG_KERNEL // 2
    rows = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"),
        taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    return F.conv2d(
        F.pad(rows, (0, 0, radius, radius), mode="reflect"),
        taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
        groups=channels,
    )


def blur_where_attended(x0: Tensor, attention: Tensor, sigma: float, threshold: float = SAG_THRESHOLD) -> Tensor:
    """``x0`` ``[B, C, H, W]`` blurred where the recorded attention ``[B, heads, N, N]`` marks it: a token whose
    column sum (what all queries give it), averaged over heads, exceeds ``threshold``; the token grid is the
    latent's divided by the middle block's power-of-two downscale, and the mask is widened back nearest-exact."""
    batch, _, height, width = x0.shape
    tokens = attention.shape[-2]
    marked = attention.mean(1).sum(1) > threshold
    ratio = 2 ** (math.ceil(math.sqrt(height * width / tokens)) - 1).bit_length()
    grid = (math.ceil(height / ratio), math.ceil(width / ratio))
    if grid[0] * grid[1] != attention.shape[-1] or marked.shape[0] != batch:
        raise ValueError(
            f"SelfAttentionGuidance: the recorded attention of {marked.shape[0]} x {attention.shape[-1]} tokens does "
            f"not fit a {batch} x {width}x{height} latent"
        )
    mask = F.interpolate(marked.reshape(batch, 1, *grid).to(x0.dtype), (height, width))
    return _gaussian_blur(x0, sigma) * mask + x0 * (1 - mask)


@dataclass(frozen=True)
class SelfAttentionGuidance:
    """Post-CFG function of self-attention guidance, reading what ``recorder`` kept from the same model call."""

    scale: float
    blur_sigma: float
    recorder: AttentionRecorder

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        if min(denoised.shape[2:]) <= SAG_KERNEL // 2:
            return denoised
        node = "SelfAttentionGuidance"
        negative = _require_side(inputs.uncond_conditioning, node, "negative")
        predict = _require_predict(inputs, node)
        attention = self.recorder.recorded
        if attention is None:
            raise ValueError(f"{node} found no recorded attention: its MODEL's middle block has no self-attention")
        degraded = blur_where_attended(inputs.uncond, attention.to(inputs.uncond.device), self.blur_sigma)
        prediction = predict(negative, degraded + inputs.x - inputs.uncond)
        return denoised + (degraded - prediction) * self.scale
