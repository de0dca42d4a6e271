"""T5 v1.1 encoder and tokenizer: transformers' ids and states on identical weights, in the file layout of
`t5xxl_*.safetensors` and through the loaders a real file takes (memory-mapped, fp16 computed in fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5TokenizerFast
from transformers.models.t5.modeling_t5 import T5Attention

from diffusion.checkpoint import open_state_dict
from diffusion.model_memory import place
from diffusion.t5_tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, T5Tokenizer, load_t5_tokenizer
from diffusion.text_encoders.t5 import (
    T5EncoderConfig,
    T5LayoutError,
    load_t5_encoder,
    relative_position_buckets,
    t5_config_from_state_dict,
)

TOKENIZER_FILE = Path(__file__).resolve().parents[2] / "diffusion" / "data" / "t5_tokenizer.json"
ATOL = 1e-5
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "masterpiece, (weighted:1.2), [blurry:0.8], ((sharp)), \\(escaped\\), a cat",
]
HARD_PROMPTS = [
    *PROMPTS,
    "Ünïcödé café naïve façade — “quotes” «guillemets» ‘single’ e\u0301 decomposed",
    "emoji 🤖🎨 👩‍👩‍👧 family 🇫🇷 flag ❤️ heart",
    "numbers 3.14159 1,000,000 2024-11-23 ½ ² ٣ ⅷ ０１２ fullwidth",
    "repeated    spaces  and\ttabs\t\tand\nnewlines\r\n\n  and\u3000ideographic\u00a0nbsp",
    "  leading and trailing spaces   ",
    "ΣΊΣΥΦΟΣ Straße ǅ ﬁ İstanbul 日本語のテキスト 中文 한국어 Русский",
    "literal </s> and <pad> and <extra_id_0> and <unk> tokens",
    "<html>&amp; C:\\path\\to\\file.png ~`@#$%^&*()_+-={}[]|;:'\",.<>/?",
    " ".join(f"word{i} supercalifragilistic" for i in range(400)),
    "",
    " \t\n ",
]
CONFIG = T5EncoderConfig(d_model=64, layers=2, heads=4, d_kv=16, d_ff=128, vocab_size=32128)


@pytest.fixture(scope="module")
def reference() -> T5EncoderModel:
    """transformers' T5 v1.1 encoder, tiny, every weight random (norm scales too, so a norm mix-up shows)."""
    config = T5Config(
        d_model=64,
        num_layers=2,
        num_heads=4,
        d_kv=16,
        d_ff=128,
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    )
    model = T5EncoderModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("layer_norm.weight"):
                parameter.copy_(1 + 0.2 * noise)
            elif "relative_attention_bias" in name:
                parameter.copy_(noise)
            else:
                parameter.copy_(0.1 * noise)
    return model


def file_layout(reference: T5EncoderModel) -> dict[str, torch.Tensor]:
    """The keys of `t5xxl_fp16.safetensors`: `shared.weight` and `encoder.*`, the tied copy left out."""
    state = reference.state_dict()
    return {key: tensor.clone() for key, tensor in state.items() if key != "encoder.embed_tokens.weight"}


