"""Guiders: the denoiser ``guider(x, sigma) -> x0`` that a sampler calls, built from a UNet, its
conditioning and a guidance rule.

A sampler only ever sees a function from a noisy latent and its noise level to an estimate of the
clean latent (k-diffusion's contract). Everything between that function and the UNet lives here:
evaluating each conditioning entry over its region, combining the entries, classifier-free guidance
and inpainting. How a UNet's raw output becomes an x0 estimate (epsilon, v, ...) is the model
sampling object's business (``diffusion.prediction``), so a guider works unchanged for any
prediction type.

A conditioning is ComfyUI's CONDITIONING value: a list of ``(context [1, T, D], options)``. The
options read here are ``strength``, ``area`` ``(h, w, y, x)`` in latent cells (pixels/8) or
``("percentage", h, w, y, x)`` in fractions of the latent (ComfyUI's ConditioningSetAreaPercentage), ``mask``
with ``mask_strength`` and ``set_area_to_bounds``, ``timestep_start``/``timestep_end`` (fractions of
the process, 0 = noisiest), ``y`` (SDXL's adm vector, already built by the caller),
``concat_latent_image`` + ``concat_mask`` (9-channel inpainting models), ``guidance`` (the strength a
guidance-distilled model such as FLUX.1 dev is conditioned on), ``reference_latents`` (the pictures an
edit model such as FLUX.1 Kontext works from, already in the model's latent space), ``control`` (ControlNets
applied to the entry, ``diffusion.applied_control.AppliedControl``) with ``control_apply_to_uncond``, and
``pooled_output`` (kept for the caller that builds ``y``; unused here).

Several conditionings on one side are combined per latent cell as a weighted average of their x0
predictions, each weighted by strength x mask over its area; a cell that no conditioning covers gets
a zero prediction, as in ComfyUI. Classifier-free guidance is ``uncond + (cond - uncond) * cfg`` on
those averages (Ho & Salimans 2022), unless the MODEL's hooks (``diffusion.cfg_hooks``: ComfyUI's pre-,
post- and cfg functions) change it. ``ConditioningGuider`` is what every guider shares (sides resolved
and evaluated batched, inpainting); guiders over three conditionings are in ``diffusion.guidance_rules``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion.applied_control import (
    AppliedControl,
    BoundControl,
    TransformerControl,
    concat_residuals,
    share_with_uncond,
    shared_residuals,
)
from diffusion.attention_masks import TokenAttentionMask, as_additive
from diffusion.cfg_hooks import NO_HOOKS, CFGHooks, CFGInputs, Conditioning, SidePredictor
from diffusion.controlnet import ControlResiduals
from diffusion.prediction import ModelSampling, UNetFn

__all__ = [
    "CFGGuider",
    "ConcatBuilder",
    "Conditioning",
    "ConditioningError",
    "ConditioningGuider",
    "DifferentialMask",
    "Guider",
    "InpaintMaskPolicy",
    "Inpainting",
    "control_channels",
    "fill_channels",
    "inpaint_channels",
]


class ConditioningError(ValueError):
    """A conditioning entry whose options cannot be used; names the side, entry and option."""

    def __init__(self, side: str, index: int, key: str, reason: str) -> None:
        self.side, self.index, self.key, self.reason = side, index, key, reason
        super().__init__(f"{side} conditioning #{index}: option {key!r} {reason}")


def _resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` mask resampled to the latent grid as ``[B, 1, h, w]``."""
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 3:
        mask = mask[:, None]
    if tuple(mask.shape[-2:]) != size:
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return mask


class InpaintMaskPolicy(Protocol):
    """How an inpainting's soft mask becomes the mask of one model call (ComfyUI's ``denoise_mask_function``).

    Called with the mask on the latent grid (``[B or 1, 1, h, w]``, 1 = resample), the call's noise
    levels ``sigma`` ``[B]``, the schedule being sampled and the model's sampling; returns a mask of
    the same shape. A MODEL carries one (``DifferentialDiffusion``) and sampling hands it to ``Inpainting``.
    """

    def __call__(self, mask: Tensor, sigma: Tensor, sigmas: Tensor, model_sampling: ModelSampling) -> Tensor: ...


