"""CLIP, the text-encoder value that flows between nodes: a cheap handle around shared, loaded text encoders.

A handle is the loaded encoders plus what the workflow changed about them: the clip skip, LoRA patch sets
(with their strengths, one tuple per encoder, ``nodes.patched_weights``) and, for the T5 families, the
padding of T5's ids. Changing any of them makes a new handle over the same modules, never a reload
(``nodes.shared_models``).

The handle also answers the methods ComfyUI node packs call on a CLIP value, under ComfyUI's names,
arguments and layouts (``clone``, ``tokenize``, ``encode_from_tokens`` ...; docs/plugins.md, "MODEL, CLIP
and VAE values"; the token structure is ``nodes.clip_tokens``). As in ComfyUI, ``clone()`` makes a new
handle and the ComfyUI-style setters (``add_patches``, ``clip_layer``, ``set_tokenizer_option``) change the
handle they are called on, which a pack clones first. What Loom cannot do the ComfyUI way raises
``NotImplementedError`` naming the method and the reason.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffusion.checkpoint import LoadedCheckpoint
from diffusion.checkpoint.errors import CheckpointError
from diffusion.embeddings import EmbeddingFolder, EmbeddingResolver
from diffusion.lora import WeightDelta
from diffusion.model_memory import place
from diffusion.prompt_weights import TokenWindow, empty_window
from diffusion.qwen_tokenizer import load_qwen_tokenizer
from diffusion.text_encoders.qwen3 import Z_IMAGE_TEMPLATE
from diffusion.text_encoders.stack import ClipStack
from diffusion.text_encoders.t5_stacks import (
    CHROMA_T5_PADDING,
    FLUX_T5_PADDING,
    SD3_T5_PADDING,
    T5FamilyEncoders,
    T5Padding,
    t5_weighted_tokens,
)
from diffusion.text_encoders.zimage_text import ZImageTextEncoder
from nodes.clip_tokens import ENCODER_OF_KEY, TOKEN_KEYS, EncoderTokens, Pair, pairs_window, window_pairs
from nodes.comfy_weight_patches import comfy_patches
from nodes.patched_weights import PatchedModule, PatchSet, all_active, stack_patch_set
from nodes.runtime import current_runtime
from nodes.shared_models import modules_of

__all__ = ["ClipHandle"]

_log = logging.getLogger(__name__)

#: What ``ClipHandle.encoders`` gives for a family's encoder the loaded stack lacks.
_ABSENT_ENCODER = nn.Module()
#: The T5 padding each T5 family tokenizes with when no ``T5TokenizerOptions`` says otherwise.
_T5_PADDINGS = {"flux": FLUX_T5_PADDING, "sd3": SD3_T5_PADDING, "chroma": CHROMA_T5_PADDING}


def _embedding_resolver() -> EmbeddingFolder:
    """This installation's textual-inversion embeddings, as CLIPTextEncode resolves them."""
    return EmbeddingFolder(tuple(current_runtime().model_paths.folders("embeddings")))


