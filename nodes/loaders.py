"""Nodes that load model files and adjust the loaded models: checkpoints, VAEs, LoRAs, clip skip.

Names, inputs and ranges are ComfyUI's (docs/compatibility.md §5). Files are found through ``nodes.model_folders``
at run time, so a name missing on disk fails with the folders that were searched. The outputs are
handles (``nodes.model_handles``, ``nodes.clip_handles``, ``nodes.vae_handles``): a LoRA or clip-skip node
returns a new handle over the same loaded modules, so only the changed node re-runs and nothing is read
from disk again. Each handle keeps its whole loaded file alive (``nodes.shared_models``), and the output
cache charges the file's weights to ``--cache-budget`` once however many handles share them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from diffusion.checkpoint import open_state_dict
from diffusion.checkpoint.errors import CheckpointError
from diffusion.lora import LoraPatches, parse_lora
from diffusion.text_encoders.t5_stacks import T5Padding
from graph.declare import Combo, Float, Int, Output, Socket, node
from nodes.clip_handles import ClipHandle
from nodes.model_handles import ModelHandle
from nodes.runtime import find_model, list_models
from nodes.shared_models import load_shared_checkpoint, load_shared_text_encoders
from nodes.vae_handles import VaeHandle

__all__ = [
    "CLIPLoader",
    "CLIPSetLastLayer",
    "CheckpointLoaderSimple",
    "DualCLIPLoader",
    "LoraLoader",
    "LoraLoaderModelOnly",
    "T5TokenizerOptions",
    "TripleCLIPLoader",
    "UNETLoader",
    "VAELoader",
]

_log = logging.getLogger(__name__)
#: ComfyUI's LoRA strength range; negative strengths subtract a LoRA's effect.
_STRENGTH = dict(min=-100.0, max=100.0, step=0.01)
_TEXT_ENCODER_STEMS = ("lora_te", "text_encoder")


def _model_file(key: str, **options: Any) -> Combo:
    """A choice among the files of model folder ``key``, declared as such (``model_folder``): the server reads
    it to tell which files a workflow needs (``server.model_inputs``)."""
    return Combo(lambda: list_models(key), model_folder=key, **options)


@node(category="loaders", display_name="Load Checkpoint", outputs=[Output("MODEL"), Output("CLIP"), Output("VAE")])
def CheckpointLoaderSimple(ckpt_name=_model_file("checkpoints", tooltip="The checkpoint (model) file to load.")):
    """Load a Stable Diffusion checkpoint: the diffusion model, its text encoder(s) and its VAE."""
    path = find_model("checkpoints", ckpt_name)
    loaded = load_shared_checkpoint(path)
    family = loaded.info.family
    if family is not None and family.is_flow_transformer and loaded.text_encoders is None:
        raise CheckpointError(
            path,
            f"holds a {family.value} diffusion model, and Loom does not load {family.value} text encoders "
            "(CLIP-L/G, T5-XXL) yet, so this loader cannot give its CLIP: load the model with UNETLoader "
            "(Load Diffusion Model) and its VAE with VAELoader",
        )
    if loaded.vae is None:
        raise CheckpointError(path, "holds no VAE; load one with VAELoader")
    return ModelHandle(loaded), ClipHandle(loaded), VaeHandle(loaded.vae, path, loaded)


#: UNETLoader's weight_dtype choices. "fast" means fp8 matrix multiplication on GPUs that have it; on the
#: CPU both fp8_e4m3fn choices keep the weights in fp8 and compute in the runtime's dtype.
_WEIGHT_DTYPES = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


@node(category="advanced/loaders", display_name="Load Diffusion Model", outputs=[Output("MODEL")])
def UNETLoader(unet_name=_model_file("diffusion_models"), weight_dtype=Combo(list(_WEIGHT_DTYPES))):
    """Load a diffusion model alone (FLUX, SD3, or an SD UNet) from the diffusion_models folder; its text
    encoders and VAE come from their own loaders."""
    path = find_model("diffusion_models", unet_name)
    return ModelHandle(load_shared_checkpoint(path, _WEIGHT_DTYPES[weight_dtype]))


#: The ``type`` choices of each CLIP loader Loom builds, in ComfyUI's order (``CLIP_TYPES`` says what each takes).
_SINGLE_CLIP_TYPES = ["stable_diffusion", "sd3", "lumina2", "chroma"]
_DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux"]
_DEVICE = Combo(["default", "cpu"], optional=True, advanced=True)


def _clip(names: tuple[str, ...], clip_type: str, device: str = "default") -> ClipHandle:
    paths = [find_model("text_encoders", name) for name in names]
    return ClipHandle(load_shared_text_encoders(paths, clip_type), on_cpu=device == "cpu")


@node(category="advanced/loaders", outputs=[Output("CLIP")])
def CLIPLoader(clip_name=_model_file("text_encoders"), type=Combo(_SINGLE_CLIP_TYPES), device=_DEVICE):
    """One text encoder file as a CLIP. stable_diffusion: CLIP-L (SD1.x), OpenCLIP-H (SD2.x) or CLIP-G (SDXL
    refiner); sd3: CLIP-L, CLIP-G or T5-XXL alone, the others' parts zeroed; lumina2: Qwen3-4B for Z-Image;
    chroma: T5-XXL for Chroma."""
    return _clip((clip_name,), type, device)


@node(category="advanced/loaders", outputs=[Output("CLIP")])
def DualCLIPLoader(
    clip_name1=_model_file("text_encoders"),
    clip_name2=_model_file("text_encoders"),
    type=Combo(_DUAL_CLIP_TYPES),
    device=_DEVICE,
):
    """Two text encoder files as one CLIP, in either order: sdxl (CLIP-L + CLIP-G), sd3 (any two of CLIP-L,
    CLIP-G and T5-XXL), flux (CLIP-L + T5-XXL)."""
    return _clip((clip_name1, clip_name2), type, device)


@node(category="advanced/loaders", outputs=[Output("CLIP")])
def TripleCLIPLoader(
    clip_name1=_model_file("text_encoders"),
    clip_name2=_model_file("text_encoders"),
    clip_name3=_model_file("text_encoders"),
):
    """SD3 / SD3.5's three text encoders as one CLIP: CLIP-L, CLIP-G and T5-XXL, in any order."""
    return _clip((clip_name1, clip_name2, clip_name3), "sd3")