@dataclass(frozen=True)
class DifferentialMask:
    """Differential Diffusion (Levin & Fried 2023): a soft mask read as how much each cell may change.

    At every model call only the cells whose mask reaches a threshold are resampled; the rest are held
    to the original like any inpainting's kept cells. The threshold falls linearly in the model's
    timestep (``model_sampling.timestep``: the discrete UNet timestep, or a flow model's scaled sigma)
    from 1 at the schedule's first sigma to 0 at its last, or at the model's ``sigma_min`` when that is
    larger, so a cell of mask ``m`` is resampled over the last fraction ``m`` of that range. The test
    is ``mask >= threshold`` at the sigma of the call's first item, as in ComfyUI. ``strength`` below 1 mixes the
    soft mask back in, ``strength * binary + (1 - strength) * mask``; a strength of 0 counts as 1,
    as ComfyUI's check for it does.
    """

    strength: float = 1.0

    def threshold(self, sigma: Tensor, sigmas: Tensor, model_sampling: ModelSampling) -> Tensor:
        """The mask value a cell needs to be resampled at noise level ``sigma[0]`` (0-d, float32)."""
        sigma_to = max(float(sigmas[-1]), model_sampling.sigma_min)
        levels = torch.tensor([float(sigmas[0]), sigma_to, float(sigma.reshape(-1)[0])], dtype=torch.float32)
        ts_from, ts_to, now = model_sampling.timestep(levels).float().cpu()
        return (now - ts_to) / (ts_from - ts_to)

    def __call__(self, mask: Tensor, sigma: Tensor, sigmas: Tensor, model_sampling: ModelSampling) -> Tensor:
        threshold = self.threshold(sigma, sigmas, model_sampling).to(mask.device)
        binary = (mask >= threshold).to(mask.dtype)
        if self.strength and self.strength < 1:
            return self.strength * binary + (1 - self.strength) * mask
        return binary


