"""Qwen3 text encoder and Qwen tokenizer: transformers' states and ids on identical weights and files, in the
key layout of `qwen_3_4b.safetensors`, and the conditioning ComfyUI gives Z-Image for a prompt."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer, Qwen2TokenizerFast, Qwen3Model
from transformers import Qwen3Config as ReferenceConfig

from diffusion.checkpoint import open_state_dict
from diffusion.model_memory import place
from diffusion.qwen_tokenizer import IM_END_ID, IM_START_ID, PAD_ID, VOCAB_SIZE, QwenTokenizer, load_qwen_tokenizer
from diffusion.text_encoders.qwen3 import (
    Z_IMAGE_TEMPLATE,
    Qwen3Config,
    comfy_attention_mask,
    encode_prompt,
    load_qwen3_encoder,
    qwen3_config_from_state_dict,
)
from diffusion.unet_config import CheckpointLayoutError

TOKENIZER_FILE = Path(__file__).resolve().parents[2] / "diffusion" / "data" / "qwen3_tokenizer.json.gz"
ATOL = 1e-4
VOCAB = 151936  # Qwen3-4B's embedding rows: every id the real tokenizer emits is in range
# head_dim 32 with 4 heads: the attention width (128) differs from the hidden width (64), as in Qwen3-4B.
CONFIG = Qwen3Config(hidden_size=64, layers=3, heads=4, kv_heads=2, head_dim=32, intermediate_size=96, vocab_size=VOCAB)
PROMPT = "a photo of a cat"
# The template's ids around the prompt's: <|im_start|> "user" "\n" ... <|im_end|> "\n" <|im_start|> "assistant" "\n".
TEMPLATE_HEAD = [IM_START_ID, 872, 198]
TEMPLATE_TAIL = [IM_END_ID, 198, IM_START_ID, 77091, 198]
HARD_PROMPTS = [
    PROMPT,
    "一只橘猫坐在窗台上，阳光洒在它的毛上。「高清」《摄影》",
    "日本語のテキスト、カタカナ、ひらがな 한국어 텍스트 Русский текст العربية עברית ไทย",
    "emoji 🤖🎨 👩‍👩‍👧 family 🇫🇷 flag ❤️ heart 🐱‍👤 skin 👍🏽",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != 0: print(f\"{x!r}\")",
    "repeated    spaces  and\ttabs\t\tand\nnewlines\r\n\n\n  and\u3000ideographic\u00a0nbsp   ",
    "  leading and trailing spaces   ",
    "numbers 3.14159 1,000,000 2024-11-23 12345678901 ½ ² ٣ ⅷ ０１２ fullwidth ＡＢＣ",
    "contractions don't I'M they'LL we've she'd it's",
    "Ünïcödé café naïve e\u0301 decomposed Å vs A\u030a ﬁ ligature İstanbul ΣΊΣΥΦΟΣ Straße",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<think>\n\n</think>\n\n<|endoftext|><|vision_start|><|image_pad|><|vision_end|><tool_call></tool_call>",
    "<|im_start <|im_end| |>im_end<| <think <|endoftext|",
    "masterpiece, (weighted:1.2), [blurry:0.8], ((sharp)), \\(escaped\\), a cat",
    "<html>&amp; C:\\path\\to\\file.png ~`@#$%^&*()_+-={}[]|;:'\",.<>/?",
    " ".join(f"word{i} supercalifragilistic 猫" for i in range(120)),
    "",
    " \t\n ",
]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every weight random, norm scales around 1 (so a missing or misplaced norm shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.2 * noise if name.endswith("norm.weight") else 0.1 * noise)


@pytest.fixture(scope="module")
def reference() -> Qwen3Model:
    """transformers' Qwen3 at Qwen3-4B's rms eps and RoPE base, tiny."""
    config = ReferenceConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=96,
        vocab_size=VOCAB,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        attn_implementation="eager",
    )
    model = Qwen3Model(config).eval()
    randomise(model, seed=0)
    return model


def file_layout(reference: Qwen3Model) -> dict[str, torch.Tensor]:
    """The keys of `qwen_3_4b.safetensors`: `Qwen3ForCausalLM`'s, ``model.`` and all, without ``lm_head``."""
    return {f"model.{key}": tensor.clone() for key, tensor in reference.state_dict().items()}


