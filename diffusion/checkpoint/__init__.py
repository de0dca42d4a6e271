"""Model files: open lazily (`files`), classify (`detect`, `diffusers_folder`), split and load (`load`)."""

from __future__ import annotations

from pathlib import Path

from .detect import CheckpointInfo, ComponentSource, ModelFamily, Prediction, detect_state_dict
from .diffusers_folder import detect_diffusers_folder, is_diffusers_folder
from .errors import CheckpointError, CheckpointFormatError, UnknownModelError, UnsupportedModelError
from .files import LazyStateDict, TensorEntry, open_state_dict
from .load import LoadedCheckpoint, load_checkpoint, split_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointInfo",
    "ComponentSource",
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


def detect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Classify a single model file or a diffusers folder, reading headers and configs only."""
    path = Path(path)
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise CheckpointFormatError(path, "is a directory without model_index.json, not a diffusers model folder")
        return detect_diffusers_folder(path)
    return detect_state_dict(open_state_dict(path))
