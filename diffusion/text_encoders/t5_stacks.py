"""The text conditioning of the T5-XXL families: FLUX.1 (CLIP-L + T5), SD3 / SD3.5 (CLIP-L + CLIP-G + T5) and
Chroma (T5 alone).

FLUX reads two things from its prompt, as Black Forest Labs' pipeline and ComfyUI give them: the T5-XXL
encoder's states of every token (the sequence it attends to, 4096 wide) and CLIP-L's pooled end-token
vector (768 wide, without CLIP's projection), which modulates every block. SD3 attends to CLIP-L's and
CLIP-G's penultimate states side by side (768 + 1280, zero-padded to 4096) followed by T5's, and is
modulated by CLIP-L's unprojected and CLIP-G's projected pooled vectors (2048). ComfyUI's conventions,
which workflows were tuned with:

- T5 ids are the prompt's pieces and the end-of-sequence token, padded with the pad token to at least 256
  (FLUX) or 77 (SD3) and never cut; the padding is attended to (no attention mask), as in ComfyUI's default.
  ``T5Padding`` replaces both defaults (``T5TokenizerOptions``): `min_padding` pad tokens always follow the end
  token, then the ids are padded to `min_length`.
- Emphasis ``(word:1.2)`` weights T5 states as it weights CLIP's (``stack.py``): a weighted position moves
  away from the empty prompt's state at that position, ``z_empty + (z - z_empty) * w``.
- The CLIP encoders run as in SD1.x / SDXL (77-token windows); pooled vectors come from the first window.
- Chroma's T5 ids are the prompt's and the end token, unpadded (ComfyUI's ``min_length`` 1 for it); its
  official workflow adds one pad token (``T5TokenizerOptions(min_padding=1)``), which Chroma was trained
  to attend to. Every token is attended, the pads included, as the states reach the transformer unmasked.

States narrower than the families' input widths (only tiny test encoders are) are zero-padded to them, so
tiny files drive a tiny transformer exactly as real ones drive a real one; real encoders are that wide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.devices import compute_device
from diffusion.embeddings import EmbeddingResolver
from diffusion.prompt_weights import parse_prompt_weights
from diffusion.t5_tokenizer import EOS_ID, PAD_ID, T5Tokenizer, load_t5_tokenizer
from diffusion.text_encoders.layouts import load_clip_text_model
from diffusion.text_encoders.stack import ClipStack, EncoderRole
from diffusion.text_encoders.t5 import T5Encoder, load_t5_encoder

__all__ = [
    "CHROMA_T5_PADDING",
    "CONTEXT_WIDTH",
    "FLUX_POOLED_WIDTH",
    "FLUX_T5_PADDING",
    "ChromaTextEncoders",
    "SD3_POOLED_WIDTH",
    "SD3_T5_PADDING",
    "SD3_T5_MIN_LENGTH",
    "T5_MIN_LENGTH",
    "FluxTextEncoders",
    "SD3TextEncoders",
    "T5FamilyEncoders",
    "T5Padding",
    "encode_t5",
    "t5_family_encoders",
    "t5_weighted_tokens",
]

#: The width both families attend to: T5-XXL's.
CONTEXT_WIDTH = 4096
FLUX_POOLED_WIDTH = 768
SD3_POOLED_WIDTH = 768 + 1280
T5_MIN_LENGTH = 256
SD3_T5_MIN_LENGTH = 77


@dataclass(frozen=True)
class T5Padding:
    """How T5 ids are padded after the end token: `min_padding` pad tokens always, then up to `min_length`."""

    min_padding: int = 0
    min_length: int = 0


FLUX_T5_PADDING = T5Padding(min_length=T5_MIN_LENGTH)
SD3_T5_PADDING = T5Padding(min_length=SD3_T5_MIN_LENGTH)
CHROMA_T5_PADDING = T5Padding(min_length=1)


@dataclass(frozen=True)
class T5Tokens:
    ids: list[int]
    weights: list[float]

    @property
    def is_weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


def t5_weighted_tokens(text: str, tokenizer: T5Tokenizer, padding: T5Padding = FLUX_T5_PADDING) -> T5Tokens:
    """T5 ids of a prompt with their emphasis weights: each weighted run's pieces, the end token, then the
    padding (weight 1)."""
    ids: list[int] = []
    weights: list[float] = []
    for segment in parse_prompt_weights(text):
        pieces = tokenizer.encode(segment.text)[:-1]  # the end-of-sequence token closes the whole prompt
        ids += pieces
        weights += [segment.weight] * len(pieces)
    ids.append(EOS_ID)
    weights.append(1.0)
    pads = padding.min_padding + max(padding.min_length - len(ids) - padding.min_padding, 0)
    return T5Tokens(ids + [PAD_ID] * pads, weights + [1.0] * pads)


def _widened(states: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(states, (0, width - states.shape[-1])) if states.shape[-1] < width else states


def encode_t5(t5: T5Encoder, tokenizer: T5Tokenizer, text: str, padding: T5Padding) -> torch.Tensor:
    """T5 states [1, tokens, width] of a prompt, with emphasis."""
    tokens = t5_weighted_tokens(text, tokenizer, padding)
    device = compute_device(t5)
    batch = [tokens.ids]
    if tokens.is_weighted:
        batch.append(t5_weighted_tokens("", tokenizer, T5Padding(min_length=len(tokens.ids))).ids)
    with torch.inference_mode():
        states = t5(torch.tensor(batch, device=device))
    if not tokens.is_weighted:
        return states
    z, z_empty = states[:1], states[1:]
    weights = torch.tensor(tokens.weights, device=device, dtype=states.dtype)[None, :, None]
    # Positions of weight 1 keep their states bit for bit (the formula would round them).
    return torch.where(weights == 1.0, z, z_empty + (z - z_empty) * weights)


def _texts(text: str | Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: text if isinstance(text, str) else text[name] for name in names}


class T5FamilyEncoders:
    """A family's CLIP stack plus T5-XXL: what loaders, LoRA and memory see of it (``nodes.clip_handles``)."""

    family: str
    clip_family: str

    def __init__(self, clips: ClipStack, t5: T5Encoder | None, tokenizer: T5Tokenizer | None = None) -> None:
        if clips.family != self.clip_family:
            raise ValueError(f"{self.family}'s CLIP encoders run as {self.clip_family}'s, not as {clips.family}'s")
        self.clips = clips
        self.t5 = t5
        self.tokenizer = tokenizer or load_t5_tokenizer()

    @property
    def roles(self) -> tuple[EncoderRole, ...]:
        """The CLIP encoders this stack has (T5 takes no CLIP LoRA)."""
        return self.clips.roles

    @property
    def slots(self) -> tuple[EncoderRole, ...]:
        """The family's CLIP encoders, in the order LoRA files number them."""
        return self.clips.slots

    @property
    def encoders(self) -> Mapping[str, nn.Module]:
        return self.clips.encoders

    @property
    def layer_count(self) -> int:
        return self.clips.layer_count

    def modules(self) -> list[nn.Module]:
        """Every module the family computes with, T5 included (for placement and memory accounting)."""
        return [*self.clips.modules(), *([self.t5] if self.t5 is not None else [])]


