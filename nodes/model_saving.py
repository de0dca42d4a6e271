"""Nodes that write models to the output folder: checkpoints, diffusion models, VAEs, text encoders, LoRAs.

Names, inputs and the files they write follow ComfyUI's (``comfy_extras/nodes_model_merging.py``,
``nodes_lora_extract.py``): ``<prefix>_<counter:05>_.safetensors`` under the output folder, the prefix's
folder included (``checkpoints/ComfyUI`` by default), numbered as SaveImage numbers pictures
(``nodes.folders.save_target``). The weights are written as the model computes with them: its LoRAs and
merges applied (``diffusion.checkpoint.save.patched_tensors``), in the dtype this runtime computes in, as
ComfyUI writes the weights it holds in memory in the dtype it computes in. They are computed and written
one tensor at a time, so saving holds one patched weight beside the model, never a second copy of it.

The safetensors metadata is ComfyUI's: ``prompt`` (the API prompt as JSON, empty without one) and one entry
per ``extra_pnginfo`` key (``workflow``), JSON-encoded; CheckpointSave and ModelSave add ``modelspec.*``
entries (the architecture for SDXL, the prediction type for every model) and CLIPSave ``format: pt``.
LoraSave writes no metadata, as ComfyUI's does not.

Checkpoints are written in the LDM/SGM single-file layout (``diffusion.checkpoint.save``) of the SD1.x,
SD2.x and SDXL families; the rectified-flow transformers (SD3, FLUX, Z-Image, Chroma) are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.checkpoint import ModelFamily
from diffusion.checkpoint.save import (
    PatchSets,
    PendingTensor,
    clip_hf_layout,
    low_rank_factors,
    patched_tensors,
    single_file_tensors,
    write_safetensors,
)
from diffusion.text_encoders.t5_stacks import T5FamilyEncoders
from diffusion.text_encoders.zimage_text import ZImageTextEncoder
from graph.declare import Boolean, Combo, Hidden, Int, Socket, String, node, spec_of
from graph.progress import report_progress
from nodes.clip_handles import ClipHandle
from nodes.folders import save_target
from nodes.model_handles import ModelHandle
from nodes.runtime import current_runtime
from nodes.vae_handles import VaeHandle

__all__ = ["CLIPSave", "CheckpointSave", "LoraSave", "ModelSave", "VAESave", "save_weights"]

_log = logging.getLogger(__name__)

CATEGORY = "advanced/model_merging"
_EXTENSION = "safetensors"
#: ``modelspec.architecture`` of the families ComfyUI names one for (its other families get none).
_ARCHITECTURES = {
    ModelFamily.SDXL: "stable-diffusion-xl-v1-base",
    ModelFamily.SDXL_REFINER: "stable-diffusion-xl-v1-refiner",
}
_PREDICT_KEYS = {"eps": "epsilon", "v": "v"}
#: The order in which CLIPSave writes a CLIP's encoders, one file each (ComfyUI's prefixes).
_CLIP_SAVE_ORDER = ("clip_l", "clip_g", "clip_h", "t5xxl")
LORA_TYPES = ("standard", "full_diff")


def save_weights(
    filename_prefix: str,
    tensors: Mapping[str, PendingTensor],
    metadata: Callable[[str, int], Mapping[str, str] | None] = lambda base, counter: None,
) -> Path:
    """Write ``tensors`` as the next ``<prefix>_NNNNN_.safetensors`` in the output folder; returns its path.

    The file is created exclusively (a concurrent save with the same prefix takes the next number) and
    removed again if writing fails. ``metadata(base name, counter)`` gives the metadata to write, which may
    name the file (``modelspec.title``)."""
    target = save_target(filename_prefix, current_runtime().folders.directory("output"), 0, 0)
    counter = target.counter
    while True:
        path = target.folder / target.file_name(0, _EXTENSION, counter)
        try:
            file = open(path, "xb")
        except FileExistsError:
            counter += 1
            continue
        break
    try:
        with file:
            write_safetensors(file, tensors, metadata(target.base, counter), report_progress)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    _log.info("saved %s (%d tensors)", path, len(tensors))
    return path


def _workflow_metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """``prompt`` (empty without one) and each ``extra_pnginfo`` entry, JSON-encoded, as ComfyUI writes them."""
    metadata = {"prompt": "" if prompt is None else json.dumps(prompt)}
    for key, value in (extra_pnginfo or {}).items():
        metadata[str(key)] = json.dumps(value)
    return metadata


def _compute_dtype() -> torch.dtype:
    return current_runtime().compute.dtype


def _clip_encoders(clip: ClipHandle) -> dict[str, tuple[nn.Module, PatchSets]]:
    """Encoder name -> (module, its patch sets) for every encoder the CLIP has, T5-XXL included (unpatched)."""
    stack = clip.stack
    encoders: dict[str, tuple[nn.Module, PatchSets]] = {
        role.name: (stack.encoders[role.name], clip.patches.get(index, ()))
        for index, role in enumerate(stack.slots)
        if role.name in stack.encoders
    }
    if isinstance(stack, T5FamilyEncoders) and stack.t5 is not None:
        encoders["t5xxl"] = (stack.t5, ())
    return encoders


def _checkpoint(
    model: ModelHandle,
    clip: ClipHandle | None,
    vae: VaeHandle | None,
    filename_prefix: str,
    prompt: Any,
    extra_pnginfo: Any,
) -> Path:
    """ComfyUI's ``save_checkpoint``: the model (and CLIP and VAE) in its family's single-file layout."""
    family, dtype = model.family, _compute_dtype()
    prediction = model.checkpoint.info.prediction
    text_encoders = None
    if clip is not None:
        if clip.family != family.value:
            raise ValueError(
                f"the CLIP is a {clip.family} text encoder and the model a {family.value} one: a checkpoint holds "
                "one family's parts"
            )
        text_encoders = {
            name: patched_tensors(module, patches, dtype) for name, (module, patches) in _clip_encoders(clip).items()
        }
    tensors = single_file_tensors(
        family,
        patched_tensors(model.unet, model.patches, dtype),
        None if vae is None else patched_tensors(vae.model, (), dtype),
        text_encoders,
        v_prediction=prediction == "v",
    )

    def metadata(base: str, counter: int) -> dict[str, str]:
        written: dict[str, str] = {}
        if family in _ARCHITECTURES:
            written["modelspec.architecture"] = _ARCHITECTURES[family]
            written["modelspec.sai_model_spec"] = "1.0.0"
            written["modelspec.implementation"] = "sgm"
            written["modelspec.title"] = f"{base} {counter}"
        if prediction in _PREDICT_KEYS:
            written["modelspec.predict_key"] = _PREDICT_KEYS[prediction]
        return written | _workflow_metadata(prompt, extra_pnginfo)

    return save_weights(filename_prefix, tensors, metadata)


@node(category=CATEGORY, display_name="Save Checkpoint", output_node=True)
def CheckpointSave(
    model=Socket("MODEL"),
    clip=Socket("CLIP"),
    vae=Socket("VAE"),
    filename_prefix=String("checkpoints/ComfyUI"),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Write the model, its text encoders and its VAE as one checkpoint file (SD1.x, SD2.x, SDXL), LoRAs and
    merges applied, for CheckpointLoaderSimple and other tools to load."""
    _checkpoint(model, clip, vae, filename_prefix, prompt, extra_pnginfo)


