"""The sampling pipeline behind KSampler: noise, sigmas, guided denoiser, sampler, inpainting.

A conditioning is ComfyUI's CONDITIONING value: a list of ``(context [1, T, D], options)``. The
options this pipeline reads are ``strength``, ``area`` ``(h, w, y, x)`` in latent cells (pixels/8),
``mask`` with ``mask_strength`` and ``set_area_to_bounds``, ``timestep_start``/``timestep_end``
(fractions of the process, 0 = noisiest), ``y`` (SDXL's adm vector, already built by the caller),
``concat_latent_image`` + ``concat_mask`` (9-channel inpainting models) and ``pooled_output``
(kept for the caller that builds ``y``; unused here).

Several conditionings on one side are combined per latent cell as a weighted average of their
x0 predictions, each weighted by strength x mask over its area; a cell that no conditioning
covers gets a zero prediction, as in ComfyUI. Classifier-free guidance is
``uncond + (cond - uncond) * cfg`` on those averages (Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion.latent_preview import latent_to_rgb
from diffusion.prediction import ModelSampling
from diffusion.samplers import SamplerSpec, get_sampler
from diffusion.schedules import compute_sigmas

__all__ = [
    "ConditioningError",
    "Conditioning",
    "Previewer",
    "ProgressCallback",
    "SamplingInterrupted",
    "prepare_noise",
    "sample_latent",
    "sampling_sigmas",
]

Conditioning = list[tuple[Tensor, dict[str, Any]]]
ProgressCallback = Callable[[int, int, Callable[[], np.ndarray]], None]
#: Renders an x0 estimate ``[B, C, H, W]`` as an ``[h, w, 3]`` uint8 image of its first item.
Previewer = Callable[[Tensor], np.ndarray]
UNetCall = Callable[..., Tensor]


class SamplingInterrupted(Exception):
    """Raised when ``interrupt()`` asks sampling to stop; ``step`` is the step that was about to run."""

    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(f"sampling interrupted at step {step}")


class ConditioningError(ValueError):
    """A conditioning entry whose options cannot be used; names the side, entry and option."""

    def __init__(self, side: str, index: int, key: str, reason: str) -> None:
        self.side, self.index, self.key, self.reason = side, index, key, reason
        super().__init__(f"{side} conditioning #{index}: option {key!r} {reason}")


def prepare_noise(latent: Tensor, seed: int, batch_index: list[int] | None = None) -> Tensor:
    """The start noise of a latent batch, identical for a seed on every device.

    Drawn on the CPU in float32 from a generator seeded with ``seed`` (the same numbers as
    ``torch.manual_seed(seed); torch.randn(...)``), then cast. Without ``batch_index`` the whole
    batch is one draw, so item 0 is the same for every batch size. With it (a latent cut out of a
    larger batch), items are drawn one by one up to ``max(batch_index)`` and picked, so each item
    gets the noise it had in the original batch.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = tuple(latent.shape)
    if batch_index is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        draws = [torch.randn((1,) + shape[1:], generator=generator, dtype=torch.float32)
                 for _ in range(max(batch_index) + 1)]
        noise = torch.cat([draws[i] for i in batch_index])
    return noise.to(latent.device, latent.dtype)