class FluxTextEncoders(T5FamilyEncoders):
    """The CLIP-L + T5-XXL pair a ``DualCLIPLoader(type=flux)`` gives; ``encode`` returns (cond, pooled)."""

    family = "flux"
    clip_family = "sd15"  # CLIP-L run as SD1.x runs it: only its pooled vector is used

    def encode(
        self,
        text: str | Mapping[str, str],
        clip_skip: int | None = None,
        resolve_embedding: EmbeddingResolver | None = None,
        t5_padding: T5Padding = FLUX_T5_PADDING,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 states [1, >= 256, 4096], CLIP-L pooled [1, 768]); `text` may differ per encoder
        (``CLIPTextEncodeFlux``: keys ``clip_l`` and ``t5xxl``)."""
        texts = _texts(text, ("clip_l", "t5xxl"))
        _, pooled = self.clips.encode(texts["clip_l"], clip_skip, resolve_embedding)
        if self.t5 is None:
            raise ValueError("FLUX's text encoders need T5-XXL")
        states = encode_t5(self.t5, self.tokenizer, texts["t5xxl"], t5_padding)
        return _widened(states, CONTEXT_WIDTH), _widened(pooled, FLUX_POOLED_WIDTH)


class SD3TextEncoders(T5FamilyEncoders):
    """CLIP-L, CLIP-G and T5-XXL as SD3 / SD3.5 read them (``TripleCLIPLoader``, the all-in-one files).

    Any of the three may be missing, as ComfyUI allows (``DualCLIPLoader`` with CLIP-L + T5, ``CLIPLoader``
    with T5 alone): a missing CLIP's states and pooled vector are zeros of its width, and without T5 the
    sequence is the CLIP part alone (the releases that ship without it); without either CLIP it is T5's alone.
    """

    family = "sd3"
    clip_family = "sd3"

    def encode(
        self,
        text: str | Mapping[str, str],
        clip_skip: int | None = None,
        resolve_embedding: EmbeddingResolver | None = None,
        t5_padding: T5Padding = SD3_T5_PADDING,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [1, 77 x windows (+ T5 tokens), 4096], pooled [1, 2048]); `text` may differ per encoder
        (``CLIPTextEncodeSD3``: keys ``clip_l``, ``clip_g`` and ``t5xxl``; an absent or None ``t5xxl`` adds no
        T5 tokens)."""
        states, pooled = self._clip_part(text, clip_skip, resolve_embedding)
        t5_text = text if isinstance(text, str) else text.get("t5xxl")
        if self.t5 is not None and t5_text is not None:
            states.append(_widened(encode_t5(self.t5, self.tokenizer, t5_text, t5_padding), CONTEXT_WIDTH))
        if not states:
            raise ValueError("SD3's conditioning needs a CLIP encoder or a T5 prompt; got neither")
        return torch.cat(states, dim=1), pooled

    def _clip_part(
        self, text: str | Mapping[str, str], clip_skip: int | None, resolve_embedding: EmbeddingResolver | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([CLIP-L and CLIP-G states side by side, 4096 wide] or [] without CLIPs, pooled [1, 2048])."""
        names = tuple(role.name for role in self.clips.roles)
        encoded = self.clips.encode_each(self.clips.tokenize(_texts(text, names), resolve_embedding), clip_skip)
        if not encoded:
            return [], torch.zeros(1, SD3_POOLED_WIDTH)
        some_states, some_pooled = next(iter(encoded.values()))
        states, pooled = [], []
        for name, width in _SD3_CLIP_WIDTHS.items():
            if name in encoded:
                states.append(encoded[name][0])
                pooled.append(_widened(encoded[name][1], width))
            else:
                states.append(some_states.new_zeros(*some_states.shape[:2], width))
                pooled.append(some_pooled.new_zeros(1, width))
        return [_widened(torch.cat(states, dim=-1), CONTEXT_WIDTH)], torch.cat(pooled, dim=-1)


#: SD3's CLIPs in conditioning order, at their real widths (a missing one is zeros this wide).
_SD3_CLIP_WIDTHS = {"clip_l": 768, "clip_g": 1280}


class ChromaTextEncoders(T5FamilyEncoders):
    """T5-XXL alone, as Chroma reads it (``CLIPLoader(type=chroma)``); ``encode`` returns (states, None)."""

    family = "chroma"
    clip_family = "chroma"

    def encode(
        self,
        text: str | Mapping[str, str],
        clip_skip: int | None = None,
        resolve_embedding: EmbeddingResolver | None = None,
        t5_padding: T5Padding = CHROMA_T5_PADDING,
    ) -> tuple[torch.Tensor, None]:
        """(T5 states [1, tokens, 4096], no pooled vector: Chroma takes none); `text` may be given per encoder
        (key ``t5xxl``)."""
        if self.t5 is None:
            raise ValueError("Chroma's text encoder is T5-XXL")
        prompt = text if isinstance(text, str) else text["t5xxl"]
        return _widened(encode_t5(self.t5, self.tokenizer, prompt, t5_padding), CONTEXT_WIDTH), None


def t5_family_encoders(
    family: str, weights: Mapping[str, Mapping[str, torch.Tensor]]
) -> FluxTextEncoders | SD3TextEncoders | ChromaTextEncoders:
    """A family's encoders from their state dicts by name (``clip_l``, ``clip_g``, ``t5xxl``; SD3 takes any
    of them).

    CLIP-L's pooled vector is taken unprojected by both families: a file that carries CLIP-L's projection
    (some do) keeps it unused.
    """
    clips = {}
    if "clip_l" in weights:
        unprojected = {key: value for key, value in weights["clip_l"].items() if key != "text_projection.weight"}
        clips["clip_l"] = load_clip_text_model(unprojected, "quick_gelu")
    if "clip_g" in weights:
        clips["clip_g"] = load_clip_text_model(weights["clip_g"], "gelu")
    t5 = load_t5_encoder(weights["t5xxl"]) if "t5xxl" in weights else None
    if family == "flux":
        if "clip_l" not in clips or t5 is None:
            raise ValueError(f"FLUX needs CLIP-L and T5-XXL; got {sorted(weights)}")
        return FluxTextEncoders(ClipStack("sd15", {"clip_l": clips["clip_l"]}), t5)
    if family == "sd3":
        return SD3TextEncoders(ClipStack("sd3", clips), t5)
    if family == "chroma":
        return ChromaTextEncoders(ClipStack("chroma", {}), t5)
    raise ValueError(f"no T5 text-encoder family {family!r}; expected flux, sd3 or chroma")
