"""Qwen3 (Qwen team 2025) run as a text encoder: Z-Image's Qwen3-4B (`qwen_3_4b.safetensors`).

A decoder-only transformer read as an encoder: the prompt, wrapped in the chat template, goes through the
layers under a causal mask, and the states of one layer, one vector per token, are the conditioning. Where
Qwen3 differs from a plain pre-norm transformer, each a place where a generic one would be silently wrong:

- the attention width (heads x head_dim, 32 x 128 = 4,096 for the 4B) is not the hidden width (2,560):
  head_dim is its own setting, read here from the per-head norm's length;
- the queries and keys are RMS-normalised per head (``q_norm``/``k_norm``, new in Qwen3), before RoPE;
- grouped-query attention: 8 key/value heads serve the 32 query heads, each in 4 consecutive query heads;
- rotary positions (Su et al. 2021) rotate the two halves of each head (``x[i]`` with ``x[i + d/2]``),
  not adjacent pairs as FLUX's do, at base 1,000,000, angles in fp32 as transformers and ComfyUI take them;
- RMS norms with the statistic in fp32, eps 1e-6; a SwiGLU feed-forward ``down(silu(gate x) * up x)``;
  no biases anywhere.

Sizes come from the weights (`qwen3_config_from_state_dict`); the two that are not stored are Qwen3's
published values: rms eps 1e-6 (also transformers' `Qwen3Config` default) and RoPE base 1e6 (the
`config.json` of Qwen/Qwen3-4B, ComfyUI's `Qwen3_4BConfig` and DiffSynth's Z-Image encoder config; NOT
transformers' default of 10,000, nor the 5e6 of the later Qwen3-4B-Instruct-2507).

Which states, and what Z-Image's conditioning is (checked against ComfyUI's `comfy/text_encoders/z_image.py`
at 00855133, `sd1_clip.py`, `llama.py` and `model_base.Lumina2`, and diffusers 0.42.1's
`ZImagePipeline._encode_prompt`):

- the template is ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`` in both. Qwen3's chat
  template appends the empty thinking block ``<think>\\n\\n</think>\\n\\n`` only when called with
  ``enable_thinking=False``; diffusers calls it with ``enable_thinking=True`` and ComfyUI writes the template
  out without it, so there is no thinking block;
- the states are transformers' ``hidden_states[-2]``: the output of the second-to-last layer (35 of 36),
  without the final norm (ComfyUI: ``layer="hidden", layer_idx=-2, layer_norm_hidden_state=False``; its
  intermediate output after layer index L-2 is the same tensor). The last layer need not run, and does not;
- ComfyUI tokenizes one prompt to exactly its own tokens, without start, end or padding tokens
  (``pad_to_max_length=False``, ``min_length=1``, no length limit), embeds them in fp32
  (``dtype=torch.float32``) so that its cast-on-use layers compute in fp32, and returns fp32 states
  [1, T, 2560]. Its pad id 151643 (``<|endoftext|>``) only marks where the attention mask ends: 1 up to the
  first 151643 in the ids, 0 from it on, which for a prompt that does not write ``<|endoftext|>`` is all
  ones (the mask also travels with the conditioning: ComfyUI's Lumina2/Z-Image model reads its sum as the
  caption length). diffusers pads to 512 and then keeps only the masked-in tokens, so the two agree on
  prompts of at most 512 tokens; beyond, diffusers truncates and ComfyUI keeps every token.
  `encode_prompt` follows ComfyUI, including its text quirks (``QwenTokenizer.encode_templated``).

Module and parameter names follow the `qwen_3_4b.safetensors` file (transformers' `Qwen3ForCausalLM`
without ``lm_head``): ``model.embed_tokens``, ``model.layers.N.self_attn.q_proj`` ... ``model.norm``, so
LoRA keys and the file match without renaming; `load_qwen3_encoder` also takes transformers' bare
`Qwen3Model` keys, and drops an ``lm_head.weight`` (Qwen3-4B ties it to the embedding; the encoder has no
use for it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads
from diffusion.devices import compute_device
from diffusion.fused_linear import FusedLinear
from diffusion.qwen_tokenizer import PAD_ID, QwenTokenizer, load_qwen_tokenizer
from diffusion.stored_weights import StoredEmbedding
from diffusion.unet_config import CheckpointLayoutError, load_exact, require_key

__all__ = [
    "COMPONENT",
    "Z_IMAGE_TEMPLATE",
    "Qwen3Config",
    "Qwen3Encoder",
    "Qwen3PromptStates",
    "comfy_attention_mask",
    "encode_prompt",
    "load_qwen3_encoder",
    "qwen3_config_from_state_dict",
]

COMPONENT = "Qwen3 text encoder"
Z_IMAGE_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
# Hidden state Z-Image conditions on: transformers' `hidden_states[-2]`.
Z_IMAGE_HIDDEN_STATE = -2

_PREFIX = "model."
_BARE_KEY = re.compile(r"^(embed_tokens|layers|norm)\.")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
_LAYOUT = "a Qwen3 text encoder state dict"


@dataclass(frozen=True)
class Qwen3Config:
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    # Not stored in the weights: Qwen3's published values (see the module docstring).
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0


class Qwen3RmsNorm(nn.Module):
    """Scale-only RMS norm over the last dimension, the statistic in fp32, the result in the input's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * normed.to(x.dtype)


