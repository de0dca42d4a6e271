"""Standalone text-encoder files (`models/text_encoders/`) and the stacks the CLIP loaders build from them.

Split installs keep each text encoder in its own file: `clip_l.safetensors`, `clip_g.safetensors`
(transformers' CLIP layout, CLIP-G with its projection), SD2's OpenCLIP-H, `t5xxl_fp16.safetensors` and the
fp8 variants (transformers' T5 layout). Which encoder a file holds is read from its keys, as ComfyUI reads
it: T5 by its blocks, CLIP by its token embedding, and the three CLIPs apart by their depth (CLIP-L has 12
layers, OpenCLIP-H 24, CLIP-G 32). The files of one loader are then checked against what the requested
type accepts, so a wrong file is named with what it is.

A loader ``type`` accepts sets of encoders (``CLIP_TYPES``): `sdxl` and `flux` exactly their pair, `sd3`
any of its three (SD3 runs with a missing encoder's part zeroed, ``t5_stacks.SD3TextEncoders``), and
`stable_diffusion` one CLIP alone, which picks the family it belongs to (L: SD1.x, H: SD2.x, G: the SDXL
refiner), `lumina2` a Qwen3 (Z-Image's Qwen3-4B) and `chroma` a T5-XXL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from ..text_encoders.layouts import detect_layout
from ..text_encoders.qwen3 import load_qwen3_encoder
from ..text_encoders.stack import ClipStack
from ..text_encoders.t5_stacks import t5_family_encoders
from ..text_encoders.zimage_text import ZImageTextEncoder
from .detect import CheckpointInfo, ComponentSource, ModelFamily, key_sample
from .errors import CheckpointError, UnknownModelError
from .files import LazyStateDict, open_state_dict
from .load import LoadedCheckpoint, TextEncoderStack

__all__ = ["CLIP_TYPES", "ClipType", "load_text_encoders", "text_encoder_kind"]


@dataclass(frozen=True)
class ClipType:
    """A loader ``type``: the encoder sets it accepts, and the family each set's stack runs as."""

    accepted: dict[frozenset[str], str]

    def describe(self) -> str:
        return " or ".join(" + ".join(sorted(names)) for names in self.accepted)


def _any_of(names: tuple[str, ...], family: str) -> dict[frozenset[str], str]:
    return {frozenset(group): family for size in range(1, len(names) + 1) for group in combinations(names, size)}


#: Every loader ``type`` Loom builds, by ComfyUI's name. The CLIP loaders offer the ones that fit their
#: number of files.
CLIP_TYPES: dict[str, ClipType] = {
    "stable_diffusion": ClipType(
        {frozenset({"clip_l"}): "sd15", frozenset({"clip_h"}): "sd2", frozenset({"clip_g"}): "sdxl_refiner"}
    ),
    "sdxl": ClipType({frozenset({"clip_l", "clip_g"}): "sdxl"}),
    "sd3": ClipType(_any_of(("clip_l", "clip_g", "t5xxl"), "sd3")),
    "flux": ClipType({frozenset({"clip_l", "t5xxl"}): "flux"}),
    "lumina2": ClipType({frozenset({"qwen3"}): "zimage"}),
    "chroma": ClipType({frozenset({"t5xxl"}): "chroma"}),
}

_T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
_LLM_LAYOUTS = {"t5xxl": "t5", "qwen3": "qwen3"}
#: Only Qwen3 has per-head query norms. Its size is not checked here: a Qwen3 of another width than Z-Image's
#: 4B (2560) loads, and the diffusion model names the width it takes when given its states.
_QWEN3_KEYS = ("model.layers.0.self_attn.q_norm.weight", "layers.0.self_attn.q_norm.weight")
#: The deepest layer index each CLIP has and the shallower ones lack, deepest first.
_CLIP_DEPTHS = (("clip_g", 30), ("clip_h", 22))


def text_encoder_kind(sd: LazyStateDict) -> str:
    """``t5xxl``, ``qwen3``, ``clip_l``, ``clip_h`` or ``clip_g``; an UnknownModelError naming the file's key
    prefixes otherwise."""
    if _T5_KEY in sd:
        return "t5xxl"
    if any(key in sd for key in _QWEN3_KEYS):
        return "qwen3"
    try:
        detect_layout(sd)
    except ValueError:
        raise UnknownModelError(sd.path, f"not a CLIP or T5 text encoder ({key_sample(sd)})") from None
    for kind, layer in _CLIP_DEPTHS:
        starts = (f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}.")
        if any(key.startswith(starts) for key in sd):
            return kind
    return "clip_l"


def _stack(family: str, found: Mapping[str, LazyStateDict]) -> TextEncoderStack:
    if family == "zimage":
        return ZImageTextEncoder(load_qwen3_encoder(found["qwen3"]))
    if family in ("sd3", "flux", "chroma"):
        return t5_family_encoders(family, found)
    return ClipStack.from_state_dicts(family, found)


def load_text_encoders(paths: Sequence[Path], clip_type: str) -> LoadedCheckpoint:
    """The files of a CLIP loader, in any order, as the text-encoder stack of ``clip_type`` (``CLIP_TYPES``)."""
    accepted = CLIP_TYPES[clip_type].accepted
    opened = [open_state_dict(path) for path in paths]
    kinds = [text_encoder_kind(sd) for sd in opened]
    found = dict(zip(kinds, opened))
    family = accepted.get(frozenset(kinds)) if len(found) == len(kinds) else None
    if family is None:
        got = ", ".join(f"{path.name} ({kind})" for path, kind in zip(paths, kinds))
        raise CheckpointError(
            paths[0], f"type {clip_type} takes {CLIP_TYPES[clip_type].describe()}, each file once; got {got}"
        )
    try:
        stack = _stack(family, found)
    except ValueError as error:
        raise CheckpointError(paths[0], f"text encoders do not load as {clip_type}'s: {error}") from error
    model_family = ModelFamily(family)
    info = CheckpointInfo(
        family=model_family,
        prediction=None,
        is_inpaint=False,
        latent_channels=16 if model_family.is_flow_transformer else 4,
        latent_scale_factor=model_family.latent_scale_factor,
        components={
            name: ComponentSource("", _LLM_LAYOUTS.get(name) or detect_layout(sd), sd.path)
            for name, sd in found.items()
        },
        path=paths[0],
    )
    return LoadedCheckpoint(None, None, stack, info)
