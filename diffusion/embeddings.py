"""Textual-inversion embeddings (Gal et al. 2022): learned token vectors referenced as `embedding:name`.

Files in the wild come in a few shapes, all reduced here to named 2-D tensors [tokens, width]:
- A1111 `.pt`: ``{"string_to_param": {"*": tensor}, "name": ..., "step": ...}``;
- kohya/SD1 `.safetensors`: ``{"emb_params": tensor}``;
- SDXL `.safetensors`: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``, one tensor per text encoder;
- diffusers `.bin`: ``{"<token>": tensor[width]}`` (a single 1-D vector).
`.pt`/`.bin` files are pickles, so they are opened with `weights_only=True`: a file that needs arbitrary code
to load is refused rather than run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

__all__ = [
    "EmbeddingFormatError",
    "EmbeddingResolver",
    "TextualInversion",
    "load_textual_inversion",
    "EmbeddingFolder",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
# Tried in order after the name as written, as ComfyUI does, so `embedding:foo` finds `foo.safetensors`.
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".sft")


class EmbeddingFormatError(ValueError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"textual-inversion file {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TextualInversion:
    """The vectors of one embedding file, by key (`clip_l`, `clip_g`, `emb_params`, `string_to_param.*` ...)."""

    source: str
    vectors: Mapping[str, torch.Tensor]

    def vectors_for(self, key: str, width: int) -> torch.Tensor | None:
        """Vectors for the encoder named `key` with embedding size `width`, or None if the file has none.

        A tensor stored under the encoder's own key wins; otherwise the file's only tensor of that width
        (single-encoder files name their tensor arbitrarily). Two unnamed candidates are ambiguous.
        """
        own = self.vectors.get(key)
        if own is not None and own.shape[-1] == width:
            return own
        matching = [name for name, tensor in self.vectors.items() if tensor.shape[-1] == width]
        if len(matching) > 1:
            raise EmbeddingFormatError(self.source, f"several {width}-wide tensors {matching} and none named {key!r}")
        return self.vectors[matching[0]] if matching else None


# Name in the prompt -> the file's vectors, or None when there is no such embedding.
EmbeddingResolver = Callable[[str], "TextualInversion | None"]


def _tensors(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in data.items():
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
        elif isinstance(value, Mapping):
            yield from _tensors(value, f"{prefix}{name}.")


def load_textual_inversion(path: str | Path) -> TextualInversion:
    """Read an embedding file of any of the shapes above."""
    path = Path(path)
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every reader failure is the same user-facing problem
        raise EmbeddingFormatError(str(path), f"cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(data, Mapping):
        raise EmbeddingFormatError(str(path), f"holds a {type(data).__name__}, expected a mapping of tensors")
    vectors: dict[str, torch.Tensor] = {}
    for name, tensor in _tensors(data):
        if tensor.ndim == 1:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 2 or not tensor.is_floating_point():
            shape = tuple(tensor.shape)
            raise EmbeddingFormatError(str(path), f"tensor {name!r} has shape {shape}, expected [tokens, width]")
        vectors[name] = tensor
    if not vectors:
        raise EmbeddingFormatError(str(path), "contains no tensors")
    return TextualInversion(str(path), vectors)


class EmbeddingFolder:
    """Resolve `embedding:name` against folders of embedding files, caching each file until it changes.

    Names may include sub-folders (`embedding:styles/foo`) but never leave the folder they resolve in.
    """

    def __init__(self, folders: Sequence[str | Path]) -> None:
        self.folders = [Path(f).resolve() for f in folders]
        self._cache: dict[Path, tuple[float, TextualInversion]] = {}

    def find(self, name: str) -> Path | None:
        for folder in self.folders:
            for candidate in (name, *(name + suffix for suffix in EMBEDDING_SUFFIXES)):
                path = (folder / candidate).resolve()
                if path.is_relative_to(folder) and path.is_file():
                    return path
        return None

    def __call__(self, name: str) -> TextualInversion | None:
        path = self.find(name)
        if path is None:
            return None
        mtime = path.stat().st_mtime
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, load_textual_inversion(path))
            self._cache[path] = cached
        return cached[1]
