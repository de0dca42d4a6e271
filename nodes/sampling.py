"""The sampler nodes: KSampler, KSamplerAdvanced, and the custom-sampling family that splits a
KSampler into its parts (SAMPLER, SIGMAS, NOISE, GUIDER values).

Every sampler node is the same composition of four parts, which the custom-sampling nodes expose
one by one: sigmas (``diffusion.schedules``), start noise (``Noise``), a guider (``Guider``, bound
to the latent as a ``diffusion.guidance.CFGGuider`` with the MODEL's CFG hooks; other GUIDER values
follow ``GuiderValue``) and a sampler (``diffusion.samplers``), run by ``diffusion.sampling.sample``.
What the nodes add is the model side of ComfyUI's ``common_ksampler``:
- LATENT values are unscaled VAE latents; they are scaled into the model's space on the way in and
  back on the way out (``ModelHandle.latent_format``), the masked-image latent of inpainting too.
- An empty latent made for another channel count is replaced by zeros of the model's count.
- SDXL's ``y`` (pooled text + size micro-conditioning, Podell et al. 2023) is built per conditioning
  entry when it has none: sizes default to the latent's pixel size and crop (0, 0), as ComfyUI does
  for a plain CLIPTextEncode; the refiner's aesthetic score defaults to 6 (positive) / 2.5 (negative). An entry
  with ``unclip_conditioning`` (``unCLIPConditioning``: SDXL revision) has its pooled text replaced by the
  noise-augmented image embeddings (``diffusion.unclip``), seeded from the sampler node's seed, as in ComfyUI.
- Progress goes to ``report_progress`` once per step, through the sampler's step callback, with a
  preview drawn as ``nodes.previews`` says (none with ``--preview-method none``). The same call
  raises ``graph.progress.Interrupted`` when the prompt is stopped, so a stop lands between steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from diffusion import guidance
from diffusion.prediction import UNetFn
from diffusion.samplers import SAMPLER_NAMES, SamplerSpec, StepCallback, get_sampler
from diffusion.sampling import Previewer, prepare_noise, sample
from diffusion.schedules import SCHEDULER_NAMES, cut_sigmas, denoise_sigmas
from diffusion.unclip import ClipEmbeddingNoiseAugmentor, unclip_adm
from diffusion.unet import sdxl_adm_vector, sdxl_refiner_adm_vector
from graph.declare import Boolean, Combo, Float, Int, Output, Socket, node
from graph.progress import report_progress
from nodes.controlnet_handles import check_control_fits, place_controls
from nodes.model_handles import DEFAULT_GUIDANCE, ModelHandle
from nodes.runtime import current_runtime

__all__ = [
    "BasicGuider", "BasicScheduler", "CFGGuider", "DisableNoise", "Guider", "GuiderValue", "KSampler",
    "KSamplerAdvanced", "KSamplerSelect", "NO_NOISE", "Noise", "PREVIEW_MAX_SIZE", "RandomNoise", "SamplerCustom",
    "SamplerCustomAdvanced", "model_conditioning",
]  # fmt: skip

#: Longest preview side in pixels (ComfyUI's ``--preview-size`` default).
PREVIEW_MAX_SIZE = 512
#: Per-number width of SDXL's size sinusoids; the rest of ``adm_in_channels`` is the pooled text.
_SIZE_EMBED = 256
SEED_MAX = 0xFFFFFFFFFFFFFFFF
#: SDXL's revision augmentor (ComfyUI's for SDXL and the refiner): no data statistics in the checkpoints.
_REVISION_AUGMENTOR = ClipEmbeddingNoiseAugmentor(width=1280, max_noise_level=1000)

Latent = dict[str, Any]


def _adm_vector(
    model: ModelHandle, adm: int, options: dict[str, Any], latent: torch.Tensor, negative: bool, seed: int
) -> torch.Tensor:
    """SDXL's ``y`` for a model whose UNet takes ``adm`` (its ``adm_in_channels``) numbers."""
    refiner = model.family.value == "sdxl_refiner"
    width = adm - (5 if refiner else 6) * _SIZE_EMBED
    pooled = options.get("pooled_output")
    if options.get("unclip_conditioning"):
        # ComfyUI's ``sdxl_pooled``: the class vector's first numbers (1280 in every SDXL) replace the pooled text.
        pooled = unclip_adm(options["unclip_conditioning"], _REVISION_AUGMENTOR, seed)[:, :width]
    elif pooled is None:
        pooled = torch.zeros(1, width)
    height = int(options.get("height", latent.shape[2] * 8))
    width = int(options.get("width", latent.shape[3] * 8))
    crop = (int(options.get("crop_h", 0)), int(options.get("crop_w", 0)))
    if refiner:
        score = float(options.get("aesthetic_score", 2.5 if negative else 6.0))
        return sdxl_refiner_adm_vector(pooled, (height, width), crop, score)
    target = (int(options.get("target_height", height)), int(options.get("target_width", width)))
    return sdxl_adm_vector(pooled, (height, width), crop, target)


