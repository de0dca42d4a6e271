"""The CLIP text transformer (Radford et al. 2021) shared by every Stable Diffusion text encoder.

OpenAI CLIP-L/14, OpenCLIP ViT-H/14 and ViT-bigG/14 are one architecture with different sizes: token plus
learned position embeddings, pre-LayerNorm residual blocks with causal self-attention, a final LayerNorm and,
for the OpenCLIP towers, a projection of the end-token state. OpenAI's model uses QuickGELU
(``x * sigmoid(1.702 x)``), OpenCLIP's the exact GELU; that is not visible in the weights, so it is configured.

Submodule names follow transformers' `CLIPTextModel` (without its `text_model.` level), the naming of
diffusers folders and of kohya LoRA keys (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`), so those
map onto this module by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.attention import merge_heads, split_heads
from diffusion.fused_linear import FusedLinear
from diffusion.stored_weights import StoredEmbedding

__all__ = ["Activation", "ClipTextConfig", "ClipTextModel", "ClipTextOutput", "TokenOverride"]

Activation = Literal["quick_gelu", "gelu", "gelu_tanh"]
# (batch index, position, vector): a textual-inversion vector that replaces one token embedding.
TokenOverride = tuple[int, int, torch.Tensor]


@dataclass(frozen=True)
class ClipTextConfig:
    width: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    positions: int
    activation: Activation
    projection_dim: int | None = None
    layer_norm_eps: float = 1e-5


class ClipTextOutput(NamedTuple):
    hidden: torch.Tensor  # [B, T, width], the requested layer
    pooled: torch.Tensor  # [B, projection_dim or width], end-token state of the last layer


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ClipAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q_proj = FusedLinear(width, width)
        self.k_proj = FusedLinear(width, width)
        self.v_proj = FusedLinear(width, width)
        self.out_proj = FusedLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        # CLIP's text tower is causal: it was trained autoregressively-masked, so a token never sees later ones
        # (which is also why padding after the end token cannot change the prompt's states). Vision towers are not.
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)))


class ClipMlp(nn.Module):
    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, width: int, intermediate: int, activation: Activation) -> None:
        super().__init__()
        self.fc1 = FusedLinear(width, intermediate)
        self.fc2 = FusedLinear(intermediate, width)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN fuses the exact and tanh GELUs into fc1; quick GELU (x * sigmoid(1.702 x)) has no fused form.
        if self.activation == "quick_gelu":
            return self.fc2(_quick_gelu(self.fc1(x)))
        approximate: Literal["none", "tanh"] = "tanh" if self.activation == "gelu_tanh" else "none"
        return self.fc2(self.fc1.gelu(x, approximate))


class ClipEncoderLayer(nn.Module):
    """One pre-norm transformer layer in transformers' CLIP/SigLIP key layout, shared by the text and vision towers."""

    def __init__(
        self, width: int, heads: int, intermediate: int, activation: Activation, layer_norm_eps: float, causal: bool
    ) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.self_attn = ClipAttention(width, heads, causal)
        self.layer_norm2 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.mlp = ClipMlp(width, intermediate, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEmbeddings(nn.Module):
    #: Reads its layers' weights in its own forward, so it is streamed whole (diffusion/weight_streaming.py).
    loom_stream_whole = True

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.token_embedding = StoredEmbedding(config.vocab_size, config.width)
        self.position_embedding = StoredEmbedding(config.positions, config.width)

    def forward(self, token_ids: torch.Tensor, overrides: Sequence[TokenOverride] = ()) -> torch.Tensor:
        tokens = self.token_embedding(token_ids)
        for batch, position, vector in overrides:
            tokens[batch, position] = vector.to(tokens)
        return tokens + self.position_embedding.compute_weight()[: token_ids.shape[-1]]


class ClipEncoder(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ClipEncoderLayer(
                config.width, config.heads, config.intermediate, config.activation, config.layer_norm_eps, causal=True
            )
            for _ in range(config.layers)
        )


class ClipTextModel(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ClipEmbeddings(config)
        self.encoder = ClipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.text_projection = (
            FusedLinear(config.width, config.projection_dim, bias=False) if config.projection_dim is not None else None
        )

    def forward(
        self,
        token_ids: torch.Tensor,
        eos_positions: torch.Tensor,
        *,
        layer: int = -1,
        normalize_hidden: bool = True,
        overrides: Sequence[TokenOverride] = (),
    ) -> ClipTextOutput:
        """Encode [B, T] token ids.

        `layer` picks the block whose output is returned (-1 the last, -2 the one before: "clip skip"), with
        the final LayerNorm applied when `normalize_hidden` (SD1/SD2 do, SDXL does not). The pooled output
        always comes from the last block through the final LayerNorm at `eos_positions` [B], then through
        the projection if the model has one.
        """
        count = self.config.layers
        if not -count <= layer <= -1:
            raise ValueError(f"CLIP layer {layer} out of range: this text encoder has {count} layers (-1 .. -{count})")
        x = self.embeddings(token_ids, overrides)
        selected = x
        for index, block in enumerate(self.encoder.layers):
            x = block(x)
            if index == count + layer:
                selected = x
        last = self.final_layer_norm(x)
        hidden = self.final_layer_norm(selected) if normalize_hidden else selected
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_positions.to(last.device)]
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return ClipTextOutput(hidden, pooled)
