"""CFG hooks: a guider's combination changed before (pre-CFG), instead of (CFG function) and after (post-CFG)
plain classifier-free guidance, in x0 space, on a model whose predictions are known in closed form."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from diffusion.cfg_hooks import CFGHooks, CFGInputs, PreCFGInputs
from diffusion.guidance import CFGGuider, Inpainting
from tests.diffusion.known_unet import MS, KnownUNet, known_x0, latent, prompt, state

POSITIVE, NEGATIVE = prompt(1.0), prompt(-2.0)
SIGMA = torch.tensor([2.0])


def guider(cfg: float, hooks: CFGHooks = CFGHooks(), unet: KnownUNet | None = None, **kwargs) -> CFGGuider:
    return CFGGuider(unet or KnownUNet(), MS, latent(), POSITIVE, NEGATIVE, cfg, hooks=hooks, **kwargs)


def plain_cfg(x: torch.Tensor, cfg: float) -> torch.Tensor:
    cond, uncond = known_x0(x, SIGMA, 1.0), known_x0(x, SIGMA, -2.0)
    return uncond + (cond - uncond) * cfg


class Recorder:
    """A hook of every kind that records what it was given and changes nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def cfg_function(self, inputs: CFGInputs) -> torch.Tensor:
        self.seen.append(("cfg", inputs))
        return inputs.uncond + (inputs.cond - inputs.uncond) * inputs.cfg

    def post(self, inputs: CFGInputs, denoised: torch.Tensor) -> torch.Tensor:
        self.seen.append(("post", (inputs, denoised)))
        return denoised

    def pre(self, inputs: PreCFGInputs) -> Sequence[torch.Tensor]:
        self.seen.append(("pre", inputs))
        return inputs.predictions


def test_without_hooks_the_guided_estimate_is_plain_cfg_and_identity_hooks_change_no_bit() -> None:
    x = state()
    plain = guider(6.0)(x, SIGMA)
    torch.testing.assert_close(plain, plain_cfg(x, 6.0))
    recorder = Recorder()
    hooks = CFGHooks(pre_cfg=(recorder.pre,), post_cfg=(recorder.post,))
    assert torch.equal(guider(6.0, hooks)(x, SIGMA), plain)
    assert [kind for kind, _ in recorder.seen] == ["pre", "post"]


def test_a_cfg_function_replaces_the_combination_and_is_given_both_x0_predictions() -> None:
    x, seen = state(), []

    def halfway(inputs: CFGInputs) -> torch.Tensor:
        seen.append(inputs)
        return (inputs.cond + inputs.uncond) / 2

    out = guider(6.0, CFGHooks(cfg_function=halfway))(x, SIGMA)
    (inputs,) = seen
    assert torch.equal(inputs.x, x) and torch.equal(inputs.sigma, SIGMA) and inputs.cfg == 6.0
    torch.testing.assert_close(inputs.cond, known_x0(x, SIGMA, 1.0))
    torch.testing.assert_close(inputs.uncond, known_x0(x, SIGMA, -2.0))
    assert inputs.cond_conditioning is POSITIVE and inputs.uncond_conditioning is NEGATIVE
    torch.testing.assert_close(out, (known_x0(x, SIGMA, 1.0) + known_x0(x, SIGMA, -2.0)) / 2)


def test_post_cfg_functions_change_the_combined_estimate_in_the_order_they_were_added() -> None:
    x = state()
    hooks = CFGHooks(post_cfg=(lambda inputs, d: d + 1.0, lambda inputs, d: d * 3.0))
    torch.testing.assert_close(guider(6.0, hooks)(x, SIGMA), (plain_cfg(x, 6.0) + 1.0) * 3.0)


def test_post_cfg_functions_follow_the_cfg_function() -> None:
    x = state()
    hooks = CFGHooks(cfg_function=lambda inputs: inputs.cond, post_cfg=(lambda inputs, d: d - inputs.uncond,))
    torch.testing.assert_close(guider(6.0, hooks)(x, SIGMA), known_x0(x, SIGMA, 1.0) - known_x0(x, SIGMA, -2.0))


def test_pre_cfg_functions_change_the_predictions_the_combination_reads() -> None:
    x = state()

    def swap(inputs: PreCFGInputs) -> list[torch.Tensor]:
        cond, uncond = inputs.predictions
        return [uncond, cond]

    cond, uncond = known_x0(x, SIGMA, 1.0), known_x0(x, SIGMA, -2.0)
    torch.testing.assert_close(guider(6.0, CFGHooks(pre_cfg=(swap,)))(x, SIGMA), cond + (uncond - cond) * 6.0)


def test_a_pre_cfg_function_must_return_one_prediction_per_side() -> None:
    hooks = CFGHooks(pre_cfg=(lambda inputs: inputs.predictions[:1],))
    with pytest.raises(ValueError, match="returned 1 predictions for 2 conditionings"):
        guider(6.0, hooks)(state(), SIGMA)


def test_at_cfg_one_hooks_see_an_unevaluated_negative_as_zeros_unless_they_ask_for_it() -> None:
    x, recorder, unet = state(), Recorder(), KnownUNet()
    hooks = CFGHooks(cfg_function=recorder.cfg_function, pre_cfg=(recorder.pre,))
    out = guider(1.0, hooks, unet)(x, SIGMA)
    assert unet.batches() == [1]
    (_, pre), (_, cfg) = recorder.seen
    assert isinstance(pre, PreCFGInputs) and isinstance(cfg, CFGInputs)
    assert pre.conditionings == (POSITIVE, None) and cfg.uncond_conditioning is None
    assert torch.equal(cfg.uncond, torch.zeros_like(x)) and torch.equal(out, cfg.cond)

    recorder, unet = Recorder(), KnownUNet()
    hooks = CFGHooks(cfg_function=recorder.cfg_function, uncond_at_cfg1=True)
    out = guider(1.0, hooks, unet)(x, SIGMA)
    assert unet.batches() == [2]
    ((_, cfg),) = recorder.seen
    assert isinstance(cfg, CFGInputs) and cfg.uncond_conditioning is NEGATIVE
    torch.testing.assert_close(cfg.uncond, known_x0(x, SIGMA, -2.0))
    torch.testing.assert_close(out, known_x0(x, SIGMA, 1.0))


def test_without_hooks_uncond_at_cfg1_changes_what_is_evaluated_not_the_result() -> None:
    x = state()
    assert torch.equal(guider(1.0, CFGHooks(uncond_at_cfg1=True))(x, SIGMA), guider(1.0)(x, SIGMA))


def test_cfg_pp_gets_the_unconditional_prediction_after_the_pre_cfg_functions() -> None:
    x = state()
    shift = CFGHooks(pre_cfg=(lambda inputs: [inputs.predictions[0], inputs.predictions[1] + 5.0],))
    guided, uncond = guider(1.0, shift).with_uncond(x, SIGMA)
    torch.testing.assert_close(uncond, known_x0(x, SIGMA, -2.0) + 5.0)
    torch.testing.assert_close(guided, known_x0(x, SIGMA, 1.0))


def test_hooks_see_the_state_with_an_inpaintings_kept_cells_reset() -> None:
    x, seen = state(), []
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    original, noise = state(1), state(2)
    inpainting = Inpainting(mask, original, noise)
    hooks = CFGHooks(post_cfg=(lambda inputs, d: seen.append(inputs.x) or d,))
    guider(6.0, hooks, inpainting=inpainting)(x, SIGMA)
    torch.testing.assert_close(seen[0], inpainting.hold(MS, x, SIGMA))