class RotaryHalves(NamedTuple):
    """cos and sin [T, head_dim] of each position's angles, each frequency on both halves of a head."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, length: int, head_dim: int, theta: float, device: torch.device) -> RotaryHalves:
        # fp32 throughout, as transformers and ComfyUI compute them: ComfyUI's states are what Loom reproduces.
        frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
        angles = torch.arange(length, device=device).float()[:, None] * frequencies[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return cls(angles.cos(), angles.sin())

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate [B, heads, T, head_dim] so that feature i pairs with feature i + head_dim / 2."""
        first, second = x.chunk(2, dim=-1)
        turned = torch.cat((-second, first), dim=-1)
        return x * self.cos.to(x.dtype) + turned * self.sin.to(x.dtype)


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.config = config
        self.q_proj = FusedLinear(config.hidden_size, config.heads * config.head_dim, bias=False)
        self.k_proj = FusedLinear(config.hidden_size, config.kv_heads * config.head_dim, bias=False)
        self.v_proj = FusedLinear(config.hidden_size, config.kv_heads * config.head_dim, bias=False)
        self.o_proj = FusedLinear(config.heads * config.head_dim, config.hidden_size, bias=False)
        self.q_norm = Qwen3RmsNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = Qwen3RmsNorm(config.head_dim, config.rms_norm_eps)

    def _heads(self, projected: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = projected.shape
        return projected.reshape(b, t, heads, self.config.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: RotaryHalves, mask: torch.Tensor | None) -> torch.Tensor:
        config = self.config
        q = rope.rotate(self.q_norm(self._heads(self.q_proj(x), config.heads)))
        k = rope.rotate(self.k_norm(self._heads(self.k_proj(x), config.kv_heads)))
        v = self._heads(self.v_proj(x), config.kv_heads)
        # Key/value head j serves the query heads [j * group, (j + 1) * group).
        group = config.heads // config.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if mask is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.o_proj(merge_heads(attended))


class Qwen3Mlp(nn.Module):
    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.gate_proj = FusedLinear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = FusedLinear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = FusedLinear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.gate_proj(x))
        # The product is fused into the up projection's matmul where oneDNN runs it.
        return self.down_proj(self.up_proj.times(x, gate))


