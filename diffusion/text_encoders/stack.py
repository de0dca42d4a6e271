"""Prompt text to conditioning for each Stable Diffusion family: tokenizer(s) plus text encoder(s).

What each family feeds its UNet (from the original LDM/SGM conditioners, as ComfyUI reproduces them):

| family       | encoders         | default layer | final LayerNorm on it | pooled                        |
|--------------|------------------|---------------|-----------------------|-------------------------------|
| sd15         | clip_l           | last (-1)     | yes                   | clip_l end token (unused)     |
| sd2          | clip_h           | penultimate   | yes                   | clip_h end token, projected   |
| sdxl         | clip_l + clip_g  | penultimate   | no                    | clip_g end token, projected   |
| sdxl_refiner | clip_g           | penultimate   | no                    | clip_g end token, projected   |

SDXL concatenates the two encoders' states feature-wise (768 + 1280 = 2048). A clip skip replaces the
default layer of every encoder of the family and keeps the family's LayerNorm choice.

Emphasis follows ComfyUI: per position, ``z = z_empty + (z - z_empty) * w``, where `z_empty` is the
encoding of the empty prompt at the same position. A1111 instead scales `z` and restores its mean; the
ComfyUI form keeps weight 1.0 an exact no-op and scales only the weighted positions' departure from "nothing".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from diffusion.devices import compute_device
from diffusion.embeddings import EmbeddingResolver
from diffusion.prompt_weights import TokenWindow, WindowSpec, empty_window, tokenize_prompt
from diffusion.text_encoders.clip_model import Activation, ClipTextModel, TokenOverride
from diffusion.text_encoders.layouts import load_clip_text_model
from diffusion.tokenizer import ClipBpeTokenizer, load_clip_tokenizer

__all__ = ["EncoderRole", "FAMILY_ENCODERS", "ClipStack", "encode_windows"]


@dataclass(frozen=True)
class EncoderRole:
    """How one family uses one text encoder."""

    name: str
    activation: Activation
    pad_id: int
    default_layer: int
    normalize_hidden: bool


_CLIP_L_SD1 = EncoderRole("clip_l", "quick_gelu", pad_id=49407, default_layer=-1, normalize_hidden=True)
_CLIP_H = EncoderRole("clip_h", "gelu", pad_id=0, default_layer=-2, normalize_hidden=True)
_CLIP_L_SDXL = EncoderRole("clip_l", "quick_gelu", pad_id=49407, default_layer=-2, normalize_hidden=False)
_CLIP_G = EncoderRole("clip_g", "gelu", pad_id=0, default_layer=-2, normalize_hidden=False)

# In conditioning order; the last encoder provides the pooled output.
FAMILY_ENCODERS: dict[str, tuple[EncoderRole, ...]] = {
    "sd15": (_CLIP_L_SD1,),
    "sd2": (_CLIP_H,),
    "sdxl": (_CLIP_L_SDXL, _CLIP_G),
    "sdxl_refiner": (_CLIP_G,),
    # SD3's CLIP pair is SDXL's (penultimate layer, no final LayerNorm); ``t5_stacks`` adds T5 and the pooling.
    "sd3": (_CLIP_L_SDXL, _CLIP_G),
    # Chroma conditions on T5 alone (``t5_stacks``): no CLIP.
    "chroma": (),
}


#: Families that run with some of their encoders missing (SD3 zeroes a missing encoder's part).
PARTIAL_FAMILIES = frozenset({"sd3"})


def _family_roles(family: str, available: Mapping[str, object]) -> tuple[EncoderRole, ...]:
    """The family's roles present in `available`: all of them, or any subset for ``PARTIAL_FAMILIES``."""
    if family not in FAMILY_ENCODERS:
        raise ValueError(f"unknown text-encoder family {family!r}; expected one of {sorted(FAMILY_ENCODERS)}")
    roles = FAMILY_ENCODERS[family]
    missing = [role.name for role in roles if role.name not in available]
    if missing and family not in PARTIAL_FAMILIES:
        raise ValueError(f"family {family!r} needs text encoders {missing}; got {sorted(available)}")
    return tuple(role for role in roles if role.name in available)


def _device(model: ClipTextModel) -> torch.device:
    return compute_device(model)


