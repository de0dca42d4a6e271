"""Image prompts under ComfyUI's names: CLIP vision towers, unCLIP conditioning (SDXL revision) and style models
(FLUX.1 Redux).

Names, inputs, ranges, widget order and categories are ComfyUI's:

- ``CLIPVisionLoader`` loads a tower of the ``clip_vision`` folder (ViT-H, ViT-bigG, SigLIP: ``diffusion.clip_vision``)
  as a CLIP_VISION; ``CLIPVisionEncode`` encodes an IMAGE with it (``crop`` "center" cuts the centre square after
  resizing the short side, "none" squashes the picture) into a CLIP_VISION_OUTPUT.
- ``unCLIPConditioning`` appends ``{"clip_vision_output", "strength", "noise_augmentation"}`` to each entry's
  ``unclip_conditioning`` list; sampling an SDXL model replaces the pooled text with those image embeddings
  (``nodes.sampling``, ``diffusion.unclip``). Strength 0 returns the conditioning as given.
- ``StyleModelLoader`` loads a style model of the ``style_models`` folder (FLUX.1 Redux: ``diffusion.style_model``)
  as a STYLE_MODEL; ``StyleModelApply`` appends its tokens, every picture's in one row, to the context of each entry.
  ``strength_type`` "multiply" scales the tokens. "attn_bias" leaves them as they are and weights them inside
  attention instead: the entry's ``attention_mask`` gains a bias of log(strength) on the style tokens' keys
  (``diffusion.attention_masks``, laid out as ComfyUI lays it out), which the FLUX transformer adds to its
  attention logits; at strength 1 that bias is 0 and no mask is added, as in ComfyUI.

The unCLIP checkpoint loader is not here: Loom does not load SD2.1 unCLIP checkpoints (docs/compatibility.md §6.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusion.attention_masks import UNSIZED, TokenAttentionMask, as_additive, with_token_bias
from diffusion.clip_vision import ClipVisionModel, ClipVisionOutput
from diffusion.devices import compute_device
from diffusion.style_model import ReduxImageEncoder
from graph.declare import Combo, Float, Output, Socket, node
from nodes.runtime import current_runtime, find_model, list_models
from nodes.shared_models import load_shared_clip_vision, load_shared_style_model

__all__ = [
    "CLIPVisionEncode", "CLIPVisionLoader", "ClipVisionHandle", "StyleModelApply", "StyleModelHandle",
    "StyleModelLoader", "unCLIPConditioning",
]  # fmt: skip

CLIP_VISION_FOLDER = "clip_vision"
STYLE_MODEL_FOLDER = "style_models"

Conditioning = list[list[Any]]


@dataclass(frozen=True, eq=False)
class ClipVisionHandle:
    """CLIP_VISION: a loaded tower, shared with every handle over the same unchanged file, and its file."""

    model: ClipVisionModel
    path: Path

    @classmethod
    def from_file(cls, path: Path) -> ClipVisionHandle:
        return cls(load_shared_clip_vision(path), path)

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: the tower."""
        return [self.model]

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """ComfyUI's ``ClipVisionModel.encode_image``: the tower placed on the device, the IMAGE encoded there."""
        current_runtime().memory.use(self.model)
        return self.model.encode_image(image, crop)


@dataclass(frozen=True, eq=False)
class StyleModelHandle:
    """STYLE_MODEL: a loaded FLUX.1 Redux encoder, shared like a CLIP_VISION, and its file."""

    model: ReduxImageEncoder
    path: Path

    @classmethod
    def from_file(cls, path: Path) -> StyleModelHandle:
        return cls(load_shared_style_model(path), path)

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: the encoder."""
        return [self.model]

    def get_cond(self, clip_vision_output: Any) -> torch.Tensor:
        """ComfyUI's ``StyleModel.get_cond``: context tokens ``[B, T, context_dim]`` (float32, CPU) of a
        CLIP_VISION_OUTPUT's ``last_hidden_state``."""
        states: torch.Tensor = clip_vision_output["last_hidden_state"]
        wanted = self.model.config.vision_width
        if states.shape[-1] != wanted:
            raise ValueError(
                f"style model {self.path.name!r} reads image states {wanted} wide and this CLIP vision output's are "
                f"{states.shape[-1]}: encode the picture with the SigLIP tower FLUX Redux was trained on "
                "(sigclip_vision_patch14_384)"
            )
        current_runtime().memory.use(self.model)
        with torch.no_grad():
            return self.model(states.to(compute_device(self.model))).cpu()


