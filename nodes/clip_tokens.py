"""ComfyUI's token structure for ``CLIP.tokenize`` / ``encode_from_tokens``, to and from Loom's token windows.

``CLIP.tokenize(text)`` gives, per encoder under ComfyUI's key (``tokens["l"]``), a list of windows, each a
list of ``(token, weight)`` pairs with a textual-inversion vector standing as a tensor in place of its token.
Loom's CLIP encoders tokenize into ``diffusion.prompt_weights.TokenWindow``; ``window_pairs`` and
``pairs_window`` convert one window each way, and ``EncoderTokens`` remembers the windows and text it came
from, so tokens a pack did not edit encode exactly as CLIPTextEncode encodes the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffusion.prompt_weights import TokenWindow

__all__ = ["ENCODER_OF_KEY", "TOKEN_KEYS", "EncoderTokens", "Pair", "pairs_window", "window_pairs"]

#: ComfyUI's name for each encoder's part of ``CLIP.tokenize(text)`` (``tokens["l"]``), by Loom's encoder name.
TOKEN_KEYS = {"clip_l": "l", "clip_h": "h", "clip_g": "g", "t5xxl": "t5xxl", "qwen3": "qwen3_4b"}
#: Loom's encoder name for each of ComfyUI's token keys.
ENCODER_OF_KEY = {key: encoder for encoder, key in TOKEN_KEYS.items()}
#: One of ComfyUI's token pairs: ``(token or embedding vector, weight)``, sometimes with a word id after.
Pair = tuple[Any, ...]


class EncoderTokens(list[list[Pair]]):
    """One encoder's part of ``CLIP.tokenize``: ComfyUI's windows of ``(token, weight)`` pairs, a textual-inversion
    vector standing as a tensor in place of its token; ``text`` is the prompt they came from and ``windows``
    Loom's own windows of it (CLIP encoders only). Packs may edit the pairs of a CLIP encoder's part."""

    def __init__(self, pairs: Sequence[Sequence[Pair]], text: str, windows: Sequence[TokenWindow] = ()) -> None:
        super().__init__([list(window) for window in pairs])
        self.text = text
        self.windows = tuple(windows)
        self._original = tuple(tuple(window) for window in self)

    def unchanged(self) -> bool:
        """Whether the pairs are still those ``tokenize`` gave (tensors compared by identity)."""
        return len(self) == len(self._original) and all(
            len(window) == len(original) and all(map(_same_pair, window, original))
            for window, original in zip(self, self._original)
        )


def _same_pair(pair: Pair, original: Pair) -> bool:
    return len(pair) == len(original) and all(
        value is known if isinstance(value, torch.Tensor) or isinstance(known, torch.Tensor) else value == known
        for value, known in zip(pair, original)
    )


def window_pairs(window: TokenWindow) -> list[Pair]:
    """A window as ComfyUI's pairs, each embedding vector in place of its token."""
    vectors = dict(window.embeddings)
    return [
        (vectors.get(position, token), weight)
        for position, (token, weight) in enumerate(zip(window.ids, window.weights))
    ]


def pairs_window(pairs: Sequence[Sequence[Any]], eos_id: int) -> TokenWindow:
    """A window from ComfyUI's pairs (a third item, the word id, is ignored); the end token is the first
    ``eos_id`` after the start token."""
    ids: list[int] = []
    weights: list[float] = []
    embeddings: list[tuple[int, torch.Tensor]] = []
    for position, pair in enumerate(pairs):
        token, weight = pair[0], pair[1]
        if isinstance(token, torch.Tensor):
            embeddings.append((position, token))
            token = 0  # the vector replaces the token's embedding; the id is a placeholder
        ids.append(int(token))
        weights.append(float(weight))
    vector_positions = {position for position, _ in embeddings}
    ends = (position for position in range(1, len(ids)) if ids[position] == eos_id and position not in vector_positions)
    return TokenWindow(tuple(ids), tuple(weights), next(ends, len(ids) - 1), tuple(embeddings))