def sampling_sigmas(model_sampling: ModelSampling, sampler: SamplerSpec, scheduler: str, steps: int,
                    denoise: float = 1.0) -> Tensor:
    """The sigmas KSampler runs: ``denoise < 1`` schedules ``int(steps / denoise)`` steps and keeps
    the last ``steps + 1`` sigmas (img2img starts part-way down the full schedule); samplers that
    discard the penultimate sigma get one more step computed and that sigma removed."""
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise >= 0.9999 else int(steps / denoise)
    if sampler.discard_penultimate_sigma:
        sigmas = compute_sigmas(model_sampling, scheduler, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = compute_sigmas(model_sampling, scheduler, total)
    return sigmas[-(steps + 1):]


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
    negative: bool

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def batch_key(self) -> tuple:
        rows, cols = self.region
        return (rows.start, rows.stop, cols.start, cols.stop, self.context.shape[-1],
                _trailing_shape(self.y), _trailing_shape(self.concat))


def _trailing_shape(tensor: Tensor | None) -> tuple[int, ...] | None:
    """Per-sample shape: conditionings batch together only when their extras stack."""
    return None if tensor is None else tuple(tensor.shape[1:])


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


def _region(side: str, index: int, options: dict[str, Any], mask: Tensor | None,
            height: int, width: int) -> tuple[slice, slice]:
    if mask is not None and options.get("set_area_to_bounds", False):
        covered = (mask > 0).any(dim=0)[0]
        if not bool(covered.any()):
            raise ConditioningError(side, index, "mask", "is empty, so it has no bounds to set the area to")
        rows, cols = torch.nonzero(covered.any(dim=1)), torch.nonzero(covered.any(dim=0))
        return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    area = options.get("area")
    if area is None:
        return slice(0, height), slice(0, width)
    if len(area) != 4 or not all(isinstance(v, (int, np.integer)) for v in area):
        raise ConditioningError(side, index, "area", f"must be (height, width, y, x) in latent cells, got {area!r}")
    h, w, y, x = (int(v) for v in area)
    y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
    return slice(y, min(y + max(h, 1), height)), slice(x, min(x + max(w, 1), width))


def _batch_like(tensor: Tensor, batch: int, side: str, index: int, key: str) -> Tensor:
    if tensor.shape[0] not in (1, batch):
        raise ConditioningError(side, index, key, f"has batch {tensor.shape[0]}, expected 1 or {batch}")
    return tensor


def _resolve(conditioning: Conditioning, negative: bool, latent: Tensor, model_sampling: ModelSampling,
             noise_mask: Tensor | None) -> list[_Cond]:
    side = "negative" if negative else "positive"
    batch, _, height, width = latent.shape
    resolved = []
    for index, (context, options) in enumerate(conditioning):
        if context.ndim != 3:
            raise ConditioningError(side, index, "context", f"must be [1, tokens, dim], got shape {tuple(context.shape)}")
        mask = options.get("mask")
        if mask is not None:
            mask = _batch_like(_resize_mask(mask, (height, width)), batch, side, index, "mask")
        rows, cols = _region(side, index, options, mask, height, width)
        weight = torch.full((1, 1, rows.stop - rows.start, cols.stop - cols.start), float(options.get("strength", 1.0)))
        if mask is not None:
            weight = weight * mask[:, :, rows, cols] * float(options.get("mask_strength", 1.0))
        concat = None
        if options.get("concat_latent_image") is not None:
            image = _batch_like(options["concat_latent_image"], batch, side, index, "concat_latent_image")
            if options.get("concat_mask") is not None:
                inpaint_mask = _resize_mask(options["concat_mask"], (height, width))
            elif noise_mask is not None:
                inpaint_mask = noise_mask
            else:
                inpaint_mask = torch.ones(1, 1, height, width)
            inpaint_mask = _batch_like(inpaint_mask, batch, side, index, "concat_mask")
            if image.shape[0] != inpaint_mask.shape[0]:
                image, inpaint_mask = torch.broadcast_tensors(image, inpaint_mask.expand(-1, image.shape[1], -1, -1))
                inpaint_mask = inpaint_mask[:, :1]
            concat = torch.cat([inpaint_mask.to(image), image], dim=1)[:, :, rows, cols]
        y = options.get("y")
        if y is not None:
            y = _batch_like(y, batch, side, index, "y")
        resolved.append(_Cond(
            context=context, region=(rows, cols), weight=weight.to(latent.device),
            sigma_start=model_sampling.percent_to_sigma(float(options.get("timestep_start", 0.0))),
            sigma_end=model_sampling.percent_to_sigma(float(options.get("timestep_end", 1.0))),
            y=y, concat=concat, negative=negative))
    return resolved


def _repeat_tokens(context: Tensor, length: int) -> Tensor:
    """Repeat a context to ``length`` tokens. Exact for attention: duplicated key/value pairs split
    the same softmax mass, so cross-attention output is unchanged (ComfyUI pads the same way)."""
    return context.repeat(1, length // context.shape[1], 1)


def _per_item(tensor: Tensor, batch: int) -> Tensor:
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


class _GuidedDenoiser:
    """``model(x, sigma) -> x0`` with every active conditioning evaluated and combined, CFG applied,
    inpainting enforced, and interruption checked before each UNet call."""

    def __init__(self, unet_fn: UNetCall, model_sampling: ModelSampling, conds: list[_Cond], cfg: float,
                 inpaint: tuple[Tensor, Tensor, Tensor] | None, interrupt: Callable[[], bool] | None) -> None:
        self.unet_fn, self.model_sampling, self.cfg = unet_fn, model_sampling, cfg
        self.conds = [c for c in conds if not (c.negative and cfg == 1.0)]
        self.inpaint, self.interrupt = inpaint, interrupt
        self.step = 0

    def _check_interrupt(self) -> None:
        if self.interrupt is not None and self.interrupt():
            raise SamplingInterrupted(self.step)

    def _evaluate(self, group: list[_Cond], x: Tensor, sigma: Tensor) -> list[Tensor]:
        """One UNet call for conds that share a region and input layout: batch = len(group) x B."""
        batch = x.shape[0]
        rows, cols = group[0].region
        x_region = x[:, :, rows, cols]
        x_all = x_region.repeat(len(group), 1, 1, 1)
        sigma_all = sigma.repeat(len(group))
        length = math.lcm(*(c.context.shape[1] for c in group))
        context = torch.cat([_repeat_tokens(c.context, length).expand(batch, -1, -1) for c in group]).to(x)
        extra: dict[str, Tensor] = {}
        if group[0].y is not None:
            extra["y"] = torch.cat([_per_item(c.y, batch) for c in group]).to(x)
        if group[0].concat is not None:
            extra["concat"] = torch.cat([_per_item(c.concat, batch) for c in group]).to(x)
        self._check_interrupt()
        x_in = self.model_sampling.calculate_input(sigma_all, x_all)
        output = self.unet_fn(x_in, self.model_sampling.timestep(sigma_all), context, **extra)
        denoised = self.model_sampling.calculate_denoised(sigma_all, output.to(x.dtype), x_all)
        return list(denoised.split(batch))

    def _predict(self, x: Tensor, sigma: Tensor) -> dict[bool, Tensor]:
        """Per side (negative or not), the weighted average of its active conds' x0 predictions.

        Conds that share a batch key go through one UNet call whichever side they are on, so
        plain CFG costs a single batched call per model evaluation.
        """
        groups: dict[tuple, list[_Cond]] = {}
        for cond in self.conds:
            if cond.active(float(sigma.max())):
                groups.setdefault(cond.batch_key(), []).append(cond)
        sums = {side: (torch.zeros_like(x), torch.zeros_like(x[:, :1])) for side in (False, True)}
        for group in groups.values():
            for cond, prediction in zip(group, self._evaluate(group, x, sigma)):
                rows, cols = cond.region
                total, weights = sums[cond.negative]
                weight = cond.weight.to(x)
                total[:, :, rows, cols] += prediction * weight
                weights[:, :, rows, cols] += weight
        return {side: total / weights.clamp_min(1e-37) * (weights > 0) for side, (total, weights) in sums.items()}

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.inpaint is not None:
            mask, latent, noise = self.inpaint
            noised = self.model_sampling.noise_scaling(sigma.reshape(-1, 1, 1, 1), noise, latent)
            x = x * mask + noised * (1 - mask)
        predictions = self._predict(x, sigma)
        positive, negative = predictions[False], predictions[True]
        denoised = positive if self.cfg == 1.0 else negative + (positive - negative) * self.cfg
        if self.inpaint is not None:
            mask, latent, _ = self.inpaint
            denoised = denoised * mask + latent * (1 - mask)
        return denoised


def _is_full_denoise(model_sampling: ModelSampling, sigma: float) -> bool:
    return math.isclose(sigma, model_sampling.sigma_max, rel_tol=1e-5) or sigma > model_sampling.sigma_max


def sample_latent(unet_fn: UNetCall, model_sampling: ModelSampling, latent: Tensor, positive: Conditioning,
                  negative: Conditioning, sampler_name: str, scheduler: str, steps: int, cfg: float, seed: int,
                  denoise: float = 1.0, start_step: int | None = None, end_step: int | None = None,
                  add_noise: bool = True, return_with_leftover_noise: bool = False,
                  noise_mask: Tensor | None = None, batch_index: list[int] | None = None,
                  callback: ProgressCallback | None = None, interrupt: Callable[[], bool] | None = None,
                  preview_family: str = "sd1", sampler_options: dict[str, Any] | None = None,
                  sigmas: Tensor | None = None, previewer: Previewer | None = None) -> Tensor:
    """Run KSampler / KSamplerAdvanced on ``latent`` ``[B, C, H, W]`` and return the new latent.

    ``unet_fn(x_in, timesteps, context, y=..., concat=...)`` returns the UNet's raw output; ``y`` and
    ``concat`` are passed only when the conditioning provides them, and ``concat`` holds the extra
    input channels (inpainting mask then masked-image latent) that the UNet appends to ``x_in``.
    ``start_step``/``end_step`` cut the schedule as KSamplerAdvanced does: the end step forces the
    last sigma to 0 unless ``return_with_leftover_noise``. ``noise_mask`` (1 = repaint) restricts
    changes to the masked cells. ``callback(step, total, preview)`` runs after every step;
    ``preview()`` renders that step's x0 estimate only when called, with ``previewer`` (a TAESD
    decoder, say) or else ``latent_to_rgb`` for ``preview_family``. ``interrupt()`` returning
    True stops sampling with ``SamplingInterrupted`` before the next UNet call. Explicit ``sigmas``
    (the custom-sampling nodes' SIGMAS) replace the schedule; ``scheduler``/``steps``/``denoise`` are then unused.
    """
    spec = get_sampler(sampler_name)
    if sigmas is None:
        sigmas = sampling_sigmas(model_sampling, spec, scheduler, steps, denoise)
    sigmas = sigmas.to(latent.device)
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[:end_step + 1].clone()
        if not return_with_leftover_noise:
            sigmas[-1] = 0.0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return latent
        sigmas = sigmas[start_step:]
    if len(sigmas) < 2:
        return latent

    noise = prepare_noise(latent, seed, batch_index) if add_noise else torch.zeros_like(latent)
    max_denoise = _is_full_denoise(model_sampling, float(sigmas[0]))
    x = model_sampling.noise_scaling(sigmas[0], noise, latent, max_denoise=max_denoise)

    mask = None
    if noise_mask is not None:
        mask = _resize_mask(noise_mask, tuple(latent.shape[-2:])).to(latent)
        if mask.shape[0] not in (1, latent.shape[0]):
            raise ValueError(f"noise_mask has batch {mask.shape[0]}, the latent has {latent.shape[0]}")
    conds = (_resolve(positive, False, latent, model_sampling, mask)
             + _resolve(negative, True, latent, model_sampling, mask))
    inpaint = None if mask is None else (mask, latent, noise)
    denoiser = _GuidedDenoiser(unet_fn, model_sampling, conds, cfg, inpaint, interrupt)
    total = len(sigmas) - 1
    render = previewer or (lambda estimate: latent_to_rgb(estimate, preview_family))

    def on_step(info: dict[str, Any]) -> None:
        denoiser.step = info["i"] + 1
        if callback is not None:
            estimate = info["denoised"]
            callback(info["i"] + 1, total, lambda: render(estimate))

    options = dict(sampler_options or {})
    if spec.takes_seed:
        options.setdefault("seed", seed)
    samples = spec(denoiser, x, sigmas, callback=on_step, disable=True, **options)
    if mask is not None:
        samples = samples * mask + latent * (1 - mask)
    return model_sampling.inverse_noise_scaling(sigmas[-1], samples)