@dataclass(frozen=True)
class Inpainting:
    """Sampling restricted to a mask: cells where ``mask`` is 1 are resampled, the rest keep ``latent``.

    The known-region blending of Blended Latent Diffusion (Avrahami et al. 2023) and RePaint
    (Lugmayr et al. 2022): before every model call the kept cells are reset to ``latent`` noised to
    the current sigma with the start ``noise``, so the masked cells are denoised in the context of
    the real surroundings at a matching noise level; the x0 estimate and the final latent are
    pinned to ``latent`` there.

    A ``policy`` (``InpaintMaskPolicy``) replaces ``mask`` at each model call by a mask of its own,
    computed from the call's sigma and ``sigmas``, the schedule being sampled. The original mask
    still feeds the mask channel of inpainting models, as in ComfyUI.
    """

    mask: Tensor  # [B or 1, 1, h, w] on the latent grid, 1 = resample
    latent: Tensor
    noise: Tensor
    sigmas: Tensor | None = None
    policy: InpaintMaskPolicy | None = None

    def __post_init__(self) -> None:
        if self.policy is not None and self.sigmas is None:
            raise ValueError("an inpainting mask policy needs the sigmas of the schedule being sampled")

    @classmethod
    def from_mask(
        cls,
        mask: Tensor,
        latent: Tensor,
        noise: Tensor,
        sigmas: Tensor | None = None,
        policy: InpaintMaskPolicy | None = None,
    ) -> Inpainting:
        """From a mask of any size (a LATENT's ``noise_mask``: ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``);
        a ``policy`` also needs ``sigmas``, the schedule about to be sampled."""
        resized = _resize_mask(mask, (latent.shape[-2], latent.shape[-1])).to(latent)
        if resized.shape[0] not in (1, latent.shape[0]):
            raise ValueError(f"noise_mask has batch {resized.shape[0]}, the latent has {latent.shape[0]}")
        return cls(resized, latent, noise, sigmas, policy)

    def mask_at(self, model_sampling: ModelSampling, sigma: Tensor) -> Tensor:
        """The mask of a model call at noise levels ``sigma``: ``mask`` itself unless a policy changes it."""
        if self.policy is None:
            return self.mask
        assert self.sigmas is not None  # __post_init__
        return self.policy(self.mask, sigma, self.sigmas, model_sampling)

    def hold(self, model_sampling: ModelSampling, x: Tensor, sigma: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` with its kept cells (outside ``mask``, default this inpainting's) reset to the original
        latent at noise level ``sigma``."""
        mask = self.mask if mask is None else mask
        noised = model_sampling.noise_scaling(sigma.reshape(-1, 1, 1, 1), self.noise, self.latent)
        return x * mask + noised * (1 - mask)

    def keep(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` with its kept cells (outside ``mask``, default this inpainting's) replaced by the original latent."""
        mask = self.mask if mask is None else mask
        return x * mask + self.latent * (1 - mask)

    def finish(self, x: Tensor) -> Tensor:
        """The sampler's last state as the result, its kept cells pinned to the original latent.

        Under a policy the kept cells change from call to call and the last model call has already
        pinned the ones it kept, so the state is returned as the sampler left it; ComfyUI adds no
        blend after sampling either.
        """
        return x if self.policy is not None else self.keep(x)


class Guider(Protocol):
    """What ``diffusion.sampling.sample`` runs: a denoiser bound to the latent it samples.

    ``guider(x, sigma)`` returns the x0 estimate for a ``[B, C, H, W]`` state at the ``[B]`` noise
    levels ``sigma``. ``model_sampling`` turns the start noise into the sampler's first state and the
    last state back into a latent; ``inpainting`` (or None) finishes the final latent (``Inpainting.finish``).
    """

    model_sampling: ModelSampling
    inpainting: Inpainting | None

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


@dataclass
class _Cond:
    """One conditioning entry resolved against the latent: where it applies and with what weight."""

    context: Tensor
    region: tuple[slice, slice]
    weight: Tensor  # [B or 1, 1, h, w]: strength x mask over the region
    sigma_start: float
    sigma_end: float
    y: Tensor | None
    concat: Tensor | None  # [B or 1, C, h, w]: extra input channels for inpainting models
    guidance: Tensor | None  # [1]: a guidance-distilled model's guidance strength
    references: tuple[Tensor, ...]  # [1, C, h, w] each: an edit model's reference latents
    side: int  # which of the guider's conditionings it belongs to
    control: BoundControl | None = None  # the ControlNets applied to the entry
    attention_mask: TokenAttentionMask | None = None  # a transformer's attention bias (Redux's attn_bias)

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def batch_key(self) -> tuple[Any, ...]:
        rows, cols = self.region
        return (
            rows.start,
            rows.stop,
            cols.start,
            cols.stop,
            self.context.shape[-1],
            _trailing_shape(self.y),
            _trailing_shape(self.concat),
            self.guidance is None,
            tuple(tuple(reference.shape[1:]) for reference in self.references),
            None
            if self.attention_mask is None
            else (self.attention_mask.bias.shape[1:], self.attention_mask.image_shape),
        )


def _trailing_shape(tensor: Tensor | None) -> tuple[int, ...] | None:
    """Per-sample shape: conditionings batch together only when their extras stack."""
    return None if tensor is None else tuple(tensor.shape[1:])


def _region(
    side: str, index: int, options: dict[str, Any], mask: Tensor | None, height: int, width: int
) -> tuple[slice, slice]:
    if mask is not None and options.get("set_area_to_bounds", False):
        covered = (mask > 0).any(dim=0)[0]
        if not bool(covered.any()):
            raise ConditioningError(side, index, "mask", "is empty, so it has no bounds to set the area to")
        rows, cols = torch.nonzero(covered.any(dim=1)), torch.nonzero(covered.any(dim=0))
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    area = options.get("area")
    if area is None:
        return slice(0, height), slice(0, width)
    h, w, y, x = _area_cells(side, index, area, height, width)
    y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
    return slice(y, min(y + max(h, 1), height)), slice(x, min(x + max(w, 1), width))


def _area_cells(side: str, index: int, area: Any, height: int, width: int) -> tuple[int, int, int, int]:
    """An ``area`` option as (h, w, y, x) latent cells of this ``height`` x ``width`` latent.

    ``("percentage", h, w, y, x)`` is resolved as ComfyUI resolves it: sizes rounded and at least one
    cell, offsets rounded.
    """
    if len(area) == 5 and area[0] == "percentage":
        fractions = area[1:]
        if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in fractions):
            raise ConditioningError(side, index, "area", f"percentages must be numbers, got {area!r}")
        h, w, y, x = (float(v) for v in fractions)
        return max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width)
    if len(area) != 4 or not all(isinstance(v, (int, np.integer)) for v in area):
        raise ConditioningError(
            side, index, "area", f"must be (height, width, y, x) in latent cells or percentages, got {area!r}"
        )
    h, w, y, x = (int(v) for v in area)
    return h, w, y, x