def _clip_vision_names() -> list[str]:
    return list_models(CLIP_VISION_FOLDER)


def _style_model_names() -> list[str]:
    return list_models(STYLE_MODEL_FOLDER)


@node(category="loaders", display_name="Load CLIP Vision", outputs=[Output("CLIP_VISION")])
def CLIPVisionLoader(clip_name=Combo(_clip_vision_names, model_folder=CLIP_VISION_FOLDER)):
    """Load a CLIP or SigLIP vision tower (ViT-H, ViT-bigG, SigLIP so400m) from the clip_vision folder."""
    return ClipVisionHandle.from_file(find_model(CLIP_VISION_FOLDER, clip_name))


@node(category="conditioning", display_name="CLIP Vision Encode", outputs=[Output("CLIP_VISION_OUTPUT")])
def CLIPVisionEncode(clip_vision=Socket("CLIP_VISION"), image=Socket("IMAGE"), crop=Combo(["center", "none"])):
    """Encode a picture with a CLIP vision tower, for unCLIP conditioning, style models and image adapters."""
    return clip_vision.encode_image(image, crop=crop == "center")


@node(category="conditioning", outputs=[Output("CONDITIONING")])
def unCLIPConditioning(
    conditioning=Socket("CONDITIONING"),
    clip_vision_output=Socket("CLIP_VISION_OUTPUT"),
    strength=Float(1.0, min=-10.0, max=10.0, step=0.01),
    noise_augmentation=Float(0.0, min=0.0, max=1.0, step=0.01),
):
    """Prompt with a picture's CLIP embedding (SDXL revision with clip_vision_g); noise augmentation loosens it."""
    if strength == 0:
        return conditioning
    prompt = {"clip_vision_output": clip_vision_output, "strength": strength, "noise_augmentation": noise_augmentation}
    return [
        [cond, {**options, "unclip_conditioning": [*options.get("unclip_conditioning", ()), prompt]}]
        for cond, options in conditioning
    ]


@node(category="loaders", display_name="Load Style Model", outputs=[Output("STYLE_MODEL")])
def StyleModelLoader(style_model_name=Combo(_style_model_names, model_folder=STYLE_MODEL_FOLDER)):
    """Load a style model (FLUX.1 Redux) from the style_models folder."""
    return StyleModelHandle.from_file(find_model(STYLE_MODEL_FOLDER, style_model_name))


def _appended(context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    if context.shape[-1] != tokens.shape[-1]:
        raise ValueError(
            f"the style model's tokens are {tokens.shape[-1]} wide and this conditioning's context is "
            f"{context.shape[-1]}: Apply Style Model with FLUX.1 Redux goes on a FLUX conditioning"
        )
    return torch.cat((context, tokens.to(context).expand(context.shape[0], -1, -1)), dim=1)


@node(category="conditioning/style_model", display_name="Apply Style Model", outputs=[Output("CONDITIONING")])
def StyleModelApply(
    conditioning=Socket("CONDITIONING"),
    style_model=Socket("STYLE_MODEL"),
    clip_vision_output=Socket("CLIP_VISION_OUTPUT"),
    strength=Float(1.0, min=0.0, max=10.0, step=0.001),
    strength_type=Combo(["multiply", "attn_bias"]),
):
    """Append a picture's style tokens to the prompt (FLUX.1 Redux), weighted by strength: the tokens scaled
    ("multiply"), or their attention weighted ("attn_bias")."""
    tokens = style_model.get_cond(clip_vision_output).flatten(0, 1).unsqueeze(0)
    if strength_type == "multiply":
        tokens = tokens * strength
    biased = strength_type == "attn_bias" and strength != 1.0
    return [
        [_appended(cond, tokens), _with_bias(options, cond, tokens.shape[1], strength) if biased else dict(options)]
        for cond, options in conditioning
    ]


def _with_bias(options: dict[str, Any], context: torch.Tensor, added: int, strength: float) -> dict[str, Any]:
    """``options`` whose attention mask also weights the ``added`` tokens appended to ``context`` by ``strength``."""
    previous = options.get("attention_mask")
    earlier = None
    if previous is not None:
        shape = options.get("attention_mask_img_shape", UNSIZED)
        earlier = TokenAttentionMask(as_additive(previous), (int(shape[0]), int(shape[1])))
    try:
        mask = with_token_bias(earlier, context.shape[0], context.shape[1], added, strength)
    except ValueError as error:
        raise ValueError(f"StyleModelApply: {error}") from error
    return {**options, "attention_mask": mask.bias, "attention_mask_img_shape": mask.image_shape}