def _pooled_vector(width: int, options: dict[str, Any]) -> torch.Tensor:
    """A flow transformer's ``y``: the pooled text vector, zeros where the conditioning has none; a width
    that does not fit is named rather than failing inside the model."""
    pooled = options.get("pooled_output")
    if pooled is None:
        return torch.zeros(1, width)
    if pooled.shape[-1] != width:
        raise ValueError(
            f"the conditioning's pooled output is {pooled.shape[-1]} wide, this model takes {width}: "
            "encode the prompt with this model's text encoders"
        )
    return pooled


def _check_unclip(model: ModelHandle, options: dict[str, Any]) -> None:
    if options.get("unclip_conditioning") and model.adm_in_channels is None:
        raise ValueError(
            f"the conditioning carries an image prompt from unCLIPConditioning, which this {model.family.value} model "
            "cannot read: in Loom only SDXL models take it (revision, with clip_vision_g); SD2.1 unCLIP checkpoints "
            "are not supported"
        )


def model_conditioning(
    model: ModelHandle, conditioning: list[Any], latent: torch.Tensor, negative: bool, seed: int = 0
) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Conditioning entries as this model needs them: ``y`` built, inpainting latents scaled or supplied, the
    ControlNets they carry checked against the model (``ControlNetMismatchError``).

    ``latent`` is the latent being sampled, already in the model's space. ``seed`` is the sampler's noise seed,
    which ComfyUI hands to the model's conditioning: SDXL revision draws its noise augmentation from it (0 outside
    a sampling, ComfyUI's default).
    """
    prepared = []
    adm = model.adm_in_channels
    for cond, options in conditioning:
        options = dict(options)
        if options.get("control") is not None:
            check_control_fits(model, options["control"])
        _check_unclip(model, options)
        if adm is not None and options.get("y") is None:
            options["y"] = _adm_vector(model, adm, options, latent, negative, seed)
        if model.pooled_dim is not None:
            options["y"] = _pooled_vector(model.pooled_dim, options)
        if model.takes_guidance:
            options.setdefault("guidance", DEFAULT_GUIDANCE)
        if options.get("reference_latents"):
            options["reference_latents"] = [
                model.latent_format.to_model(reference.float()) for reference in options["reference_latents"]
            ]
        if options.get("concat_latent_image") is not None:
            options["concat_latent_image"] = model.latent_format.to_model(options["concat_latent_image"])
        elif model.concat_builder in (guidance.fill_channels, guidance.control_channels):
            # FLUX.1 Fill / Canny / Depth without their conditioning node: an empty picture, as ComfyUI gives it.
            options["concat_latent_image"] = model.latent_format.to_model(torch.zeros_like(latent))
        elif model.in_channels > model.latent_channels:
            # An inpainting model fed by VAEEncodeForInpaint: the latent being sampled is already the
            # masked picture's, and the noise mask is the inpainting mask (as in ComfyUI).
            options["concat_latent_image"] = latent
        prepared.append((cond, options))
    return prepared


def _model_latent(model: ModelHandle, samples: torch.Tensor) -> torch.Tensor:
    """The latent in model space; a blank latent of another channel count is remade for this model."""
    if samples.shape[1] != model.latent_channels:
        if bool((samples == 0).all()):
            samples = torch.zeros(samples.shape[0], model.latent_channels, *samples.shape[2:])
        else:
            raise ValueError(
                f"the latent has {samples.shape[1]} channels but this {model.family.value} model works on "
                f"{model.latent_channels}: it was made by another model family's VAE"
            )
    return model.latent_format.to_model(samples.float())


def _step_reporter(previewer: Previewer | None, total: int) -> StepCallback:
    """The sampler callback of a node: progress with a JPEG preview of the step's x0 estimate
    (none when previews are off), and the interrupt check that ``report_progress`` makes."""

    def report(step: dict[str, Any]) -> None:
        image = None if previewer is None else ("JPEG", Image.fromarray(previewer(step["denoised"])), PREVIEW_MAX_SIZE)
        report_progress(step["i"] + 1, total, image)

    return report


@dataclass(frozen=True)
class Noise:
    """NOISE: the start noise of a sampler node, and the seed its sampler draws per-step noise from.

    ``add`` False starts from the latent as given: it is already noisy (leftover noise of an
    earlier pass), so only the sampler's own noise, if any, uses the seed.
    """

    seed: int
    add: bool = True

    def generate(self, latent: torch.Tensor, batch_index: list[int] | None) -> torch.Tensor:
        return prepare_noise(latent, self.seed, batch_index) if self.add else torch.zeros_like(latent)


#: DisableNoise's value: ComfyUI's empty noise has seed 0.
NO_NOISE = Noise(0, add=False)


class GuiderValue(Protocol):
    """What a GUIDER value is to the sampler nodes: its MODEL, and the denoiser it makes for one latent."""

    @property
    def model(self) -> ModelHandle: ...

    def bind(
        self, unet_fn: UNetFn, latent: torch.Tensor, inpainting: guidance.Inpainting | None, seed: int
    ) -> guidance.ConditioningGuider:
        """The denoiser for ``latent`` (in model space); ``seed`` is the sampling's noise seed."""


