"""Perturbed-attention and self-attention guidance: the attention replacements and the post-CFG functions."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from diffusion.attention_guidance import (
    AttentionRecorder,
    PerturbedAttentionGuidance,
    PerturbedMiddleAttention,
    SelfAttentionGuidance,
    blur_where_attended,
    perturb_middle_attention,
)
from diffusion.cfg_hooks import CFGInputs
from diffusion.unet_patches import AttentionContext, BlockId, UNetPatches, attend

HEADS = 2


def at(kind: str, index: int = 0, transformer: int = 0, labels: tuple[int, ...] = ()) -> AttentionContext:
    return AttentionContext(BlockId(kind, index), torch.zeros(1), (1, 4, 8, 8), transformer, HEADS, labels)  # type: ignore[arg-type]


def qkv(batch: int = 2, tokens: int = 16, width: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, tokens, width, generator=g) for _ in range(3))  # type: ignore[return-value]


def test_perturbed_attention_is_the_identity_in_the_middle_block_only() -> None:
    q, k, v = qkv()
    perturbed = PerturbedMiddleAttention()
    for transformer in (0, 3):
        assert torch.equal(perturbed(q, k, v, at("middle", transformer=transformer)), v)
    for where in (at("input", 4), at("output", 2)):
        assert torch.equal(perturbed(q, k, v, where), attend(q, k, v, HEADS))


def test_perturbed_attention_keeps_the_replacement_it_wraps_outside_the_middle() -> None:
    q, k, v = qkv()

    def doubled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: AttentionContext) -> torch.Tensor:
        return 2 * attend(q, k, v, where.heads)

    patches = perturb_middle_attention(UNetPatches(attn1=doubled))
    assert patches.attn1 == PerturbedMiddleAttention(doubled)
    assert torch.equal(patches.attn1(q, k, v, at("input", 1)), 2 * attend(q, k, v, HEADS))
    assert torch.equal(patches.attn1(q, k, v, at("middle")), v)


def test_the_recorder_keeps_the_negative_rows_attention_and_attends_as_usual() -> None:
    q, k, v = qkv(batch=4)
    recorder = AttentionRecorder()
    out = recorder(q, k, v, at("middle", labels=(0, 1)))
    torch.testing.assert_close(out, attend(q, k, v, HEADS), rtol=1e-5, atol=1e-6)
    recorded = recorder.recorded
    assert recorded is not None and recorded.shape == (2, HEADS, 16, 16)
    torch.testing.assert_close(recorded.sum(-1), torch.ones(2, HEADS, 16))
    q_h = q[2:].view(2, 16, HEADS, 4).transpose(1, 2)
    k_h = k[2:].view(2, 16, HEADS, 4).transpose(1, 2)
    torch.testing.assert_close(recorded, (q_h @ k_h.transpose(-1, -2) / 2).softmax(-1))


@pytest.mark.parametrize(
    "where", [at("middle", labels=(0,)), at("middle", transformer=1, labels=(1,)), at("input", 1, labels=(1,))]
)
def test_the_recorder_records_nothing_elsewhere(where: AttentionContext) -> None:
    q, k, v = qkv()
    recorder = AttentionRecorder()
    assert torch.equal(recorder(q, k, v, where), attend(q, k, v, HEADS))
    assert recorder.recorded is None


def reference_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A 9 x 9 Gaussian as the outer product of 9 taps, one 2-D convolution per channel, mirrored borders."""
    offsets = torch.linspace(-4, 4, 9)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :]).expand(x.shape[1], 1, 9, 9)
    return F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), kernel, groups=x.shape[1])


