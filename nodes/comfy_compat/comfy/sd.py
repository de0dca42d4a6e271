"""ComfyUI's ``comfy.sd`` for node packs: model files and LoRAs loaded into Loom's MODEL, CLIP and VAE values.

Supported, each through the loading Loom's own loader nodes use (``nodes.shared_models``: a file is loaded
once per installation while any value uses it; ``nodes.patched_weights``: a LoRA never reloads its checkpoint):

- ``load_checkpoint_guess_config(ckpt_path, output_vae=True, output_clip=True, output_clipvision=False,
  embedding_directory=None, output_model=True, model_options={}, te_model_options={})`` returns
  ``(model, clip, vae, None)`` as CheckpointLoaderSimple loads them; an output not asked for is None, and so
  is a CLIP or VAE the file does not hold (with a warning), as in ComfyUI;
- ``load_diffusion_model(unet_path, model_options={})`` (and its old name ``load_unet``): UNETLoader's MODEL;
  ``model_options["dtype"]`` may be ``torch.float8_e4m3fn`` or ``torch.float8_e5m2``, as UNETLoader offers;
- ``load_clip(ckpt_paths, embedding_directory=None, clip_type=CLIPType.STABLE_DIFFUSION, model_options={})``:
  CLIPLoader / DualCLIPLoader / TripleCLIPLoader's CLIP (two files of type ``STABLE_DIFFUSION`` are SDXL's
  pair, as in ComfyUI); ``model_options["load_device"]`` on the CPU is the loaders' ``device: cpu``;
- ``load_lora_for_models(model, clip, lora, strength_model, strength_clip)`` with ``lora`` a state dict (or a
  file's path): LoraLoader's ``(model, clip)``, new values even at strength 0, as ComfyUI clones; keys that
  match nothing are logged. Either of ``model`` and ``clip`` may be None;
- ``CLIPType`` (the types Loom's CLIP loaders take), and ``CLIP`` / ``VAE`` for ``isinstance`` checks: they are
  Loom's ``ClipHandle`` and ``VaeHandle``, whose ComfyUI methods docs/plugins.md lists.

Paths are files on disk (``folder_paths.get_full_path_or_raise`` gives them). ``embedding_directory`` is
accepted and unused: prompts resolve ``embedding:name`` against the installation's embeddings folders when
they are encoded. Outside a prompt (while a pack is imported) loading answers from the runtime the ComfyUI
modules fall back to (``nodes.comfy_compat.pack_runtime``).

Not supported: building models from state dicts (``load_state_dict_guess_config``, ``VAE(sd=...)``,
``CLIP(target=...)``: Loom loads files), CLIP vision (``output_clipvision`` gives None), other ``model_options``
(they raise ``NotImplementedError`` naming them), and ComfyUI's legacy ``load_checkpoint(config_path, ...)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from diffusion.checkpoint import open_state_dict
from diffusion.lora import parse_lora
from graph.services import current_services, services_context
from nodes.clip_handles import ClipHandle
from nodes.comfy_compat.pack_runtime import pack_runtime
from nodes.model_handles import ModelHandle
from nodes.runtime import Runtime
from nodes.shared_models import load_shared_checkpoint, load_shared_text_encoders
from nodes.vae_handles import VaeHandle

__all__ = [
    "CLIP",
    "VAE",
    "CLIPType",
    "load_checkpoint_guess_config",
    "load_clip",
    "load_diffusion_model",
    "load_lora_for_models",
    "load_unet",
]

log = logging.getLogger(__name__)

CLIP = ClipHandle
VAE = VaeHandle
_PathLike = str | os.PathLike[str]


class CLIPType(Enum):
    """The ``type`` of ComfyUI's CLIP loaders that Loom loads; the value is Loom's loader type."""

    STABLE_DIFFUSION = "stable_diffusion"
    SD3 = "sd3"
    FLUX = "flux"
    LUMINA2 = "lumina2"
    CHROMA = "chroma"


#: The weight dtypes ``load_diffusion_model`` keeps a diffusion model in (UNETLoader's ``weight_dtype``).
_WEIGHT_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@contextlib.contextmanager
def _runtime_lent() -> Iterator[None]:
    """Node code has its prompt's runtime; a pack loading at import time gets the one packs fall back to."""
    if isinstance(current_services(), Runtime):
        yield
        return
    with services_context(pack_runtime()):
        yield


def _refuse_options(function: str, options: Mapping[str, Any] | None, understood: Sequence[str] = ()) -> None:
    unknown = sorted(key for key in options or {} if key not in understood)
    if unknown:
        raise NotImplementedError(f"comfy.sd.{function}: Loom does not support model_options {unknown}")


