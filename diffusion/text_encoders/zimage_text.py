"""Z-Image's text conditioning: Qwen3-4B's states of the chat-templated prompt, one vector per token.

What ``CLIPLoader(type=lumina2)`` gives for `qwen_3_4b.safetensors`, seen by loaders, LoRA and memory like
the CLIP stacks (``stack.py``) but with no CLIP in it: no pooled vector (Z-Image takes none), no clip skip
(the layer is fixed: the second-to-last, ``qwen3.Z_IMAGE_HIDDEN_STATE``), no emphasis (ComfyUI tokenizes
these prompts with weights disabled, so ``(word:1.2)`` is literal text). ComfyUI's attention mask of a
Qwen prompt ends at its first ``<|endoftext|>`` and Z-Image reads only the tokens before it, so the
conditioning is cut there (``qwen3.comfy_attention_mask``); a prompt that does not write it keeps every token.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.embeddings import EmbeddingResolver
from diffusion.text_encoders.qwen3 import Qwen3Encoder, encode_prompt
from diffusion.text_encoders.stack import EncoderRole

__all__ = ["CAPTION_WIDTH", "ZImageTextEncoder"]

#: Qwen3-4B's width, which Z-Image's caption embedder reads; narrower states (tiny test encoders only) are
#: zero-padded to it, as the T5 stacks pad theirs.
CAPTION_WIDTH = 2560


class ZImageTextEncoder:
    """Qwen3-4B as Z-Image's text encoder; ``encode`` returns (states [1, tokens, 2560], None)."""

    family = "zimage"
    #: No CLIP encoders: LoRA files' text-encoder parts and clip skip have nothing to act on.
    roles: tuple[EncoderRole, ...] = ()
    slots: tuple[EncoderRole, ...] = ()
    encoders: Mapping[str, nn.Module] = {}
    layer_count = 0

    def __init__(self, model: Qwen3Encoder) -> None:
        self.model = model

    def modules(self) -> list[nn.Module]:
        """Every module the encoder computes with (for placement and memory accounting)."""
        return [self.model]

    def encode(
        self,
        text: str | Mapping[str, str],
        clip_skip: int | None = None,
        resolve_embedding: EmbeddingResolver | None = None,
    ) -> tuple[torch.Tensor, None]:
        """The prompt's states up to ComfyUI's mask end, and no pooled vector; `clip_skip` and
        `resolve_embedding` have no meaning here (no CLIP, no embeddings) and are ignored, as in ComfyUI."""
        if not isinstance(text, str):
            raise ValueError(f"Z-Image's text encoder takes one prompt, not one per encoder ({sorted(text)})")
        encoded = encode_prompt(self.model, text)
        states = encoded.states[:, : int(encoded.attention_mask.sum())]
        return F.pad(states, (0, max(CAPTION_WIDTH - states.shape[-1], 0))), None
