"""Conditioning attention masks: their image part stretched to the latent's tokens, and FLUX attending with them."""

from __future__ import annotations

import math

import torch

from diffusion.attention_masks import TokenAttentionMask, as_additive, with_token_bias
from diffusion.flux import FluxTransformer
from diffusion.tiny_parts import tiny_flux_config


def test_a_one_token_image_part_stands_for_every_image_token() -> None:
    bias = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)  # 3 text tokens, a 1 x 1 image
    full = TokenAttentionMask(bias).over_image(2, 3)
    assert full.shape == (1, 3 + 6, 3 + 6)
    assert torch.equal(full[:, :3, :3], bias[:, :3, :3])
    assert (full[:, :3, 3:] == bias[:, :3, 3:]).all() and (full[:, 3:, :3] == bias[:, 3:, :3]).all()
    assert (full[:, 3:, 3:] == bias[0, 3, 3]).all()


def test_a_drawn_image_part_is_resized_bilinearly_on_both_image_axes() -> None:
    bias = torch.randn(2, 1 + 4, 1 + 4, generator=torch.Generator().manual_seed(0))  # 1 text token, a 2 x 2 image
    full = TokenAttentionMask(bias, (2, 2)).over_image(4, 4)
    stretch = lambda grid: torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear")  # noqa: E731
    torch.testing.assert_close(full[:, 0, 1:], stretch(bias[:, None, 0, 1:].reshape(2, 1, 2, 2)).reshape(2, 16))
    assert torch.equal(TokenAttentionMask(bias, (2, 2)).over_image(2, 2), bias)


def test_boolean_masks_mean_zero_or_minus_infinity() -> None:
    assert torch.equal(as_additive(torch.tensor([True, False])), torch.tensor([0.0, -math.inf]))


def test_shut_out_keys_stay_shut_out_through_the_stretch() -> None:
    mask = with_token_bias(None, 1, 3, 2, 0.0).over_image(2, 2)
    assert not mask.isnan().any()
    assert (mask[:, :3, 3:5] < -1e30).all() and (mask[:, 5:, 3:5] < -1e30).all() and (mask[:, 3:5, :] == 0).all()


def test_flux_with_tokens_weighted_zero_equals_flux_without_them() -> None:
    torch.manual_seed(0)
    model = FluxTransformer(tiny_flux_config("flux_dev")).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 8, generator=generator)
    text, extra = (torch.randn(1, n, 4096, generator=generator) for n in (5, 3))
    pooled = torch.randn(1, 768, generator=generator)
    with torch.no_grad():
        without = model(x, 0.7, text, pooled, 3.5)
        hidden = model(
            x, 0.7, torch.cat((text, extra), dim=1), pooled, 3.5, attention_mask=with_token_bias(None, 1, 5, 3, 0.0)
        )
        zeros = model(x, 0.7, text, pooled, 3.5, attention_mask=TokenAttentionMask(torch.zeros(1, 6, 6)))
        weighted = model(
            x, 0.7, torch.cat((text, extra), dim=1), pooled, 3.5, attention_mask=with_token_bias(None, 1, 5, 3, 2.0)
        )
    torch.testing.assert_close(hidden, without, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zeros, without, rtol=1e-5, atol=1e-5)
    plain = model(x, 0.7, torch.cat((text, extra), dim=1), pooled, 3.5)
    assert not torch.allclose(weighted, plain, atol=1e-4)
