"""CLIP text encoders: parity with transformers on identical weights in both checkpoint layouts, and the
per-family conditioning (layer choice, final LayerNorm, SDXL concatenation, pooled output, emphasis)."""

from __future__ import annotations

import pytest
import torch

from diffusion.prompt_weights import WindowSpec, tokenize_prompt
from diffusion.text_encoders import ClipStack, TextEncoderLayoutError, load_clip_text_model
from diffusion.tokenizer import load_clip_tokenizer
from tests.diffusion.reference_clip import (
    HEAD_WIDTH,
    hf_layout,
    openclip_layout,
    reference_states,
    tiny_reference_model,
)

ATOL = 1e-4
PROMPT = "a photo of an astronaut riding a horse on mars"


def window_ids(text: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    (window,) = tokenize_prompt(text, load_clip_tokenizer(), WindowSpec(pad_id=pad_id, embedding_key="", width=32))
    return torch.tensor([window.ids]), torch.tensor([window.eos_position])


@pytest.fixture(scope="module")
def clip_l():
    return tiny_reference_model(layers=3, hidden_act="quick_gelu", with_projection=False, seed=0)


@pytest.fixture(scope="module")
def clip_big():
    return tiny_reference_model(layers=4, hidden_act="gelu", with_projection=True, seed=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= ATOL


@pytest.mark.parametrize("layout", [hf_layout, openclip_layout], ids=["hf", "openclip"])
@pytest.mark.parametrize("which", ["clip_l", "clip_big"])
def test_every_layer_and_pooled_match_transformers(request, layout, which: str) -> None:
    reference = request.getfixturevalue(which)
    activation = "quick_gelu" if which == "clip_l" else "gelu"
    model = load_clip_text_model(layout(reference), activation, head_width=HEAD_WIDTH)
    ids, eos = window_ids(PROMPT, pad_id=49407 if which == "clip_l" else 0)
    ref = reference_states(reference, ids)
    with torch.no_grad():
        for layer in range(-len(ref.blocks), 0):
            raw, pooled = model(ids, eos, layer=layer, normalize_hidden=False)
            assert_close(raw, ref.blocks[layer])
            assert_close(pooled, ref.pooled)
            normed, _ = model(ids, eos, layer=layer, normalize_hidden=True)
            assert_close(normed, ref.final_norm(ref.blocks[layer]))
        last, _ = model(ids, eos)
        assert_close(last, ref.last)


def test_sd1_files_without_text_model_level_load(clip_l) -> None:
    flat = {k.removeprefix("text_model."): v for k, v in hf_layout(clip_l).items()}
    flat["embeddings.position_ids"] = torch.arange(77)[None]
    model = load_clip_text_model(flat, "quick_gelu", head_width=HEAD_WIDTH)
    assert model.config.layers == 3 and model.text_projection is None


def test_config_comes_from_the_state_dict(clip_big) -> None:
    model = load_clip_text_model(openclip_layout(clip_big), "gelu", head_width=HEAD_WIDTH)
    c = model.config
    assert (c.width, c.layers, c.heads, c.intermediate, c.vocab_size, c.positions, c.projection_dim) == (
        32,
        4,
        4,
        37,
        49408,
        77,
        24,
    )


def test_loading_shares_storage_with_the_state_dict(clip_big) -> None:
    sd = openclip_layout(clip_big)
    model = load_clip_text_model(sd, "gelu", head_width=HEAD_WIDTH)
    in_proj = sd["transformer.resblocks.0.attn.in_proj_weight"]
    q = model.encoder.layers[0].self_attn.q_proj.weight
    v = model.encoder.layers[0].self_attn.v_proj.weight
    assert q.untyped_storage().data_ptr() == in_proj.untyped_storage().data_ptr()
    assert v.data_ptr() == in_proj.data_ptr() + 2 * 32 * 32 * in_proj.element_size()
    assert model.text_projection.weight.data_ptr() == sd["text_projection"].data_ptr()
    assert model.embeddings.token_embedding.weight.data_ptr() == sd["token_embedding.weight"].data_ptr()


def test_default_head_width_is_64(clip_big) -> None:
    with pytest.raises(TextEncoderLayoutError, match="width 32 is not a multiple of the head width 64"):
        load_clip_text_model(openclip_layout(clip_big), "gelu")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("text_model.final_layer_norm.bias"), "missing final_layer_norm.bias"),
        (lambda sd: sd.update({"text_model.extra.weight": torch.zeros(1)}), "unexpected extra.weight"),
        (lambda sd: sd.update({"text_model.encoder.layers.1.mlp.fc2.bias": torch.zeros(5)}), "inconsistent shapes"),
        (lambda sd: sd.pop("text_model.embeddings.token_embedding.weight"), "no token embedding"),
    ],
    ids=["missing", "unexpected", "shape", "unknown-layout"],
)
def test_malformed_state_dicts_are_named(clip_l, edit, message: str) -> None:
    sd = hf_layout(clip_l)
    edit(sd)
    with pytest.raises(TextEncoderLayoutError, match=message):
        load_clip_text_model(sd, "quick_gelu", head_width=HEAD_WIDTH)


def test_unknown_openclip_key_is_named(clip_big) -> None:
    sd = openclip_layout(clip_big)
    sd["transformer.resblocks.0.ls_1.gamma"] = torch.ones(32)
    with pytest.raises(TextEncoderLayoutError, match="ls_1.gamma"):
        load_clip_text_model(sd, "gelu", head_width=HEAD_WIDTH)


# ---- families -------------------------------------------------------------------------------------------


