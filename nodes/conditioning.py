"""Text encoding and the nodes that edit CONDITIONING values.

A CONDITIONING is ComfyUI's list of ``[cond [1, tokens, width], options]`` pairs; the options the
sampler reads are listed in ``diffusion.guidance``. Editing nodes copy the options dict and never
mutate their input: cached upstream outputs are shared between runs and between prompts.

SDXL's size conditioning is not fixed here: a plain ``CLIPTextEncode`` leaves ``width``/``height``
unset and the sampler fills them from the latent it is given, as ComfyUI does (``nodes.sampling``).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffusion.embeddings import EmbeddingFolder
from graph.declare import Combo, Float, Int, Output, Socket, String, node
from nodes.clip_handles import ClipHandle
from nodes.image import MAX_RESOLUTION
from nodes.runtime import current_runtime
from nodes.vae_handles import VaeHandle

__all__ = [
    "CLIPTextEncode",
    "CLIPTextEncodeSDXL",
    "CLIPTextEncodeSDXLRefiner",
    "ConditioningSetAreaPercentage",
    "ConditioningSetAreaStrength",
    "ConditioningAverage",
    "CLIPTextEncodeFlux",
    "CLIPTextEncodeSD3",
    "ConditioningCombine",
    "FluxGuidance",
    "ConditioningConcat",
    "ConditioningSetArea",
    "ConditioningSetMask",
    "ConditioningSetTimestepRange",
    "ConditioningZeroOut",
    "InpaintModelConditioning",
    "InstructPixToPixConditioning",
    "ReferenceLatent",
    "masked_for_inpaint",
    "pixel_mask",
]

Conditioning = list[list[Any]]
_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _embedding_folder(folders: tuple[Path, ...]) -> EmbeddingFolder:
    """One resolver per folder list, so its per-file cache survives between prompts."""
    return EmbeddingFolder(folders)


def _edited(conditioning: Conditioning, **options: Any) -> Conditioning:
    return [[cond, {**extra, **options}] for cond, extra in conditioning]


@node(category="conditioning", display_name="CLIP Text Encode (Prompt)", outputs=[Output("CONDITIONING")])
def CLIPTextEncode(
    text=String(
        multiline=True,
        dynamic_prompts=True,
        tooltip="The prompt; (word:1.2) weights, embedding:name inserts an embedding.",
    ),
    clip=Socket("CLIP"),
):
    """Encode a prompt with the model's text encoder(s) into conditioning for the sampler."""
    handle: ClipHandle = clip
    cond, pooled = handle.encode(text, _embeddings())
    return [[cond, {"pooled_output": pooled}]]


def _embeddings() -> EmbeddingFolder:
    """The textual-inversion embeddings of this installation's embeddings folders."""
    return _embedding_folder(tuple(current_runtime().model_paths.folders("embeddings")))


@node(category="conditioning", display_name="Conditioning (Combine)", outputs=[Output("CONDITIONING")])
def ConditioningCombine(conditioning_1=Socket("CONDITIONING"), conditioning_2=Socket("CONDITIONING")):
    """Use both conditionings: the sampler averages their predictions (each over its own area)."""
    return conditioning_1 + conditioning_2