@dataclass(frozen=True)
class Guider:
    """GUIDER: a model with its conditioning and classifier-free guidance scale (no negative: the model
    guided by its prompt alone, ``BasicGuider``). The MODEL's CFG hooks (``ModelHandle.cfg_hooks``: ComfyUI's
    sampler functions in its ``model_options``) change the guidance."""

    model: ModelHandle
    positive: list[Any]
    negative: list[Any] | None
    cfg: float

    def bind(
        self, unet_fn: UNetFn, latent: torch.Tensor, inpainting: guidance.Inpainting | None, seed: int
    ) -> guidance.CFGGuider:
        """The denoiser for ``latent`` (in model space), with the conditioning this model needs."""
        model = self.model
        return guidance.CFGGuider(
            unet_fn,
            model.sampling,
            latent,
            model_conditioning(model, self.positive, latent, False, seed),
            None if self.negative is None else model_conditioning(model, self.negative, latent, True, seed),
            self.cfg,
            inpainting,
            self.model.concat_builder,
            self.model.repeats_contexts,
            self.model.cfg_hooks(),
        )


def _sample(
    noise: Noise, guider: GuiderValue, sampler: SamplerSpec, sigmas: torch.Tensor, latent_image: Latent
) -> Latent:
    """What every sampler node runs (ComfyUI's ``common_ksampler``): a LATENT dict sampled over ``sigmas``.

    The latent is scaled into the model's space and moved where the model lives; the start noise is
    still drawn on the CPU (``prepare_noise``), and a ``noise_mask`` makes it an inpainting (read through
    the model's ``mask_policy``, if it has one). ControlNets the conditioning carries sit on the device beside
    the model for the run.
    """
    model = guider.model
    runtime = current_runtime()
    previewer = runtime.previews.previewer_for(model.preview_family, runtime.model_paths)
    with model.unet_fn() as unet_fn:
        latent = _model_latent(model, latent_image["samples"]).to(model.device)
        start_noise = noise.generate(latent, latent_image.get("batch_index"))
        mask = latent_image.get("noise_mask")
        inpainting = (
            None
            if mask is None
            else guidance.Inpainting.from_mask(mask, latent, start_noise, sigmas, model.mask_policy)
        )
        denoiser = guider.bind(unet_fn, latent, inpainting, noise.seed)
        place_controls(model, denoiser.controls())
        result = sample(
            denoiser,
            sampler,
            sigmas,
            latent,
            start_noise,
            seed=noise.seed,
            callback=_step_reporter(previewer, len(sigmas) - 1),
        )
    return {**latent_image, "samples": model.latent_format.from_model(result).cpu()}