def _batch_like(tensor: Tensor, batch: int, side: str, index: int, key: str) -> Tensor:
    if tensor.shape[0] not in (1, batch):
        raise ConditioningError(side, index, key, f"has batch {tensor.shape[0]}, expected 1 or {batch}")
    return tensor


class ConcatBuilder(Protocol):
    """How a model family builds its extra input channels from a conditioning entry's options."""

    def __call__(
        self,
        options: dict[str, Any],
        batch: int,
        side: str,
        index: int,
        noise_mask: Tensor | None,
        size: tuple[int, int],
    ) -> Tensor | None: ...


def _concat_mask(
    options: dict[str, Any], batch: int, side: str, index: int, noise_mask: Tensor | None, size: tuple[int, int]
) -> Tensor:
    """The inpainting mask at ``size``: ``concat_mask``, else the sampling's own inpainting mask, else ones."""
    if options.get("concat_mask") is not None:
        inpaint_mask = _resize_mask(options["concat_mask"], size)
    elif noise_mask is not None:
        inpaint_mask = _resize_mask(noise_mask, size)
    else:
        inpaint_mask = torch.ones(1, 1, *size)
    return _batch_like(inpaint_mask, batch, side, index, "concat_mask")


def inpaint_channels(
    options: dict[str, Any], batch: int, side: str, index: int, noise_mask: Tensor | None, size: tuple[int, int]
) -> Tensor | None:
    """The extra UNet input of SD inpainting models: mask then masked-image latent, ``[B or 1, 1 + C, h, w]``."""
    if options.get("concat_latent_image") is None:
        return None
    image = _batch_like(options["concat_latent_image"], batch, side, index, "concat_latent_image")
    inpaint_mask = _concat_mask(options, batch, side, index, noise_mask, size)
    if image.shape[0] != inpaint_mask.shape[0]:
        image, inpaint_mask = torch.broadcast_tensors(image, inpaint_mask.expand(-1, image.shape[1], -1, -1))
        inpaint_mask = inpaint_mask[:, :1]
    return torch.cat([inpaint_mask.to(image), image], dim=1)


def control_channels(
    options: dict[str, Any], batch: int, side: str, index: int, noise_mask: Tensor | None, size: tuple[int, int]
) -> Tensor | None:
    """The extra input of FLUX.1 Canny / Depth: the control picture's latent alone, ``[B or 1, C, h, w]``."""
    if options.get("concat_latent_image") is None:
        return None
    return _batch_like(options["concat_latent_image"], batch, side, index, "concat_latent_image")


def fill_channels(
    options: dict[str, Any], batch: int, side: str, index: int, noise_mask: Tensor | None, size: tuple[int, int]
) -> Tensor | None:
    """The extra input of FLUX.1 Fill: the masked-image latent, then the pixel-resolution mask packed 8 x 8
    into 64 channels (channel ``8 dy + dx`` holds the mask's pixel ``(8 y + dy, 8 x + dx)``),
    ``[B or 1, C + 64, h, w]``, as Black Forest Labs and ComfyUI pack it."""
    if options.get("concat_latent_image") is None:
        return None
    image = _batch_like(options["concat_latent_image"], batch, side, index, "concat_latent_image")
    height, width = size
    mask = _concat_mask(options, batch, side, index, noise_mask, (height * 8, width * 8))
    packed = mask.reshape(mask.shape[0], height, 8, width, 8).permute(0, 2, 4, 1, 3).reshape(-1, 64, height, width)
    items = max(image.shape[0], packed.shape[0])
    return torch.cat([image.expand(items, -1, -1, -1), packed.to(image).expand(items, -1, -1, -1)], dim=1)


