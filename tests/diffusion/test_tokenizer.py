"""The CLIP BPE tokenizer gives transformers' CLIPTokenizer ids (what ComfyUI feeds its encoders)."""

from __future__ import annotations

import gzip

import pytest

from diffusion.tokenizer import VOCAB_SIZE, ClipBpeTokenizer, byte_symbols, load_clip_tokenizer
from tests.diffusion.reference_clip import reference_tokenizer

HARD_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "masterpiece, best quality, (ultra-detailed:1.2), [blurry], ((sharp)), \\(escaped\\)",
    "Ünïcödé café naïve façade — “quotes” «guillemets» ‘single’",
    "emoji 🤖🎨 👩‍👩‍👧 family 🇫🇷 flag ❤️ heart",
    "numbers 3.14159 1,000,000 2024-11-23 ½ ² ٣ ⅷ",
    "it's they're we've I'm you'll he'd 'sup ''s !!'s O'Neill's",
    "tabs\tand\nnewlines\r\n  spaces\u3000ideographic\u00a0nbsp\u2009thin\x1cseparator",
    "ΣΊΣΥΦΟΣ ΟΔΟΣ Straße ǅ ﬁ İstanbul",
    "e\u0301 é decomposed and composed accents",
    "日本語のテキスト、中文文本。한국어 텍스트 Русский текст",
    "𝕳𝖊𝖑𝖑𝖔 ℌ𝔢𝔩𝔩𝔬 mathematical letters",
    "zero\u200bwidth soft\u00adhyphen",
    "<html>&amp; &lt;tag&gt;</html> C:\\path\\to\\file.png ~`@#$%^&*()_+-={}[]|;:'\",.<>/?",
    "literal <|endoftext|> and <|startoftext|> and <|ENDOFTEXT|>",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis " * 3,
    "a" * 400,
    " ".join(f"word{i}" for i in range(300)),
    "",
    "   \n\t ",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    return reference_tokenizer(tmp_path_factory.mktemp("clip_vocab"))


@pytest.mark.parametrize("prompt", HARD_PROMPTS, ids=range(len(HARD_PROMPTS)))
def test_ids_equal_transformers_clip_tokenizer(reference, prompt: str) -> None:
    expected = reference(prompt)["input_ids"]
    assert [49406, *load_clip_tokenizer().encode(prompt), 49407] == expected


def test_known_prompt_gives_openai_ids() -> None:
    ids = load_clip_tokenizer().encode("a photo of an astronaut riding a horse on mars")
    assert ids == [320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496]


def test_vocabulary_size_and_special_ids() -> None:
    tokenizer = load_clip_tokenizer()
    assert tokenizer.vocab_size == VOCAB_SIZE == 49408
    assert (tokenizer.bos_id, tokenizer.eos_id) == (49406, 49407)


def test_byte_symbols_are_distinct_printable_characters() -> None:
    symbols = byte_symbols()
    assert len(set(symbols)) == 256
    assert not any(s.isspace() or not s.isprintable() for s in symbols)
    assert symbols[ord("a")] == "a" and symbols[ord(" ")] == "\u0120"


def test_truncated_vocabulary_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "vocab.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("header\na b\nc d\n")
    with pytest.raises(ValueError, match="expected 48894 merge lines"):
        ClipBpeTokenizer.from_vocab_file(str(path))