class ClipHandle:
    """CLIP: a family's tokenizer and text encoders, the clip skip, the LoRAs applied to them, and for the T5
    families the padding of T5's ids (``T5TokenizerOptions``; None: the family's own).

    For ComfyUI packs it is also ComfyUI's ``CLIP``: ``clone()``, ``tokenize``, ``encode_from_tokens``,
    ``encode_from_tokens_scheduled``, ``clip_layer``, ``add_patches``, ``load_model``, ``set_tokenizer_option``.
    ``encode(text, ...)`` stays Loom's and returns ``(cond, pooled)``, where ComfyUI's returns ``cond``.
    """

    def __init__(
        self,
        checkpoint: LoadedCheckpoint,
        clip_skip: int | None = None,
        patches: Mapping[int, tuple[PatchSet, ...]] | None = None,
        on_cpu: bool = False,
        t5_padding: T5Padding | None = None,
    ) -> None:
        if checkpoint.text_encoders is None:
            raise CheckpointError(checkpoint.info.path, "holds no text encoder, so it cannot be used as a CLIP")
        self.checkpoint = checkpoint
        self.stack = checkpoint.text_encoders
        self.clip_skip = clip_skip
        self.patches = dict(patches or {})
        #: The loaders' ``device: cpu``: encode on the CPU in fp32 whatever device the runtime computes on.
        self.on_cpu = on_cpu
        self.t5_padding = t5_padding
        self._patched = self._patched_encoders()

    def _patched_encoders(self) -> list[PatchedModule]:
        return [
            PatchedModule(self.stack.encoders[role.name], self.patches.get(index, ()))
            for index, role in enumerate(self.stack.slots)
            if role.name in self.stack.encoders
        ]

    @property
    def family(self) -> str:
        return self.stack.family

    def loom_parts(self) -> list[object]:
        """What this handle keeps alive, for ``graph.sizeof``: its file's modules and its LoRA weights."""
        return [*modules_of(self.checkpoint), *self._patched]

    @property
    def encoders(self) -> list[nn.Module]:
        """The text encoders in family order, as LoRA files number them (te1, te2); an encoder the family
        runs without stands as a module with no parameters, so a LoRA's part for it matches nothing."""
        return [self.stack.encoders.get(role.name, _ABSENT_ENCODER) for role in self.stack.slots]

    def with_clip_skip(self, clip_skip: int) -> ClipHandle:
        return self._with(clip_skip=self._checked_clip_skip(clip_skip, "stop_at_clip_layer"))

    def _checked_clip_skip(self, clip_skip: int, name: str) -> int:
        if not self.stack.roles:
            raise ValueError(f"this {self.family} text encoder has no CLIP encoder, so it has no CLIP layer to stop at")
        if not -self.stack.layer_count <= clip_skip <= -1:
            raise ValueError(
                f"{name} {clip_skip} is out of range for this {self.family} text encoder: "
                f"-1 .. -{self.stack.layer_count}"
            )
        return clip_skip

    def with_lora(self, patches: Mapping[int, Mapping[str, Sequence[WeightDelta]]], strength: float) -> ClipHandle:
        combined = {
            index: stack_patch_set(self.patches.get(index, ()), patches.get(index, {}), strength)
            for index in range(len(self.stack.slots))
        }
        if all(combined[index] is self.patches.get(index, ()) for index in combined):
            return self
        return self._with(patches=combined)

    def with_t5_padding(self, padding: T5Padding) -> ClipHandle:
        """A new handle padding T5's ids as given; a CLIP without T5 comes back as it is (ComfyUI ignores
        the option there too)."""
        return self._with(t5_padding=padding) if isinstance(self.stack, T5FamilyEncoders) else self

    def _with(self, **changes: Any) -> ClipHandle:
        current = dict(clip_skip=self.clip_skip, patches=self.patches, on_cpu=self.on_cpu, t5_padding=self.t5_padding)
        return ClipHandle(self.checkpoint, **(current | changes))

    def encode(
        self, text: str | Mapping[str, str], resolve_embedding: EmbeddingResolver | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond [1, tokens, width], pooled [1, dim] or None for a family without one) on the CPU in float32;
        `text` may differ per encoder."""

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            if self.t5_padding is not None and isinstance(self.stack, T5FamilyEncoders):
                return self.stack.encode(text, self.clip_skip, resolve_embedding, self.t5_padding)
            return self.stack.encode(text, self.clip_skip, resolve_embedding)

        return self._encoded(run)

    def _encoded(
        self, run: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``run()`` with the encoders placed and patched, its outputs on the CPU in float32."""
        if self.on_cpu:
            for module in self.stack.modules():
                place(module, torch.device("cpu"), torch.float32)
        else:
            current_runtime().memory.use(*self.stack.modules())
        with torch.no_grad(), all_active(self._patched):
            cond, pooled = run()
        return cond.float().cpu(), None if pooled is None else pooled.float().cpu()

    # ComfyUI's CLIP, for packs (comfy/sd.py).

    def clone(self) -> ClipHandle:
        """A new handle over the same encoders, patches and clip skip; changing the clone leaves this one as it is."""
        twin = copy.copy(self)
        twin.patches = dict(self.patches)
        twin._patched = list(self._patched)
        return twin

    def load_model(self) -> ClipHandle:
        """Nothing to do: the encoders are placed on the device when they encode."""
        return self

    def clip_layer(self, layer_idx: int) -> None:
        """Encode from layer ``layer_idx`` (-1 the last, -2 the one before: ``CLIPSetLastLayer``) from now on."""
        self.clip_skip = self._checked_clip_skip(layer_idx, "CLIP.clip_layer")

    def set_tokenizer_option(self, option_name: str, value: Any) -> None:
        """T5's ``t5xxl_min_padding`` / ``t5xxl_min_length`` (``T5TokenizerOptions``); options no tokenizer of
        this CLIP reads are ignored, as in ComfyUI."""
        if option_name not in ("t5xxl_min_padding", "t5xxl_min_length") or not isinstance(self.stack, T5FamilyEncoders):
            _log.debug("CLIP.set_tokenizer_option(%r): no tokenizer of this %s CLIP reads it", option_name, self.family)
            return
        padding = self._t5_padding()
        if option_name == "t5xxl_min_padding":
            self.t5_padding = T5Padding(int(value), padding.min_length)
        else:
            self.t5_padding = T5Padding(padding.min_padding, int(value))

    def _t5_padding(self) -> T5Padding:
        return self.t5_padding if self.t5_padding is not None else _T5_PADDINGS[self.family]

    def add_patches(
        self, patches: Mapping[Any, Any], strength_patch: float = 1.0, strength_model: float = 1.0
    ) -> list[Any]:
        """Patch the CLIP encoders' weights as ComfyUI does; returns the keys applied. Keys are ComfyUI's
        state-dict names (``clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight``); others, T5's
        included (Loom patches only CLIP encoders), are skipped."""
        if strength_model != 1.0:
            raise NotImplementedError(
                "CLIP.add_patches(strength_model != 1) scales the encoders' own weights (model merging), "
                "which Loom's patches do not do"
            )
        slots = {role.name: index for index, role in enumerate(self.stack.slots) if role.name in self.stack.encoders}
        parameters = {index: dict(self.stack.encoders[name].named_parameters()) for name, index in slots.items()}

        def target(name: str) -> tuple[int, str, torch.Size] | None:
            encoder, _, rest = name.partition(".transformer.")
            index = slots.get(encoder)
            parameter = rest.removeprefix("text_model.")
            if index is None or parameter not in parameters[index]:
                return None
            return index, parameter, parameters[index][parameter].shape

        grouped, applied = comfy_patches(patches, target, "CLIP.add_patches")
        combined = {
            index: stack_patch_set(self.patches.get(index, ()), added, strength_patch)
            for index, added in grouped.items()
        }
        if any(combined[index] is not self.patches.get(index, ()) for index in combined):
            self.patches = {**self.patches, **combined}
            self._patched = self._patched_encoders()
        return applied

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> dict[str, EncoderTokens]:
        """The prompt's tokens per encoder under ComfyUI's keys (``l``, ``g``, ``h``, ``t5xxl``, ``qwen3_4b``),
        weights and textual-inversion embeddings resolved as CLIPTextEncode resolves them."""
        if return_word_ids:
            raise NotImplementedError("CLIP.tokenize(return_word_ids=True): Loom's tokenizers do not number words")
        options = sorted(key for key, value in kwargs.items() if value)
        if options:
            raise NotImplementedError(f"CLIP.tokenize: Loom's tokenizers take no options ({', '.join(options)})")
        stack = self.stack
        clips = stack if isinstance(stack, ClipStack) else stack.clips if isinstance(stack, T5FamilyEncoders) else None
        tokens: dict[str, EncoderTokens] = {}
        if clips is not None and clips.roles:
            for name, windows in clips.tokenize(text, _embedding_resolver()).items():
                tokens[TOKEN_KEYS[name]] = EncoderTokens([window_pairs(w) for w in windows], text, windows)
        if isinstance(stack, T5FamilyEncoders) and stack.t5 is not None:
            t5 = t5_weighted_tokens(text, stack.tokenizer, self._t5_padding())
            tokens["t5xxl"] = EncoderTokens([list(zip(t5.ids, t5.weights))], text)
        if isinstance(stack, ZImageTextEncoder):
            ids = load_qwen_tokenizer().encode_templated(text, Z_IMAGE_TEMPLATE)
            tokens["qwen3_4b"] = EncoderTokens([[(token, 1.0) for token in ids]], text)
        return tokens

    def encode_from_tokens(
        self,
        tokens: Mapping[str, Sequence[Sequence[Pair]]],
        return_pooled: bool | str = False,
        return_dict: bool = False,
    ) -> Any:
        """``cond``; ``(cond, pooled)`` with ``return_pooled``; ``{"cond", "pooled_output"}`` with ``return_dict``.
        ``cond`` is ``[1, tokens, width]`` and ``pooled`` ``[1, dim]`` (None for families without one), as
        CLIPTextEncode gives them for the text the tokens came from."""
        if return_pooled == "unprojected":
            raise NotImplementedError("CLIP.encode_from_tokens(return_pooled='unprojected') is not supported in Loom")
        if isinstance(self.stack, ClipStack):
            stack = self.stack
            windows = self._windows_of(stack, tokens)
            cond, pooled = self._encoded(lambda: stack.encode_tokens(windows, self.clip_skip))
        else:
            cond, pooled = self.encode(self._texts_of(tokens), _embedding_resolver())
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(
        self,
        tokens: Mapping[str, Sequence[Sequence[Pair]]],
        unprojected: bool = False,
        add_dict: Mapping[str, Any] | None = None,
        show_pbar: bool = True,
    ) -> list[list[Any]]:
        """The CONDITIONING CLIPTextEncode gives: ``[[cond, {"pooled_output": pooled, **add_dict}]]``."""
        if unprojected:
            raise NotImplementedError("CLIP.encode_from_tokens_scheduled(unprojected=True) is not supported in Loom")
        encoded = self.encode_from_tokens(tokens, return_dict=True)
        cond = encoded.pop("cond")
        return [[cond, {**encoded, **(add_dict or {})}]]

    def _windows_of(
        self, stack: ClipStack, tokens: Mapping[str, Sequence[Sequence[Pair]]]
    ) -> dict[str, list[TokenWindow]]:
        """Loom's windows per CLIP encoder: those ``tokenize`` made, or windows of the pairs a pack edited or built;
        a shorter part is padded with empty-prompt windows, as ``ClipStack.tokenize`` aligns them."""
        missing = sorted(TOKEN_KEYS[role.name] for role in stack.roles if TOKEN_KEYS[role.name] not in tokens)
        if missing:
            raise ValueError(f"CLIP.encode_from_tokens: this {self.family} CLIP needs the tokens {missing}")
        windows: dict[str, list[TokenWindow]] = {}
        for role in stack.roles:
            part = tokens[TOKEN_KEYS[role.name]]
            if isinstance(part, EncoderTokens) and part.windows and part.unchanged():
                windows[role.name] = list(part.windows)
            else:
                windows[role.name] = [pairs_window(pairs, stack.tokenizer.eos_id) for pairs in part]
        count = max(len(parts) for parts in windows.values())
        for name, parts in windows.items():
            parts += [empty_window(stack.tokenizer, stack.specs[name])] * (count - len(parts))
        return windows

    def _texts_of(self, tokens: Mapping[str, Sequence[Sequence[Pair]]]) -> str | dict[str, str]:
        """The prompt each encoder's tokens came from: a T5 or Qwen family encodes text, so its tokens must be
        ``tokenize``'s, unedited; one text when every part the family tokenizes came from the same."""
        names = self._encoder_names()
        texts: dict[str, str] = {}
        for key, part in tokens.items():
            if ENCODER_OF_KEY.get(key) not in names:
                continue
            if not (isinstance(part, EncoderTokens) and part.unchanged()):
                raise NotImplementedError(
                    f"CLIP.encode_from_tokens: a {self.family} CLIP encodes the text its tokens came from, so "
                    f"tokens[{key!r}] must be CLIP.tokenize's, unedited (edited tokens work for SD1.x, SD2.x and SDXL)"
                )
            texts[ENCODER_OF_KEY[key]] = part.text
        # SD3 runs without T5 tokens (CLIPTextEncodeSD3 with an empty T5 prompt); the other families need every part.
        missing = [TOKEN_KEYS[name] for name in names if name not in texts and (name, self.family) != ("t5xxl", "sd3")]
        if missing:
            raise ValueError(f"CLIP.encode_from_tokens: this {self.family} CLIP needs the tokens {missing}")
        if len(texts) == len(names) and len(set(texts.values())) == 1:
            return next(iter(texts.values()))
        return texts

    def _encoder_names(self) -> list[str]:
        """The encoders ``tokenize`` gives tokens for, by Loom's names."""
        stack = self.stack
        clips = stack if isinstance(stack, ClipStack) else stack.clips if isinstance(stack, T5FamilyEncoders) else None
        names = [role.name for role in clips.roles] if clips is not None else []
        if isinstance(stack, T5FamilyEncoders) and stack.t5 is not None:
            names.append("t5xxl")
        if isinstance(stack, ZImageTextEncoder):
            names.append("qwen3")
        return names
