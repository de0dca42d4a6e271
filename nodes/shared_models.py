"""Model files loaded once and shared by every MODEL, CLIP, VAE and CONTROL_NET handle over them.

Loaded checkpoints are shared through the runtime's ``ModelMemory.load_shared``, weakly, keyed by file,
modification time and size: two loader nodes naming one unchanged file get the same modules, a
changed file is loaded anew, and the modules go away with the last handle using them. Every handle
keeps its whole loaded file alive (a VAE handle too, so that a later load of the file cannot make a
second copy beside it) and tells ``graph.sizeof`` so through ``loom_parts``: the file's modules
(``modules_of``), each charged once however many handles share them, plus the handle's own LoRA
tensors (``nodes.patched_weights``). The output cache, which holds the handles, is thus the one owner
of model memory (docs/architecture.md, "Memory").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from diffusion.checkpoint import LoadedCheckpoint, load_checkpoint, open_state_dict
from diffusion.checkpoint.text_encoder_files import load_text_encoders
from diffusion.clip_vision import ClipVisionModel, load_clip_vision
from diffusion.control_models import ControlModel, load_control_model
from diffusion.stored_weights import store_weights_as
from diffusion.style_model import ReduxImageEncoder, load_style_model
from nodes.runtime import current_runtime

__all__ = [
    "load_shared_checkpoint", "load_shared_clip_vision", "load_shared_controlnet", "load_shared_style_model",
    "load_shared_text_encoders", "modules_of",
]  # fmt: skip


def _file_identity(path: Path) -> tuple[str, int, int]:
    """What changes when a file does: its resolved path, modification time and size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def load_shared_checkpoint(path: Path, weight_dtype: torch.dtype | None = None) -> LoadedCheckpoint:
    """``load_checkpoint(path)``, shared with every live handle of the same unchanged file in this runtime.

    Per runtime, not per process: each runtime's ``ModelMemory`` moves and casts the modules it places,
    so two runtimes with different compute settings must not share them. With ``weight_dtype`` the
    diffusion model keeps its weights in that dtype (``UNETLoader``'s fp8 choices), a load of its own.
    """
    key = ("checkpoint", _file_identity(path), weight_dtype)

    def load() -> LoadedCheckpoint:
        loaded = load_checkpoint(path)
        if weight_dtype is not None and loaded.unet is not None:
            store_weights_as(loaded.unet, weight_dtype)
        return loaded

    return current_runtime().memory.load_shared(key, load)


def load_shared_text_encoders(paths: Sequence[Path], clip_type: str) -> LoadedCheckpoint:
    """``load_text_encoders(...)``, shared like ``load_shared_checkpoint`` while a handle uses it."""
    key = ("text_encoders", clip_type, tuple(map(_file_identity, paths)))
    return current_runtime().memory.load_shared(key, lambda: load_text_encoders(paths, clip_type))


def load_shared_controlnet(path: Path) -> ControlModel:
    """The control model of a file (ControlNet, union ControlNet, Control-LoRA or T2I-Adapter), shared like
    ``load_shared_checkpoint`` while a handle uses it. Raises ``CheckpointLayoutError`` for a file that holds
    none Loom builds, or a difference ControlNet (which needs a MODEL: ``DiffControlNetLoader``)."""
    key = ("controlnet", _file_identity(path))
    return current_runtime().memory.load_shared(key, lambda: load_control_model(open_state_dict(path)))


def modules_of(checkpoint: LoadedCheckpoint) -> list[nn.Module]:
    """Every module of a loaded file: what a handle holding ``checkpoint`` keeps alive."""
    encoders = checkpoint.text_encoders.modules() if checkpoint.text_encoders is not None else ()
    return [module for module in (checkpoint.unet, checkpoint.vae, *encoders) if module is not None]


def load_shared_clip_vision(path: Path) -> ClipVisionModel:
    """The CLIP or SigLIP vision tower of a file, shared like ``load_shared_checkpoint`` while a handle uses it.
    Raises ``CheckpointLayoutError`` for a file that holds no tower Loom builds."""
    key = ("clip_vision", _file_identity(path))
    return current_runtime().memory.load_shared(key, lambda: load_clip_vision(open_state_dict(path)))


def load_shared_style_model(path: Path) -> ReduxImageEncoder:
    """The style model (FLUX.1 Redux) of a file, shared like ``load_shared_checkpoint`` while a handle uses it.
    Raises ``CheckpointLayoutError`` for any other file."""
    key = ("style_model", _file_identity(path))
    return current_runtime().memory.load_shared(key, lambda: load_style_model(open_state_dict(path)))