def reference_hidden_states(
    reference: Qwen3Model, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return reference(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states


def prompt_ids(text: str = PROMPT) -> torch.Tensor:
    return torch.tensor([load_qwen_tokenizer().encode_templated(text, Z_IMAGE_TEMPLATE)])


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


# --- the encoder -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [PROMPT, HARD_PROMPTS[-3]], ids=["short", "long"])
def test_every_hidden_state_matches_transformers_qwen3(reference, cpu_path: str, text: str) -> None:
    model = load_qwen3_encoder(file_layout(reference))
    ids = prompt_ids(text)
    expected = reference_hidden_states(reference, ids)
    assert len(expected) == CONFIG.layers + 1
    with torch.no_grad():
        for index in range(len(expected)):
            assert max_difference(model(ids, hidden_state=index), expected[index]) <= ATOL
            assert max_difference(model(ids, hidden_state=index - len(expected)), expected[index]) <= ATOL


def test_the_default_state_is_the_second_to_last_layer_without_the_final_norm(reference) -> None:
    model = load_qwen3_encoder(file_layout(reference))
    ids = prompt_ids()
    expected = reference_hidden_states(reference, ids)
    with torch.no_grad():
        assert max_difference(model(ids), expected[-2]) <= ATOL
        assert max_difference(model(ids), reference.norm(expected[-2])) > 0.1


def test_only_the_layers_the_state_needs_are_run(reference) -> None:
    model = load_qwen3_encoder(file_layout(reference))
    calls: list[int] = []
    for index, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda *_, index=index: calls.append(index))
    with torch.no_grad():
        model(prompt_ids())
        assert calls == [0, 1]
        calls.clear()
        model(prompt_ids(), hidden_state=-1)
        assert calls == [0, 1, 2]
    with pytest.raises(ValueError, match="does not exist"):
        model(prompt_ids(), hidden_state=CONFIG.layers + 1)


def test_a_padded_batch_matches_transformers_and_leaves_each_prompt_unchanged(reference) -> None:
    model = load_qwen3_encoder(file_layout(reference))
    rows = [prompt_ids(text)[0].tolist() for text in (PROMPT, HARD_PROMPTS[1])]
    width = max(map(len, rows))
    ids = torch.tensor([row + [PAD_ID] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.no_grad():
        padded = model(ids, mask)
        alone = model(ids[:1, : len(rows[0])])
    expected = reference_hidden_states(reference, ids, mask)[-2]
    for row, length in enumerate(map(len, rows)):
        assert max_difference(padded[row, :length], expected[row, :length]) <= ATOL
    assert max_difference(padded[0, : len(rows[0])], alone[0]) <= ATOL


@pytest.mark.parametrize("prefixed", [True, False], ids=["qwen_3_4b-file", "Qwen3Model"])
def test_both_key_layouts_load_and_lm_head_is_ignored(reference, prefixed: bool) -> None:
    weights = file_layout(reference) if prefixed else {k: v.clone() for k, v in reference.state_dict().items()}
    weights["lm_head.weight"] = torch.zeros(VOCAB, 64)
    model = load_qwen3_encoder(weights)
    assert set(model.state_dict()) == set(file_layout(reference))
    ids = prompt_ids()
    with torch.no_grad():
        assert max_difference(model(ids), reference_hidden_states(reference, ids)[-2]) <= ATOL


def test_config_comes_from_the_state_dict(reference) -> None:
    assert qwen3_config_from_state_dict(file_layout(reference)) == CONFIG
    assert qwen3_config_from_state_dict(reference.state_dict()) == CONFIG


def test_qwen3_4b_sizes_are_read_from_shapes_alone() -> None:
    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    weights = {
        "model.embed_tokens.weight": meta(151936, 2560),
        "model.layers.0.self_attn.q_proj.weight": meta(4096, 2560),
        "model.layers.0.self_attn.k_proj.weight": meta(1024, 2560),
        "model.layers.0.self_attn.q_norm.weight": meta(128),
        "model.layers.0.mlp.gate_proj.weight": meta(9728, 2560),
        **{f"model.layers.{i}.input_layernorm.weight": meta(2560) for i in range(36)},
    }
    expected = Qwen3Config(2560, 36, 32, 8, 128, 9728, 151936, rms_norm_eps=1e-6, rope_theta=1e6)
    assert qwen3_config_from_state_dict(weights) == expected


def test_loading_keeps_the_given_tensors(reference) -> None:
    weights = file_layout(reference)
    model = load_qwen3_encoder(weights)
    assert model.model.embed_tokens.weight.data_ptr() == weights["model.embed_tokens.weight"].data_ptr()
    q = model.model.layers[2].self_attn.q_proj.weight
    assert q.data_ptr() == weights["model.layers.2.self_attn.q_proj.weight"].data_ptr()


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_a_half_precision_file_computes_in_fp32_exactly_as_the_upcast_weights(
    reference, tmp_path: Path, stored: torch.dtype
) -> None:
    narrow = {key: tensor.to(stored).contiguous() for key, tensor in file_layout(reference).items()}
    path = tmp_path / "qwen_3_4b.safetensors"
    save_file(narrow, str(path))
    from_file = load_qwen3_encoder(open_state_dict(path))
    place(from_file, torch.device("cpu"), torch.float32)
    assert from_file.model.embed_tokens.weight.dtype == stored  # kept as stored, rows cast per lookup
    assert from_file.model.layers[0].mlp.down_proj.weight.dtype == stored  # cast per call
    assert from_file.model.layers[0].self_attn.q_norm.weight.dtype == torch.float32
    upcast = load_qwen3_encoder({key: tensor.float() for key, tensor in narrow.items()})
    ids = prompt_ids()
    with torch.no_grad():
        states = from_file(ids)
        assert states.dtype == torch.float32
        assert torch.equal(states, upcast(ids))


def test_a_scaled_fp8_file_stays_fp8_and_computes_with_its_weights_times_their_scales(reference) -> None:
    weights = file_layout(reference)
    dequantized = dict(weights)
    for key in [key for key in weights if key.endswith("_proj.weight")]:
        scale = weights[key].abs().max() / 448.0  # the e4m3 range, as scaled-fp8 files are quantised
        quantized = (weights[key] / scale).to(torch.float8_e4m3fn)
        weights[key] = quantized
        weights[key.replace(".weight", ".scale_weight")] = scale.reshape(())
        weights[key.replace(".weight", ".scale_input")] = torch.ones(())
        dequantized[key] = quantized.float() * scale
    weights["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    model = load_qwen3_encoder(weights)
    place(model, torch.device("cpu"), torch.float32)
    assert model.model.layers[0].self_attn.k_proj.weight.dtype == torch.float8_e4m3fn
    ids = prompt_ids()
    with torch.no_grad():
        assert torch.equal(model(ids), load_qwen3_encoder(dequantized)(ids))


@pytest.mark.parametrize(
    "edit, key, reason",
    [
        (lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"), "model.layers.1.mlp.up_proj.weight", "missing"),
        (lambda sd: sd.pop("model.norm.weight"), "model.norm.weight", "missing"),
        (lambda sd: sd.pop("model.embed_tokens.weight"), "model.embed_tokens.weight", "missing"),
        (
            lambda sd: sd.pop("model.layers.0.self_attn.q_norm.weight"),
            "model.layers.0.self_attn.q_norm.weight",
            "not a Qwen3 text encoder",
        ),
        (
            lambda sd: sd.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}),
            "model.layers.0.self_attn.q_proj.bias",
            "unexpected",
        ),
        (
            lambda sd: sd.update({"model.layers.2.mlp.down_proj.weight": torch.zeros(64, 5)}),
            "model.layers.2.mlp.down_proj.weight",
            "shape",
        ),
        (
            lambda sd: sd.update({"model.layers.4.input_layernorm.weight": torch.ones(64)}),
            "model.layers.3.input_layernorm.weight",
            "not contiguous",
        ),
    ],
    ids=["missing-layer-weight", "missing-norm", "no-embedding", "qwen2-no-qk-norm", "bias", "shape", "gap"],
)
def test_malformed_state_dicts_name_the_key(reference, edit, key: str, reason: str) -> None:
    weights = file_layout(reference)
    edit(weights)
    with pytest.raises(CheckpointLayoutError, match=reason) as raised:
        load_qwen3_encoder(weights)
    assert raised.value.key == key and key in str(raised.value)


# --- the prompt, as ComfyUI encodes it for Z-Image ---------------------------------------------------------


def test_the_z_image_template_wraps_the_prompt_without_a_thinking_block() -> None:
    ids = load_qwen_tokenizer().encode_templated(PROMPT, Z_IMAGE_TEMPLATE)
    assert ids == [*TEMPLATE_HEAD, 64, 6548, 315, 264, 8251, *TEMPLATE_TAIL]
    assert Z_IMAGE_TEMPLATE.format(PROMPT) == "<|im_start|>user\na photo of a cat<|im_end|>\n<|im_start|>assistant\n"


def test_prompt_text_is_tokenized_as_comfyui_does() -> None:
    tokenizer = load_qwen_tokenizer()

    def templated(text: str) -> list[int]:
        return tokenizer.encode_templated(text, Z_IMAGE_TEMPLATE)

    # Emphasis stays literal text, and braces are the prompt's own, not format fields.
    assert templated("(cat:1.2) {x}") == tokenizer.encode(Z_IMAGE_TEMPLATE.format("(cat:1.2) {x}"))
    # ComfyUI drops the backslash of an escaped parenthesis ...
    assert templated("a \\(cat\\)") == templated("a (cat)")
    # ... and tokenizes the text before " embedding:" apart from the rest, the space dropped.
    head, tail = "<|im_start|>user\na photo", "embedding:cat<|im_end|>\n<|im_start|>assistant\n"
    assert templated("a photo embedding:cat") == tokenizer.encode(head) + tokenizer.encode(tail)
    assert templated("a photo embedding:cat") != tokenizer.encode(Z_IMAGE_TEMPLATE.format("a photo embedding:cat"))
    # An empty prompt is the template alone.
    assert templated("") == TEMPLATE_HEAD + TEMPLATE_TAIL


def test_encode_prompt_gives_the_second_to_last_states_of_the_templated_prompt(reference) -> None:
    model = load_qwen3_encoder(file_layout(reference))
    encoded = encode_prompt(model, PROMPT)
    assert encoded.token_ids == prompt_ids()[0].tolist()
    assert encoded.states.shape == (1, len(encoded.token_ids), 64) and encoded.states.dtype == torch.float32
    assert torch.equal(encoded.attention_mask, torch.ones(1, len(encoded.token_ids), dtype=torch.long))
    expected = reference_hidden_states(reference, prompt_ids())[-2]
    assert max_difference(encoded.states, expected) <= ATOL


def test_a_written_endoftext_ends_the_attention_mask_as_in_comfyui(reference) -> None:
    model = load_qwen3_encoder(file_layout(reference))
    assert comfy_attention_mask([5, 6, PAD_ID, 7, PAD_ID]) == [1, 1, 0, 0, 0]
    assert comfy_attention_mask([5, 6]) == [1, 1]
    encoded = encode_prompt(model, "a cat<|endoftext|> and a dog")
    ids = torch.tensor([encoded.token_ids])
    end = encoded.token_ids.index(PAD_ID)
    assert encoded.attention_mask.tolist() == [[1] * end + [0] * (ids.shape[1] - end)]
    expected = reference_hidden_states(reference, ids, encoded.attention_mask)[-2]
    assert max_difference(encoded.states, expected) <= ATOL


# --- the tokenizer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qwen") / "tokenizer.json"
    path.write_bytes(gzip.decompress(TOKENIZER_FILE.read_bytes()))
    return path


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab+merges"])
def reference_tokenizer(request: pytest.FixtureRequest, tokenizer_json: Path) -> Qwen2Tokenizer:
    """transformers' tokenizer from the shipped file, and transformers' own Qwen2 pipeline (normaliser,
    split pattern, byte mapping) around the file's vocabulary, merges and added tokens, the parts that
    ComfyUI's `qwen25_tokenizer` folder ships."""
    if request.param == "tokenizer.json":
        return Qwen2TokenizerFast(tokenizer_file=str(tokenizer_json))
    description = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = description["model"]
    rebuilt = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(merge) for merge in model["merges"]])
    rebuilt.add_tokens(
        [
            AddedToken(token["content"], special=token["special"], normalized=False)
            for token in description["added_tokens"]
        ]
    )
    return rebuilt


@pytest.mark.parametrize("prompt", HARD_PROMPTS, ids=range(len(HARD_PROMPTS)))
def test_ids_equal_transformers_qwen2_tokenizer(reference_tokenizer, prompt: str) -> None:
    assert load_qwen_tokenizer().encode(prompt) == reference_tokenizer(prompt)["input_ids"]
    templated = Z_IMAGE_TEMPLATE.format(prompt)
    assert load_qwen_tokenizer().encode(templated) == reference_tokenizer(templated)["input_ids"]


def test_the_shipped_file_is_the_qwen3_tokenizer(tokenizer_json: Path) -> None:
    assert hashlib.sha256(tokenizer_json.read_bytes()).hexdigest().startswith("aeb13307")  # Qwen/Qwen3-4B's
    assert load_qwen_tokenizer() is load_qwen_tokenizer()
    assert (PAD_ID, IM_START_ID, IM_END_ID, VOCAB_SIZE) == (151643, 151644, 151645, 151669)
    tokenizer = load_qwen_tokenizer()
    assert [tokenizer.encode(t) for t in ("<|endoftext|>", "<think>", "</think>")] == [[151643], [151667], [151668]]
    with pytest.raises(ValueError, match="not the Qwen tokenizer"):
        QwenTokenizer.from_json(tokenizer_json.read_text(encoding="utf-8").replace('"<|im_end|>"', '"<|end|>"'))
