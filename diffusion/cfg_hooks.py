"""Hooks that change how a guider combines its predictions: ComfyUI's ``sampler_pre_cfg_function``,
``sampler_cfg_function`` and ``sampler_post_cfg_function``, as typed callables.

A guider (``diffusion.guidance``) evaluates the model once per conditioning (a "side") and combines the
x0 predictions; classifier-free guidance (Ho & Salimans 2022) combines two, ``uncond + (cond - uncond) * cfg``.
Hooks change one model call's combination at three points, in ComfyUI's order:

1. each pre-CFG function (``PreCFGFunction``) in turn replaces the sides' predictions;
2. the CFG function (``CFGFunction``), if any, replaces the combination formula;
3. each post-CFG function (``PostCFGFunction``) in turn replaces the combined estimate.

Everything here is in x0 space, the denoised estimates samplers see. ComfyUI hands its cfg function
noise-space differences (``input - x0``) and expects one back; the adapter that calls a pack's function
(``nodes.comfy_cfg_hooks``) converts. ``CFGHooks()`` changes nothing, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

__all__ = [
    "NO_HOOKS",
    "CFGFunction",
    "CFGHooks",
    "CFGInputs",
    "Conditioning",
    "PostCFGFunction",
    "PreCFGFunction",
    "PreCFGInputs",
    "SidePredictor",
    "classifier_free_guidance",
]

Conditioning = list[tuple[Tensor, dict[str, Any]]]


class SidePredictor(Protocol):
    """Evaluates one of the guider's conditionings again in the same model call: its x0 prediction at state
    ``x`` (the call's sigma), the model changed by ``variant`` for this evaluation only (None: the model as it
    is). What a variant may be is the model forward's business (``nodes.model_forward``): for a UNet, a
    function from the MODEL's UNet patches to this evaluation's. Guidance that contrasts the model with a
    weakened copy of itself (perturbed-attention, self-attention guidance) is built on this, as ComfyUI's
    nodes are on ``calc_cond_batch``."""

    def __call__(self, conditioning: Conditioning, x: Tensor, variant: object = None) -> Tensor: ...


@dataclass(frozen=True)
class CFGInputs:
    """One classifier-free guidance combination of a model call.

    ``x`` is the state the model was called on (``[B, C, H, W]``, an inpainting's kept cells already reset),
    ``sigma`` its noise levels ``[B]``; ``cond`` and ``uncond`` are the two sides' x0 predictions and ``cfg``
    the scale between them. A side that was not evaluated (the negative at cfg 1) predicts zeros and its
    conditioning is None. Perp-Neg's guider also passes its empty prompt's prediction and conditioning.
    ``predict`` evaluates a conditioning again (None where nothing can, such as a pack calling Loom's hook).
    """

    x: Tensor
    sigma: Tensor
    cond: Tensor
    uncond: Tensor
    cfg: float
    cond_conditioning: Conditioning | None = None
    uncond_conditioning: Conditioning | None = None
    empty: Tensor | None = None
    empty_conditioning: Conditioning | None = None
    predict: SidePredictor | None = None


@dataclass(frozen=True)
class PreCFGInputs:
    """A model call's predictions before they are combined: one x0 per side, in the guider's order (the
    conditional side first, then the unconditional, then any other), with each side's conditioning (None
    for a side that was not evaluated and so predicts zeros)."""

    x: Tensor
    sigma: Tensor
    cfg: float
    predictions: tuple[Tensor, ...]
    conditionings: tuple[Conditioning | None, ...]


class CFGFunction(Protocol):
    """Replaces the combination: the guided x0 estimate from the two sides' (ComfyUI's ``sampler_cfg_function``)."""

    def __call__(self, inputs: CFGInputs) -> Tensor: ...


class PostCFGFunction(Protocol):
    """Changes the combined x0 estimate ``denoised`` (ComfyUI's ``sampler_post_cfg_function``)."""

    def __call__(self, inputs: CFGInputs, denoised: Tensor) -> Tensor: ...


class PreCFGFunction(Protocol):
    """Changes the sides' x0 predictions before they are combined (ComfyUI's ``sampler_pre_cfg_function``);
    returns as many as it was given."""

    def __call__(self, inputs: PreCFGInputs) -> Sequence[Tensor]: ...


def classifier_free_guidance(inputs: CFGInputs) -> Tensor:
    """``uncond + (cond - uncond) * cfg``; at cfg 1 the conditional estimate itself, as the unconditional
    side drops out of the formula (and is left unevaluated unless something needs it)."""
    if inputs.cfg == 1.0:
        return inputs.cond
    return inputs.uncond + (inputs.cond - inputs.uncond) * inputs.cfg


@dataclass(frozen=True)
class CFGHooks:
    """What changes a guider's combination, as a MODEL carries it.

    ``uncond_at_cfg1`` evaluates the unconditional side at cfg 1 too, so that hooks see its real prediction
    rather than zeros (ComfyUI's ``disable_cfg1_optimization``). ``label_rows`` tells every model call which
    side each block of its batch rows belongs to (ComfyUI's ``cond_or_uncond``: 0 the positive, 1 the
    negative), for attention patches that treat the sides differently (self-attention guidance records the
    negative's attention); without it the guider passes nothing of the kind.
    """

    cfg_function: CFGFunction | None = None
    pre_cfg: tuple[PreCFGFunction, ...] = ()
    post_cfg: tuple[PostCFGFunction, ...] = ()
    uncond_at_cfg1: bool = False
    label_rows: bool = False

    def before(
        self,
        x: Tensor,
        sigma: Tensor,
        cfg: float,
        predictions: list[Tensor],
        conditionings: Sequence[Conditioning | None],
    ) -> list[Tensor]:
        """The sides' predictions after every pre-CFG function, in order."""
        for hook in self.pre_cfg:
            changed = list(hook(PreCFGInputs(x, sigma, cfg, tuple(predictions), tuple(conditionings))))
            if len(changed) != len(predictions):
                raise ValueError(
                    f"a pre-CFG function returned {len(changed)} predictions for {len(predictions)} conditionings"
                )
            predictions = changed
        return predictions

    def combine(self, inputs: CFGInputs) -> Tensor:
        """The guided estimate: the CFG function's (or plain classifier-free guidance), then every post-CFG
        function in order (ComfyUI's ``cfg_function``)."""
        function = classifier_free_guidance if self.cfg_function is None else self.cfg_function
        return self.after(inputs, function(inputs))

    def after(self, inputs: CFGInputs, denoised: Tensor) -> Tensor:
        """``denoised`` after every post-CFG function, in order."""
        for hook in self.post_cfg:
            denoised = hook(inputs, denoised)
        return denoised


#: A MODEL's hooks when it has none: the plain combination, the cfg-1 shortcut kept.
NO_HOOKS = CFGHooks()