def _bound_control(
    side: str,
    index: int,
    options: dict[str, Any],
    model_sampling: ModelSampling,
    bound: dict[int, BoundControl],
    region: tuple[slice, slice],
) -> BoundControl | None:
    """The entry's control bound for this run, its hints prepared for the entry's ``region`` of the latent; entries
    sharing a control share its binding (``bound``, by identity)."""
    control = options.get("control")
    if control is None:
        return None
    if not isinstance(control, AppliedControl):
        raise ConditioningError(
            side,
            index,
            "control",
            f"holds a {type(control).__name__}: Loom applies ControlNets with its ControlNetApply nodes",
        )
    if id(control) not in bound:
        bound[id(control)] = BoundControl(control, model_sampling)
    rows, cols = region
    bound[id(control)].prepare(rows.stop - rows.start, cols.stop - cols.start)
    return bound[id(control)]


def _resolve(
    conditioning: Conditioning,
    side_index: int,
    side: str,
    latent: Tensor,
    model_sampling: ModelSampling,
    noise_mask: Tensor | None,
    concat_builder: ConcatBuilder,
    controls: dict[int, BoundControl],
) -> list[_Cond]:
    batch, _, height, width = latent.shape
    resolved = []
    for index, (context, options) in enumerate(conditioning):
        if context.ndim != 3:
            shape = tuple(context.shape)
            raise ConditioningError(side, index, "context", f"must be [1, tokens, dim], got shape {shape}")
        mask = options.get("mask")
        if mask is not None:
            mask = _batch_like(_resize_mask(mask, (height, width)), batch, side, index, "mask")
        rows, cols = _region(side, index, options, mask, height, width)
        weight = torch.full((1, 1, rows.stop - rows.start, cols.stop - cols.start), float(options.get("strength", 1.0)))
        if mask is not None:
            weight = weight * mask[:, :, rows, cols] * float(options.get("mask_strength", 1.0))
        concat = concat_builder(options, batch, side, index, noise_mask, (height, width))
        y = options.get("y")
        if y is not None:
            y = _batch_like(y, batch, side, index, "y")
        resolved.append(
            _Cond(
                context=context,
                region=(rows, cols),
                weight=weight.to(latent.device),
                sigma_start=model_sampling.percent_to_sigma(float(options.get("timestep_start", 0.0))),
                sigma_end=model_sampling.percent_to_sigma(float(options.get("timestep_end", 1.0))),
                y=y,
                concat=None if concat is None else concat[:, :, rows, cols],
                guidance=None if options.get("guidance") is None else torch.tensor([float(options["guidance"])]),
                references=tuple(options.get("reference_latents") or ()),
                side=side_index,
                control=_bound_control(side, index, options, model_sampling, controls, (rows, cols)),
                attention_mask=_attention_mask(side, index, options, context),
            )
        )
    return resolved


def _attention_mask(side: str, index: int, options: dict[str, Any], context: Tensor) -> TokenAttentionMask | None:
    """An entry's ``attention_mask`` and ``attention_mask_img_shape`` (``diffusion.attention_masks``), checked
    against its context: the mask's text part must be the context's tokens."""
    mask = options.get("attention_mask")
    if mask is None:
        return None
    shape = options.get("attention_mask_img_shape")
    if not isinstance(mask, Tensor) or mask.ndim != 3 or mask.shape[-1] != mask.shape[-2] or shape is None:
        raise ConditioningError(
            side,
            index,
            "attention_mask",
            "must be a [B, N, N] tensor with attention_mask_img_shape (h, w) beside it",
        )
    attention = TokenAttentionMask(as_additive(mask), (int(shape[0]), int(shape[1])))
    if attention.text_tokens != context.shape[1]:
        raise ConditioningError(
            side,
            index,
            "attention_mask",
            f"covers {attention.text_tokens} text tokens and the entry's context has {context.shape[1]}",
        )
    return attention


