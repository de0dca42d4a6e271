"""The CLIP byte-level BPE tokenizer (Radford et al. 2021), as the Stable Diffusion text encoders expect.

Every SD text encoder (OpenAI CLIP-L, OpenCLIP ViT-H and ViT-bigG) was trained on the same 49,408-token
vocabulary, shipped as `bpe_simple_vocab_16e6.txt.gz`. The ids must be exactly those ComfyUI produces, which
tokenizes with transformers' `CLIPTokenizer`; that tokenizer normalises text as NFC, then collapses every run
of Unicode whitespace to one space, then lower-cases character by character. It does not apply the original
release's `ftfy`/HTML-unescape cleaning, so neither do we.

Pre-tokenisation follows CLIP's pattern
``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``; the standard library `re` has no
Unicode property classes, so `_pretokenize` scans character categories instead of depending on `regex`.
(The reference's pattern also lists the special tokens, but its byte-level step splits such a match again at
the same places as the category scan does, so text like ``<|ENDOFTEXT|>`` tokenizes identically.)
"""

from __future__ import annotations

import functools
import gzip
import unicodedata
from collections.abc import Iterator
from importlib import resources

__all__ = ["ClipBpeTokenizer", "load_clip_tokenizer", "BOS_TOKEN", "EOS_TOKEN", "VOCAB_SIZE"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
VOCAB_SIZE = 49408
# 49,408 = 256 bytes + 256 end-of-word bytes + merges + 2 specials; the file holds more merges than CLIP used.
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2
_VOCAB_RESOURCE = "bpe_simple_vocab_16e6.txt.gz"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Unicode's White_Space property: what the reference's `\s` (a Rust regex) matches. Python's
# `str.isspace` differs (it also accepts the ASCII separators U+001C..U+001F).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, indexed by byte value.

    Bytes that are printable, non-space Latin-1 characters stand for themselves; the remaining 68 bytes
    are mapped, in byte order, to U+0100 onwards, so no BPE symbol is whitespace or a control character.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    printable_set = set(printable)
    symbols: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable_set:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _char_class(char: str) -> str:
    if char in _WHITESPACE:
        return " "
    return {"L": "L", "N": "N"}.get(unicodedata.category(char)[0], "P")


def _pretokenize(text: str) -> Iterator[str]:
    """Yield the pieces CLIP's pre-tokenisation regex matches, left to right; whitespace is dropped."""
    i, n = 0, len(text)
    while i < n:
        kind = _char_class(text[i])
        if kind == " ":
            i += 1
            continue
        if text[i] == "'":
            contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if contraction is not None:
                yield contraction
                i += len(contraction)
                continue
        if kind == "N":
            yield text[i]
            i += 1
            continue
        j = i + 1
        while j < n and _char_class(text[j]) == kind:
            j += 1
        yield text[i:j]
        i = j


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    collapsed: list[str] = []
    for char in text:
        if char in _WHITESPACE:
            if not collapsed or collapsed[-1] != " ":
                collapsed.append(" ")
        else:
            collapsed.append(char)
    # Per character: `str.lower` on a whole string applies the Greek final-sigma rule, the reference does not.
    return "".join(char.lower() for char in collapsed)


class ClipBpeTokenizer:
    """Text to CLIP token ids, without the start/end tokens (windowing adds those)."""

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        # The vocabulary lists byte symbols by code point: printable bytes first, then the shifted ones.
        symbols = sorted(byte_symbols())
        vocab = [*symbols, *(s + END_OF_WORD for s in symbols), *(a + b for a, b in merges), BOS_TOKEN, EOS_TOKEN]
        self.token_ids: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.bos_id = self.token_ids[BOS_TOKEN]
        self.eos_id = self.token_ids[EOS_TOKEN]
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._byte_symbols = byte_symbols()
        self._word_ids = functools.lru_cache(maxsize=65536)(self._bpe_word)

    @classmethod
    def from_vocab_file(cls, path: str) -> ClipBpeTokenizer:
        """Read the merges from a `bpe_simple_vocab_16e6.txt.gz` file (one header line, then `a b` per line)."""
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return cls(_parse_merges(handle.read()))

    @property
    def vocab_size(self) -> int:
        return len(self.token_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; literal `<|startoftext|>`/`<|endoftext|>` become the special ids."""
        ids: list[int] = []
        for piece, special in _split_specials(text):
            if special:
                ids.append(self.token_ids[piece])
                continue
            for word in _pretokenize(_normalize(piece)):
                ids.extend(self._word_ids(word))
        return ids

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """Merge the lowest-ranked adjacent pair everywhere it occurs until no known pair is left."""
        parts = [self._byte_symbols[b] for b in word.encode("utf-8")]
        parts[-1] += END_OF_WORD
        while len(parts) > 1:
            ranked = [(self._ranks.get(pair, _MERGE_COUNT), pair) for pair in zip(parts, parts[1:])]
            rank, best = min(ranked)
            if rank == _MERGE_COUNT:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self.token_ids[p] for p in parts)


def _parse_merges(text: str) -> list[tuple[str, str]]:
    lines = text.split("\n")[1 : _MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if len(merges) != _MERGE_COUNT or bad is not None:
        raise ValueError(
            f"CLIP BPE vocabulary: expected {_MERGE_COUNT} merge lines of two symbols after the header, "
            f"got {len(merges)} lines" + ("" if bad is None else f" and a malformed line {bad + 2}")
        )
    return merges  # type: ignore[return-value]


def _split_specials(text: str) -> Iterator[tuple[str, bool]]:
    """Split out literal special tokens; the reference matches them in the raw, case-sensitive text."""
    start = 0
    while True:
        hits = [(text.find(s, start), s) for s in (BOS_TOKEN, EOS_TOKEN)]
        hits = [(pos, s) for pos, s in hits if pos >= 0]
        if not hits:
            break
        pos, special = min(hits)
        if pos > start:
            yield text[start:pos], False
        yield special, True
        start = pos + len(special)
    if start < len(text):
        yield text[start:], False


@functools.cache
def load_clip_tokenizer() -> ClipBpeTokenizer:
    """The shared tokenizer built from the vocabulary shipped in `diffusion/data` (parsed once per process)."""
    with resources.as_file(resources.files("diffusion") / "data" / _VOCAB_RESOURCE) as path:
        return ClipBpeTokenizer.from_vocab_file(str(path))
