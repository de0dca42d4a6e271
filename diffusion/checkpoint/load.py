"""Split a classified model file into its components and build Loom's modules around the weights.

Each component gets a prefix-stripped lazy view of the file (`first_stage_model.` -> the VAE's own
keys ...), so the constructors adopt memory-mapped tensors directly: nothing is read twice, and
nothing is cast or moved until the caller asks for a device or dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..chroma import ChromaTransformer, load_chroma
from ..diffusers_layout import unet_to_ldm, vae_to_ldm
from ..flux import FluxTransformer, load_flux
from ..mmdit import MMDiT, load_mmdit
from ..text_encoders import FAMILY_ENCODERS, ClipStack, load_clip_text_model
from ..text_encoders.t5_stacks import ChromaTextEncoders, FluxTextEncoders, SD3TextEncoders, t5_family_encoders
from ..text_encoders.zimage_text import ZImageTextEncoder
from ..unet import UNetModel, unet_from_state_dict
from ..unet_config import UNetConfig, detect_unet_config
from ..vae import AutoencoderKL, vae_from_state_dict
from ..zimage import ZImageTransformer, load_zimage
from .detect import CheckpointInfo, ComponentSource, ModelFamily, detect_state_dict
from .diffusers_folder import detect_diffusers_folder, is_diffusers_folder
from .errors import CheckpointError, CheckpointFormatError
from .files import LazyStateDict, open_state_dict

__all__ = ["DiffusionModel", "LoadedCheckpoint", "TextEncoderStack", "load_checkpoint", "split_checkpoint"]

#: The denoising network of a model file: an SD UNet or a rectified-flow transformer.
DiffusionModel = UNetModel | FluxTransformer | MMDiT | ZImageTransformer | ChromaTransformer
#: What a loaded file's text encoders are: a CLIP stack, a T5 family's encoders, or an LLM encoder.
TextEncoderStack = ClipStack | FluxTextEncoders | SD3TextEncoders | ChromaTextEncoders | ZImageTextEncoder


@dataclass
class LoadedCheckpoint:
    """The modules of one model file; a component the file lacks is None. ``unet`` is the diffusion model,
    whichever network it is (the name of the component in every layout Loom reads)."""

    unet: DiffusionModel | None
    vae: AutoencoderKL | None
    text_encoders: TextEncoderStack | None
    info: CheckpointInfo


def split_checkpoint(info: CheckpointInfo, state_dict: LazyStateDict | None = None) -> dict[str, LazyStateDict]:
    """Component name -> its weights, prefix stripped, in the key layout its constructor expects.

    `state_dict` is the already opened single file (None: open what `info` points at). diffusers-layout
    UNet/VAE weights are renamed to the LDM layout here; text-encoder layouts are the encoders' concern.
    """
    opened: dict[Path, LazyStateDict] = {}
    views: dict[str, LazyStateDict] = {}
    for name, source in info.components.items():
        if source.file is None:
            if state_dict is None:
                if info.path is None:
                    raise ValueError(
                        f"component {name!r} lives in the checkpoint, but neither a path nor a state dict is known"
                    )
                state_dict = open_state_dict(info.path)
            whole = state_dict
        else:
            if source.file not in opened:
                opened[source.file] = open_state_dict(source.file)
            whole = opened[source.file]
        views[name] = _in_ldm_layout(name, source, whole.view(source.prefix))
    return views


def _component_config(source: ComponentSource) -> dict[str, Any]:
    """The `config.json` beside a diffusers component's weights."""
    if source.file is None:
        raise ValueError("only components stored in their own file (diffusers folders) have a config.json")
    path = source.file.parent / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(path, f"diffusers component config unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointFormatError(path, "diffusers component config is not a JSON object")
    return config


def _in_ldm_layout(name: str, source: ComponentSource, view: LazyStateDict) -> LazyStateDict:
    if source.layout != "diffusers":
        return view
    if name == "vae":
        return LazyStateDict.from_tensors(vae_to_ldm(view), view.path)
    return LazyStateDict.from_tensors(unet_to_ldm(view, _component_config(source)), view.path)


def _unet_config(info: CheckpointInfo, source: ComponentSource, weights: LazyStateDict) -> UNetConfig:
    """Single files: the config detected from the weights (head split by the family convention).

    diffusers folders state the head split: `attention_head_dim` (a misnomer kept for compatibility)
    is the number of heads, one value or one per level. One value is a fixed head count (SD1's 8);
    per-level values that give every attention level the same head width are a fixed head width.
    """
    detected = info.unet_config or detect_unet_config(weights)
    if source.layout != "diffusers":
        return detected
    config = _component_config(source)
    # As diffusers reads it: num_attention_heads when set, else attention_head_dim, which defaults to 8.
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    if isinstance(heads, int):
        return replace(detected, num_heads=heads, num_head_channels=None)
    widths = {
        channels // count
        for channels, count, depth in zip(config["block_out_channels"], heads, _level_depths(detected))
        if depth
    }
    if len(widths) != 1:
        raise CheckpointFormatError(source.file, f"attention heads {heads} give unequal head widths {sorted(widths)}")
    return replace(detected, num_heads=None, num_head_channels=widths.pop())


def _level_depths(config: UNetConfig) -> list[int]:
    depths = iter(config.transformer_depth)
    return [max(next(depths) for _ in range(blocks)) for blocks in config.num_res_blocks]


#: What an all-in-one file of a T5 family must hold to give a CLIP (Z-Image's ship as split files only).
_ALL_IN_ONE_ENCODERS = {"flux": {"clip_l", "t5xxl"}, "sd3": {"clip_l", "clip_g"}, "chroma": {"t5xxl"}}


def _text_encoders(
    family: ModelFamily, info: CheckpointInfo, views: dict[str, LazyStateDict]
) -> TextEncoderStack | None:
    """Every released CLIP has 64-wide heads, which single files rely on; diffusers folders state it."""
    if family.is_flow_transformer:
        found: dict[str, LazyStateDict] = {n: views[n] for n in ("clip_l", "clip_g", "t5xxl") if n in views}
        needed = _ALL_IN_ONE_ENCODERS.get(family.value)
        return t5_family_encoders(family.value, found) if needed is not None and needed <= set(found) else None
    encoders = {}
    for role in FAMILY_ENCODERS.get(family.value, ()):
        if role.name not in views:
            continue
        head_width = 64
        source = info.components[role.name]
        if source.file is not None and source.layout == "hf" and (source.file.parent / "config.json").is_file():
            config = _component_config(source)
            head_width = int(config["hidden_size"]) // int(config["num_attention_heads"])
        encoders[role.name] = load_clip_text_model(views[role.name], role.activation, head_width)
    return ClipStack(family.value, encoders) if encoders else None


def _place(model: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)


def load_checkpoint(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> LoadedCheckpoint:
    """Open, classify, split and build a checkpoint file or diffusers folder.

    With neither `device` nor `dtype`, weights stay memory-mapped in their stored dtype on the CPU.
    Errors from the component builders are re-raised as `CheckpointError`s naming the file.
    """
    path = Path(path)
    if is_diffusers_folder(path):
        info, state_dict = detect_diffusers_folder(path), None
    else:
        state_dict = open_state_dict(path)
        info = detect_state_dict(state_dict)
    views = split_checkpoint(info, state_dict)
    try:
        unet = _diffusion_model(info, views["unet"]) if "unet" in views else None
        vae = vae_from_state_dict(views["vae"]) if "vae" in views else None
        text = _text_encoders(info.family, info, views) if info.family else None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(path, f"weights do not fit the detected {_describe(info)}: {exc}") from exc
    for model in (unet, vae, *(text.encoders.values() if text else ())):
        if model is not None:
            _place(model, device, dtype)
    return LoadedCheckpoint(unet, vae, text, info)


def _diffusion_model(info: CheckpointInfo, weights: LazyStateDict) -> DiffusionModel:
    source = info.components["unet"]
    if source.layout == "flux":
        return load_flux(weights)
    if source.layout == "sd3":
        return load_mmdit(weights)
    if source.layout == "zimage":
        return load_zimage(weights)
    if source.layout == "chroma":
        return load_chroma(weights)
    return unet_from_state_dict(weights, _unet_config(info, source, weights))


def _describe(info: CheckpointInfo) -> str:
    return f"{info.family.value} model" if info.family else "VAE"
