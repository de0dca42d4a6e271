"""FLUX.1's text conditioning: T5-XXL's token states and CLIP-L's pooled vector.

FLUX reads two things from its prompt, as Black Forest Labs' pipeline and ComfyUI give them: the T5-XXL
encoder's states of every token (the sequence it attends to, 4096 wide) and CLIP-L's pooled end-token
vector (768 wide, without CLIP's projection), which modulates every block. ComfyUI's conventions, which
workflows were tuned with:

- T5 ids are the prompt's pieces and the end-of-sequence token, padded with the pad token to at least 256
  and never cut; the padding is attended to (no attention mask), as in ComfyUI's default.
- Emphasis ``(word:1.2)`` weights T5 states as it weights CLIP's (``stack.py``): a weighted position moves
  away from the empty prompt's state at that position, ``z_empty + (z - z_empty) * w``.
- CLIP-L runs as in SD1.x (77-token windows); only the first window's pooled vector is used.

States narrower than FLUX's input widths (only tiny test encoders are) are zero-padded to them, so tiny
files drive a tiny transformer exactly as real ones drive a real one; real encoders are already that wide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.embeddings import EmbeddingResolver
from diffusion.prompt_weights import parse_prompt_weights
from diffusion.t5_tokenizer import EOS_ID, PAD_ID, T5Tokenizer, load_t5_tokenizer
from diffusion.text_encoders.stack import ClipStack, EncoderRole
from diffusion.text_encoders.t5 import T5Encoder

__all__ = ["FLUX_CONTEXT_WIDTH", "FLUX_POOLED_WIDTH", "T5_MIN_LENGTH", "FluxTextEncoders", "t5_weighted_tokens"]

FLUX_CONTEXT_WIDTH = 4096
FLUX_POOLED_WIDTH = 768
T5_MIN_LENGTH = 256


@dataclass(frozen=True)
class T5Tokens:
    ids: list[int]
    weights: list[float]

    @property
    def is_weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


def t5_weighted_tokens(text: str, tokenizer: T5Tokenizer, min_length: int = T5_MIN_LENGTH) -> T5Tokens:
    """T5 ids of a prompt with their emphasis weights: each weighted run's pieces, the end token, then padding
    to `min_length` (weight 1)."""
    ids: list[int] = []
    weights: list[float] = []
    for segment in parse_prompt_weights(text):
        pieces = tokenizer.encode(segment.text)[:-1]  # the end-of-sequence token closes the whole prompt
        ids += pieces
        weights += [segment.weight] * len(pieces)
    ids.append(EOS_ID)
    weights.append(1.0)
    padding = max(min_length - len(ids), 0)
    return T5Tokens(ids + [PAD_ID] * padding, weights + [1.0] * padding)


def _widened(states: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(states, (0, width - states.shape[-1])) if states.shape[-1] < width else states


class FluxTextEncoders:
    """The CLIP-L + T5-XXL pair a ``DualCLIPLoader(type=flux)`` gives; ``encode`` returns (cond, pooled)."""

    family = "flux"

    def __init__(self, clip_l: ClipStack, t5: T5Encoder, tokenizer: T5Tokenizer | None = None) -> None:
        if clip_l.family != "sd15":
            raise ValueError(f"FLUX's CLIP-L is run as SD1.x runs it, not as {clip_l.family}")
        self.clip_l = clip_l
        self.t5 = t5
        self.tokenizer = tokenizer or load_t5_tokenizer()

    @property
    def roles(self) -> tuple[EncoderRole, ...]:
        """The CLIP encoders, in the order LoRA files number them (T5 takes no CLIP LoRA)."""
        return self.clip_l.roles

    @property
    def encoders(self) -> Mapping[str, nn.Module]:
        return self.clip_l.encoders

    @property
    def layer_count(self) -> int:
        return self.clip_l.layer_count

    def modules(self) -> list[nn.Module]:
        """Every module this pair computes with, T5 included (for placement and memory accounting)."""
        return [*self.clip_l.modules(), self.t5]

    def encode(
        self,
        text: str | Mapping[str, str],
        clip_skip: int | None = None,
        resolve_embedding: EmbeddingResolver | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 states [1, >= 256, 4096], CLIP-L pooled [1, 768]); `text` may differ per encoder
        (``CLIPTextEncodeFlux``: keys ``clip_l`` and ``t5xxl``)."""
        clip_text = text if isinstance(text, str) else text["clip_l"]
        t5_text = text if isinstance(text, str) else text["t5xxl"]
        _, pooled = self.clip_l.encode(clip_text, clip_skip, resolve_embedding)
        return _widened(self.encode_t5(t5_text), FLUX_CONTEXT_WIDTH), _widened(pooled, FLUX_POOLED_WIDTH)

    def encode_t5(self, text: str) -> torch.Tensor:
        tokens = t5_weighted_tokens(text, self.tokenizer)
        device = next(self.t5.parameters()).device
        batch = [tokens.ids]
        if tokens.is_weighted:
            batch.append(t5_weighted_tokens("", self.tokenizer, len(tokens.ids)).ids)
        with torch.inference_mode():
            states = self.t5(torch.tensor(batch, device=device))
        if not tokens.is_weighted:
            return states
        z, z_empty = states[:1], states[1:]
        weights = torch.tensor(tokens.weights, device=device, dtype=states.dtype)[None, :, None]
        # Positions of weight 1 keep their states bit for bit (the formula would round them).
        return torch.where(weights == 1.0, z, z_empty + (z - z_empty) * weights)
