"""LoRA files (Hu et al. 2021): low-rank weight deltas ``W' = W + strength * scale * up @ down``.

Files in the wild name the same thing several ways; each tensor is keyed ``<stem>.<part>``:

| writer                    | stem                                         | parts                                     |
|---------------------------|----------------------------------------------|-------------------------------------------|
| kohya / A1111 (SD1, SD2)  | ``lora_unet_down_blocks_0_...`` (diffusers   | ``lora_up.weight``, ``lora_down.weight``, |
|                           | module names, ``.`` written as ``_``)        | ``alpha``, ``lora_mid.weight`` (LoCon)    |
| kohya SDXL                | ``lora_unet_input_blocks_4_1_...`` (LDM      | same                                      |
|                           | names); ``lora_te1_``/``lora_te2_`` encoders |                                           |
| diffusers (old)           | ``unet.down_blocks.0....to_q``               | ``lora.up.weight``, ``lora.down.weight``  |
| diffusers / PEFT          | ``unet.``, ``text_encoder.``,                | ``lora_A.weight`` (down),                 |
|                           | ``text_encoder_2.``                          | ``lora_B.weight`` (up), ``alpha``         |
| full deltas (kohya)       | any of the above                             | ``diff`` (weight), ``diff_b`` (bias)      |
| kohya FLUX / SD3          | ``lora_unet_double_blocks_0_img_attn_qkv``   | ``lora_up``/``lora_down``, ``alpha``      |
|                           | (the original layout, ``_`` for ``.``)       |                                           |
| ComfyUI / BFL (FLUX, SD3) | ``diffusion_model.double_blocks.0....qkv``   | same                                      |
| diffusers / PEFT, FLUX,   | ``transformer.transformer_blocks.0....to_q`` | ``lora_A.weight``, ``lora_B.weight``,     |
| SD3, Chroma, Z-Image      | (``base_model.model.`` as PEFT saves it,     | ``alpha``; ``lora_A.default.weight``      |
| (most trainers)           | ``diffusion_model.`` in some Z-Image files,  | (a PEFT adapter's raw state dict)         |
|                           | no prefix in DiffSynth's)                    |                                           |
| kohya-style, diffusers    | ``lora_transformer_transformer_blocks_...``  | ``lora_up``/``lora_down``, ``alpha``      |
| names (FLUX, SD3, Chroma, | (``lora_unet_``, SimpleTuner's ``lycoris_``; |                                           |
| Z-Image)                  | diffusers names, ``_`` for ``.``)            |                                           |

``alpha`` scales the product by ``alpha / rank`` (kohya's convention; no alpha means 1). LoCon stores a
convolution as a ``k x k`` down conv and a ``1 x 1`` up conv, whose composition is the single ``k x k``
kernel ``up[o, r] * down[r, i, h, w]``; with ``lora_mid`` (a Tucker core, ``r x r x k x k`` between two
``1 x 1`` convs) it is ``up[o, a] * mid[a, b, h, w] * down[b, i]``.

Stems are resolved against the target module's own parameter names rather than by rewriting strings
into guesses: an LDM-layout stem is looked up in ``{name with "." -> "_": name}`` built from
``named_parameters()``, diffusers module names go through ``diffusion.diffusers_layout.unet_to_ldm``,
and the result is kept only if the module really has that parameter. FLUX, SD3, Chroma and Z-Image
transformers are resolved the same way against their original (Black Forest Labs, Stability, lodestone,
Tongyi-MAI) names, and diffusers' names of their layers through ``diffusion.dit_diffusers_layout``, built
from the model's config; for them a stem with no prefix at all names a layer too (DiffSynth's files, whose
bare names ComfyUI reads for FLUX and Z-Image). Diffusers splits layers the original fuses
(``to_q``/``to_k``/``to_v`` are the three row blocks of ``qkv``) and stores the final adaLN's halves swapped,
so such a delta carries its ``RowSlice``: it computes its own rows and lands in them, zero elsewhere, and the
q, k and v deltas of one ``qkv`` add up. Whatever does not resolve is reported back, so a LoRA for another
model family shows up as a list of unmatched keys, and so do formats not handled here (LoHa ``hada_*``, LoKr
``lokr_*``, DoRA scales).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.chroma import ChromaTransformer
from diffusion.diffusers_layout import unet_to_ldm
from diffusion.dit_diffusers_layout import (
    OriginalLayer,
    RowSlice,
    chroma_diffusers_layers,
    flux_diffusers_layers,
    mmdit_diffusers_layers,
    zimage_diffusers_layers,
)
from diffusion.flux import FluxTransformer
from diffusion.mmdit import MMDiT
from diffusion.stored_weights import ComputesFromStored, stored_layers
from diffusion.unet import UNetModel
from diffusion.unet_config import CheckpointLayoutError
from diffusion.zimage import ZImageTransformer

__all__ = [
    "FullDelta",
    "LoraFormatError",
    "LoraPatches",
    "LowRankDelta",
    "WeightDelta",
    "apply_lora_patches",
    "parse_lora",
]

# Longest first, so "lora_linear_layer.up.weight" wins over a shorter part that ends the same way.
_PARTS: dict[str, str] = {
    "lora_linear_layer.up.weight": "up",
    "lora_linear_layer.down.weight": "down",
    "lora_up.weight": "up",
    "lora_down.weight": "down",
    "lora_mid.weight": "mid",
    "lora.up.weight": "up",
    "lora.down.weight": "down",
    "lora_B.default.weight": "up",
    "lora_A.default.weight": "down",
    "lora_B.weight": "up",
    "lora_A.weight": "down",
    "alpha": "alpha",
    "diff_b": "diff_b",
    "diff": "diff",
}
_PART_ORDER = sorted(_PARTS, key=len, reverse=True)

# diffusers module names that contain "_"; a kohya stem writes every "." as "_", so these come back whole.
_DIFFUSERS_WORDS = (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k",
    "to_v", "to_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "time_embedding",
    "add_embedding", "linear_1", "linear_2", "conv_norm_out",
)  # fmt: skip

_TEXT_PREFIXES = (
    ("lora_te1_", 0), ("lora_te2_", 1), ("lora_te_", 0), ("text_encoder_2.", 1), ("text_encoder.", 0),
    # ComfyUI's own (LoraSave's): the encoder's name in the family, SDXL's L first and G second.
    ("text_encoders.clip_l.transformer.", 0), ("text_encoders.clip_g.transformer.", 1),
)  # fmt: skip
_UNET_PREFIXES = (
    "lora_unet_", "unet.", "base_model.model.", "diffusion_model.", "transformer.", "lora_transformer_", "lycoris_",
)  # fmt: skip


class LoraFormatError(ValueError):
    """A file that cannot be used as a LoRA, with the file and the reason."""

    def __init__(self, path: Path | str | None, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path or 'LoRA'}: {reason}")


@dataclass(frozen=True)
class LowRankDelta:
    """``scale * up @ down`` (with an optional Tucker core ``mid``), reshaped to the weight's shape; with
    ``rows``, to those rows of it (a diffusers layer that is part of a fused one), zero elsewhere."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float
    mid: torch.Tensor | None = None
    rows: RowSlice | None = None

    def compute(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        own, described = _own_shape(shape, self.rows)
        up, down = self.up.to(dtype), self.down.to(dtype)
        if self.mid is not None:
            delta = torch.einsum("oa,abhw,bi->oihw", up.flatten(1), self.mid.to(dtype), down.flatten(1))
        else:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], down.shape[1], *down.shape[2:])
        if delta.numel() != own.numel():
            raise ValueError(f"LoRA delta has shape {tuple(delta.shape)}, {described}")
        return _placed(delta.reshape(own) * self.scale, shape, self.rows)