class Qwen3Layer(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.input_layernorm = Qwen3RmsNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen3Attention(config)
        self.post_attention_layernorm = Qwen3RmsNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen3Mlp(config)

    def forward(self, x: torch.Tensor, rope: RotaryHalves, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Transformer(nn.Module):
    """What the file stores under ``model.``: the token embedding, the layers and the final norm."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.embed_tokens = StoredEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3Layer(config) for _ in range(config.layers))
        self.norm = Qwen3RmsNorm(config.hidden_size, config.rms_norm_eps)


def _attention_bias(attention_mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive bias: causal, and no query attends a key whose mask is 0."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = allowed[None, None] & (attention_mask != 0)[:, None, None, :]
    # The most negative finite value, not -inf: a query that may attend nothing stays finite.
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


class Qwen3Encoder(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen3Transformer(config)

    def forward(
        self,
        token_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        hidden_state: int = Z_IMAGE_HIDDEN_STATE,
    ) -> torch.Tensor:
        """[B, T] token ids to the [B, T, hidden] states at index `hidden_state` of transformers'
        ``output_hidden_states`` tuple: 0 is the embeddings, k the output of the k-th layer, the last
        (index `layers`, or -1) the last layer's output through the final norm; the default -2 is the
        second-to-last layer's raw output. Only the layers that index needs are run.

        Attention is causal. `attention_mask` [B, T] marks the keys that may be attended (nonzero); the
        positions are 0..T-1 whatever the mask, as in transformers and ComfyUI, so padding on the right
        leaves the states of the tokens before it unchanged.
        """
        layers = self.config.layers
        index = hidden_state + layers + 1 if hidden_state < 0 else hidden_state
        if not 0 <= index <= layers:
            raise ValueError(f"hidden state {hidden_state} does not exist: a {layers}-layer model has {layers + 1}")
        x = self.model.embed_tokens(token_ids)
        length = token_ids.shape[-1]
        rope = RotaryHalves.of(length, self.config.head_dim, self.config.rope_theta, x.device)
        mask = None if attention_mask is None else _attention_bias(attention_mask.to(x.device), length, x.dtype)
        for layer in self.model.layers[:index]:
            x = layer(x, rope, mask)
        return self.model.norm(x) if index == layers else x


def _file_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights under the file's keys: `Qwen3Model`'s bare keys prefixed with ``model.``, no ``lm_head``."""
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == "lm_head.weight":
            continue
        weights[_PREFIX + key if _BARE_KEY.match(key) else key] = tensor
    return weights


def _shape(weights: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(require_key(weights, key, COMPONENT, _LAYOUT).shape)


def qwen3_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Qwen3Config:
    """Read a Qwen3 model's sizes from its weights (keys with or without the file's ``model.`` prefix)."""
    weights = _file_layout(state_dict)
    vocab_size, hidden_size = _shape(weights, "model.embed_tokens.weight")
    attention = "model.layers.0.self_attn."
    (head_dim,) = _shape(weights, attention + "q_norm.weight")
    query_width = _shape(weights, attention + "q_proj.weight")[0]
    key_width = _shape(weights, attention + "k_proj.weight")[0]
    intermediate_size = _shape(weights, "model.layers.0.mlp.gate_proj.weight")[0]
    for key, width in ((attention + "q_proj.weight", query_width), (attention + "k_proj.weight", key_width)):
        if width % head_dim:
            raise CheckpointLayoutError(COMPONENT, key, f"width {width} is not a multiple of head_dim {head_dim}")
    heads, kv_heads = query_width // head_dim, key_width // head_dim
    if heads % kv_heads:
        raise CheckpointLayoutError(
            COMPONENT, attention + "k_proj.weight", f"{kv_heads} key/value heads do not divide {heads} query heads"
        )
    indices = {int(match.group(1)) for key in weights if (match := _LAYER_KEY.match(key))}
    if indices != set(range(len(indices))):
        missing = min(set(range(max(indices) + 1)) - indices)
        key = f"model.layers.{missing}.input_layernorm.weight"
        raise CheckpointLayoutError(COMPONENT, key, f"missing: layer indices are not contiguous, {sorted(indices)}")
    return Qwen3Config(
        hidden_size=hidden_size,
        layers=len(indices),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
    )


def load_qwen3_encoder(state_dict: Mapping[str, torch.Tensor]) -> Qwen3Encoder:
    """Build a `Qwen3Encoder` whose parameters are the given tensors themselves (memory-mapped ones stay mapped).

    Keys as in `qwen_3_4b.safetensors` (``model.``) or transformers' `Qwen3Model` (bare); ``lm_head.weight`` is
    ignored. Weights stay in their stored dtype (bf16, fp16, fp8), each layer casting at compute once placed
    (``diffusion.model_memory.place``); a scaled-fp8 file's ``scale_weight`` tensors go to their layers. A state
    dict of another layout raises `CheckpointLayoutError` naming the first key missing, unexpected or misshapen.
    """
    weights = _file_layout(state_dict)
    config = qwen3_config_from_state_dict(weights)
    with torch.device("meta"):
        model = Qwen3Encoder(config)
    load_exact(model, weights, COMPONENT)
    return model


def comfy_attention_mask(token_ids: list[int]) -> list[int]:
    """ComfyUI's attention mask of a Qwen prompt: 1 up to the first `PAD_ID` (``<|endoftext|>``), 0 from it on."""
    end = token_ids.index(PAD_ID) if PAD_ID in token_ids else len(token_ids)
    return [1] * end + [0] * (len(token_ids) - end)


class Qwen3PromptStates(NamedTuple):
    states: torch.Tensor  # [1, T, hidden] fp32: the conditioning, one vector per token
    attention_mask: torch.Tensor  # [1, T] int64: ComfyUI's mask, all ones unless the prompt writes <|endoftext|>
    token_ids: list[int]


def encode_prompt(
    model: Qwen3Encoder,
    prompt: str,
    template: str = Z_IMAGE_TEMPLATE,
    hidden_state: int = Z_IMAGE_HIDDEN_STATE,
    tokenizer: QwenTokenizer | None = None,
) -> Qwen3PromptStates:
    """The conditioning ComfyUI computes for `prompt` (by default Z-Image's): the prompt in `template`,
    tokenized as ComfyUI does, through `model` (placed where and in the dtype it should compute) under
    ComfyUI's attention mask, the states at `hidden_state` returned in fp32 with that mask."""
    tokenizer = load_qwen_tokenizer() if tokenizer is None else tokenizer
    ids = tokenizer.encode_templated(prompt, template)
    mask = comfy_attention_mask(ids)
    device = compute_device(model)
    token_ids = torch.tensor([ids], dtype=torch.long, device=device)
    attention_mask = torch.tensor([mask], dtype=torch.long)
    with torch.no_grad():
        states = model(token_ids, None if all(mask) else attention_mask.to(device), hidden_state)
    return Qwen3PromptStates(states.float(), attention_mask, ids)
