"""Model files: open lazily (`files`), classify (`detect`, `diffusers_folder`), split and load (`load`).

`load` is imported on first use of its names. It builds the text encoders, which resolve embeddings,
whose files open through `files` here: importing it eagerly would make importing `diffusion.embeddings`
(or any other loader built on `files`) a cycle through the whole model stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .detect import CheckpointInfo, ComponentSource, ModelFamily, Prediction, detect_state_dict
from .diffusers_folder import detect_diffusers_folder, is_diffusers_folder
from .errors import CheckpointError, CheckpointFormatError, UnknownModelError, UnsupportedModelError
from .files import LazyStateDict, TensorEntry, open_state_dict

if TYPE_CHECKING:
    from .load import DiffusionModel, LoadedCheckpoint, load_checkpoint, split_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointInfo",
    "ComponentSource",
    "DiffusionModel",
    "LazyStateDict",
    "LoadedCheckpoint",
    "ModelFamily",
    "Prediction",
    "TensorEntry",
    "UnknownModelError",
    "UnsupportedModelError",
    "detect_checkpoint",
    "detect_state_dict",
    "is_diffusers_folder",
    "load_checkpoint",
    "open_state_dict",
    "split_checkpoint",
]


_FROM_LOAD = frozenset({"DiffusionModel", "LoadedCheckpoint", "load_checkpoint", "split_checkpoint"})


def __getattr__(name: str) -> Any:
    if name in _FROM_LOAD:
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Classify a single model file or a diffusers folder, reading headers and configs only."""
    path = Path(path)
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise CheckpointFormatError(path, "is a directory without model_index.json, not a diffusers model folder")
        return detect_diffusers_folder(path)
    return detect_state_dict(open_state_dict(path))