def _ksampler_sigmas(
    model: ModelHandle, sampler: SamplerSpec, scheduler: str, steps: int, denoise: float
) -> torch.Tensor:
    discard = sampler.discard_penultimate_sigma
    return denoise_sigmas(model.sampling, scheduler, steps, denoise, discard_penultimate_sigma=discard)


@node(category="sampling", outputs=[Output("LATENT")])
def KSampler(
    model=Socket("MODEL", tooltip="The model used to denoise the latent."),
    seed=Int(0, min=0, max=SEED_MAX, control_after_generate=True, tooltip="The random seed of the noise."),
    steps=Int(20, min=1, max=10000),
    cfg=Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
    sampler_name=Combo(SAMPLER_NAMES),
    scheduler=Combo(SCHEDULER_NAMES),
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    latent_image=Socket("LATENT"),
    denoise=Float(1.0, min=0.0, max=1.0, step=0.01, tooltip="How much of the latent to replace: below 1 for img2img."),
):
    """Denoise a latent with the model, guided by the positive and negative conditioning."""
    sampler = get_sampler(sampler_name)
    sigmas = _ksampler_sigmas(model, sampler, scheduler, steps, denoise)
    return _sample(Noise(seed), Guider(model, positive, negative, cfg), sampler, sigmas, latent_image)


@node(category="sampling", display_name="KSampler (Advanced)", outputs=[Output("LATENT")])
def KSamplerAdvanced(
    model=Socket("MODEL"),
    add_noise=Combo(["enable", "disable"]),
    noise_seed=Int(0, min=0, max=SEED_MAX, control_after_generate=True),
    steps=Int(20, min=1, max=10000),
    cfg=Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01),
    sampler_name=Combo(SAMPLER_NAMES),
    scheduler=Combo(SCHEDULER_NAMES),
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    latent_image=Socket("LATENT"),
    start_at_step=Int(0, min=0, max=10000),
    end_at_step=Int(10000, min=0, max=10000),
    return_with_leftover_noise=Combo(["disable", "enable"]),
):
    """Run part of a schedule (steps start_at_step..end_at_step), for multi-stage sampling such as a refiner pass."""
    sampler = get_sampler(sampler_name)
    sigmas = cut_sigmas(
        _ksampler_sigmas(model, sampler, scheduler, steps, 1.0),
        start_at_step,
        end_at_step,
        leftover_noise=return_with_leftover_noise == "enable",
    )
    noise = Noise(noise_seed, add=add_noise == "enable")
    return _sample(noise, Guider(model, positive, negative, cfg), sampler, sigmas, latent_image)