@node(category="loaders", display_name="Load VAE", outputs=[Output("VAE")])
def VAELoader(vae_name=_model_file("vae")):
    """Load a standalone VAE file (or the VAE inside a checkpoint) from the vae folder."""
    path = find_model("vae", vae_name)
    loaded = load_shared_checkpoint(path)
    if loaded.vae is None:
        raise CheckpointError(path, "holds no VAE weights")
    return VaeHandle(loaded.vae, path, loaded)


def _read_lora(lora_name: str, model: ModelHandle, clip: ClipHandle | None) -> LoraPatches:
    path = find_model("loras", lora_name)
    patches = parse_lora(open_state_dict(path), model.unet, clip.encoders if clip is not None else (), path)
    # Without a CLIP the text-encoder part is skipped on purpose; only the rest is worth a warning.
    ignored = [key for key in patches.unmatched if clip is not None or not key.startswith(_TEXT_ENCODER_STEMS)]
    if ignored:
        _log.warning(
            "LoRA %s: %d keys match nothing in this %s model and are ignored: %s",
            lora_name,
            len(ignored),
            model.family.value,
            ", ".join(ignored[:8]),
        )
    return patches


@node(category="loaders", display_name="Load LoRA", outputs=[Output("MODEL"), Output("CLIP")])
def LoraLoader(
    model=Socket("MODEL"),
    clip=Socket("CLIP"),
    lora_name=_model_file("loras"),
    strength_model=Float(1.0, **_STRENGTH),
    strength_clip=Float(1.0, **_STRENGTH),
):
    """Apply a LoRA to the diffusion model and the text encoder, each with its own strength."""
    if strength_model == 0.0 and strength_clip == 0.0:
        return model, clip
    patches = _read_lora(lora_name, model, clip)
    return model.with_lora(patches.unet, strength_model), clip.with_lora(patches.text, strength_clip)


@node(category="loaders", outputs=[Output("MODEL")])
def LoraLoaderModelOnly(model=Socket("MODEL"), lora_name=_model_file("loras"), strength_model=Float(1.0, **_STRENGTH)):
    """Apply only the diffusion-model part of a LoRA."""
    if strength_model == 0.0:
        return model
    return model.with_lora(_read_lora(lora_name, model, None).unet, strength_model)


@node(category="conditioning", display_name="CLIP Set Last Layer", outputs=[Output("CLIP")])
def CLIPSetLastLayer(clip=Socket("CLIP"), stop_at_clip_layer=Int(-1, min=-24, max=-1, step=1)):
    """Take the text encoding from an earlier layer ("clip skip"): -1 is the last layer, -2 the one before."""
    return clip.with_clip_skip(stop_at_clip_layer)


@node(category="_for_testing/conditioning", outputs=[Output("CLIP")])
def T5TokenizerOptions(
    clip=Socket("CLIP"), min_padding=Int(0, min=0, max=10000, step=1), min_length=Int(0, min=0, max=10000, step=1)
):
    """Pad T5's ids with min_padding pad tokens after the prompt, then to min_length tokens, in place of the
    family's own padding (FLUX: to 256, SD3: to 77). A CLIP without T5 is returned unchanged."""
    return clip.with_t5_padding(T5Padding(min_padding, min_length))