def stack(family: str, clip_l, clip_big) -> ClipStack:
    dicts = {
        "sd15": {"clip_l": hf_layout(clip_l)},
        "sd2": {"clip_h": openclip_layout(clip_big)},
        "sdxl": {"clip_l": hf_layout(clip_l), "clip_g": openclip_layout(clip_big)},
        "sdxl_refiner": {"clip_g": openclip_layout(clip_big)},
    }[family]
    return ClipStack.from_state_dicts(family, dicts, head_width=HEAD_WIDTH)


def test_sd15_uses_last_layer_after_final_norm_and_clip_skip_keeps_the_norm(clip_l, clip_big) -> None:
    clip = stack("sd15", clip_l, clip_big)
    ref = reference_states(clip_l, window_ids(PROMPT, 49407)[0])
    cond, pooled = clip.encode(PROMPT)
    assert_close(cond, ref.last)
    assert_close(pooled, ref.pooled)
    skipped, _ = clip.encode(PROMPT, clip_skip=-2)
    assert_close(skipped, ref.final_norm(ref.blocks[-2]))


def test_sd2_uses_penultimate_layer_after_final_norm_and_zero_padding(clip_l, clip_big) -> None:
    clip = stack("sd2", clip_l, clip_big)
    ids, _ = window_ids(PROMPT, 0)
    assert clip.tokenize(PROMPT)["clip_h"][0].ids == tuple(ids[0].tolist())
    assert ids[0, -1] == 0
    ref = reference_states(clip_big, ids)
    cond, pooled = clip.encode(PROMPT)
    assert_close(cond, ref.final_norm(ref.blocks[-2]))
    assert_close(pooled, ref.pooled)


def test_sdxl_concatenates_raw_penultimate_states_and_pools_from_bigg(clip_l, clip_big) -> None:
    clip = stack("sdxl", clip_l, clip_big)
    ref_l = reference_states(clip_l, window_ids(PROMPT, 49407)[0])
    ref_g = reference_states(clip_big, window_ids(PROMPT, 0)[0])
    cond, pooled = clip.encode(PROMPT)
    assert_close(cond, torch.cat([ref_l.blocks[-2], ref_g.blocks[-2]], dim=-1))
    assert_close(pooled, ref_g.pooled)
    last, _ = clip.encode(PROMPT, clip_skip=-1)
    assert_close(last, torch.cat([ref_l.blocks[-1], ref_g.blocks[-1]], dim=-1))


def test_sdxl_refiner_has_only_bigg(clip_l, clip_big) -> None:
    clip = stack("sdxl_refiner", clip_l, clip_big)
    ref = reference_states(clip_big, window_ids(PROMPT, 0)[0])
    cond, pooled = clip.encode(PROMPT)
    assert_close(cond, ref.blocks[-2])
    assert_close(pooled, ref.pooled)


def test_sdxl_separate_texts_are_aligned_with_empty_windows(clip_l, clip_big) -> None:
    clip = stack("sdxl", clip_l, clip_big)
    long_text = " ".join(["castle"] * 100)
    tokens = clip.tokenize({"clip_l": "cat", "clip_g": long_text})
    assert [len(tokens["clip_l"]), len(tokens["clip_g"])] == [2, 2]
    cond, _ = clip.encode({"clip_l": "cat", "clip_g": long_text})
    assert cond.shape == (1, 154, 64)


def test_long_prompts_concatenate_windows_and_pool_the_first(clip_l, clip_big) -> None:
    clip = stack("sd15", clip_l, clip_big)
    text = " ".join(["castle"] * 100)
    first, second = clip.tokenize(text)["clip_l"]
    cond, pooled = clip.encode(text)
    assert cond.shape == (1, 154, 32)
    ref_first = reference_states(clip_l, torch.tensor([first.ids]))
    ref_second = reference_states(clip_l, torch.tensor([second.ids]))
    assert_close(cond, torch.cat([ref_first.last, ref_second.last], dim=1))
    assert_close(pooled, ref_first.pooled)


def test_clip_skip_beyond_the_shallowest_encoder_is_refused(clip_l, clip_big) -> None:
    with pytest.raises(ValueError, match=r"clip skip -4 out of range for sdxl: -1 .. -3"):
        stack("sdxl", clip_l, clip_big).encode(PROMPT, clip_skip=-4)


def test_unknown_family_and_missing_encoder_are_named(clip_l) -> None:
    with pytest.raises(ValueError, match="unknown text-encoder family 'hunyuan'"):
        ClipStack.from_state_dicts("hunyuan", {"clip_l": hf_layout(clip_l)}, head_width=HEAD_WIDTH)
    with pytest.raises(ValueError, match=r"needs text encoders \['clip_g'\]"):
        ClipStack.from_state_dicts("sdxl", {"clip_l": hf_layout(clip_l)}, head_width=HEAD_WIDTH)


# ---- emphasis -------------------------------------------------------------------------------------------


def test_weight_one_everywhere_equals_the_unweighted_prompt(clip_l, clip_big) -> None:
    clip = stack("sdxl", clip_l, clip_big)
    plain, pooled = clip.encode("a red cat on a mat")
    weighted, weighted_pooled = clip.encode("a (red:1.0) cat ([on]:1.1) a mat")
    assert torch.equal(plain, weighted) and torch.equal(pooled, weighted_pooled)


def test_weight_moves_only_its_tokens_away_from_the_empty_prompt(clip_l, clip_big) -> None:
    clip = stack("sd15", clip_l, clip_big)
    plain, plain_pooled = clip.encode("a red cat")
    weighted, pooled = clip.encode("a (red:1.5) cat")
    empty, _ = clip.encode("")
    changed = (weighted - plain).abs().amax(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [2]  # BOS, "a", "red" ...
    assert_close(weighted[0, 2], empty[0, 2] + (plain[0, 2] - empty[0, 2]) * 1.5)
    assert torch.equal(pooled, plain_pooled)
