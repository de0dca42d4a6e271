"""Standalone text-encoder files (`models/text_encoders/`) and the stacks the dual and triple loaders build.

Split FLUX and SDXL installs keep each text encoder in its own file: `clip_l.safetensors`, `clip_g.safetensors`
(transformers' CLIP layout, CLIP-G with its projection), `t5xxl_fp16.safetensors` and the fp8 variants
(transformers' T5 layout). Which encoder a file holds is read from its keys, as ComfyUI reads it: T5 by its
blocks, CLIP by its token embedding, CLIP-G from CLIP-L by its depth (a 31st layer). A pair is then
checked against what the requested family needs, so a wrong file is named with what it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..text_encoders.layouts import detect_layout
from ..text_encoders.stack import ClipStack
from ..text_encoders.t5_stacks import t5_family_encoders
from .detect import CheckpointInfo, ComponentSource, ModelFamily, key_sample
from .errors import CheckpointError, UnknownModelError
from .files import LazyStateDict, open_state_dict
from .load import LoadedCheckpoint

__all__ = ["DUAL_CLIP_TYPES", "TRIPLE_CLIP_TYPE", "load_text_encoders", "text_encoder_kind"]

#: DualCLIPLoader's types Loom builds, and the encoders each needs (SD3 without T5 is CLIP-L + CLIP-G).
DUAL_CLIP_TYPES: dict[str, tuple[str, ...]] = {
    "sdxl": ("clip_l", "clip_g"),
    "sd3": ("clip_l", "clip_g"),
    "flux": ("clip_l", "t5xxl"),
}
#: TripleCLIPLoader's one family and its encoders.
TRIPLE_CLIP_TYPE = ("sd3", ("clip_l", "clip_g", "t5xxl"))
_T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
_LAYOUTS = {"t5xxl": "t5"}


def text_encoder_kind(sd: LazyStateDict) -> str:
    """``t5xxl``, ``clip_l`` or ``clip_g``; an UnknownModelError naming the file's key prefixes otherwise."""
    if _T5_KEY in sd:
        return "t5xxl"
    try:
        detect_layout(sd)
    except ValueError:
        raise UnknownModelError(sd.path, f"not a CLIP or T5 text encoder ({key_sample(sd)})") from None
    deep = any(key.startswith(("text_model.encoder.layers.30.", "transformer.resblocks.30.")) for key in sd)
    return "clip_g" if deep else "clip_l"


def load_text_encoders(paths: Sequence[Path], kind: str, wanted: Sequence[str]) -> LoadedCheckpoint:
    """The files of a dual or triple CLIP loader for family `kind`, in any order, as one text-encoder stack;
    `wanted` are the encoders the family needs from them."""
    opened = [open_state_dict(path) for path in paths]
    found = {text_encoder_kind(sd): sd for sd in opened}
    if sorted(found) != sorted(wanted):
        got = ", ".join(f"{path.name} ({text_encoder_kind(sd)})" for path, sd in zip(paths, opened))
        raise CheckpointError(paths[0], f"type {kind} needs a {' and a '.join(wanted)} file; got {got}")
    try:
        stack = ClipStack.from_state_dicts("sdxl", found) if kind == "sdxl" else t5_family_encoders(kind, found)
    except ValueError as error:
        raise CheckpointError(paths[0], f"text encoders do not load as {kind}'s: {error}") from error
    family = ModelFamily(kind)
    info = CheckpointInfo(
        family=family,
        prediction=None,
        is_inpaint=False,
        latent_channels=16 if family.is_flow_transformer else 4,
        latent_scale_factor=family.latent_scale_factor,
        components={name: ComponentSource("", _LAYOUTS.get(name, "hf"), sd.path) for name, sd in found.items()},
        path=paths[0],
    )
    return LoadedCheckpoint(None, None, stack, info)
