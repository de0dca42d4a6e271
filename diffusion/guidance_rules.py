"""Published alternatives to plain classifier-free guidance: as CFG hooks (``diffusion.cfg_hooks``) a MODEL
carries, and as guiders over three conditionings.

Each hook is the formula of ComfyUI's node of the same name, in x0 space: ``RescaledCFG`` (RescaleCFG,
a ``CFGFunction``), ``CFGNormalisation`` (CFGNorm) and ``OptimizedScale`` (CFGZeroStar), both
``PostCFGFunction``, and ``AdaptiveProjection`` (APG, a ``PreCFGFunction``). The guiders are
``DualCFGGuider`` (two prompts at two scales) and ``PerpNegGuider`` (a negative prompt projected off
the positive one, ``perp_neg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion.cfg_hooks import NO_HOOKS, CFGHooks, CFGInputs, Conditioning, PreCFGInputs
from diffusion.guidance import ConcatBuilder, ConditioningGuider, Inpainting, inpaint_channels
from diffusion.prediction import ModelSampling, UNetFn, expand_per_sample

__all__ = [
    "AdaptiveProjection",
    "CFGNormalisation",
    "DualCFGGuider",
    "OptimizedScale",
    "PerpNegGuider",
    "RescaledCFG",
    "perp_neg",
]


def _item_dims(tensor: Tensor) -> tuple[int, ...]:
    return tuple(range(1, tensor.ndim))


@dataclass(frozen=True)
class RescaledCFG:
    """Rescaled classifier-free guidance (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    Are Flawed", section 3.4): the guided prediction is scaled to the conditional one's standard deviation,
    ``rescaled = cfg_pred * std(cond) / std(cfg_pred)`` per batch item, and mixed back,
    ``multiplier * rescaled + (1 - multiplier) * cfg_pred``; multiplier 0 is plain CFG.

    As in ComfyUI, the predictions are rescaled as velocities ``v = (x / (sigma^2 + 1) - x0) sqrt(sigma^2 + 1)
    / sigma`` (the paper's v-prediction, with sigma_data 1), whatever the model predicts; for a rectified-flow
    model (``flow``) as x0 estimates, the standard deviation kept above 1e-8.
    """

    multiplier: float
    flow: bool = False

    def __call__(self, inputs: CFGInputs) -> Tensor:
        if self.flow:
            return self._rescale(inputs.cond, inputs.uncond, inputs.cfg, floor=1e-8)
        sigma = expand_per_sample(inputs.sigma, inputs.x)
        norm = (sigma**2 + 1.0) ** 0.5
        x_scaled = inputs.x / (sigma**2 + 1.0)
        cond_v = (x_scaled - inputs.cond) * norm / sigma
        uncond_v = (x_scaled - inputs.uncond) * norm / sigma
        return x_scaled - self._rescale(cond_v, uncond_v, inputs.cfg) * sigma / norm

    def _rescale(self, cond: Tensor, uncond: Tensor, cfg: float, floor: float | None = None) -> Tensor:
        guided = uncond + cfg * (cond - uncond)
        dims = _item_dims(cond)
        std_cond = cond.std(dim=dims, keepdim=True)
        std_guided = guided.std(dim=dims, keepdim=True)
        if floor is not None:
            std_guided = std_guided.clamp(min=floor)
        rescaled = guided * (std_cond / std_guided)
        return self.multiplier * rescaled + (1.0 - self.multiplier) * guided


@dataclass(frozen=True)
class CFGNormalisation:
    """ComfyUI's CFGNorm: the guided estimate's per-cell norm over channels is capped at the conditional
    estimate's, ``denoised * clamp(|cond| / (|denoised| + 1e-8), 0, 1) * strength``."""

    strength: float = 1.0

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        norm_cond = torch.norm(inputs.cond, dim=1, keepdim=True)
        norm_guided = torch.norm(denoised, dim=1, keepdim=True)
        scale = (norm_cond / (norm_guided + 1e-8)).clamp(min=0.0, max=1.0)
        return denoised * scale * self.strength


def _optimized_scale(positive: Tensor, negative: Tensor) -> Tensor:
    """CFG-Zero*'s ``s* = <positive, negative> / |negative|^2`` per batch item (the 1e-8 keeps it finite)."""
    positive_flat = positive.reshape(positive.shape[0], -1)
    negative_flat = negative.reshape(negative.shape[0], -1)
    dot = torch.sum(positive_flat * negative_flat, dim=1, keepdim=True)
    squared_norm = torch.sum(negative_flat**2, dim=1, keepdim=True) + 1e-8
    return (dot / squared_norm).reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


@dataclass(frozen=True)
class OptimizedScale:
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models"), as
    ComfyUI's CFGZeroStar applies it: the unconditional estimate is scaled by the projection ``alpha`` of the
    conditional onto the unconditional noise (``x - x0``) before guidance, ``alpha u + cfg (c - alpha u)``,
    written as a correction of the guided estimate: ``denoised + u (alpha - 1) + cfg u (1 - alpha)``."""

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        uncond = inputs.uncond
        alpha = _optimized_scale(inputs.x - inputs.cond, inputs.x - uncond)
        return denoised + uncond * (alpha - 1.0) + inputs.cfg * uncond * (1.0 - alpha)


def _project(v0: Tensor, v1: Tensor) -> tuple[Tensor, Tensor]:
    """``v0``'s components parallel and orthogonal to ``v1``, per batch item over its last three dimensions."""
    # torch.nn.functional.normalize over three dimensions (its typing admits one).
    v1 = v1 / v1.norm(p=2, dim=[-1, -2, -3], keepdim=True).clamp_min(1e-12).expand_as(v1)
    parallel = (v0 * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
    return parallel, v0 - parallel


class AdaptiveProjection:
    """Adaptive projected guidance (Sadat et al. 2025, "Eliminating Oversaturation and Artifacts of High
    Guidance Scales in Diffusion Models"), as ComfyUI's APG: the guidance ``cond - uncond`` is averaged with
    momentum over the steps (``momentum`` 0: not), its norm per batch item capped at ``norm_threshold`` (0: not),
    and its component parallel to the conditional estimate scaled by ``eta`` (1 keeps it: plain CFG's
    direction). The conditional prediction is replaced so that the CFG that follows yields
    ``cond + cfg * modified_guidance``.

    The running average is state: it starts again when sigma rises (a new sampling run), as ComfyUI's does.
    """

    def __init__(self, eta: float = 1.0, norm_threshold: float = 5.0, momentum: float = 0.0) -> None:
        self.eta, self.norm_threshold, self.momentum = eta, norm_threshold, momentum
        self._running_average: Tensor | None = None
        self._previous_sigma: float | None = None

    def __call__(self, inputs: PreCFGInputs) -> Sequence[Tensor]:
        if len(inputs.predictions) < 2:
            return inputs.predictions
        cond, uncond = inputs.predictions[0], inputs.predictions[1]
        sigma = float(inputs.sigma.reshape(-1)[0])
        if self._previous_sigma is not None and sigma > self._previous_sigma:
            self._running_average = None
        self._previous_sigma = sigma

        guidance = cond - uncond
        if self.momentum != 0:
            average = self._running_average
            guidance = guidance if average is None else self.momentum * average + guidance
            self._running_average = guidance
        if self.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
        parallel, orthogonal = _project(guidance, cond)
        modified = orthogonal + self.eta * parallel
        modified_cond = (uncond + modified) + (cond - uncond) / inputs.cfg
        return [modified_cond, uncond, *inputs.predictions[2:]]


def perp_neg(positive: Tensor, negative: Tensor, empty: Tensor, neg_scale: float, cfg: float) -> Tensor:
    """Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"): guidance from the empty
    prompt towards the positive, minus ``neg_scale`` times the part of the negative's guidance perpendicular
    to it, ``empty + cfg * (p - neg_scale * (n - <n, p> / |p|^2 p))`` with ``p = positive - empty``,
    ``n = negative - empty``; the projection is over the whole batch, as ComfyUI computes it."""
    pos = positive - empty
    neg = negative - empty
    perpendicular = neg - (torch.mul(neg, pos).sum() / torch.norm(pos) ** 2) * pos
    return empty + cfg * (pos - perpendicular * neg_scale)


class DualCFGGuider(ConditioningGuider):
    """Guidance by two prompts at two scales (ComfyUI's DualCFGGuider), as a denoiser ``guider(x, sigma) -> x0``.

    ``regular``: CFG from the negative to ``cond2`` at ``cfg_cond2_negative`` (through the MODEL's CFG and
    post-CFG functions), plus ``(cond1 - cond2) * cfg_conds``. At ``cfg_cond2_negative`` 1 the negative is
    not evaluated, and at both scales 1 neither is ``cond2`` (unless ``hooks.uncond_at_cfg1``).
    ``nested``: CFG from ``cond2`` to ``cond1`` at ``cfg_conds`` (through the hooks), then from the negative
    to that at ``cfg_cond2_negative``: ``negative + cfg_cond2_negative * (inner - negative)``; every prompt is
    evaluated. Pre-CFG functions are not applied, as in ComfyUI. ``cond2`` is read as a negative prompt
    (the SDXL refiner's aesthetic score); see ``ConditioningGuider`` for the other arguments.
    """

    def __init__(
        self,
        unet_fn: UNetFn,
        model_sampling: ModelSampling,
        latent: Tensor,
        cond1: Conditioning,
        cond2: Conditioning,
        negative: Conditioning,
        cfg_conds: float,
        cfg_cond2_negative: float,
        nested: bool = False,
        inpainting: Inpainting | None = None,
        concat_builder: ConcatBuilder = inpaint_channels,
        repeat_contexts: bool = True,
        hooks: CFGHooks = NO_HOOKS,
    ) -> None:
        sides = [("cond1", cond1), ("cond2", cond2), ("negative", negative)]
        super().__init__(unet_fn, model_sampling, latent, sides, inpainting, concat_builder, repeat_contexts, hooks)
        self.cfg_conds, self.cfg_cond2_negative, self.nested = cfg_conds, cfg_cond2_negative, nested
        if not nested and not hooks.uncond_at_cfg1 and cfg_cond2_negative == 1.0:
            self.evaluated = (True, cfg_conds != 1.0, False)

    def _guide(
        self, x: Tensor, sigma: Tensor, predictions: list[Tensor], conditionings: tuple[Conditioning | None, ...]
    ) -> tuple[Tensor, Tensor]:
        first, second, negative = predictions
        c_first, c_second, c_negative = conditionings
        predict = self.side_predictor(sigma)
        if self.nested:
            inner = self.hooks.combine(
                CFGInputs(x, sigma, first, second, self.cfg_conds, c_first, c_second, predict=predict)
            )
            return negative + self.cfg_cond2_negative * (inner - negative), second
        outer = self.hooks.combine(
            CFGInputs(x, sigma, second, negative, self.cfg_cond2_negative, c_second, c_negative, predict=predict)
        )
        return outer + (first - second) * self.cfg_conds, negative


class PerpNegGuider(ConditioningGuider):
    """Perp-Neg guidance (``perp_neg``) as a denoiser ``guider(x, sigma) -> x0`` (ComfyUI's PerpNegGuider).

    The MODEL's pre- and post-CFG functions apply (its CFG function does not: Perp-Neg is the combination);
    post-CFG functions see the negative as the unconditional side, and the empty prompt's prediction as
    ``CFGInputs.empty``. At ``neg_scale`` 0 the negative is not evaluated, and at ``cfg`` 1 too neither is the
    empty prompt (unless ``hooks.uncond_at_cfg1``). ``empty`` is read as a negative prompt; see
    ``ConditioningGuider`` for the other arguments.
    """

    def __init__(
        self,
        unet_fn: UNetFn,
        model_sampling: ModelSampling,
        latent: Tensor,
        positive: Conditioning,
        negative: Conditioning,
        empty: Conditioning,
        cfg: float,
        neg_scale: float,
        inpainting: Inpainting | None = None,
        concat_builder: ConcatBuilder = inpaint_channels,
        repeat_contexts: bool = True,
        hooks: CFGHooks = NO_HOOKS,
    ) -> None:
        sides = [("positive", positive), ("negative", negative), ("empty_conditioning", empty)]
        super().__init__(unet_fn, model_sampling, latent, sides, inpainting, concat_builder, repeat_contexts, hooks)
        self.cfg, self.neg_scale = cfg, neg_scale
        if not hooks.uncond_at_cfg1 and neg_scale == 0.0:
            self.evaluated = (True, False, cfg != 1.0)

    def _guide(
        self, x: Tensor, sigma: Tensor, predictions: list[Tensor], conditionings: tuple[Conditioning | None, ...]
    ) -> tuple[Tensor, Tensor]:
        positive, negative, empty = self.hooks.before(x, sigma, self.cfg, predictions, conditionings)
        guided = perp_neg(positive, negative, empty, self.neg_scale, self.cfg)
        c_positive, c_negative, c_empty = conditionings
        inputs = CFGInputs(
            x, sigma, positive, negative, self.cfg, c_positive, c_negative, empty, c_empty, self.side_predictor(sigma)
        )
        return self.hooks.after(inputs, guided), negative
