"""The published guidance rules: each hook's step against its formula written out on known tensors, and the
guiders over three conditionings on a model whose predictions are known in closed form."""

from __future__ import annotations

import pytest
import torch

from diffusion.cfg_hooks import CFGHooks, CFGInputs, PreCFGInputs
from diffusion.guidance import CFGGuider
from diffusion.guidance_rules import (
    AdaptiveProjection,
    CFGNormalisation,
    DualCFGGuider,
    OptimizedScale,
    PerpNegGuider,
    RescaledCFG,
    perp_neg,
)
from tests.diffusion.known_unet import MS, KnownUNet, known_x0, latent, prompt, state

SIGMA = torch.tensor([2.5, 0.7])


def inputs(cfg: float = 5.0) -> CFGInputs:
    """Two batch items, the conditional and unconditional estimates unrelated to each other."""
    return CFGInputs(state(0, 2), SIGMA, state(1, 2), state(2, 2) * 0.5, cfg)


def per_item(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1)


class TestRescaleCFG:
    def test_it_rescales_the_guided_velocity_to_the_conditional_ones_spread(self) -> None:
        """Lin et al. 2024, eq. 15-16 on v = (x / (s^2 + 1) - x0) sqrt(s^2 + 1) / s, written as ComfyUI does:
        from the noise-space differences ``x - x0`` it is given, back to ``x - x0``."""
        step = inputs()
        x, s, w, phi = step.x, per_item(step.sigma), step.cfg, 0.7
        cond_noise, uncond_noise = x - step.cond, x - step.uncond
        x_scaled = x / (s * s + 1.0)
        v_cond = (x_scaled - (x - cond_noise)) * (s**2 + 1.0) ** 0.5 / s
        v_uncond = (x_scaled - (x - uncond_noise)) * (s**2 + 1.0) ** 0.5 / s
        v_cfg = v_uncond + w * (v_cond - v_uncond)
        v_rescaled = v_cfg * (v_cond.std(dim=(1, 2, 3), keepdim=True) / v_cfg.std(dim=(1, 2, 3), keepdim=True))
        v_final = phi * v_rescaled + (1.0 - phi) * v_cfg
        noise = x - (x_scaled - v_final * s / (s * s + 1.0) ** 0.5)
        torch.testing.assert_close(RescaledCFG(phi)(step), x - noise, rtol=1e-5, atol=1e-5)

    def test_multiplier_zero_is_plain_cfg(self) -> None:
        step = inputs()
        plain = step.uncond + (step.cond - step.uncond) * step.cfg
        torch.testing.assert_close(RescaledCFG(0.0)(step), plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(RescaledCFG(0.0, flow=True)(step), plain)

    def test_a_flow_model_is_rescaled_on_its_x0_estimates(self) -> None:
        step = inputs()
        guided = step.uncond + step.cfg * (step.cond - step.uncond)
        ratio = step.cond.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True)
        torch.testing.assert_close(RescaledCFG(0.4, flow=True)(step), 0.4 * guided * ratio + 0.6 * guided)


def test_cfg_norm_caps_the_per_cell_channel_norm_at_the_conditional_estimates() -> None:
    step = inputs()
    denoised = step.uncond + (step.cond - step.uncond) * step.cfg
    out = CFGNormalisation(0.8)(step, denoised)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                ratio = step.cond[b, :, i, j].norm() / (denoised[b, :, i, j].norm() + 1e-8)
                expected = denoised[b, :, i, j] * min(float(ratio), 1.0) * 0.8
                torch.testing.assert_close(out[b, :, i, j], expected)


def test_cfg_zero_star_guides_from_the_unconditional_estimate_scaled_by_its_optimal_projection() -> None:
    """alpha = <x - c, x - u> / |x - u|^2 per item; the result is ``alpha u + cfg (c - alpha u)``."""
    step = inputs()
    denoised = step.uncond + (step.cond - step.uncond) * step.cfg
    out = OptimizedScale()(step, denoised)
    for b in range(2):
        cond_noise, uncond_noise = step.x[b] - step.cond[b], step.x[b] - step.uncond[b]
        alpha = (cond_noise * uncond_noise).sum() / ((uncond_noise**2).sum() + 1e-8)
        expected = alpha * step.uncond[b] + step.cfg * (step.cond[b] - alpha * step.uncond[b])
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-5)


