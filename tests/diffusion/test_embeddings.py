"""Textual-inversion files: their formats, the folder resolver, and their effect on the encoding."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from diffusion.embeddings import EmbeddingFolder, EmbeddingFormatError, TextualInversion, load_textual_inversion
from diffusion.text_encoders import ClipStack
from diffusion.tokenizer import load_clip_tokenizer
from tests.diffusion.reference_clip import HEAD_WIDTH, hf_layout, openclip_layout, tiny_reference_model
from tests.diffusion.weight_files import (
    BAD_WEIGHT_FILES,
    PICKLE_NAMED_SAFETENSORS,
    PICKLE_SUFFIXES,
    expect_refusal,
    write_bad_file,
)


def test_a1111_pt_file(tmp_path) -> None:
    vectors = torch.randn(2, 768)
    path = tmp_path / "style.pt"
    torch.save({"string_to_param": {"*": vectors}, "name": "style", "step": 500, "string_to_token": {"*": 265}}, path)
    assert torch.equal(load_textual_inversion(path).vectors_for("clip_l", 768), vectors)


def test_sdxl_file_gives_each_encoder_its_own_vectors(tmp_path) -> None:
    clip_l, clip_g = torch.randn(3, 768), torch.randn(3, 1280)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, tmp_path / "x.safetensors")
    embedding = load_textual_inversion(tmp_path / "x.safetensors")
    assert torch.equal(embedding.vectors_for("clip_l", 768), clip_l)
    assert torch.equal(embedding.vectors_for("clip_g", 1280), clip_g)
    assert embedding.vectors_for("clip_h", 1024) is None


def test_single_vector_files_become_one_token(tmp_path) -> None:
    torch.save({"<cat-toy>": torch.randn(768)}, tmp_path / "learned_embeds.bin")
    assert load_textual_inversion(tmp_path / "learned_embeds.bin").vectors_for("clip_l", 768).shape == (1, 768)


def test_two_unnamed_tensors_of_one_width_are_ambiguous() -> None:
    embedding = TextualInversion("two.safetensors", {"a": torch.zeros(1, 768), "b": torch.zeros(1, 768)})
    with pytest.raises(EmbeddingFormatError, match=r"two.safetensors: several 768-wide tensors \['a', 'b'\]"):
        embedding.vectors_for("clip_l", 768)


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_a_safetensors_file_under_a_pickle_suffix_loads(tmp_path, suffix: str) -> None:
    vectors = torch.randn(2, 768)
    save_file({"emb_params": vectors}, tmp_path / f"style{suffix}")
    assert torch.equal(load_textual_inversion(tmp_path / f"style{suffix}").vectors_for("clip_l", 768), vectors)


def test_a_pickle_named_safetensors_is_refused(tmp_path) -> None:
    torch.save({"string_to_param": {"*": torch.randn(2, 768)}}, tmp_path / "style.safetensors")
    expect_refusal(load_textual_inversion, tmp_path / "style.safetensors", PICKLE_NAMED_SAFETENSORS)


@pytest.mark.parametrize(("name", "content", "reason"), BAD_WEIGHT_FILES)
def test_a_file_that_is_not_weights_is_named_with_what_it_is(tmp_path, name: str, content: bytes, reason: str) -> None:
    expect_refusal(load_textual_inversion, write_bad_file(tmp_path, name, content), reason)


def test_tensors_that_are_not_token_vectors_are_named(tmp_path) -> None:
    torch.save({"emb_params": torch.zeros(2, 3, 4)}, tmp_path / "bad.pt")
    with pytest.raises(EmbeddingFormatError, match=r"bad\.pt: tensor 'emb_params' has shape \(2, 3, 4\)"):
        load_textual_inversion(tmp_path / "bad.pt")


def test_a_cached_embedding_keeps_its_vectors_when_the_file_is_rewritten(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"emb_params": torch.ones(1, 8)}, path)
    embedding = load_textual_inversion(path)
    path.write_bytes(b"")  # rewritten in place: a view of the old mapping would now be past the end
    assert embedding.vectors["emb_params"].sum() == 8


def test_folder_resolves_names_with_or_without_suffix_and_stays_inside(tmp_path) -> None:
    inside = tmp_path / "embeddings"
    (inside / "styles").mkdir(parents=True)
    save_file({"emb_params": torch.ones(1, 8)}, inside / "styles" / "neon.safetensors")
    save_file({"emb_params": torch.ones(1, 8)}, tmp_path / "secret.safetensors")
    folder = EmbeddingFolder([inside])
    assert folder("styles/neon") is not None and folder("styles/neon.safetensors") is not None
    assert folder("../secret") is None and folder("nothing") is None


def test_folder_reloads_a_changed_file(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"emb_params": torch.zeros(1, 8)}, path)
    folder = EmbeddingFolder([tmp_path])
    assert folder("x").vectors["emb_params"].sum() == 0
    save_file({"emb_params": torch.ones(1, 8)}, path)
    os.utime(path, (1, 1))
    assert folder("x").vectors["emb_params"].sum() == 8


@pytest.fixture(scope="module")
def sdxl_stack() -> ClipStack:
    clip_l = tiny_reference_model(layers=2, hidden_act="quick_gelu", with_projection=False, seed=2)
    clip_g = tiny_reference_model(layers=2, hidden_act="gelu", with_projection=True, seed=3)
    state_dicts = {"clip_l": hf_layout(clip_l), "clip_g": openclip_layout(clip_g)}
    return ClipStack.from_state_dicts("sdxl", state_dicts, head_width=HEAD_WIDTH)


def word_vectors(stack: ClipStack, name: str, word: str) -> torch.Tensor:
    ids = torch.tensor(load_clip_tokenizer().encode(word))
    return stack.encoders[name].embeddings.token_embedding.weight[ids].clone()


def test_embedding_holding_a_words_vectors_encodes_like_the_word(sdxl_stack: ClipStack) -> None:
    word = "astronaut riding"
    embedding = TextualInversion(
        "x.safetensors",
        {"clip_l": word_vectors(sdxl_stack, "clip_l", word), "clip_g": word_vectors(sdxl_stack, "clip_g", word)},
    )
    expected = sdxl_stack.encode(f"a photo of ({word}:1.3) on mars")
    actual = sdxl_stack.encode("a photo of (embedding:x:1.3) on mars", resolve_embedding={"x": embedding}.get)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