def _sample_custom(
    noise: Noise, guider: GuiderValue, sampler: SamplerSpec, sigmas: torch.Tensor, latent_image: Latent
) -> tuple[Latent, Latent]:
    """(output, denoised_output) of running ``sampler`` over exactly ``sigmas``.

    When the sigmas end at 0 the output is the final x0 estimate itself. When they end above 0
    (leftover noise for a later pass), ``denoised_output`` is the model's x0 estimate at that final
    state: one Euler step to sigma 0, which is exactly the denoiser's prediction there.
    """
    output = _sample(noise, guider, sampler, sigmas, latent_image)
    if len(sigmas) < 2 or float(sigmas[-1]) == 0.0:
        return output, output
    to_zero = torch.stack([sigmas[-1], sigmas.new_zeros(())])
    return output, _sample(Noise(noise.seed, add=False), guider, get_sampler("euler"), to_zero, output)


@node(category="sampling/custom_sampling/samplers", outputs=[Output("SAMPLER")])
def KSamplerSelect(sampler_name=Combo(SAMPLER_NAMES)):
    """Pick a sampling algorithm for the custom sampler nodes."""
    return get_sampler(sampler_name)


@node(category="sampling/custom_sampling/schedulers", outputs=[Output("SIGMAS")])
def BasicScheduler(
    model=Socket("MODEL"),
    scheduler=Combo(SCHEDULER_NAMES),
    steps=Int(20, min=1, max=10000),
    denoise=Float(1.0, min=0.0, max=1.0, step=0.01),
):
    """The noise levels of a schedule; below 1, ``denoise`` keeps the last ``steps`` of a longer one."""
    return denoise_sigmas(model.sampling, scheduler, steps, denoise, exact_denoise=True).cpu()


@node(category="sampling/custom_sampling/noise", outputs=[Output("NOISE")])
def RandomNoise(noise_seed=Int(0, min=0, max=SEED_MAX, control_after_generate=True)):
    """Start noise from a seed (drawn on the CPU, so a seed gives the same picture on any device)."""
    return Noise(noise_seed)


@node(category="sampling/custom_sampling/noise", outputs=[Output("NOISE")])
def DisableNoise():
    """No start noise: continue sampling a latent that is already noisy."""
    return NO_NOISE


@node(category="sampling/custom_sampling/guiders", outputs=[Output("GUIDER")])
def CFGGuider(
    model=Socket("MODEL"),
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    cfg=Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01),
):
    """Classifier-free guidance: push the prediction away from the negative towards the positive."""
    return Guider(model, positive, negative, cfg)


@node(category="sampling/custom_sampling/guiders", outputs=[Output("GUIDER")])
def BasicGuider(model=Socket("MODEL"), conditioning=Socket("CONDITIONING")):
    """The model guided by its prompt alone, without a negative: guidance-distilled models (FLUX.1 dev, schnell)."""
    return Guider(model, conditioning, None, 1.0)


@node(category="sampling/custom_sampling", outputs=[Output("LATENT", "output"), Output("LATENT", "denoised_output")])
def SamplerCustom(
    model=Socket("MODEL"),
    add_noise=Boolean(True),
    noise_seed=Int(0, min=0, max=SEED_MAX, control_after_generate=True),
    cfg=Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01),
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    sampler=Socket("SAMPLER"),
    sigmas=Socket("SIGMAS"),
    latent_image=Socket("LATENT"),
):
    """Sample with a chosen sampler over given noise levels."""
    # Without added noise the seed still drives the sampler's own per-step noise, as in ComfyUI.
    noise = Noise(noise_seed, add=add_noise)
    return _sample_custom(noise, Guider(model, positive, negative, cfg), sampler, sigmas, latent_image)


@node(category="sampling/custom_sampling", outputs=[Output("LATENT", "output"), Output("LATENT", "denoised_output")])
def SamplerCustomAdvanced(
    noise=Socket("NOISE"),
    guider=Socket("GUIDER"),
    sampler=Socket("SAMPLER"),
    sigmas=Socket("SIGMAS"),
    latent_image=Socket("LATENT"),
):
    """Sample with separately chosen noise, guidance, sampler and noise levels."""
    return _sample_custom(noise, guider, sampler, sigmas, latent_image)
