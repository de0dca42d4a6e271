"""The Qwen tokenizer (Qwen2.5 and Qwen3 share it), which Z-Image feeds its Qwen3-4B text encoder.

Qwen tokenizes with byte-level BPE: text is NFC-normalised, split by a regular expression (letters with
one leading non-letter, single digits, punctuation runs, newline runs, space runs), each piece mapped to
byte symbols and merged by 151,387 ranked merges into a 151,643-entry vocabulary. Then come 26 added
tokens (ids 151,643 to 151,668): the chat markers ``<|im_start|>`` / ``<|im_end|>``, ``<|endoftext|>``
(the padding id), vision and tool markers, ``<think>`` / ``</think>``. Written in the text, an added token
becomes its id and is never split. The `tokenizers` library reads the whole description from the
tokenizer.json that transformers' `Qwen2TokenizerFast` reads, so ids match it by construction
(tests/diffusion/test_qwen3.py checks hard prompts against it, and against transformers' own Qwen2
pipeline rebuilt from the vocabulary and merges as ComfyUI's `qwen25_tokenizer` folder ships them).

The description ships gzipped as `data/qwen3_tokenizer.json.gz` (11 MB unpacked; Apache-2.0,
`data/LICENSE-QWEN3-TOKENIZER.txt`). Nothing is added around the text: Qwen has no start or end token,
prompts are wrapped in a chat template instead (``encode_templated``).
"""

from __future__ import annotations

import functools
import gzip
import re
from importlib import resources

from tokenizers import Tokenizer

__all__ = ["IM_END_ID", "IM_START_ID", "PAD_ID", "VOCAB_SIZE", "QwenTokenizer", "load_qwen_tokenizer"]

# `<|endoftext|>`: what Qwen pads with, and where ComfyUI's attention mask of a Qwen prompt ends.
PAD_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
# Tokens the tokenizer can emit; the models' embedding tables are larger (151,936 rows, padded).
VOCAB_SIZE = 151669
_TOKENIZER_RESOURCE = "qwen3_tokenizer.json.gz"
# ComfyUI's prompt tokenizer (`SDTokenizer`) cuts the text before each " embedding:" or "\nembedding:"
# (the word that names a textual-inversion embedding, of which the Qwen encoders load none) and
# tokenizes the pieces one by one, the separating space or newline dropped.
_EMBEDDING_WORD = re.compile(r"[ \n](?=embedding:)")


class QwenTokenizer:
    """Text to Qwen token ids, nothing added around them."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        specials = {name: tokenizer.token_to_id(name) for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
        expected = {"<|endoftext|>": PAD_ID, "<|im_start|>": IM_START_ID, "<|im_end|>": IM_END_ID}
        if specials != expected or tokenizer.get_vocab_size() != VOCAB_SIZE:
            raise ValueError(
                f"not the Qwen tokenizer: special ids {specials}, {tokenizer.get_vocab_size()} tokens "
                f"(expected {expected} and {VOCAB_SIZE} tokens)"
            )
        self._tokenizer = tokenizer

    @classmethod
    def from_json(cls, text: str) -> QwenTokenizer:
        """Build from the text of a `tokenizers` JSON description (a `tokenizer.json`)."""
        return cls(Tokenizer.from_str(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; added tokens written in it (``<|im_end|>``) become their ids."""
        return list(self._tokenizer.encode(text).ids)

    def encode_templated(self, prompt: str, template: str) -> list[int]:
        """Ids of `prompt` put into `template` (a `str.format` pattern with one ``{}``), as ComfyUI tokenizes
        the prompt of a Qwen text encoder (its `SDTokenizer` with weights disabled).

        So ``(word:1.2)`` stays literal text, as in ComfyUI, but ``\\(`` and ``\\)`` lose their backslash,
        and the text is tokenized in pieces cut before each " embedding:" word (see `_EMBEDDING_WORD`).
        Nothing is padded or cut: one prompt is one row of exactly its own tokens.
        """
        text = template.format(prompt).replace("\\(", "(").replace("\\)", ")")
        return [token for piece in _EMBEDDING_WORD.split(text) if piece for token in self.encode(piece)]


@functools.cache
def load_qwen_tokenizer() -> QwenTokenizer:
    """The shared tokenizer built from the description shipped in `diffusion/data` (parsed once per process)."""
    packed = (resources.files("diffusion") / "data" / _TOKENIZER_RESOURCE).read_bytes()
    return QwenTokenizer.from_json(gzip.decompress(packed).decode("utf-8"))
