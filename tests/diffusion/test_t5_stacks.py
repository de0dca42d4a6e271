"""The T5 families' text conditioning (FLUX, SD3): T5 ids padded and never cut, emphasis on T5 states as on
CLIP's, CLIP-L's pooled vector unprojected, everything widened to the transformers' input widths."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint import open_state_dict
from diffusion.checkpoint.detect import ModelFamily
from diffusion.checkpoint.errors import CheckpointError
from diffusion.checkpoint.text_encoder_files import load_text_encoders, text_encoder_kind
from diffusion.t5_tokenizer import EOS_ID, PAD_ID, load_t5_tokenizer
from diffusion.text_encoders.clip_model import ClipTextConfig, ClipTextModel
from diffusion.text_encoders.stack import ClipStack
from diffusion.text_encoders.t5_stacks import (
    FLUX_T5_PADDING,
    SD3_T5_MIN_LENGTH,
    SD3_T5_PADDING,
    T5_MIN_LENGTH,
    FluxTextEncoders,
    SD3TextEncoders,
    T5Padding,
    encode_t5,
    t5_weighted_tokens,
)
from diffusion.tiny_parts import write_tiny_file


def test_t5_ids_are_the_prompt_then_the_end_token_padded_to_256() -> None:
    tokenizer = load_t5_tokenizer()
    tokens = t5_weighted_tokens("a cat on a mat", tokenizer)
    pieces = tokenizer.encode("a cat on a mat")
    assert tokens.ids == pieces + [PAD_ID] * (T5_MIN_LENGTH - len(pieces))
    assert pieces[-1] == EOS_ID and not tokens.is_weighted


def test_emphasis_weights_the_pieces_of_its_words_and_keeps_the_ids() -> None:
    tokenizer = load_t5_tokenizer()
    weighted = t5_weighted_tokens("a (cat:1.5) on a mat", tokenizer)
    plain = t5_weighted_tokens("a cat on a mat", tokenizer)
    assert weighted.ids == plain.ids
    cat = tokenizer.encode("cat")[:-1]
    start = weighted.ids.index(cat[0])
    assert weighted.weights[start : start + len(cat)] == [1.5] * len(cat)
    assert sum(w != 1.0 for w in weighted.weights) == len(cat)


def test_a_long_prompt_is_never_cut() -> None:
    text = ", ".join(f"detail number {i}" for i in range(200))
    tokens = t5_weighted_tokens(text, load_t5_tokenizer())
    assert len(tokens.ids) > T5_MIN_LENGTH and tokens.ids[-1] == EOS_ID


def _pair(tmp_path) -> FluxTextEncoders:
    write_tiny_file(tmp_path / "clip_l.safetensors", "flux_dev", "clip_l")
    write_tiny_file(tmp_path / "t5.safetensors", "flux_dev", "t5xxl")
    loaded = load_text_encoders([tmp_path / "t5.safetensors", tmp_path / "clip_l.safetensors"], "flux")
    assert isinstance(loaded.text_encoders, FluxTextEncoders)
    return loaded.text_encoders


def test_emphasis_moves_weighted_t5_states_away_from_the_empty_prompt_s(tmp_path) -> None:
    encoders = _pair(tmp_path)
    weighted = encode_t5(encoders.t5, encoders.tokenizer, "a (cat:1.5) on a mat", FLUX_T5_PADDING)
    plain = encode_t5(encoders.t5, encoders.tokenizer, "a cat on a mat", FLUX_T5_PADDING)
    empty = encoders.t5(torch.tensor([t5_weighted_tokens("", encoders.tokenizer).ids]))
    weights = torch.tensor(t5_weighted_tokens("a (cat:1.5) on a mat", encoders.tokenizer).weights)[None, :, None]
    torch.testing.assert_close(weighted, empty + (plain - empty) * weights)
    assert torch.equal(weighted[:, weights[0, :, 0] == 1.0], plain[:, weights[0, :, 0] == 1.0])


def test_conditioning_is_t5_states_and_clip_l_s_pooled_vector_at_flux_s_widths(tmp_path) -> None:
    encoders = _pair(tmp_path)
    cond, pooled = encoders.encode("a lighthouse")
    states = encode_t5(encoders.t5, encoders.tokenizer, "a lighthouse", FLUX_T5_PADDING)
    assert cond.shape == (1, T5_MIN_LENGTH, 4096) and pooled.shape == (1, 768)
    assert torch.equal(cond[..., : states.shape[-1]], states) and not cond[..., states.shape[-1] :].any()
    _, clip_pooled = encoders.clips.encode("a lighthouse")
    assert torch.equal(pooled[..., : clip_pooled.shape[-1]], clip_pooled)


def test_each_standalone_file_is_told_apart_by_its_keys(tmp_path) -> None:
    for part in ("clip_l", "clip_g", "t5xxl"):
        path = write_tiny_file(tmp_path / f"{part}.safetensors", "sd3", part)
        assert text_encoder_kind(open_state_dict(path)) == part


def test_sd3_attends_to_the_clip_pair_side_by_side_then_t5_and_pools_both_clips(tmp_path) -> None:
    for part in ("clip_l", "clip_g", "t5xxl"):
        write_tiny_file(tmp_path / f"{part}.safetensors", "sd3", part)
    paths = [tmp_path / f"{part}.safetensors" for part in ("clip_g", "t5xxl", "clip_l")]
    encoders = load_text_encoders(paths, "sd3").text_encoders
    assert isinstance(encoders, SD3TextEncoders)
    cond, pooled = encoders.encode("a red fox")
    each = encoders.clips.encode_each(encoders.clips.tokenize("a red fox"))
    (l_states, l_pooled), (g_states, g_pooled) = each["clip_l"], each["clip_g"]
    t5 = encode_t5(encoders.t5, encoders.tokenizer, "a red fox", SD3_T5_PADDING)
    width_l, width_g = l_states.shape[-1], g_states.shape[-1]
    assert cond.shape == (1, 77 + SD3_T5_MIN_LENGTH, 4096)
    assert torch.equal(cond[:, :77, :width_l], l_states) and torch.equal(
        cond[:, :77, width_l : width_l + width_g], g_states
    )
    assert not cond[:, :77, width_l + width_g :].any()
    assert torch.equal(cond[:, 77:, : t5.shape[-1]], t5) and not cond[:, 77:, t5.shape[-1] :].any()
    assert pooled.shape == (1, 2048)
    assert torch.equal(pooled[:, : l_pooled.shape[-1]], l_pooled) and torch.equal(pooled[:, 768 : 768 + 1280], g_pooled)
    assert encoders.encoders["clip_l"].text_projection is None  # CLIP-L's pooled vector is taken unprojected


def _sd3_encoders(tmp_path, *parts: str) -> SD3TextEncoders:
    for part in ("clip_l", "clip_g", "t5xxl"):
        write_tiny_file(tmp_path / f"{part}.safetensors", "sd3", part)
    encoders = load_text_encoders([tmp_path / f"{part}.safetensors" for part in parts], "sd3").text_encoders
    assert isinstance(encoders, SD3TextEncoders)
    return encoders


def test_sd3_without_clip_g_keeps_clip_l_and_t5_where_all_three_put_them_and_zeroes_clip_g_s_part(tmp_path) -> None:
    full_cond, full_pooled = _sd3_encoders(tmp_path, "clip_l", "clip_g", "t5xxl").encode("a red fox")
    cond, pooled = _sd3_encoders(tmp_path, "t5xxl", "clip_l").encode("a red fox")
    width_l = _sd3_encoders(tmp_path, "clip_l").clips.encoders["clip_l"].config.width
    assert cond.shape == full_cond.shape == (1, 77 + SD3_T5_MIN_LENGTH, 4096)
    assert torch.equal(cond[:, :77, :width_l], full_cond[:, :77, :width_l]) and not cond[:, :77, width_l:].any()
    assert torch.equal(cond[:, 77:], full_cond[:, 77:])
    assert torch.equal(pooled[:, :768], full_pooled[:, :768]) and not pooled[:, 768:].any()


def test_sd3_without_clip_l_places_clip_g_after_clip_l_s_768_zero_columns(tmp_path) -> None:
    encoders = _sd3_encoders(tmp_path, "clip_g", "t5xxl")
    cond, pooled = encoders.encode("a red fox")
    g_states, g_pooled = encoders.clips.encode_each(encoders.clips.tokenize({"clip_g": "a red fox"}))["clip_g"]
    width_g = g_states.shape[-1]
    assert not cond[:, :77, :768].any() and torch.equal(cond[:, :77, 768 : 768 + width_g], g_states)
    assert not pooled[:, :768].any() and torch.equal(pooled[:, 768 : 768 + g_pooled.shape[-1]], g_pooled)


def test_sd3_from_t5_alone_attends_to_t5_s_states_with_a_zero_pooled_vector(tmp_path) -> None:
    encoders = _sd3_encoders(tmp_path, "t5xxl")
    cond, pooled = encoders.encode("a red fox")
    assert encoders.t5 is not None
    t5 = encode_t5(encoders.t5, encoders.tokenizer, "a red fox", SD3_T5_PADDING)
    assert cond.shape == (1, SD3_T5_MIN_LENGTH, 4096) and torch.equal(cond[..., : t5.shape[-1]], t5)
    assert pooled.shape == (1, 2048) and not pooled.any()
    with pytest.raises(ValueError, match="needs a CLIP encoder or a T5 prompt"):
        encoders.encode({"t5xxl": None})  # type: ignore[dict-item]


def test_openclip_h_is_told_apart_from_clip_l_and_clip_g_by_its_depth(tmp_path) -> None:
    config = ClipTextConfig(
        width=64, layers=24, heads=1, intermediate=128, vocab_size=49408, positions=77, activation="gelu"
    )
    model = ClipTextModel(config)
    save_file({f"text_model.{k}": v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "h.safetensors")
    assert text_encoder_kind(open_state_dict(tmp_path / "h.safetensors")) == "clip_h"
    loaded = load_text_encoders([tmp_path / "h.safetensors"], "stable_diffusion")
    assert loaded.info.family is ModelFamily.SD2 and isinstance(loaded.text_encoders, ClipStack)


@pytest.mark.parametrize(
    ("clip_type", "parts", "message"),
    [
        ("sd3", ("clip_l", "clip_l"), r"type sd3 takes .*each file once; got clip_l.safetensors \(clip_l\), clip_l"),
        ("flux", ("clip_l", "clip_g"), r"type flux takes clip_l \+ t5xxl, each file once; got .*\(clip_g\)"),
        ("stable_diffusion", ("t5xxl",), r"type stable_diffusion takes clip_l or clip_h or clip_g"),
    ],
)
def test_files_a_type_does_not_take_are_named_with_what_they_hold(tmp_path, clip_type, parts, message) -> None:
    for part in set(parts):
        write_tiny_file(tmp_path / f"{part}.safetensors", "sd3", part)
    with pytest.raises(CheckpointError, match=message):
        load_text_encoders([tmp_path / f"{part}.safetensors" for part in parts], clip_type)


def test_padding_options_add_pads_after_the_end_token_then_pad_to_the_minimum_length() -> None:
    tokenizer = load_t5_tokenizer()
    pieces = tokenizer.encode("a cat on a mat")
    assert t5_weighted_tokens("a cat on a mat", tokenizer, T5Padding(min_padding=1)).ids == pieces + [PAD_ID]
    assert t5_weighted_tokens("a cat on a mat", tokenizer, T5Padding()).ids == pieces
    padded = t5_weighted_tokens("a cat on a mat", tokenizer, T5Padding(min_padding=3, min_length=len(pieces) + 1))
    assert padded.ids == pieces + [PAD_ID] * 3
    assert t5_weighted_tokens("a cat", tokenizer, T5Padding(min_padding=1, min_length=10)).ids[-1] == PAD_ID
    assert len(t5_weighted_tokens("a cat", tokenizer, T5Padding(min_padding=1, min_length=10)).ids) == 10