class TestAdaptiveProjection:
    def pre(self, hook: AdaptiveProjection, sigma: float = 2.0, cfg: float = 5.0) -> list[torch.Tensor]:
        step = inputs(cfg)
        return list(
            hook(PreCFGInputs(step.x, torch.tensor([sigma, sigma]), cfg, (step.cond, step.uncond), (None,) * 2))
        )

    def test_one_step_is_the_projection_formula(self) -> None:
        step, eta, threshold = inputs(), 0.3, 2.0
        cond, uncond = step.cond, step.uncond
        guidance = cond - uncond
        norm = guidance.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        guidance = guidance * torch.clamp(threshold / norm, max=1.0)
        unit = cond / cond.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        parallel = (guidance * unit).flatten(1).sum(1).reshape(-1, 1, 1, 1) * unit
        modified = (guidance - parallel) + eta * parallel
        new_cond, new_uncond = self.pre(AdaptiveProjection(eta, threshold, 0.0))
        torch.testing.assert_close(new_cond, uncond + modified + (cond - uncond) / step.cfg, rtol=1e-5, atol=1e-5)
        assert torch.equal(new_uncond, uncond)

    def test_eta_one_without_threshold_or_momentum_is_cfg_one_scale_higher(self) -> None:
        """ComfyUI's APG leaves ``cond + cfg (cond - uncond)`` after the CFG that follows it."""
        x, sigma = state(), torch.tensor([2.0])
        hooks = CFGHooks(pre_cfg=(AdaptiveProjection(1.0, 0.0, 0.0),))
        out = CFGGuider(KnownUNet(), MS, latent(), prompt(1.0), prompt(-2.0), 5.0, hooks=hooks)(x, sigma)
        cond, uncond = known_x0(x, sigma, 1.0), known_x0(x, sigma, -2.0)
        torch.testing.assert_close(out, uncond + (cond - uncond) * 6.0, rtol=1e-5, atol=1e-5)

    def test_momentum_averages_the_guidance_over_a_run_and_a_new_run_starts_afresh(self) -> None:
        step = inputs()
        guidance = step.cond - step.uncond
        hook = AdaptiveProjection(1.0, 0.0, 0.5)
        first = self.pre(hook, sigma=3.0)[0]
        torch.testing.assert_close(first, step.uncond + guidance + guidance / step.cfg)
        second = self.pre(hook, sigma=2.0)[0]
        torch.testing.assert_close(second, step.uncond + 1.5 * guidance + guidance / step.cfg)
        restarted = self.pre(hook, sigma=3.0)[0]
        torch.testing.assert_close(restarted, first)


def test_perp_neg_removes_only_the_negatives_part_perpendicular_to_the_positive() -> None:
    empty = torch.zeros(1, 2, 1, 1)
    positive = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    negative = torch.tensor([3.0, 2.0]).reshape(1, 2, 1, 1)
    out = perp_neg(positive, negative, empty, neg_scale=0.5, cfg=4.0)
    # p = (1, 0), n = (3, 2): perpendicular part (0, 2), so 4 * ((1, 0) - 0.5 * (0, 2)).
    torch.testing.assert_close(out, torch.tensor([4.0, -4.0]).reshape(1, 2, 1, 1))
    along = perp_neg(positive, 2 * positive, empty, neg_scale=3.0, cfg=4.0)
    torch.testing.assert_close(along, 4.0 * positive)


C1, C2, NEG = 1.0, 0.5, -2.0
X, S = state(), torch.tensor([2.0])


def dual(cfg_conds: float, cfg_cond2_negative: float, nested: bool, hooks: CFGHooks = CFGHooks()):
    unet = KnownUNet()
    guider = DualCFGGuider(
        unet, MS, latent(), prompt(C1), prompt(C2), prompt(NEG), cfg_conds, cfg_cond2_negative, nested, hooks=hooks
    )
    return guider, unet