def _repeat_tokens(context: Tensor, length: int) -> Tensor:
    """Repeat a context to ``length`` tokens. Exact for attention: duplicated key/value pairs split
    the same softmax mass, so cross-attention output is unchanged (ComfyUI pads the same way)."""
    return context.repeat(1, length // context.shape[1], 1)


def _per_item(tensor: Tensor, batch: int) -> Tensor:
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def _with_shared_controls(
    sides: Sequence[tuple[str, Conditioning | None]],
) -> list[tuple[str, Conditioning | None]]:
    """The sides with the first one's shared controls handed to the others (``share_with_uncond``): the first
    side is ComfyUI's "positive" in every guider (CFG, DualCFG's cond1, Perp-Neg's positive)."""
    if not sides or sides[0][1] is None:
        return list(sides)
    positive = sides[0][1]
    return [sides[0], *((name, None if c is None else share_with_uncond(positive, c)) for name, c in sides[1:])]


class ConditioningGuider(ABC):
    """What every guider shares: conditionings ("sides") resolved against one latent and evaluated batched.

    Built for one latent (areas, masks and inpainting channels are resolved against its grid and batch).
    ``sides`` names each conditioning (for errors) in the order subclasses read their predictions; a None
    conditioning is a side that predicts zeros. Every conditioning entry that shares a region and input
    layout with another, whatever its side, goes through the same UNet call. ``evaluated`` says which
    sides a model call evaluates (all, by default); a side left out predicts zeros, and ``with_uncond``
    evaluates them all.

    ``unet_fn(x_in, timesteps, context, y=..., concat=..., guidance=..., control=...)`` returns the model's raw
    output; ``y``, ``concat``, ``guidance`` and ``control`` are passed only when the conditioning provides them.
    ``control`` (``ControlResiduals``) is the residuals of the ControlNets applied to the batched entries, row
    block by row block, zeros for an entry without (``diffusion.applied_control``); for a flow transformer's
    ControlNets it is a ``TransformerControl`` the unet_fn runs with the transformer. The caller places the
    ControlNets (``controls()``) beside the model. ``inpainting``
    restricts changes to its mask (see ``Inpainting``) and supplies the default mask channel of inpainting
    UNets. ``concat_builder`` makes the model family's extra input channels (``inpaint_channels`` for SD
    inpainting UNets, ``fill_channels`` for FLUX.1 Fill, ``control_channels`` for FLUX.1 Canny / Depth).

    Contexts of different lengths share a call by repeating the shorter to a common length, as ComfyUI
    batches them; ``repeat_contexts`` False keeps them in calls of their own, for models to which a repeated
    token is another token at another position (Z-Image numbers its text tokens), as ComfyUI does for them.

    Subclasses combine the sides' predictions in ``_guide``, through ``hooks`` (``diffusion.cfg_hooks``).
    """

    def __init__(
        self,
        unet_fn: UNetFn,
        model_sampling: ModelSampling,
        latent: Tensor,
        sides: Sequence[tuple[str, Conditioning | None]],
        inpainting: Inpainting | None = None,
        concat_builder: ConcatBuilder = inpaint_channels,
        repeat_contexts: bool = True,
        hooks: CFGHooks = NO_HOOKS,
    ) -> None:
        self.unet_fn, self.model_sampling, self.inpainting = unet_fn, model_sampling, inpainting
        self.repeat_contexts, self.hooks = repeat_contexts, hooks
        mask = None if inpainting is None else inpainting.mask
        sides = _with_shared_controls(sides)
        self._controls: dict[int, BoundControl] = {}
        # Every side is resolved, even one a call leaves out, so a malformed conditioning always fails the same way.
        self._sides = [
            []
            if conditioning is None
            else _resolve(conditioning, index, name, latent, model_sampling, mask, concat_builder, self._controls)
            for index, (name, conditioning) in enumerate(sides)
        ]
        self.conditionings: tuple[Conditioning | None, ...] = tuple(conditioning for _, conditioning in sides)
        self.evaluated: tuple[bool, ...] = (True,) * len(sides)

    def controls(self) -> list[AppliedControl]:
        """The distinct controls (ControlNet chains) the conditionings carry: whose ControlNets the caller places
        on the device beside the model for the run."""
        return [bound.control for bound in self._controls.values()]

    def _group_control(
        self, group: list[_Cond], x_in: Tensor, sigma: Tensor, timesteps: Tensor, context: Tensor, y: Tensor | None
    ) -> ControlResiduals | TransformerControl | None:
        """The controls of one batched call, row block by row block as ``_evaluate`` stacks the conds.

        For a UNet, their residuals: conds sharing a control run its ControlNets once over all their rows (positive
        and negative after ControlNetApplyAdvanced); a cond without control, or whose control does not act now,
        adds zeros. A flow transformer's ControlNets read the transformer, so they go to its forward to run
        (``TransformerControl``)."""
        parts = tuple(cond.control for cond in group)
        if all(part is None for part in parts):
            return None
        now = float(sigma.max())
        if any(part is not None and part.drives_transformer for part in parts):
            return TransformerControl(parts, now)

        def evaluate(control: BoundControl, rows: Tensor, chunks: int) -> ControlResiduals | None:
            rows = rows.to(x_in.device)
            picked_y = None if y is None else y[rows]
            return control.residuals(x_in[rows], now, timesteps[rows], context[rows], picked_y, chunks)

        return concat_residuals(shared_residuals(parts, x_in.shape[0], evaluate))

    def _evaluate(self, group: list[_Cond], x: Tensor, sigma: Tensor, variant: object = None) -> list[Tensor]:
        """One UNet call for conds that share a region and input layout: batch = len(group) x B. ``variant``
        changes the model for this call (``SidePredictor``); the unet_fn is handed it only when given."""
        batch = x.shape[0]
        rows, cols = group[0].region
        x_region = x[:, :, rows, cols]
        x_all = x_region.repeat(len(group), 1, 1, 1)
        sigma_all = sigma.repeat(len(group))
        length = math.lcm(*(c.context.shape[1] for c in group))
        context = torch.cat([_repeat_tokens(c.context, length).expand(batch, -1, -1) for c in group]).to(x)
        extra: dict[str, Tensor] = {}
        if group[0].y is not None:
            extra["y"] = torch.cat([_per_item(c.y, batch) for c in group if c.y is not None]).to(x)
        if group[0].concat is not None:
            extra["concat"] = torch.cat([_per_item(c.concat, batch) for c in group if c.concat is not None]).to(x)
        if group[0].guidance is not None:
            extra["guidance"] = torch.cat([_per_item(c.guidance, batch) for c in group if c.guidance is not None]).to(x)
        references: list[Tensor] = [
            torch.cat([_per_item(c.references[index], batch) for c in group]).to(x)
            for index in range(len(group[0].references))
        ]
        x_in = self.model_sampling.calculate_input(sigma_all, x_all)
        timesteps = self.model_sampling.timestep(sigma_all)
        control = self._group_control(group, x_in, sigma, timesteps, context, extra.get("y"))
        # Only what the conditioning provides is passed, so a unet_fn that takes no control need not accept one.
        optional: dict[str, Any] = {}
        if references:
            optional["reference_latents"] = references
        if group[0].attention_mask is not None:
            masks = [c.attention_mask for c in group if c.attention_mask is not None]
            joined = torch.cat([_per_item(mask.bias, batch) for mask in masks])
            optional["attention_mask"] = TokenAttentionMask(joined, masks[0].image_shape)
        if control is not None:
            optional["control"] = control
        if self.hooks.label_rows:
            optional["cond_or_uncond"] = tuple(cond.side for cond in group)
        if variant is not None:
            optional["variant"] = variant
        output = self.unet_fn(x_in, timesteps, context, **optional, **extra)
        denoised = self.model_sampling.calculate_denoised(sigma_all, output.to(x.dtype), x_all)
        return list(denoised.split(batch))

    def _predict(self, x: Tensor, sigma: Tensor, evaluated: tuple[bool, ...], variant: object = None) -> list[Tensor]:
        """Per side, the weighted average of its active conds' x0 predictions (zeros for a side left out)."""
        groups: dict[tuple[Any, ...], list[_Cond]] = {}
        for side, on in zip(self._sides, evaluated):
            for cond in side if on else ():
                if cond.active(float(sigma.max())):
                    length = () if self.repeat_contexts else (cond.context.shape[1],)
                    groups.setdefault((*cond.batch_key(), *length), []).append(cond)
        sums = [(torch.zeros_like(x), torch.zeros_like(x[:, :1])) for _ in self._sides]
        for group in groups.values():
            for cond, prediction in zip(group, self._evaluate(group, x, sigma, variant)):
                rows, cols = cond.region
                total, weights = sums[cond.side]
                weight = cond.weight.to(x)
                total[:, :, rows, cols] += prediction * weight
                weights[:, :, rows, cols] += weight
        return [total / weights.clamp_min(1e-37) * (weights > 0) for total, weights in sums]

    def side_predictor(self, sigma: Tensor) -> SidePredictor:
        """What hooks call to evaluate one of this guider's conditionings again at ``sigma``
        (``CFGInputs.predict``); the conditioning is recognised by identity."""

        def predict(conditioning: Conditioning, x: Tensor, variant: object = None) -> Tensor:
            side = next((i for i, c in enumerate(self.conditionings) if c is conditioning and c is not None), None)
            if side is None:
                raise ValueError("a guidance hook asked for a conditioning this guider was not given")
            evaluated = tuple(index == side for index in range(len(self._sides)))
            return self._predict(x, sigma, evaluated, variant)[side]

        return predict

    def _run(self, x: Tensor, sigma: Tensor, evaluated: tuple[bool, ...]) -> tuple[Tensor, Tensor]:
        conditionings = tuple(c if on else None for c, on in zip(self.conditionings, evaluated))
        if self.inpainting is None:
            return self._guide(x, sigma, self._predict(x, sigma, evaluated), conditionings)
        mask = self.inpainting.mask_at(self.model_sampling, sigma)
        held = self.inpainting.hold(self.model_sampling, x, sigma, mask)
        guided, uncond = self._guide(held, sigma, self._predict(held, sigma, evaluated), conditionings)
        return self.inpainting.keep(guided, mask), uncond

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self._run(x, sigma, self.evaluated)[0]

    def with_uncond(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The guided x0 estimate and the unconditional one from the same evaluation, for CFG++ samplers
        (``diffusion.samplers.UncondDenoiser``).

        Every side is evaluated, whatever the scale (batched, so a call costs what one at another scale
        does), because CFG++ renoises with the unconditional estimate: ComfyUI turns its cfg-1 shortcut off
        for these samplers. The unconditional estimate is what ComfyUI's post-CFG functions receive as
        ``uncond_denoised`` (zeros for a missing conditioning). Under an inpainting the guided estimate keeps
        the original's kept cells and the unconditional one is left as the model made it, as in ComfyUI.
        The guided estimate is ``guider(x, sigma)``.
        """
        return self._run(x, sigma, (True,) * len(self._sides))

    @abstractmethod
    def _guide(
        self, x: Tensor, sigma: Tensor, predictions: list[Tensor], conditionings: tuple[Conditioning | None, ...]
    ) -> tuple[Tensor, Tensor]:
        """(guided x0, unconditional x0) of one model call at state ``x`` from the sides' predictions."""


class CFGGuider(ConditioningGuider):
    """Classifier-free guidance over regional conditioning, as the denoiser ``guider(x, sigma) -> x0``.

    ``negative=None`` is a model guided by its positive prompt alone (a guidance-distilled model, or plain
    conditional sampling); it needs ``cfg`` 1. At ``cfg`` 1 the negative drops out of the formula, so it is
    never evaluated (unless ``hooks.uncond_at_cfg1``): one UNet batch per model call either way. With a
    negative and another ``cfg``, plain CFG costs one call of batch 2B. ``hooks`` change the combination
    as a MODEL's ComfyUI functions do (``diffusion.cfg_hooks``); without any it is plain CFG, bit for bit.
    See ``ConditioningGuider`` for the other arguments.
    """

    def __init__(
        self,
        unet_fn: UNetFn,
        model_sampling: ModelSampling,
        latent: Tensor,
        positive: Conditioning,
        negative: Conditioning | None = None,
        cfg: float = 1.0,
        inpainting: Inpainting | None = None,
        concat_builder: ConcatBuilder = inpaint_channels,
        repeat_contexts: bool = True,
        hooks: CFGHooks = NO_HOOKS,
    ) -> None:
        if negative is None and cfg != 1.0:
            raise ValueError(f"cfg {cfg} guides away from a negative conditioning, and none was given; use cfg 1")
        sides = [("positive", positive), ("negative", negative)]
        super().__init__(unet_fn, model_sampling, latent, sides, inpainting, concat_builder, repeat_contexts, hooks)
        self.cfg = cfg
        self.evaluated = (True, cfg != 1.0 or hooks.uncond_at_cfg1)

    def _guide(
        self, x: Tensor, sigma: Tensor, predictions: list[Tensor], conditionings: tuple[Conditioning | None, ...]
    ) -> tuple[Tensor, Tensor]:
        positive, negative = self.hooks.before(x, sigma, self.cfg, predictions, conditionings)
        inputs = CFGInputs(
            x,
            sigma,
            positive,
            negative,
            self.cfg,
            conditionings[0],
            conditionings[1],
            predict=self.side_predictor(sigma),
        )
        return self.hooks.combine(inputs), negative
