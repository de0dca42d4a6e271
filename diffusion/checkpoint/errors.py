"""Exceptions raised while opening, classifying and loading model files.

Every error carries the offending path and a human sentence, because the user's first question is
always "which file, and what is wrong with it?" (a truncated download and a mislabelled LoRA look
identical from the outside).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "UnknownModelError",
    "UnsupportedModelError",
]


class CheckpointError(Exception):
    """Base class: something about the model file at `path` prevents using it."""

    def __init__(self, path: Path | str | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.reason = reason
        where = str(self.path) if self.path is not None else "<in-memory state dict>"
        super().__init__(f"{where}: {reason}")


class CheckpointFormatError(CheckpointError):
    """The bytes are no readable weight file (empty, cut short, a web page, a git-lfs pointer, a refused pickle)."""


class UnsupportedModelError(CheckpointError):
    """The file is a recognisable model of a family Loom does not run (Flux, SD3, Cascade...)."""

    def __init__(self, path: Path | str | None, family: str, reason: str | None = None) -> None:
        self.family = family
        super().__init__(path, reason or f"{family} models are not supported (Loom runs SD1.x, SD2.x and SDXL)")


class UnknownModelError(CheckpointError):
    """The tensors were read but match no model layout Loom knows."""