def test_the_blur_covers_the_cells_of_the_tokens_that_draw_attention() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, 16, 16, generator=g)
    # 16 tokens (a 4 x 4 grid, 4 latent cells each way per token); every query attends to tokens 0 and 5 only.
    attention = torch.zeros(1, HEADS, 16, 16)
    attention[..., 0], attention[..., 5] = 0.5, 0.5
    out = blur_where_attended(x0, attention, sigma=2.0)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 0:4, 0:4] = 1
    mask[..., 4:8, 4:8] = 1
    expected = reference_blur(x0, 2.0) * mask + x0 * (1 - mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(out[..., :4, :4], x0[..., :4, :4]) and torch.equal(out[..., 8:, 8:], x0[..., 8:, 8:])


def test_a_blur_sigma_of_zero_leaves_the_estimate_as_it_is() -> None:
    x0 = torch.randn(1, 4, 8, 8)
    attention = torch.full((1, HEADS, 4, 4), 0.25)
    attention[..., 0] = 1.0
    assert torch.equal(blur_where_attended(x0, attention, sigma=0.0), x0)


def test_attention_that_fits_no_grid_of_the_latent_is_refused() -> None:
    with pytest.raises(ValueError, match="SelfAttentionGuidance: the recorded attention of 1 x 12 tokens"):
        blur_where_attended(torch.zeros(1, 4, 16, 16), torch.zeros(1, HEADS, 12, 12), 2.0)


class FakePredictor:
    """Records what a hook asks to evaluate and answers with a fixed tensor."""

    def __init__(self, answer: torch.Tensor) -> None:
        self.answer, self.calls = answer, []  # type: list[tuple[Any, torch.Tensor, object]]

    def __call__(self, conditioning: Any, x: torch.Tensor, variant: object = None) -> torch.Tensor:
        self.calls.append((conditioning, x, variant))
        return self.answer


def inputs(predict: FakePredictor | None, size: int = 8) -> CFGInputs:
    g = torch.Generator().manual_seed(2)
    x, cond, uncond = (torch.randn(1, 4, size, size, generator=g) for _ in range(3))
    positive, negative = [(torch.zeros(1, 3, 8), {})], [(torch.ones(1, 3, 8), {})]
    return CFGInputs(x, torch.tensor([3.0]), cond, uncond, 5.0, positive, negative, predict=predict)


def test_pag_guides_away_from_the_positive_with_perturbed_attention() -> None:
    predictor = FakePredictor(torch.full((1, 4, 8, 8), 0.25))
    given = inputs(predictor)
    denoised = torch.randn(1, 4, 8, 8)
    out = PerturbedAttentionGuidance(3.0)(given, denoised)
    torch.testing.assert_close(out, denoised + (given.cond - 0.25) * 3.0)
    ((conditioning, x, variant),) = predictor.calls
    assert conditioning is given.cond_conditioning and x is given.x and variant is perturb_middle_attention


def test_pag_at_scale_zero_evaluates_nothing() -> None:
    predictor = FakePredictor(torch.zeros(1))
    denoised = torch.randn(1, 4, 8, 8)
    assert PerturbedAttentionGuidance(0.0)(inputs(predictor), denoised) is denoised and not predictor.calls


def test_pag_needs_a_guider_that_can_evaluate_again() -> None:
    with pytest.raises(ValueError, match="PerturbedAttentionGuidance evaluates the model again"):
        PerturbedAttentionGuidance(1.0)(inputs(None), torch.zeros(1, 4, 8, 8))


def test_sag_guides_away_from_the_negative_on_its_blurred_estimate() -> None:
    predictor = FakePredictor(torch.full((1, 4, 8, 8), -0.5))
    given = inputs(predictor)
    attention = torch.full((1, HEADS, 4, 4), 0.25)
    attention[..., 3] = 1.0  # the bottom right token of a 2 x 2 grid draws the attention
    recorder = AttentionRecorder(recorded=attention)
    denoised = torch.randn(1, 4, 8, 8)
    out = SelfAttentionGuidance(0.5, 2.0, recorder)(given, denoised)
    degraded = blur_where_attended(given.uncond, attention, 2.0)
    assert not torch.equal(degraded, given.uncond)
    torch.testing.assert_close(out, denoised + (degraded - -0.5) * 0.5)
    ((conditioning, x, variant),) = predictor.calls
    assert conditioning is given.uncond_conditioning and variant is None
    torch.testing.assert_close(x, degraded + given.x - given.uncond)


def test_sag_skips_latents_too_small_for_its_blur() -> None:
    predictor = FakePredictor(torch.zeros(1))
    denoised = torch.randn(1, 4, 4, 4)
    guidance = SelfAttentionGuidance(0.5, 2.0, AttentionRecorder())
    assert guidance(inputs(predictor, size=4), denoised) is denoised and not predictor.calls


def test_sag_without_a_recording_or_a_negative_says_why() -> None:
    given = inputs(FakePredictor(torch.zeros(1)))
    with pytest.raises(ValueError, match="found no recorded attention"):
        SelfAttentionGuidance(0.5, 2.0, AttentionRecorder())(given, torch.zeros(1, 4, 8, 8))
    no_negative = CFGInputs(given.x, given.sigma, given.cond, given.uncond, 1.0, given.cond_conditioning, None)
    with pytest.raises(ValueError, match="SelfAttentionGuidance evaluates the negative conditioning again"):
        SelfAttentionGuidance(0.5, 2.0, AttentionRecorder())(no_negative, torch.zeros(1, 4, 8, 8))