@node(category=CATEGORY, output_node=True)
def ModelSave(
    model=Socket("MODEL"),
    filename_prefix=String("diffusion_models/ComfyUI"),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Write the diffusion model alone (SD1.x, SD2.x, SDXL), LoRAs and merges applied, for UNETLoader."""
    _checkpoint(model, None, None, filename_prefix, prompt, extra_pnginfo)


@node(category=CATEGORY, output_node=True)
def CLIPSave(
    clip=Socket("CLIP"),
    filename_prefix=String("clip/ComfyUI"),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Write each text encoder of the CLIP to its own file, <prefix>_clip_l_00001_.safetensors and so on, in
    the layout CLIPLoader reads (transformers' for CLIP and T5), LoRAs and merges applied."""
    if isinstance(clip.stack, ZImageTextEncoder):
        raise NotImplementedError("saving Z-Image's Qwen3 text encoder is not supported in Loom")
    dtype = _compute_dtype()
    encoders = _clip_encoders(clip)
    metadata = {"format": "pt"} | _workflow_metadata(prompt, extra_pnginfo)
    for name in _CLIP_SAVE_ORDER:
        if name not in encoders:
            continue
        module, patches = encoders[name]
        tensors = patched_tensors(module, patches, dtype)
        if name != "t5xxl":
            tensors = clip_hf_layout(tensors)
        save_weights(f"{filename_prefix}_{name}", tensors, lambda base, counter: metadata)


@node(category=CATEGORY, output_node=True)
def VAESave(
    vae=Socket("VAE"),
    filename_prefix=String("vae/ComfyUI_vae"),
    prompt=Hidden("PROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
):
    """Write the VAE alone, in the layout VAELoader reads."""
    metadata = _workflow_metadata(prompt, extra_pnginfo)
    save_weights(filename_prefix, patched_tensors(vae.model, (), _compute_dtype()), lambda base, counter: metadata)


def _lora_tensors(
    module: nn.Module,
    patches: PatchSets,
    prefix: str,
    key_of: Callable[[str], str],
    rank: int,
    lora_type: str,
    bias_diff: bool,
) -> dict[str, PendingTensor]:
    """ComfyUI's ``calc_lora_model``: each weight of the patched ``module`` (a model difference) as LoRA
    factors (``standard``: ``lora_up``/``lora_down`` by SVD, 1-D weights as ``diff`` with ``bias_diff``) or
    whole (``full_diff``: ``diff``), biases as ``diff_b`` with ``bias_diff``; fp16, as ComfyUI writes them."""
    half = torch.float16
    weights = patched_tensors(module, patches, torch.float32)
    lora: dict[str, PendingTensor] = {}
    for done, (name, pending) in enumerate(weights.items(), start=1):
        report_progress(done, len(weights))
        stem, _, kind = name.rpartition(".")
        key = prefix + key_of(stem)
        if kind == "bias":
            if bias_diff:
                lora[f"{key}.diff_b"] = _as(pending, half)
            continue
        if kind != "weight":
            continue
        if lora_type == "full_diff" or len(pending.shape) < 2:
            if lora_type == "full_diff" or bias_diff:
                lora[f"{key}.diff"] = _as(pending, half)
            continue
        try:
            up, down = low_rank_factors(pending.produce(), rank)
        except (RuntimeError, ValueError) as error:
            _log.warning(
                "Could not generate lora weights for key %s (%s), is the weight difference a zero?", name, error
            )
            continue
        lora[f"{key}.lora_up.weight"] = PendingTensor.of(up.contiguous().to(half).cpu())
        lora[f"{key}.lora_down.weight"] = PendingTensor.of(down.contiguous().to(half).cpu())
    return lora


def _as(pending: PendingTensor, dtype: torch.dtype) -> PendingTensor:
    return PendingTensor(pending.shape, dtype, lambda: pending.produce().to(dtype))


def _comfy_clip_key(encoder: str) -> Callable[[str], str]:
    """A CLIP encoder's module name as ComfyUI's CLIP state dict names it (``clip_l.transformer.text_model.``...)."""

    def key(stem: str) -> str:
        if stem == "text_projection":
            return f"{encoder}.transformer.text_projection"
        return f"{encoder}.transformer.text_model.{stem}"

    return key


@node(category="_for_testing", display_name="Extract and Save Lora", output_node=True)
def LoraSave(
    filename_prefix=String("loras/ComfyUI_extracted_lora"),
    rank=Int(8, min=1, max=4096, step=1),
    lora_type=Combo(LORA_TYPES),
    bias_diff=Boolean(True),
    model_diff=Socket("MODEL", optional=True, tooltip="The ModelSubtract output to be converted to a lora."),
    text_encoder_diff=Socket("CLIP", optional=True, tooltip="The CLIPSubtract output to be converted to a lora."),
):
    """Turn a model difference (ModelMergeSubtract of a fine-tune and its base) into a LoRA file: each weight's
    difference cut to ``rank`` by SVD (standard) or kept whole (full_diff). Only CLIP encoders of a text
    encoder difference are extracted."""
    if model_diff is None and text_encoder_diff is None:
        return None
    lora: dict[str, PendingTensor] = {}
    if model_diff is not None:
        lora |= _lora_tensors(
            model_diff.unet, model_diff.patches, "diffusion_model.", lambda stem: stem, rank, lora_type, bias_diff
        )
    if text_encoder_diff is not None:
        for name, (module, patches) in _clip_encoders(text_encoder_diff).items():
            if name == "t5xxl":
                _log.warning("LoraSave: T5-XXL takes no patches in Loom, so it has no difference to extract")
                continue
            lora |= _lora_tensors(module, patches, "text_encoders.", _comfy_clip_key(name), rank, lora_type, bias_diff)
    save_weights(filename_prefix, lora)
    return None


spec_of(LoraSave).experimental = True
