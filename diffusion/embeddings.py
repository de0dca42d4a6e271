"""Textual-inversion embeddings (Gal et al. 2022): learned token vectors referenced as `embedding:name`.

Files in the wild come in a few shapes, all reduced here to named 2-D tensors [tokens, width]:
- A1111 `.pt`: ``{"string_to_param": {"*": tensor}, "name": ..., "step": ...}``;
- kohya/SD1 `.safetensors`: ``{"emb_params": tensor}``;
- SDXL `.safetensors`: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``, one tensor per text encoder;
- diffusers `.bin`: ``{"<token>": tensor[width]}`` (a single 1-D vector).
Files open through `open_state_dict`, like every weight file: by content whatever the suffix, pickles with
`weights_only=True` (a file that needs arbitrary code to load is refused rather than run), and a file that
is not weights at all is named with what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion.checkpoint.errors import CheckpointError
from diffusion.checkpoint.files import open_state_dict

__all__ = [
    "EmbeddingFormatError",
    "EmbeddingResolver",
    "TextualInversion",
    "load_textual_inversion",
    "EmbeddingFolder",
]

# Tried in order after the name as written, as ComfyUI does, so `embedding:foo` finds `foo.safetensors`.
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".sft")


class EmbeddingFormatError(CheckpointError):
    """A readable weight file whose tensors are not textual-inversion vectors."""


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


def load_textual_inversion(path: str | Path) -> TextualInversion:
    """Read an embedding file of any of the shapes above; unreadable files raise `CheckpointFormatError`."""
    path = Path(path)
    weights = open_state_dict(path)
    vectors: dict[str, torch.Tensor] = {}
    for name in weights:
        tensor = weights[name]
        if tensor.ndim == 1:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 2 or not tensor.is_floating_point():
            shape = tuple(tensor.shape)
            raise EmbeddingFormatError(path, f"tensor {name!r} has shape {shape}, expected [tokens, width]")
        # A copy of its own: the opener's tensors can be views of the mapped file, which `EmbeddingFolder`
        # keeps cached while the file may be rewritten in place (changing them, or cutting pages off).
        vectors[name] = tensor.clone()
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