def padded_prompts(length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    batch = load_t5_tokenizer().encode_batch(PROMPTS, length)
    return batch.ids, batch.attention_mask


def reference_states(reference: T5EncoderModel, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        return reference(input_ids=ids, attention_mask=mask).last_hidden_state


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


# --- the encoder -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [True, False], ids=["padding-masked", "unmasked"])
def test_states_match_transformers_t5_encoder(reference, cpu_path: str, masked: bool) -> None:
    model = load_t5_encoder(file_layout(reference))
    ids, mask = padded_prompts()
    with torch.no_grad():
        states = model(ids, mask if masked else None)
    assert states.shape == (2, 40, 64)
    assert max_difference(states, reference_states(reference, ids, mask if masked else None)) <= ATOL


def test_long_sequences_reach_the_far_position_buckets(reference) -> None:
    model = load_t5_encoder(file_layout(reference))
    ids = torch.tensor([load_t5_tokenizer().encode(HARD_PROMPTS[-3])[:300]])
    with torch.no_grad():
        assert max_difference(model(ids), reference_states(reference, ids, None)) <= ATOL


def test_masked_padding_leaves_the_prompt_states_unchanged(reference) -> None:
    model = load_t5_encoder(file_layout(reference))
    ids, mask = padded_prompts()
    length = int(mask[0].sum())
    with torch.no_grad():
        alone = model(ids[:1, :length])
        padded = model(ids, mask)
    assert max_difference(padded[0, :length], alone[0]) <= ATOL


def test_position_buckets_match_transformers() -> None:
    positions = torch.arange(300)
    expected = T5Attention._relative_position_bucket(
        positions[None, :] - positions[:, None], bidirectional=True, num_buckets=32, max_distance=128
    )
    assert torch.equal(relative_position_buckets(300, 32, 128, torch.device("cpu")), expected)


def test_config_comes_from_the_state_dict(reference) -> None:
    assert t5_config_from_state_dict(file_layout(reference)) == CONFIG


def test_t5_xxl_sizes_are_read_from_shapes_alone() -> None:
    meta = {
        "shared.weight": torch.empty(32128, 4096, device="meta"),
        "encoder.block.0.layer.0.SelfAttention.q.weight": torch.empty(4096, 4096, device="meta"),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.empty(32, 64, device="meta"),
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": torch.empty(10240, 4096, device="meta"),
        **{f"encoder.block.{i}.layer.0.layer_norm.weight": torch.empty(4096, device="meta") for i in range(24)},
    }
    config = t5_config_from_state_dict(meta)
    assert (config.d_model, config.layers, config.heads, config.d_kv, config.d_ff) == (4096, 24, 64, 64, 10240)


def test_loading_keeps_the_given_tensors(reference) -> None:
    weights = file_layout(reference)
    model = load_t5_encoder(weights)
    assert model.shared.weight.data_ptr() == weights["shared.weight"].data_ptr()
    q = model.encoder.block[1].layer[0].SelfAttention.q.weight
    assert q.data_ptr() == weights["encoder.block.1.layer.0.SelfAttention.q.weight"].data_ptr()
    assert model.encoder.block[1].layer[0].SelfAttention.relative_attention_bias is None


@pytest.mark.parametrize("names", [("shared.weight",), ("encoder.embed_tokens.weight",), ("both",)])
def test_the_tied_embedding_may_be_stored_under_either_name(reference, names: tuple[str, ...]) -> None:
    weights = file_layout(reference)
    table = weights.pop("shared.weight")
    stored = ("shared.weight", "encoder.embed_tokens.weight") if names == ("both",) else names
    weights.update({name: table for name in stored})
    ids, mask = padded_prompts()
    with torch.no_grad():
        assert max_difference(load_t5_encoder(weights)(ids, mask), reference_states(reference, ids, mask)) <= ATOL


def test_a_scaled_fp8_file_stays_fp8_and_computes_with_its_weights_times_their_scales(reference) -> None:
    weights = file_layout(reference)
    dequantized = dict(weights)
    for key in [key for key in weights if key.endswith((".q.weight", ".wi_0.weight", ".wo.weight"))]:
        scale = weights[key].abs().max() / 448.0  # the e4m3 range, as scaled-fp8 files are quantised
        quantized = (weights[key] / scale).to(torch.float8_e4m3fn)
        weights[key] = quantized
        weights[key.replace(".weight", ".scale_weight")] = scale.reshape(())
        weights[key.replace(".weight", ".scale_input")] = torch.ones(())
        dequantized[key] = quantized.float() * scale
    weights["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    model = load_t5_encoder(weights)
    place(model, torch.device("cpu"), torch.float32)
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert t5_config_from_state_dict(weights) == CONFIG
    ids, mask = padded_prompts()
    with torch.no_grad():
        assert torch.equal(model(ids, mask), load_t5_encoder(dequantized)(ids, mask))


def test_fp16_file_computes_in_fp32_exactly_as_the_upcast_weights(reference, tmp_path: Path) -> None:
    half = {key: tensor.half().contiguous() for key, tensor in file_layout(reference).items()}
    path = tmp_path / "t5xxl_fp16.safetensors"
    save_file(half, str(path))
    from_file = load_t5_encoder(open_state_dict(path))
    place(from_file, torch.device("cpu"), torch.float32)
    assert from_file.shared.weight.dtype == torch.float16  # kept as stored, cast per call
    assert from_file.encoder.final_layer_norm.weight.dtype == torch.float32
    upcast = load_t5_encoder({key: tensor.float() for key, tensor in half.items()})
    ids, mask = padded_prompts()
    with torch.no_grad():
        states = from_file(ids, mask)
        assert states.dtype == torch.float32
        assert torch.equal(states, upcast(ids, mask))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("encoder.final_layer_norm.weight"), "missing encoder.final_layer_norm.weight"),
        (lambda sd: sd.update({"encoder.extra.weight": torch.zeros(1)}), "unexpected encoder.extra.weight"),
        (
            lambda sd: sd.update({"encoder.block.1.layer.1.DenseReluDense.wo.weight": torch.zeros(64, 5)}),
            "inconsistent shapes",
        ),
        (
            lambda sd: sd.update({"encoder.block.0.layer.1.DenseReluDense.wi.weight": torch.zeros(128, 64)}),
            "T5 v1.0 is not supported",
        ),
        (lambda sd: sd.pop("shared.weight"), "missing shared.weight"),
        (lambda sd: sd.update({"encoder.block.3.layer.0.layer_norm.weight": torch.ones(64)}), "not contiguous"),
    ],
    ids=["missing", "unexpected", "shape", "v1.0", "no-embedding", "gap"],
)
def test_malformed_state_dicts_are_named(reference, edit, message: str) -> None:
    weights = file_layout(reference)
    edit(weights)
    with pytest.raises(T5LayoutError, match=message):
        load_t5_encoder(weights)