class TestDualCFGGuider:
    def test_regular_is_cfg_from_the_negative_to_cond2_plus_cond1_over_cond2(self) -> None:
        guider, unet = dual(3.0, 5.0, nested=False)
        c1, c2, neg = known_x0(X, S, C1), known_x0(X, S, C2), known_x0(X, S, NEG)
        torch.testing.assert_close(guider(X, S), neg + (c2 - neg) * 5.0 + (c1 - c2) * 3.0, rtol=1e-5, atol=1e-5)
        assert unet.batches() == [3]

    def test_nested_guides_cond2_to_cond1_then_away_from_the_negative(self) -> None:
        guider, _ = dual(3.0, 5.0, nested=True)
        c1, c2, neg = known_x0(X, S, C1), known_x0(X, S, C2), known_x0(X, S, NEG)
        inner = c2 + (c1 - c2) * 3.0
        torch.testing.assert_close(guider(X, S), neg + 5.0 * (inner - neg), rtol=1e-5, atol=1e-5)
        _, uncond = guider.with_uncond(X, S)
        torch.testing.assert_close(uncond, c2)

    def test_regular_at_scale_one_leaves_out_what_drops_out(self) -> None:
        guider, unet = dual(3.0, 1.0, nested=False)
        c1, c2 = known_x0(X, S, C1), known_x0(X, S, C2)
        torch.testing.assert_close(guider(X, S), c2 + (c1 - c2) * 3.0, rtol=1e-5, atol=1e-5)
        guider(X, S)
        both_one, both_unet = dual(1.0, 1.0, nested=False)
        torch.testing.assert_close(both_one(X, S), c1)
        assert unet.batches() == [2, 2] and both_unet.batches() == [1]
        asked_guider, asked_unet = dual(1.0, 1.0, nested=False, hooks=CFGHooks(uncond_at_cfg1=True))
        asked_guider(X, S)
        assert asked_unet.batches() == [3]

    def test_the_models_cfg_function_combines_cond2_and_the_negative(self) -> None:
        seen: list[CFGInputs] = []
        hooks = CFGHooks(cfg_function=lambda i: seen.append(i) or i.cond)
        guider, _ = dual(3.0, 5.0, nested=False, hooks=hooks)
        c1, c2 = known_x0(X, S, C1), known_x0(X, S, C2)
        torch.testing.assert_close(guider(X, S), c2 + (c1 - c2) * 3.0, rtol=1e-5, atol=1e-5)
        assert seen[0].cfg == 5.0
        torch.testing.assert_close(seen[0].uncond, known_x0(X, S, NEG))


class TestPerpNegGuider:
    def guider(self, cfg: float, neg_scale: float, hooks: CFGHooks = CFGHooks()):
        unet = KnownUNet()
        return PerpNegGuider(unet, MS, latent(), prompt(C1), prompt(NEG), prompt(C2), cfg, neg_scale, hooks=hooks), unet

    def test_it_is_perp_neg_over_the_three_predictions(self) -> None:
        guider, unet = self.guider(4.0, 0.7)
        expected = perp_neg(known_x0(X, S, C1), known_x0(X, S, NEG), known_x0(X, S, C2), 0.7, 4.0)
        torch.testing.assert_close(guider(X, S), expected, rtol=1e-5, atol=1e-5)
        assert unet.batches() == [3]

    def test_at_neg_scale_zero_the_negative_is_left_out_and_it_is_cfg_from_the_empty_prompt(self) -> None:
        guider, unet = self.guider(4.0, 0.0)
        pos, empty = known_x0(X, S, C1), known_x0(X, S, C2)
        torch.testing.assert_close(guider(X, S), empty + 4.0 * (pos - empty), rtol=1e-5, atol=1e-5)
        assert unet.batches() == [2]
        one, one_unet = self.guider(1.0, 0.0)
        torch.testing.assert_close(one(X, S), pos, rtol=1e-5, atol=1e-5)
        assert one_unet.batches() == [1]

    def test_post_cfg_functions_see_the_negative_and_the_empty_prompt_but_no_cfg_function_runs(self) -> None:
        seen: list[CFGInputs] = []
        hooks = CFGHooks(
            cfg_function=lambda i: pytest.fail("Perp-Neg is its own combination"),
            post_cfg=(lambda i, d: seen.append(i) or d,),
        )
        guider, _ = self.guider(4.0, 0.7, hooks)
        guider(X, S)
        (step,) = seen
        assert step.empty is not None and step.cfg == 4.0
        torch.testing.assert_close(step.uncond, known_x0(X, S, NEG))
        torch.testing.assert_close(step.empty, known_x0(X, S, C2))