@dataclass(frozen=True)
class FullDelta:
    """A stored difference ``W' - W`` (kohya's ``diff``/``diff_b``), of the whole weight or of ``rows``."""

    diff: torch.Tensor
    rows: RowSlice | None = None

    def compute(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        own, described = _own_shape(shape, self.rows)
        if self.diff.numel() != own.numel():
            raise ValueError(f"full delta has shape {tuple(self.diff.shape)}, {described}")
        return _placed(self.diff.to(dtype).reshape(own), shape, self.rows)


def _own_shape(shape: torch.Size, rows: RowSlice | None) -> tuple[torch.Size, str]:
    """The shape a delta computes (the weight's, or that of its rows) and how to name it in an error."""
    if rows is None:
        return torch.Size(shape), f"the weight {tuple(shape)}"
    own = rows.part_shape(shape)
    return own, f"rows {rows.start}:{rows.stop} of the weight {tuple(shape)}: {tuple(own)}"


def _placed(delta: torch.Tensor, shape: torch.Size, rows: RowSlice | None) -> torch.Tensor:
    return delta if rows is None else rows.place(delta, shape)


WeightDelta = LowRankDelta | FullDelta


@dataclass
class LoraPatches:
    """A parsed LoRA: parameter name -> deltas, for the UNet and for each text encoder by position.

    ``text[0]`` is the first encoder of the family (``lora_te``/``lora_te1``/``text_encoder``), ``text[1]``
    the second (SDXL's CLIP-G). ``unmatched`` lists the stems that named no parameter of the targets.
    """

    unet: dict[str, list[WeightDelta]] = field(default_factory=dict)
    text: dict[int, dict[str, list[WeightDelta]]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def _split_key(key: str) -> tuple[str, str] | None:
    for part in _PART_ORDER:
        if key.endswith("." + part):
            return key[: -len(part) - 1], _PARTS[part]
    return None


def _underscore_index(module: nn.Module) -> dict[str, str]:
    """``input_blocks_1_1_proj_in`` -> ``input_blocks.1.1.proj_in`` for every parametrised submodule."""
    names = {name.rpartition(".")[0] for name, _ in module.named_parameters()}
    return {name.replace(".", "_"): name for name in names}


def _diffusers_dotted(stem: str) -> str:
    dotted = stem.replace("_", ".")
    for word in _DIFFUSERS_WORDS:
        dotted = dotted.replace(word.replace("_", "."), word)
    return dotted


def _unet_config_for_diffusers(unet: UNetModel) -> dict[str, Any]:
    config = unet.config
    return {
        "block_out_channels": [config.model_channels * m for m in config.channel_mult],
        "layers_per_block": list(config.num_res_blocks),
    }


def _transformer_diffusers_index(model: nn.Module) -> dict[str, OriginalLayer]:
    """A FLUX, SD3, Chroma or Z-Image transformer's diffusers layer names, ``.`` written as ``_``, -> where they
    lie in it; empty for any other model."""
    if isinstance(model, FluxTransformer):
        layers = flux_diffusers_layers(model.config)
    elif isinstance(model, MMDiT):
        layers = mmdit_diffusers_layers(model.config)
    elif isinstance(model, ChromaTransformer):
        layers = chroma_diffusers_layers(model.config)
    elif isinstance(model, ZImageTransformer):
        layers = zimage_diffusers_layers(model.config)
    else:
        return {}
    return {name.replace(".", "_"): layer for name, layer in layers.items()}


class _DiffusionModelResolver:
    """Stems to the diffusion model's modules (and rows, for a diffusers layer that is part of a fused one); a
    UNet's diffusers names are converted in one batch (the numbering needs all)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.index = _underscore_index(model)
        self.modules = set(self.index.values())
        self.transformer_layers = _transformer_diffusers_index(model)

    def resolve(self, stems: Sequence[str]) -> dict[str, OriginalLayer]:
        resolved, diffusers = {}, {}
        for stem in stems:
            flat = stem.replace(".", "_")
            if flat in self.index:
                resolved[stem] = OriginalLayer(self.index[flat])
            elif flat in self.transformer_layers:
                layer = self.transformer_layers[flat]
                if layer.module in self.modules:
                    resolved[stem] = layer
            else:
                diffusers[stem] = _diffusers_dotted(flat) if "." not in stem else stem
        if diffusers and isinstance(self.model, UNetModel):
            config = _unet_config_for_diffusers(self.model)
            for stem, name in diffusers.items():
                try:
                    converted = next(iter(unet_to_ldm({name + ".weight": torch.empty(0)}, config)))
                except CheckpointLayoutError:
                    continue
                module = converted.rpartition(".")[0]
                if module in self.modules:
                    resolved[stem] = OriginalLayer(module)
        return resolved


def _group(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key in state_dict:
        split = _split_key(key)
        if split is None:
            other.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = state_dict[key]
    return groups, other


def _deltas(
    stem: str, parts: Mapping[str, torch.Tensor], path: Path | str | None, rows: RowSlice | None = None
) -> dict[str, WeightDelta]:
    """Parameter suffix (``weight``/``bias``) -> delta for one stem, landing in ``rows`` when given."""
    deltas: dict[str, WeightDelta] = {}
    if "up" in parts or "down" in parts:
        if "up" not in parts or "down" not in parts:
            raise LoraFormatError(path, f"{stem!r} has only one of the up/down (B/A) matrices")
        down = parts["down"]
        rank = down.shape[0]
        scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
        deltas["weight"] = LowRankDelta(parts["up"], down, scale, parts.get("mid"), rows)
    elif "diff" in parts:
        deltas["weight"] = FullDelta(parts["diff"], rows)
    if "diff_b" in parts:
        deltas["bias"] = FullDelta(parts["diff_b"], rows)
    return deltas


def _target(stem: str) -> tuple[str, int | None, str]:
    """(kind, encoder index, stem without its prefix); kind is ``unet``, ``text`` or ``other``."""
    for prefix, index in _TEXT_PREFIXES:
        if stem.startswith(prefix):
            rest = stem[len(prefix) :]
            for inner in ("text_model_", "text_model."):
                rest = rest.removeprefix(inner)
            return "text", index, rest
    for prefix in _UNET_PREFIXES:
        if stem.startswith(prefix):
            return "unet", None, stem[len(prefix) :]
    return "other", None, stem


def parse_lora(
    state_dict: Mapping[str, torch.Tensor],
    unet: nn.Module | None,
    text_encoders: Sequence[nn.Module] = (),
    path: Path | str | None = None,
) -> LoraPatches:
    """Resolve a LoRA state dict against a diffusion model (a UNet or a flow transformer) and the family's text
    encoders (in family order).

    Raises ``LoraFormatError`` when the file holds no LoRA tensors at all; stems for absent or
    unknown modules go to ``unmatched`` instead, since a LoRA may well target a part it was not given.
    """
    groups, other = _group(state_dict)
    if not any("up" in parts or "diff" in parts or "diff_b" in parts for parts in groups.values()):
        sample = ", ".join(sorted(state_dict)[:3]) or "none"
        raise LoraFormatError(
            path, f"no LoRA tensors (lora_up/lora_down, lora_A/lora_B, lora.up/lora.down, diff); keys: {sample}"
        )
    patches = LoraPatches(unmatched=list(other))
    text_indexes = [_underscore_index(encoder) for encoder in text_encoders]
    resolver = _DiffusionModelResolver(unet) if unet is not None else None
    # A flow transformer's layer names are distinctive enough to be read without a prefix (DiffSynth's files).
    bare_names = resolver is not None and bool(resolver.transformer_layers)
    unet_stems: dict[str, str] = {}
    for stem in groups:
        kind, index, rest = _target(stem)
        if kind == "unet" and resolver is not None or kind == "other" and bare_names:
            unet_stems[stem] = rest
        elif kind == "text" and index is not None and index < len(text_indexes):
            module = text_indexes[index].get(rest.replace(".", "_"))
            if module is None:
                patches.unmatched.append(stem)
            else:
                for suffix, delta in _deltas(stem, groups[stem], path).items():
                    patches.text.setdefault(index, {}).setdefault(f"{module}.{suffix}", []).append(delta)
        else:
            patches.unmatched.append(stem)
    resolved = resolver.resolve(list(unet_stems.values())) if resolver is not None else {}
    for stem, rest in unet_stems.items():
        layer = resolved.get(rest)
        if layer is None:
            patches.unmatched.append(stem)
            continue
        for suffix, delta in _deltas(stem, groups[stem], path, layer.rows).items():
            patches.unet.setdefault(f"{layer.module}.{suffix}", []).append(delta)
    patches.unmatched.sort()
    return patches


def apply_lora_patches(
    module: nn.Module, patch_sets: Sequence[tuple[Mapping[str, Sequence[WeightDelta]], float]]
) -> dict[str, torch.Tensor]:
    """New tensors for every parameter the patch sets touch: ``W + sum(strength * delta)``.

    Never writes into the module: its tensors are typically copy-on-write views of a memory-mapped
    file shared by every user of the checkpoint. The sum is formed in float32 and cast once to the
    dtype the parameter computes in, so several LoRAs on a half-precision model round once rather
    than per LoRA, and a layer computing in fp32 from its stored fp16 weight gets an fp32 sum. A
    scaled-fp8 weight is patched in its real values and bound divided by its scale, which the layer
    multiplies back (``diffusion.stored_weights``).
    """
    parameters = dict(module.named_parameters())
    layers = stored_layers(module)
    patched: dict[str, torch.Tensor] = {}
    for patches, strength in patch_sets:
        if strength == 0.0:
            continue
        for name, deltas in patches.items():
            if name not in parameters:
                raise KeyError(f"LoRA patch targets {name!r}, which this module does not have")
            base = parameters[name]
            if name not in patched:
                layer = layers.get(name)
                values = base.detach() if layer is None else layer.dequantized_weight()
                patched[name] = values.to(torch.float32, copy=True)  # never the module's own tensor
            for delta in deltas:
                patched[name] += strength * delta.compute(base.shape).to(patched[name].device)
    return {
        name: tensor.to(parameters[name].dtype) if name not in layers else _stored(layers[name], tensor)
        for name, tensor in patched.items()
    }


def _stored(layer: ComputesFromStored, patched: torch.Tensor) -> torch.Tensor:
    """A patched weight in the form its layer computes from: in its compute dtype, divided by its scale."""
    return layer.stored_form(patched).to(layer.computes_in)