def _fit_tokens(cond: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad ``[1, T, D]`` to ``length`` tokens."""
    if cond.shape[1] >= length:
        return cond[:, :length]
    return F.pad(cond, (0, 0, 0, length - cond.shape[1]))


@node(category="conditioning", outputs=[Output("CONDITIONING")])
def ConditioningAverage(
    conditioning_to=Socket("CONDITIONING"),
    conditioning_from=Socket("CONDITIONING"),
    conditioning_to_strength=Float(1.0, min=0.0, max=1.0, step=0.01),
):
    """Blend each ``to`` entry with the first ``from`` entry: ``to * strength + from * (1 - strength)``."""
    if len(conditioning_from) > 1:
        _log.warning("ConditioningAverage uses only the first entry of conditioning_from")
    source, source_options = conditioning_from[0]
    source_pooled = source_options.get("pooled_output")
    strength = conditioning_to_strength
    blended = []
    for cond, options in conditioning_to:
        mixed = cond * strength + _fit_tokens(source, cond.shape[1]) * (1.0 - strength)
        options = dict(options)
        pooled = options.get("pooled_output", source_pooled)
        if pooled is not None and source_pooled is not None:
            options["pooled_output"] = pooled * strength + source_pooled * (1.0 - strength)
        elif pooled is not None:
            options["pooled_output"] = pooled
        blended.append([mixed, options])
    return blended


@node(category="conditioning", outputs=[Output("CONDITIONING")])
def ConditioningConcat(conditioning_to=Socket("CONDITIONING"), conditioning_from=Socket("CONDITIONING")):
    """Append the first ``from`` entry's tokens to each ``to`` entry (like a longer prompt, kept separate)."""
    if len(conditioning_from) > 1:
        _log.warning("ConditioningConcat uses only the first entry of conditioning_from")
    source = conditioning_from[0][0]
    return [[torch.cat([cond, source], dim=1), dict(options)] for cond, options in conditioning_to]


@node(category="conditioning", outputs=[Output("CONDITIONING")])
def ConditioningSetArea(
    conditioning=Socket("CONDITIONING"),
    width=Int(64, min=64, max=MAX_RESOLUTION, step=8),
    height=Int(64, min=64, max=MAX_RESOLUTION, step=8),
    x=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    y=Int(0, min=0, max=MAX_RESOLUTION, step=8),
    strength=Float(1.0, min=0.0, max=10.0, step=0.01),
):
    """Restrict a conditioning to a rectangle of the image (pixels; applied in latent cells of 8)."""
    area = (height // 8, width // 8, y // 8, x // 8)
    return _edited(conditioning, area=area, strength=strength, set_area_to_bounds=False)


@node(category="conditioning", outputs=[Output("CONDITIONING")])
def ConditioningSetMask(
    conditioning=Socket("CONDITIONING"),
    mask=Socket("MASK"),
    strength=Float(1.0, min=0.0, max=10.0, step=0.01),
    set_cond_area=Combo(["default", "mask bounds"]),
):
    """Weight a conditioning by a mask; "mask bounds" also crops its area to the mask's bounding box."""
    if mask.ndim < 3:
        mask = mask[None]
    return _edited(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default", mask_strength=strength)


@node(category="advanced/conditioning", outputs=[Output("CONDITIONING")])
def ConditioningSetTimestepRange(
    conditioning=Socket("CONDITIONING"),
    start=Float(0.0, min=0.0, max=1.0, step=0.001),
    end=Float(1.0, min=0.0, max=1.0, step=0.001),
):
    """Use a conditioning only for part of the sampling: 0 is the first (noisiest) step, 1 the end."""
    return _edited(conditioning, timestep_start=start, timestep_end=end)


@node(category="advanced/conditioning/flux", outputs=[Output("CONDITIONING")])
def CLIPTextEncodeFlux(
    clip=Socket("CLIP"),
    clip_l=String(multiline=True, dynamic_prompts=True),
    t5xxl=String(multiline=True, dynamic_prompts=True),
    guidance=Float(3.5, min=0.0, max=100.0, step=0.1),
):
    """FLUX's prompt in two parts (CLIP-L's, short, and T5's, long) with the guidance strength."""
    if clip.family != "flux":
        raise ValueError(
            f"CLIPTextEncodeFlux needs FLUX's text encoders (DualCLIPLoader type flux), not {clip.family}'s"
        )
    cond, pooled = clip.encode({"clip_l": clip_l, "t5xxl": t5xxl}, _embeddings())
    return [[cond, {"pooled_output": pooled, "guidance": guidance}]]


@node(category="advanced/conditioning", outputs=[Output("CONDITIONING")])
def CLIPTextEncodeSD3(
    clip=Socket("CLIP"),
    clip_l=String(multiline=True, dynamic_prompts=True),
    clip_g=String(multiline=True, dynamic_prompts=True),
    t5xxl=String(multiline=True, dynamic_prompts=True),
    empty_padding=Combo(["none", "empty_prompt"]),
):
    """SD3's prompt per text encoder; with empty_padding "none" an empty T5 prompt adds no T5 tokens (the
    conditioning is the CLIP pair's alone), with "empty_prompt" it is encoded as the empty prompt."""
    if clip.family != "sd3":
        raise ValueError(f"CLIPTextEncodeSD3 needs SD3's text encoders (TripleCLIPLoader), not {clip.family}'s")
    texts = {"clip_l": clip_l, "clip_g": clip_g}
    if t5xxl or empty_padding == "empty_prompt":
        texts["t5xxl"] = t5xxl
    cond, pooled = clip.encode(texts, _embeddings())
    return [[cond, {"pooled_output": pooled}]]


@node(category="advanced/conditioning/flux", outputs=[Output("CONDITIONING")])
def FluxGuidance(conditioning=Socket("CONDITIONING"), guidance=Float(3.5, min=0.0, max=100.0, step=0.1)):
    """The guidance strength a guidance-distilled model (FLUX.1 dev) is conditioned on, in place of CFG."""
    return _edited(conditioning, guidance=guidance)


@node(
    category="conditioning/instructpix2pix",
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent")],
)
def InstructPixToPixConditioning(
    positive=Socket("CONDITIONING"), negative=Socket("CONDITIONING"), vae=Socket("VAE"), pixels=Socket("IMAGE")
):
    """A control picture (edges, depth) for models that take it as extra input channels (FLUX.1 Canny /
    Depth); the returned latent is an empty one of the picture's size."""
    handle: VaeHandle = vae
    concat = handle.encode(handle.crop_pixels(pixels))
    return (
        _edited(positive, concat_latent_image=concat),
        _edited(negative, concat_latent_image=concat),
        {"samples": torch.zeros_like(concat)},
    )


@node(category="advanced/conditioning/edit_models", outputs=[Output("CONDITIONING")])
def ReferenceLatent(conditioning=Socket("CONDITIONING"), latent=Socket("LATENT", optional=True)):
    """The picture an edit model (FLUX.1 Kontext) works from; chained, each adds one more reference."""
    if latent is None:
        return conditioning
    edited = []
    for cond, options in conditioning:
        options = dict(options)
        options["reference_latents"] = [*options.get("reference_latents", ()), latent["samples"]]
        edited.append([cond, options])
    return edited


@node(category="advanced/conditioning", outputs=[Output("CONDITIONING")])
def ConditioningZeroOut(conditioning=Socket("CONDITIONING")):
    """Replace the text states and pooled output by zeros (an "empty" conditioning for SDXL negatives)."""
    zeroed = []
    for cond, options in conditioning:
        options = dict(options)
        if options.get("pooled_output") is not None:
            options["pooled_output"] = torch.zeros_like(options["pooled_output"])
        zeroed.append([torch.zeros_like(cond), options])
    return zeroed


def pixel_mask(mask: torch.Tensor, image: torch.Tensor, node_name: str) -> torch.Tensor:
    """A MASK as ``[B, 1, H, W]`` matching IMAGE ``[B, H, W, C]``; a size mismatch is an error that says so."""
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
        hint = (
            " (a picture without alpha gives LoadImage's 64x64 empty mask)"
            if tuple(mask.shape[-2:]) == (64, 64)
            else ""
        )
        raise ValueError(
            f"{node_name}: the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
            f"{image.shape[2]}x{image.shape[1]}; they must be the same size{hint}"
        )
    return mask


def masked_for_inpaint(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The picture with the area to repaint set to mid-grey, so the encoder sees no trace of it."""
    keep = (1.0 - mask.round()).movedim(1, -1)
    return (image[..., :3] - 0.5) * keep + 0.5


@node(
    category="conditioning/inpaint",
    outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent")],
)
def InpaintModelConditioning(
    positive=Socket("CONDITIONING"),
    negative=Socket("CONDITIONING"),
    vae=Socket("VAE"),
    pixels=Socket("IMAGE"),
    mask=Socket("MASK"),
):
    """Prepare inpainting: the masked picture's latent goes to inpainting models as extra input, and
    the returned latent carries the mask so only the masked area is sampled."""
    handle: VaeHandle = vae
    mask = pixel_mask(mask, pixels, "InpaintModelConditioning")
    pixels, mask = handle.crop_pixels(pixels), handle.crop_pixels(mask.movedim(1, -1)).movedim(-1, 1)
    concat = handle.encode(masked_for_inpaint(pixels, mask))
    latent = {"samples": handle.encode(pixels), "noise_mask": mask}
    options = {"concat_latent_image": concat, "concat_mask": mask}
    return _edited(positive, **options), _edited(negative, **options), latent


@node(category="advanced/conditioning", display_name="CLIP Text Encode (SDXL)", outputs=[Output("CONDITIONING")])
def CLIPTextEncodeSDXL(
    clip=Socket("CLIP"),
    width=Int(1024, min=0, max=MAX_RESOLUTION),
    height=Int(1024, min=0, max=MAX_RESOLUTION),
    crop_w=Int(0, min=0, max=MAX_RESOLUTION, advanced=True),
    crop_h=Int(0, min=0, max=MAX_RESOLUTION, advanced=True),
    target_width=Int(1024, min=0, max=MAX_RESOLUTION),
    target_height=Int(1024, min=0, max=MAX_RESOLUTION),
    text_g=String(multiline=True, dynamic_prompts=True),
    text_l=String(multiline=True, dynamic_prompts=True),
):
    """SDXL's prompt per text encoder (text_g for CLIP-G, text_l for CLIP-L) with the size conditioning
    SDXL was trained on: the picture's original size, the crop's top-left corner and the target size."""
    handle: ClipHandle = clip
    if handle.family != "sdxl":
        raise ValueError(
            f"clip: CLIPTextEncodeSDXL needs SDXL's text encoders (CLIP-L and CLIP-G), not {handle.family}'s"
        )
    # The shorter prompt is padded with empty-prompt windows so both encoders' tokens line up (ClipStack).
    cond, pooled = handle.encode({"clip_l": text_l, "clip_g": text_g}, _embeddings())
    sizes = {
        "width": width,
        "height": height,
        "crop_w": crop_w,
        "crop_h": crop_h,
        "target_width": target_width,
        "target_height": target_height,
    }
    return [[cond, {"pooled_output": pooled, **sizes}]]


@node(
    category="advanced/conditioning",
    display_name="CLIP Text Encode (SDXL Refiner)",
    outputs=[Output("CONDITIONING")],
)
def CLIPTextEncodeSDXLRefiner(
    ascore=Float(6.0, min=0.0, max=1000.0, step=0.01),
    width=Int(1024, min=0, max=MAX_RESOLUTION),
    height=Int(1024, min=0, max=MAX_RESOLUTION),
    text=String(multiline=True, dynamic_prompts=True),
    clip=Socket("CLIP"),
):
    """A prompt for the SDXL refiner with the aesthetic score (ascore) and picture size it is conditioned on."""
    handle: ClipHandle = clip
    cond, pooled = handle.encode(text, _embeddings())
    return [[cond, {"pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height}]]


@node(category="conditioning", display_name="Conditioning (Set Area with Percentage)", outputs=[Output("CONDITIONING")])
def ConditioningSetAreaPercentage(
    conditioning=Socket("CONDITIONING"),
    width=Float(1.0, min=0, max=1.0, step=0.01),
    height=Float(1.0, min=0, max=1.0, step=0.01),
    x=Float(0, min=0, max=1.0, step=0.01),
    y=Float(0, min=0, max=1.0, step=0.01),
    strength=Float(1.0, min=0.0, max=10.0, step=0.01),
):
    """Restrict a conditioning to a rectangle given in fractions of the image (1.0 is its whole width
    or height), resolved against the latent being sampled."""
    for name, value in (("width", width), ("height", height), ("x", x), ("y", y)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction from 0 to 1, not {value}")
    area = ("percentage", height, width, y, x)
    return _edited(conditioning, area=area, strength=strength, set_area_to_bounds=False)


@node(category="conditioning", outputs=[Output("CONDITIONING")])
def ConditioningSetAreaStrength(conditioning=Socket("CONDITIONING"), strength=Float(1.0, min=0.0, max=10.0, step=0.01)):
    """Set how strongly a conditioning counts where several overlap (its weight in their average)."""
    return _edited(conditioning, strength=strength)
