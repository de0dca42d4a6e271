"""Skip-layer guidance: which blocks a node's text names, and the post-CFG function's window and formula."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from diffusion.cfg_hooks import CFGInputs
from diffusion.skip_layer_guidance import SkipLayerGuidance, SkipLayers, block_numbers

LAYERS = SkipLayers(frozenset({7, 8}), frozenset({2}))


def test_block_numbers_are_every_run_of_digits() -> None:
    assert block_numbers("7, 8, 9") == {7, 8, 9}
    assert block_numbers("10;3 3") == {3, 10}
    assert block_numbers("") == frozenset() and not SkipLayers(block_numbers(""), block_numbers(" , "))


class Predictor:
    def __init__(self, answer: torch.Tensor) -> None:
        self.answer, self.calls = answer, []  # type: list[tuple[Any, torch.Tensor, object]]

    def __call__(self, conditioning: Any, x: torch.Tensor, variant: object = None) -> torch.Tensor:
        self.calls.append((conditioning, x, variant))
        return self.answer


def inputs(sigma: float, predictor: Predictor) -> CFGInputs:
    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(2, 16, 4, 4, generator=g) for _ in range(3))
    return CFGInputs(
        x, torch.full((2,), sigma), cond, uncond, 4.0, [(torch.zeros(1, 2, 8), {})], None, predict=predictor
    )


@pytest.mark.parametrize("sigma", [0.625, 0.75])
def test_inside_its_window_it_guides_away_from_the_skipped_prediction(sigma: float) -> None:
    predictor = Predictor(torch.full((2, 16, 4, 4), 0.5))
    given = inputs(sigma, predictor)
    denoised = torch.randn(2, 16, 4, 4)
    out = SkipLayerGuidance(LAYERS, 3.0, sigma_start=0.75, sigma_end=0.5)(given, denoised)
    torch.testing.assert_close(out, denoised + (given.cond - 0.5) * 3.0)
    ((conditioning, x, variant),) = predictor.calls
    assert conditioning is given.cond_conditioning and x is given.x and variant == LAYERS


@pytest.mark.parametrize(("sigma", "scale"), [(0.875, 3.0), (0.5, 3.0), (0.25, 3.0), (0.625, 0.0)])
def test_outside_its_window_or_at_scale_zero_it_changes_nothing(sigma: float, scale: float) -> None:
    predictor = Predictor(torch.zeros(1))
    denoised = torch.randn(2, 16, 4, 4)
    hook = SkipLayerGuidance(LAYERS, scale, sigma_start=0.75, sigma_end=0.5)
    assert hook(inputs(sigma, predictor), denoised) is denoised and not predictor.calls


def test_rescaling_pulls_the_spread_towards_the_conditional_estimate() -> None:
    predictor = Predictor(torch.full((2, 16, 4, 4), 0.5))
    given = inputs(0.625, predictor)
    denoised = torch.randn(2, 16, 4, 4)
    guided = denoised + (given.cond - 0.5) * 3.0
    out = SkipLayerGuidance(LAYERS, 3.0, 0.75, 0.5, rescaling_scale=0.75)(given, denoised)
    torch.testing.assert_close(out, guided * (0.75 * given.cond.std() / guided.std() + 0.25))
    full = SkipLayerGuidance(LAYERS, 3.0, 0.75, 0.5, rescaling_scale=1.0)(given, denoised)
    torch.testing.assert_close(full.std(), given.cond.std())
