"""Prompt emphasis syntax and the 77-token windows the CLIP text encoders read.

Syntax (the A1111 dialect that ComfyUI users write):
- ``(text)`` multiplies the weight of `text` by 1.1, ``[text]`` divides it by 1.1;
- ``(text:1.3)`` sets its weight to 1.3 (a suffix after the group's last ``:`` that parses as a finite number);
  the explicit weight is absolute, as ComfyUI reads it, so ``((a:1.5))`` is 1.5 and the same workflow encodes
  the same way on both engines;
- bare groups nest and their factors multiply: ``((a))`` is 1.21;
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; an unmatched bracket is literal text;
- a word ``embedding:name`` inserts the textual-inversion vectors of `name` in place of tokens.

CLIP reads exactly 77 positions: start token, 75 prompt tokens, end token, padding. Longer prompts become
several windows, encoded separately and concatenated along the sequence (the A1111/ComfyUI convention). A word
is moved whole to the next window instead of being cut, unless it is at least `LONG_WORD_TOKENS` long.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from diffusion.embeddings import EmbeddingResolver
from diffusion.tokenizer import ClipBpeTokenizer

__all__ = [
    "WeightedSegment",
    "parse_prompt_weights",
    "WindowSpec",
    "TokenWindow",
    "tokenize_prompt",
    "empty_window",
    "EMBEDDING_PREFIX",
    "LONG_WORD_TOKENS",
]

log = logging.getLogger(__name__)

EMBEDDING_PREFIX = "embedding:"
LONG_WORD_TOKENS = 8
EMPHASIS = 1.1
_ESCAPABLE = "()[]\\"
_OPENERS = {"(": ")", "[": "]"}
_WORD_SPLIT = re.compile(r"[ \t\n\r\f\v]+")
# Placeholder id at positions whose embedding is replaced by a textual-inversion vector.
_EMBEDDING_PLACEHOLDER_ID = 0


@dataclass(frozen=True)
class WeightedSegment:
    text: str
    weight: float


@dataclass(frozen=True)
class _Group:
    opener: str
    children: list[str | _Group]


def _lex(text: str) -> list[tuple[str, str]]:
    """Split into ("text", s) / ("open", c) / ("close", c) items, resolving backslash escapes."""
    items: list[tuple[str, str]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            literal.append(text[i + 1])
            i += 2
            continue
        if char in "()[]":
            if literal:
                items.append(("text", "".join(literal)))
                literal = []
            items.append(("open" if char in _OPENERS else "close", char))
        else:
            literal.append(char)
        i += 1
    if literal:
        items.append(("text", "".join(literal)))
    return items


def _parse_tree(items: list[tuple[str, str]]) -> list[str | _Group]:
    """Match brackets with a stack; a closer that does not match the innermost opener is literal text."""
    root: list[str | _Group] = []
    stack: list[_Group] = []
    for kind, value in items:
        children = stack[-1].children if stack else root
        if kind == "open":
            group = _Group(value, [])
            children.append(group)
            stack.append(group)
        elif kind == "close" and stack and _OPENERS[stack[-1].opener] == value:
            stack.pop()
        else:
            children.append(value)
    # Unclosed groups: their opener is literal and their content keeps the surrounding weight.
    while stack:
        group = stack.pop()
        parent = stack[-1].children if stack else root
        at = next(i for i, child in enumerate(parent) if child is group)
        parent[at : at + 1] = [group.opener, *group.children]
    return root


def _explicit_weight(children: list[str | _Group]) -> tuple[float, list[str | _Group]] | None:
    if not children or not isinstance(children[-1], str) or ":" not in children[-1]:
        return None
    head, _, suffix = children[-1].rpartition(":")
    try:
        factor = float(suffix)
    except ValueError:
        return None
    if not math.isfinite(factor):
        return None
    return factor, [*children[:-1], head]


def _flatten(nodes: list[str | _Group], weight: float) -> Iterator[WeightedSegment]:
    for node in nodes:
        if isinstance(node, str):
            yield WeightedSegment(node, weight)
            continue
        children = node.children
        factor = EMPHASIS if node.opener == "(" else 1 / EMPHASIS
        explicit = _explicit_weight(children) if node.opener == "(" else None
        if explicit is not None:
            absolute, children = explicit
            yield from _flatten(children, absolute)
        else:
            yield from _flatten(children, weight * factor)


def parse_prompt_weights(text: str) -> list[WeightedSegment]:
    """Split a prompt into maximal runs of text that share one weight (empty runs dropped)."""
    segments: list[WeightedSegment] = []
    for segment in _flatten(_parse_tree(_lex(text)), 1.0):
        if not segment.text:
            continue
        if segments and segments[-1].weight == segment.weight:
            segments[-1] = WeightedSegment(segments[-1].text + segment.text, segment.weight)
        else:
            segments.append(segment)
    return segments


@dataclass(frozen=True)
class WindowSpec:
    """What differs between the encoders' tokenizers.

    OpenAI CLIP-L (SD1, SDXL's first encoder) was trained with `<|endoftext|>` padding; the OpenCLIP ViT-H and
    ViT-bigG towers (SD2, SDXL's second encoder) with id 0, so `pad_id` is per encoder. `embedding_key` names
    this encoder's vectors in multi-encoder textual-inversion files, `width` the vector size it accepts.
    """

    pad_id: int
    embedding_key: str
    width: int
    length: int = 77


@dataclass(frozen=True)
class TokenWindow:
    """One encoder pass: `ids` and `weights` have `length` entries; `embeddings` override token embeddings."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    eos_position: int
    embeddings: tuple[tuple[int, torch.Tensor], ...] = ()

    @property
    def is_weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


_Slot = tuple[int, float, "torch.Tensor | None"]


def _embedding_slots(
    word: str, weight: float, spec: WindowSpec, resolve: EmbeddingResolver | None
) -> tuple[list[_Slot] | None, str]:
    """Slots for an `embedding:name` word and the text left over after the name (a trailing comma, say)."""
    name = word[len(EMBEDDING_PREFIX) :]
    candidates = [(name, "")]
    stripped = name.rstrip(",")
    if stripped != name:
        candidates.append((stripped, name[len(stripped) :]))
    for candidate, leftover in candidates:
        found = resolve(candidate) if resolve is not None and candidate else None
        if found is None:
            continue
        vectors = found.vectors_for(spec.embedding_key, spec.width)
        if vectors is None:
            log.warning(
                "embedding %r has no %d-wide vectors for %s; ignored", candidate, spec.width, spec.embedding_key
            )
            return [], leftover
        return [(_EMBEDDING_PLACEHOLDER_ID, weight, v) for v in vectors], leftover
    log.warning("embedding %r not found; ignored", name)
    return None, ""


def _token_groups(
    text: str, tokenizer: ClipBpeTokenizer, spec: WindowSpec, resolve: EmbeddingResolver | None
) -> Iterator[list[_Slot]]:
    for segment in parse_prompt_weights(text):
        for word in _WORD_SPLIT.split(segment.text):
            if word.startswith(EMBEDDING_PREFIX):
                slots, word = _embedding_slots(word, segment.weight, spec, resolve)
                if slots:
                    yield slots
            ids = tokenizer.encode(word) if word else []
            if ids:
                yield [(i, segment.weight, None) for i in ids]


def _close(window: list[_Slot], tokenizer: ClipBpeTokenizer, spec: WindowSpec) -> TokenWindow:
    eos_position = len(window)
    slots = [*window, (tokenizer.eos_id, 1.0, None)]
    slots += [(spec.pad_id, 1.0, None)] * (spec.length - len(slots))
    return TokenWindow(
        ids=tuple(s[0] for s in slots),
        weights=tuple(s[1] for s in slots),
        eos_position=eos_position,
        embeddings=tuple((pos, s[2]) for pos, s in enumerate(slots) if s[2] is not None),
    )


def _pack_windows(groups: Iterator[list[_Slot]], tokenizer: ClipBpeTokenizer, spec: WindowSpec) -> list[TokenWindow]:
    capacity = spec.length - 1  # the start token and the prompt; the end token takes the last place
    start: _Slot = (tokenizer.bos_id, 1.0, None)
    windows: list[TokenWindow] = []
    window: list[_Slot] = [start]
    for group in groups:
        splittable = len(group) >= LONG_WORD_TOKENS
        while group:
            room = capacity - len(window)
            if len(group) <= room:
                window += group
                break
            if splittable:
                window += group[:room]
                group = group[room:]
            windows.append(_close(window, tokenizer, spec))
            window = [start]
    if len(window) > 1 or not windows:
        windows.append(_close(window, tokenizer, spec))
    return windows


def tokenize_prompt(
    text: str,
    tokenizer: ClipBpeTokenizer,
    spec: WindowSpec,
    resolve_embedding: EmbeddingResolver | None = None,
) -> list[TokenWindow]:
    """Weighted prompt text to one or more windows of `spec.length` tokens (at least one, even for "")."""
    return _pack_windows(_token_groups(text, tokenizer, spec, resolve_embedding), tokenizer, spec)


def empty_window(tokenizer: ClipBpeTokenizer, spec: WindowSpec) -> TokenWindow:
    """The empty prompt's window, the reference point that weights scale away from."""
    return _close([(tokenizer.bos_id, 1.0, None)], tokenizer, spec)
