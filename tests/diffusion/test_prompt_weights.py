"""Emphasis syntax and the 77-token windows built from it."""

from __future__ import annotations

import logging

import pytest
import torch

from diffusion.embeddings import TextualInversion
from diffusion.prompt_weights import (
    LONG_WORD_TOKENS,
    WeightedSegment,
    WindowSpec,
    empty_window,
    parse_prompt_weights,
    tokenize_prompt,
)
from diffusion.tokenizer import load_clip_tokenizer

BOS, EOS = 49406, 49407
SD1 = WindowSpec(pad_id=EOS, embedding_key="clip_l", width=8)
OPENCLIP = WindowSpec(pad_id=0, embedding_key="clip_g", width=8)


def weights(text: str) -> list[tuple[str, float]]:
    return [(s.text, round(s.weight, 6)) for s in parse_prompt_weights(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("a [cat]", [("a ", 1.0), ("cat", round(1 / 1.1, 6))]),
        ("(cat:1.3) dog", [("cat", 1.3), (" dog", 1.0)]),
        ("((cat))", [("cat", 1.21)]),
        ("((cat:1.5))", [("cat", 1.5)]),  # explicit weights are absolute, as in ComfyUI
        ("[(cat)]", [("cat", 1.0)]),
        ("[(cat:1.2)]", [("cat", 1.2)]),
        ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 2.0), (" c", 0.5)]),
        ("(cat: 0.8 )", [("cat", 0.8)]),
        ("(a:b)", [("a:b", 1.1)]),
        ("(at 12:30)", [("at 12", 30.0)]),  # the last colon wins, as in A1111 and ComfyUI
        ("(cat:nan)", [("cat:nan", 1.1)]),
        ("(:1.4)", []),
        ("\\(cat\\) \\[dog\\] back\\\\slash", [("(cat) [dog] back\\slash", 1.0)]),
        ("(cat", [("(cat", 1.0)]),
        ("cat)", [("cat)", 1.0)]),
        ("(a [b) c]", [("(a ", 1.0), ("b) c", round(1 / 1.1, 6))]),
        ("((a) b", [("(", 1.0), ("a", 1.1), (" b", 1.0)]),
        ("(embedding:style:1.2)", [("embedding:style", 1.2)]),
    ],
)
def test_emphasis_syntax(text: str, expected: list[tuple[str, float]]) -> None:
    assert weights(text) == expected


def test_segments_with_equal_weight_are_merged() -> None:
    assert parse_prompt_weights("a (b:1) c") == [WeightedSegment("a b c", 1.0)]


def test_short_prompt_fills_one_window_with_start_end_and_padding() -> None:
    (window,) = tokenize_prompt("a (red:1.5) cat", load_clip_tokenizer(), SD1)
    assert window.ids[:5] == (BOS, 320, 736, 2368, EOS)
    assert window.ids[5:] == (EOS,) * 72 and len(window.ids) == 77
    assert window.weights[:5] == (1.0, 1.0, 1.5, 1.0, 1.0) and set(window.weights[5:]) == {1.0}
    assert window.eos_position == 4


def test_openclip_windows_pad_with_zero() -> None:
    (window,) = tokenize_prompt("a cat", load_clip_tokenizer(), OPENCLIP)
    assert window.ids[:4] == (BOS, 320, 2368, EOS) and window.ids[4:] == (0,) * 73


def test_empty_prompt_is_one_window_equal_to_the_empty_window() -> None:
    assert tokenize_prompt("", load_clip_tokenizer(), OPENCLIP) == [empty_window(load_clip_tokenizer(), OPENCLIP)]


def test_exactly_75_tokens_fit_one_window() -> None:
    (window,) = tokenize_prompt(" ".join(["cat"] * 75), load_clip_tokenizer(), SD1)
    assert window.ids[-1] == EOS and window.eos_position == 76


def test_long_prompt_moves_whole_words_to_the_next_window() -> None:
    tokenizer = load_clip_tokenizer()
    word = "supercalifragilistic"  # 5 tokens: too short to be cut
    assert 1 < len(tokenizer.encode(word)) < LONG_WORD_TOKENS
    windows = tokenize_prompt(" ".join([word] * 20), tokenizer, SD1)
    per_word = len(tokenizer.encode(word))
    first_count = 75 // per_word
    assert len(windows) == 2
    assert windows[0].eos_position == 1 + first_count * per_word
    assert windows[1].ids[1 : 1 + per_word] == tuple(tokenizer.encode(word))
    assert all(w.ids[0] == BOS and len(w.ids) == 77 for w in windows)


def test_words_of_long_token_runs_are_cut_at_the_window_edge() -> None:
    tokenizer = load_clip_tokenizer()
    ids = tokenizer.encode("x" * 600)
    assert len(ids) >= LONG_WORD_TOKENS
    windows = tokenize_prompt("cat " + "x" * 600, tokenizer, SD1)
    assert len(windows) > 1 and windows[0].eos_position == 76
    content = [i for w in windows for i in w.ids[1 : w.eos_position]]
    assert content == [2368, *ids]


class Resolver:
    def __init__(self, **files: TextualInversion) -> None:
        self.files = files
        self.asked: list[str] = []

    def __call__(self, name: str) -> TextualInversion | None:
        self.asked.append(name)
        return self.files.get(name)


def test_embedding_vectors_take_token_positions_with_the_segment_weight() -> None:
    vectors = torch.randn(3, 8)
    resolve = Resolver(style=TextualInversion("style.pt", {"emb_params": vectors}))
    (window,) = tokenize_prompt("a (embedding:style:1.2) cat", load_clip_tokenizer(), SD1, resolve)
    assert window.ids[:2] == (BOS, 320) and window.ids[5:7] == (2368, EOS)
    assert [pos for pos, _ in window.embeddings] == [2, 3, 4]
    assert all(torch.equal(v, vectors[i]) for i, (_, v) in enumerate(window.embeddings))
    assert window.weights[2:5] == (1.2, 1.2, 1.2)


def test_trailing_comma_after_an_embedding_name_is_text() -> None:
    resolve = Resolver(style=TextualInversion("style.pt", {"emb_params": torch.randn(1, 8)}))
    (window,) = tokenize_prompt("embedding:style, cat", load_clip_tokenizer(), SD1, resolve)
    assert resolve.asked == ["style,", "style"]
    assert window.ids[1:5] == (0, 267, 2368, EOS)  # vector, ",", "cat"


def test_missing_or_incompatible_embeddings_are_ignored_with_a_warning(caplog) -> None:
    resolve = Resolver(wide=TextualInversion("wide.pt", {"emb_params": torch.randn(2, 1280)}))
    with caplog.at_level(logging.WARNING):
        (window,) = tokenize_prompt("embedding:nothere embedding:wide cat", load_clip_tokenizer(), SD1, resolve)
    assert window.ids[:3] == (BOS, 2368, EOS) and window.embeddings == ()
    assert "'nothere' not found" in caplog.text and "no 8-wide vectors for clip_l" in caplog.text
