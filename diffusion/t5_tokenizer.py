"""The T5 v1.1 tokenizer (Raffel et al. 2020) that FLUX and Stable Diffusion 3.x feed their T5-XXL encoder.

T5 tokenizes with a SentencePiece Unigram model: text is normalised by SentencePiece's precompiled NFKC-like
character map, every word gets a leading ``▁``, and each word is split into the pieces of highest total
log-probability (a Viterbi search over a 32,000-piece lattice). Reproducing the precompiled normaliser and the
lattice search in Python would be a large, slow re-implementation of a file format; the `tokenizers` library
is the field's standard implementation of both, and reads the tokenizer description that transformers'
`T5TokenizerFast` reads, so ids match it by construction (tests/diffusion/test_t5.py checks hard prompts).

The description ships as `data/t5_tokenizer.json` (Apache-2.0, `data/LICENSE-T5-TOKENIZER.txt`). Every
sequence ends with the end-of-sequence id 1; literal special tokens in the text (``</s>``, ``<pad>``,
``<extra_id_0>``) become their ids, as in the reference. T5 has no start token and no position limit (its
positions are relative), so nothing is truncated here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import NamedTuple

import torch
from tokenizers import Tokenizer

__all__ = ["EOS_ID", "PAD_ID", "VOCAB_SIZE", "T5TokenBatch", "T5Tokenizer", "load_t5_tokenizer"]

PAD_ID = 0
EOS_ID = 1
# Tokens the tokenizer can emit; the model's embedding table is larger (32,128, rounded up for TPUs).
VOCAB_SIZE = 32100
_TOKENIZER_RESOURCE = "t5_tokenizer.json"


class T5TokenBatch(NamedTuple):
    ids: torch.Tensor  # [B, T] int64, padded with PAD_ID
    attention_mask: torch.Tensor  # [B, T] int64, 1 for a token (its end-of-sequence included), 0 for padding


class T5Tokenizer:
    """Text to T5 token ids, each sequence closed by the end-of-sequence id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        specials = {name: tokenizer.token_to_id(name) for name in ("<pad>", "</s>")}
        if specials != {"<pad>": PAD_ID, "</s>": EOS_ID} or tokenizer.get_vocab_size() != VOCAB_SIZE:
            raise ValueError(
                f"not the T5 v1.1 tokenizer: special ids {specials}, {tokenizer.get_vocab_size()} tokens "
                f"(expected <pad>=0, </s>=1 and {VOCAB_SIZE} tokens)"
            )
        self._tokenizer = tokenizer

    @classmethod
    def from_json(cls, text: str) -> T5Tokenizer:
        """Build from the text of a `tokenizers` JSON description (a `tokenizer.json`)."""
        return cls(Tokenizer.from_str(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, ending with `EOS_ID`, unpadded."""
        return list(self._tokenizer.encode(text).ids)

    def encode_batch(self, texts: Sequence[str], length: int) -> T5TokenBatch:
        """Ids of each text padded with `PAD_ID` to `length` columns, and the mask of the real tokens.

        A text longer than `length` is kept whole and the batch widened to it: `length` is the padded
        width that diffusion pipelines ask of T5 prompts, never a limit on what the prompt may say.
        """
        if length < 1:
            raise ValueError(f"a T5 batch needs a length of at least 1 (the end-of-sequence token), not {length}")
        rows = [self.encode(text) for text in texts]
        width = max([length, *map(len, rows)])
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
        return T5TokenBatch(ids, mask)


@functools.cache
def load_t5_tokenizer() -> T5Tokenizer:
    """The shared tokenizer built from the description shipped in `diffusion/data` (parsed once per process)."""
    text = (resources.files("diffusion") / "data" / _TOKENIZER_RESOURCE).read_text(encoding="utf-8")
    return T5Tokenizer.from_json(text)