def load_checkpoint_guess_config(
    ckpt_path: _PathLike,
    output_vae: bool = True,
    output_clip: bool = True,
    output_clipvision: bool = False,
    embedding_directory: Any = None,
    output_model: bool = True,
    model_options: Mapping[str, Any] | None = None,
    te_model_options: Mapping[str, Any] | None = None,
) -> tuple[ModelHandle | None, ClipHandle | None, VaeHandle | None, None]:
    """``(model, clip, vae, clipvision)`` of a checkpoint file, as CheckpointLoaderSimple gives the first three."""
    _refuse_options("load_checkpoint_guess_config", model_options)
    _refuse_options("load_checkpoint_guess_config", te_model_options)
    path = Path(ckpt_path)
    with _runtime_lent():
        loaded = load_shared_checkpoint(path)
    model = ModelHandle(loaded) if output_model else None
    clip = None
    if output_clip and loaded.text_encoders is None:
        log.warning("%s holds no text encoder: load_checkpoint_guess_config gives no CLIP", path)
    elif output_clip:
        clip = ClipHandle(loaded)
    vae = None
    if output_vae and loaded.vae is None:
        log.warning("%s holds no VAE: load_checkpoint_guess_config gives no VAE", path)
    elif output_vae and loaded.vae is not None:
        vae = VaeHandle(loaded.vae, path, loaded)
    if output_clipvision:
        log.debug("load_checkpoint_guess_config: Loom loads no CLIP vision model; clipvision is None")
    return model, clip, vae, None


def load_diffusion_model(unet_path: _PathLike, model_options: Mapping[str, Any] | None = None) -> ModelHandle:
    """A diffusion model file as a MODEL, as UNETLoader loads it."""
    _refuse_options("load_diffusion_model", model_options, ("dtype", "fp8_optimizations"))
    dtype = (model_options or {}).get("dtype")
    if dtype is not None and dtype not in _WEIGHT_DTYPES:
        raise NotImplementedError(
            f"comfy.sd.load_diffusion_model: Loom keeps a diffusion model's weights as stored or in fp8 "
            f"(torch.float8_e4m3fn, torch.float8_e5m2), not in {dtype}"
        )
    with _runtime_lent():
        return ModelHandle(load_shared_checkpoint(Path(unet_path), dtype))


def load_unet(unet_path: _PathLike, dtype: torch.dtype | None = None) -> ModelHandle:
    """ComfyUI's older name of ``load_diffusion_model``."""
    return load_diffusion_model(unet_path, {} if dtype is None else {"dtype": dtype})


def load_clip(
    ckpt_paths: Sequence[_PathLike],
    embedding_directory: Any = None,
    clip_type: CLIPType | str = CLIPType.STABLE_DIFFUSION,
    model_options: Mapping[str, Any] | None = None,
) -> ClipHandle:
    """Text-encoder files as one CLIP, as Loom's CLIP loaders build it."""
    _refuse_options("load_clip", model_options, ("load_device", "offload_device"))
    kind = clip_type.value if isinstance(clip_type, CLIPType) else str(clip_type).lower()
    if kind == CLIPType.STABLE_DIFFUSION.value and len(ckpt_paths) == 2:
        kind = "sdxl"
    load_device = (model_options or {}).get("load_device")
    on_cpu = load_device is not None and torch.device(load_device).type == "cpu"
    with _runtime_lent():
        return ClipHandle(load_shared_text_encoders([Path(path) for path in ckpt_paths], kind), on_cpu=on_cpu)


def load_lora_for_models(
    model: ModelHandle | None,
    clip: ClipHandle | None,
    lora: Mapping[str, torch.Tensor] | _PathLike,
    strength_model: float,
    strength_clip: float,
) -> tuple[ModelHandle | None, ClipHandle | None]:
    """``(model, clip)`` with the LoRA applied at each strength, as LoraLoader applies it."""
    source: Path | None = None
    tensors: Mapping[str, torch.Tensor]
    if isinstance(lora, (str, os.PathLike)):
        source = Path(lora)
        tensors = open_state_dict(source)
    else:
        tensors = lora
    patches = parse_lora(
        tensors, model.unet if model is not None else None, clip.encoders if clip is not None else (), source
    )
    if patches.unmatched:
        log.warning(
            "LoRA %s: %d keys match nothing in this model and are not loaded: %s",
            source or "state dict",
            len(patches.unmatched),
            ", ".join(patches.unmatched[:8]),
        )
    # ComfyUI returns clones even where nothing changed, so a pack may patch the result without touching its input.
    new_model = None
    if model is not None:
        new_model = model.with_lora(patches.unet, strength_model)
        new_model = new_model.clone() if new_model is model else new_model
    new_clip = None
    if clip is not None:
        new_clip = clip.with_lora(patches.text, strength_clip)
        new_clip = new_clip.clone() if new_clip is clip else new_clip
    return new_model, new_clip