def encode_windows(
    model: ClipTextModel, windows: Sequence[TokenWindow], empty: TokenWindow, *, layer: int, normalize_hidden: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode windows in one batch: (cond [1, len(windows) * length, width], pooled [1, dim] of window 0).

    The empty prompt rides along in the batch only when some weight is not 1.
    """
    weighted = any(w.is_weighted for w in windows)
    batch = [*windows, empty] if weighted else list(windows)
    device = _device(model)
    ids = torch.tensor([w.ids for w in batch], device=device)
    eos = torch.tensor([w.eos_position for w in batch], device=device)
    overrides: list[TokenOverride] = [(b, pos, vec) for b, w in enumerate(batch) for pos, vec in w.embeddings]
    with torch.inference_mode():
        hidden, pooled = model(ids, eos, layer=layer, normalize_hidden=normalize_hidden, overrides=overrides)
        if weighted:
            z, z_empty = hidden[:-1], hidden[-1:]
            weights = torch.tensor([w.weights for w in windows], device=device, dtype=hidden.dtype).unsqueeze(-1)
            # Positions of weight 1 keep their states bit for bit (the formula would round them).
            hidden = torch.where(weights == 1.0, z, z_empty + (z - z_empty) * weights)
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled[:1]


class ClipStack:
    """The tokenizer and text encoder(s) of one model family.

    ``slots`` are the family's encoders in order, as LoRA files number them (``lora_te1``, ``lora_te2``);
    ``roles`` are those this stack has, the same unless the family runs with some missing.
    """

    def __init__(
        self, family: str, encoders: Mapping[str, ClipTextModel], tokenizer: ClipBpeTokenizer | None = None
    ) -> None:
        self.family = family
        self.roles = _family_roles(family, encoders)
        self.slots = FAMILY_ENCODERS[family]
        self.encoders = {role.name: encoders[role.name] for role in self.roles}
        self.tokenizer = tokenizer or load_clip_tokenizer()
        self.specs = {
            role.name: WindowSpec(
                pad_id=role.pad_id,
                embedding_key=role.name,
                width=self.encoders[role.name].config.width,
                length=self.encoders[role.name].config.positions,
            )
            for role in self.roles
        }

    @classmethod
    def from_state_dicts(
        cls, family: str, state_dicts: Mapping[str, Mapping[str, torch.Tensor]], head_width: int = 64
    ) -> ClipStack:
        """Build from prefix-stripped state dicts keyed by encoder name (`clip_l`, `clip_h`, `clip_g`)."""
        roles = _family_roles(family, state_dicts)
        encoders = {
            role.name: load_clip_text_model(state_dicts[role.name], role.activation, head_width) for role in roles
        }
        return cls(family, encoders)

    def modules(self) -> list[ClipTextModel]:
        """Every module this stack computes with (for placement and memory accounting)."""
        return list(self.encoders.values())

    @property
    def layer_count(self) -> int:
        """The deepest clip skip valid for every encoder of the family (0: no CLIP encoder to skip in)."""
        return min((model.config.layers for model in self.encoders.values()), default=0)

    def tokenize(
        self, text: str | Mapping[str, str], resolve_embedding: EmbeddingResolver | None = None
    ) -> dict[str, list[TokenWindow]]:
        """Windows per encoder; `text` may differ per encoder (SDXL's `text_l`/`text_g`).

        Encoders whose text needs fewer windows get empty-prompt windows appended, so that the encoders'
        states line up position by position when concatenated.
        """
        texts = {role.name: text if isinstance(text, str) else text[role.name] for role in self.roles}
        tokens = {
            name: tokenize_prompt(texts[name], self.tokenizer, self.specs[name], resolve_embedding) for name in texts
        }
        count = max((len(windows) for windows in tokens.values()), default=0)
        for name, windows in tokens.items():
            windows += [empty_window(self.tokenizer, self.specs[name])] * (count - len(windows))
        return tokens

    def encode_tokens(
        self, tokens: Mapping[str, Sequence[TokenWindow]], clip_skip: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [1, 77 * windows, sum of widths], pooled [1, dim]); `clip_skip` -1 = last layer, None = default."""
        encoded = self.encode_each(tokens, clip_skip)
        return torch.cat([cond for cond, _ in encoded.values()], dim=-1), list(encoded.values())[-1][1]

    def encode_each(
        self, tokens: Mapping[str, Sequence[TokenWindow]], clip_skip: int | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per encoder, in family order: (cond [1, 77 * windows, width], pooled [1, dim])."""
        if clip_skip is not None and not -self.layer_count <= clip_skip <= -1:
            raise ValueError(f"clip skip {clip_skip} out of range for {self.family}: -1 .. -{self.layer_count}")
        counts = {role.name: len(tokens[role.name]) for role in self.roles}
        if len(set(counts.values())) > 1:
            raise ValueError(f"text encoders got different window counts {counts}; tokenize() aligns them")
        return {
            role.name: encode_windows(
                self.encoders[role.name],
                tokens[role.name],
                empty_window(self.tokenizer, self.specs[role.name]),
                layer=role.default_layer if clip_skip is None else clip_skip,
                normalize_hidden=role.normalize_hidden,
            )
            for role in self.roles
        }

    def encode(
        self,
        text: str | Mapping[str, str],
        clip_skip: int | None = None,
        resolve_embedding: EmbeddingResolver | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt text to (cond, pooled) for this family's UNet."""
        return self.encode_tokens(self.tokenize(text, resolve_embedding), clip_skip)