# --- the tokenizer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_tokenizer() -> T5TokenizerFast:
    return T5TokenizerFast(tokenizer_file=str(TOKENIZER_FILE))


@pytest.mark.parametrize("prompt", HARD_PROMPTS, ids=range(len(HARD_PROMPTS)))
def test_ids_equal_transformers_t5_tokenizer(reference_tokenizer, prompt: str) -> None:
    assert load_t5_tokenizer().encode(prompt) == reference_tokenizer(prompt)["input_ids"]


def test_known_prompt_gives_t5_ids() -> None:
    assert load_t5_tokenizer().encode("a photo of a cat") == [3, 9, 1202, 13, 3, 9, 1712, EOS_ID]


def test_the_shipped_file_is_the_t5_v1_1_tokenizer() -> None:
    assert load_t5_tokenizer() is load_t5_tokenizer()
    assert (PAD_ID, EOS_ID, VOCAB_SIZE) == (0, 1, 32100)
    with pytest.raises(ValueError, match="not the T5 v1.1 tokenizer"):
        T5Tokenizer.from_json(TOKENIZER_FILE.read_text(encoding="utf-8").replace('"</s>"', '"<eos>"'))


def test_a_batch_is_padded_to_the_length_with_a_mask_of_the_real_tokens() -> None:
    tokenizer = load_t5_tokenizer()
    rows = [tokenizer.encode(text) for text in PROMPTS]
    batch = tokenizer.encode_batch(PROMPTS, 32)
    assert batch.ids.shape == batch.attention_mask.shape == (2, 32)
    for row, ids, mask in zip(rows, batch.ids.tolist(), batch.attention_mask.tolist()):
        assert ids == row + [PAD_ID] * (32 - len(row))
        assert mask == [1] * len(row) + [0] * (32 - len(row))


def test_a_longer_prompt_widens_the_batch_instead_of_being_cut() -> None:
    tokenizer = load_t5_tokenizer()
    long_row = tokenizer.encode(HARD_PROMPTS[-3])
    batch = tokenizer.encode_batch([PROMPTS[0], HARD_PROMPTS[-3]], 77)
    assert batch.ids.shape == (2, len(long_row)) and batch.ids[1].tolist() == long_row
    assert int(batch.attention_mask[0].sum()) == len(tokenizer.encode(PROMPTS[0]))
