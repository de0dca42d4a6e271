"""LoRA files (Hu et al. 2021): low-rank weight deltas ``W' = W + strength * scale * up @ down``.

Files in the wild name the same thing several ways; each tensor is keyed ``<stem>.<part>``:

| writer                    | stem                                         | parts                                  |
|---------------------------|----------------------------------------------|----------------------------------------|
| kohya / A1111 (SD1, SD2)  | ``lora_unet_down_blocks_0_...`` (diffusers   | ``lora_up.weight``, ``lora_down.weight``, |
|                           | module names, ``.`` written as ``_``)        | ``alpha``, ``lora_mid.weight`` (LoCon)  |
| kohya SDXL                | ``lora_unet_input_blocks_4_1_...`` (LDM      | same                                   |
|                           | names); ``lora_te1_``/``lora_te2_`` encoders |                                        |
| diffusers (old)           | ``unet.down_blocks.0....to_q``               | ``lora.up.weight``, ``lora.down.weight`` |
| diffusers / PEFT          | ``unet.``, ``text_encoder.``,                | ``lora_A.weight`` (down),               |
|                           | ``text_encoder_2.``                          | ``lora_B.weight`` (up), ``alpha``       |
| full deltas (kohya)       | any of the above                             | ``diff`` (weight), ``diff_b`` (bias)     |
| kohya FLUX / SD3          | ``lora_unet_double_blocks_0_img_attn_qkv``   | ``lora_up``/``lora_down``, ``alpha``    |
|                           | (the original layout, ``_`` for ``.``)       |                                        |
| ComfyUI / BFL (FLUX, SD3) | ``diffusion_model.double_blocks.0....qkv``   | same                                   |

``alpha`` scales the product by ``alpha / rank`` (kohya's convention; no alpha means 1). LoCon stores a
convolution as a ``k x k`` down conv and a ``1 x 1`` up conv, whose composition is the single ``k x k``
kernel ``up[o, r] * down[r, i, h, w]``; with ``lora_mid`` (a Tucker core, ``r x r x k x k`` between two
``1 x 1`` convs) it is ``up[o, a] * mid[a, b, h, w] * down[b, i]``.

Stems are resolved against the target module's own parameter names rather than by rewriting strings
into guesses: an LDM-layout stem is looked up in ``{name with "." -> "_": name}`` built from
``named_parameters()``, diffusers module names go through ``diffusion.diffusers_layout.unet_to_ldm``,
and the result is kept only if the module really has that parameter. FLUX and SD3 transformers are
resolved the same way against their original (Black Forest Labs, Stability) names. Whatever does not
resolve is reported back, so a LoRA for another model family shows up as a list of unmatched keys, and so
do formats not handled here (diffusers/PEFT ``transformer.`` keys of FLUX/SD3, whose fused projections
would need splitting; LoHa ``hada_*``, LoKr ``lokr_*``, DoRA scales).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.diffusers_layout import unet_to_ldm
from diffusion.stored_weights import ComputesFromStored, stored_layers
from diffusion.unet import UNetModel
from diffusion.unet_config import CheckpointLayoutError

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

_TEXT_PREFIXES = (("lora_te1_", 0), ("lora_te2_", 1), ("lora_te_", 0), ("text_encoder_2.", 1), ("text_encoder.", 0))
_UNET_PREFIXES = ("lora_unet_", "unet.", "base_model.model.", "diffusion_model.")


class LoraFormatError(ValueError):
    """A file that cannot be used as a LoRA, with the file and the reason."""

    def __init__(self, path: Path | str | None, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path or 'LoRA'}: {reason}")


@dataclass(frozen=True)
class LowRankDelta:
    """``scale * up @ down`` (with an optional Tucker core ``mid``), reshaped to the weight's shape."""

    up: torch.Tensor
    down: torch.Tensor
    scale: float
    mid: torch.Tensor | None = None

    def compute(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        up, down = self.up.to(dtype), self.down.to(dtype)
        if self.mid is not None:
            delta = torch.einsum("oa,abhw,bi->oihw", up.flatten(1), self.mid.to(dtype), down.flatten(1))
        else:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], down.shape[1], *down.shape[2:])
        if delta.numel() != torch.Size(shape).numel():
            raise ValueError(f"LoRA delta has shape {tuple(delta.shape)}, the weight {tuple(shape)}")
        return delta.reshape(shape) * self.scale


@dataclass(frozen=True)
class FullDelta:
    """A stored difference ``W' - W`` (kohya's ``diff``/``diff_b``)."""

    diff: torch.Tensor

    def compute(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.diff.numel() != torch.Size(shape).numel():
            raise ValueError(f"full delta has shape {tuple(self.diff.shape)}, the weight {tuple(shape)}")
        return self.diff.to(dtype).reshape(shape)


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


class _UNetResolver:
    """Stems to the diffusion model's module names; a UNet's diffusers names are converted in one batch (the
    numbering needs all)."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.index = _underscore_index(unet)
        self.modules = set(self.index.values())

    def resolve(self, stems: Sequence[str]) -> dict[str, str]:
        resolved, diffusers = {}, {}
        for stem in stems:
            flat = stem.replace(".", "_")
            if flat in self.index:
                resolved[stem] = self.index[flat]
            else:
                diffusers[stem] = _diffusers_dotted(flat) if "." not in stem else stem
        if diffusers and isinstance(self.unet, UNetModel):
            config = _unet_config_for_diffusers(self.unet)
            for stem, name in diffusers.items():
                try:
                    converted = next(iter(unet_to_ldm({name + ".weight": torch.empty(0)}, config)))
                except CheckpointLayoutError:
                    continue
                module = converted.rpartition(".")[0]
                if module in self.modules:
                    resolved[stem] = module
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


def _deltas(stem: str, parts: Mapping[str, torch.Tensor], path: Path | str | None) -> dict[str, WeightDelta]:
    """Parameter suffix (``weight``/``bias``) -> delta for one stem."""
    deltas: dict[str, WeightDelta] = {}
    if "up" in parts or "down" in parts:
        if "up" not in parts or "down" not in parts:
            raise LoraFormatError(path, f"{stem!r} has only one of the up/down (B/A) matrices")
        down = parts["down"]
        rank = down.shape[0]
        scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
        deltas["weight"] = LowRankDelta(parts["up"], down, scale, parts.get("mid"))
    elif "diff" in parts:
        deltas["weight"] = FullDelta(parts["diff"])
    if "diff_b" in parts:
        deltas["bias"] = FullDelta(parts["diff_b"])
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
    unet_stems: dict[str, str] = {}
    for stem in groups:
        kind, index, rest = _target(stem)
        if kind == "unet" and unet is not None:
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
    resolved = _UNetResolver(unet).resolve(list(unet_stems.values())) if unet is not None else {}
    for stem, rest in unet_stems.items():
        module = resolved.get(rest)
        if module is None:
            patches.unmatched.append(stem)
            continue
        for suffix, delta in _deltas(stem, groups[stem], path).items():
            patches.unet.setdefault(f"{module}.{suffix}", []).append(delta)
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
