"""Tiny random transformers CLIP text models, and their weights in the two checkpoint layouts.

The reference is transformers' `CLIPTextModel` (QuickGELU, OpenAI CLIP-L style) and
`CLIPTextModelWithProjection` (GELU, standing in for the OpenCLIP towers). The full 49,408-token vocabulary
is kept so real tokenizer ids work. LayerNorm scales and biases are randomised: left at 1/0, a `ln_1`/`ln_2`
or `layer_norm1`/`final_layer_norm` mix-up in a key mapping would go unnoticed.

The OpenCLIP layout is the inverse of Loom's mapping, written independently here: q/k/v stacked into
`in_proj_weight`/`in_proj_bias`, the projection stored as [width, dim], and `logit_scale`/`attn_mask` extras
that real files carry.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

WIDTH = 32
HEADS = 4
HEAD_WIDTH = WIDTH // HEADS
PROJECTION_DIM = 24
VOCAB_FILE = Path(__file__).resolve().parents[2] / "diffusion" / "data" / "bpe_simple_vocab_16e6.txt.gz"

ReferenceModel = CLIPTextModel | CLIPTextModelWithProjection


def tiny_reference_model(layers: int, hidden_act: str, with_projection: bool, seed: int) -> ReferenceModel:
    config = CLIPTextConfig(
        hidden_size=WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=37,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn_like(param) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05)
    return model


def text_model(model: ReferenceModel) -> CLIPTextModel:
    """The transformer under an optional projection head."""
    return model.text_model if isinstance(model, CLIPTextModelWithProjection) else model


def hf_layout(model: ReferenceModel) -> dict[str, torch.Tensor]:
    """Keys as SD1/SDXL files store them after their container prefix (`text_model.` restored)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("text_model.") or key.startswith("text_projection."):
            out[key] = tensor.clone()
        else:
            out[f"text_model.{key}"] = tensor.clone()
    return out


_OPENCLIP_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_layout(model: ReferenceModel) -> dict[str, torch.Tensor]:
    """Keys as SD2/SDXL files store the OpenCLIP text tower after `cond_stage_model.model.` and the like."""
    tm = text_model(model)
    sd = {k: v.clone() for k, v in tm.state_dict().items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        "logit_scale": torch.tensor(4.6052),
        "attn_mask": torch.full((77, 77), float("-inf")).triu(1),
    }
    for i in range(tm.config.num_hidden_layers):
        p = f"encoder.layers.{i}."
        q = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{q}attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(f"{p}self_attn.{n}_proj.{kind}") for n in ("q", "k", "v")], dim=0
            )
            for ours, theirs in _OPENCLIP_BLOCK.items():
                out[f"{q}{theirs}.{kind}"] = sd.pop(f"{p}{ours}.{kind}")
    assert not [k for k in sd if k != "embeddings.position_ids"], f"unconverted keys: {list(sd)}"
    if isinstance(model, CLIPTextModelWithProjection):
        out["text_projection"] = model.text_projection.weight.detach().t().contiguous()
    return out


def reference_tokenizer(folder: Path) -> CLIPTokenizer:
    """transformers' CLIPTokenizer over files derived from the shipped vocabulary, as diffusion/tokenizer.py
    derives its own."""
    lines = gzip.open(VOCAB_FILE, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@dataclass(frozen=True)
class ReferenceStates:
    blocks: tuple[torch.Tensor, ...]  # output of every block, no final LayerNorm; [-1] is the last
    final_norm: torch.nn.LayerNorm
    last: torch.Tensor  # transformers' last_hidden_state
    pooled: torch.Tensor  # transformers' pooler_output, or text_embeds for the projection model


@torch.no_grad()
def reference_states(model: ReferenceModel, ids: torch.Tensor) -> ReferenceStates:
    tm = text_model(model)
    out = tm(ids, output_hidden_states=True)
    pooled = model(ids).text_embeds if isinstance(model, CLIPTextModelWithProjection) else out.pooler_output
    return ReferenceStates(tuple(out.hidden_states[1:]), tm.final_layer_norm, out.last_hidden_state, pooled)
