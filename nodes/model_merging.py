"""Nodes that merge diffusion models and text encoders, as ComfyUI's model-merging nodes do.

Names, inputs, ranges and categories are ComfyUI's (``comfy_extras/nodes_model_merging.py`` and
``nodes_model_merging_model_specific.py``). ComfyUI merges by patching model1 with model2's weights,
``add_patches({key: model2's weight}, strength_patch, strength_model)``, which makes each weight

    W = strength_model * W1 + strength_patch * W2

where W1 and W2 are the weights as each model is patched so far (its LoRAs and earlier merges included),
for every key of model2 that model1 has. A key whose shapes differ (an inpainting UNet's first convolution
against a plain one) is scaled by ``strength_model`` and gets nothing of model2, as ComfyUI leaves it (with
a "WEIGHT NOT MERGED" warning). The nodes differ only in the two strengths:

| node                                          | strength_patch | strength_model | W                       |
|-----------------------------------------------|----------------|----------------|-------------------------|
| ``ModelMergeSimple``, ``CLIPMergeSimple``     | 1 - ratio      | ratio          | ratio W1 + (1-ratio) W2 |
| ``ModelMergeBlocks``, ``ModelMergeSD1/SD2/SDXL`` | 1 - r(key)  | r(key)         | the same, per block     |
| ``ModelMergeSubtract``, ``CLIPMergeSubtract`` | -multiplier    | multiplier     | multiplier (W1 - W2)    |
| ``ModelMergeAdd``, ``CLIPMergeAdd``           | 1              | 1              | W1 + W2                 |

A block ratio ``r(key)`` is that of the longest input name the parameter name starts with (``out`` also
covers ``output_blocks``, as in ComfyUI), else that of the first ratio input.

Loom writes the same sum as patch sets on model1's handle (``nodes.patched_weights``): ``(strength_model - 1)
* W1`` and ``strength_patch * W2`` are full-weight deltas that read the models' own parameters, and each
patch set either model already carries is restated at its strength times the new one. Nothing is copied
when the node runs, the mapped files are never written, and the merged weights are computed once, when
the model first runs, like a LoRA's (``apply_lora_patches``). CLIPs merge encoder by encoder (``clip_l``
with ``clip_l`` ...); T5-XXL and Qwen3 take no patches in Loom, so merging two CLIPs that both have one is
refused rather than silently left unmerged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.lora import FullDelta, WeightDelta
from diffusion.stored_weights import stored_layers
from diffusion.text_encoders.t5_stacks import T5FamilyEncoders
from diffusion.text_encoders.zimage_text import ZImageTextEncoder
from graph.declare import SPEC_ATTRIBUTE, Float, Input, Output, Socket, node
from graph.spec import NodeResult, NodeSpec
from nodes.clip_handles import ClipHandle
from nodes.model_handles import ModelHandle

__all__ = [
    "CLIPMergeAdd",
    "CLIPMergeSimple",
    "CLIPMergeSubtract",
    "ModelMergeAdd",
    "ModelMergeBlocks",
    "ModelMergeSD1",
    "ModelMergeSD2",
    "ModelMergeSDXL",
    "ModelMergeSimple",
    "ModelMergeSubtract",
    "Strengths",
    "block_strengths",
    "merge_clips",
    "merge_models",
    "merge_patch_sets",
]

_log = logging.getLogger(__name__)

CATEGORY = "advanced/model_merging"
_RATIO = dict(min=0.0, max=1.0, step=0.01)
_MULTIPLIER = dict(min=-10.0, max=10.0, step=0.01)
#: CLIP state-dict entries ComfyUI's CLIP merges leave alone (buffers and the contrastive temperature).
_CLIP_SKIPPED_SUFFIXES = (".position_ids", ".logit_scale")

#: Parameter name -> (strength_patch, strength_model), ComfyUI's two ``add_patches`` strengths for it.
Strengths = Callable[[str], tuple[float, float]]
_PatchSet = tuple[Mapping[str, Sequence[WeightDelta]], float]


@dataclass(frozen=True)
class _ParameterDelta(FullDelta):
    """A model's own weight as a full delta. Holding the parameter (not a tensor of it) follows the module
    through the moves and casts of model memory, as ComfyUI's key patches follow its modules."""

    def compute(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        with torch.no_grad():
            return super().compute(shape, dtype)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> what holds its real values: the parameter itself, or for a scaled-fp8 weight its
    values times its scale (computed now: the fp8 parameter alone does not hold them)."""
    layers = stored_layers(module)
    weights: dict[str, torch.Tensor] = {}
    for name, parameter in module.named_parameters():
        layer = layers.get(name)
        weights[name] = (
            layer.dequantized_weight() if layer is not None and layer.weight_scale is not None else parameter
        )
    return weights


def _restated(patch_sets: Iterable[_PatchSet], names: Sequence[str], factor: float) -> list[_PatchSet]:
    """The patch sets' deltas for ``names``, each set at its strength times ``factor``."""
    restated: list[_PatchSet] = []
    for patches, strength in patch_sets:
        subset = {name: patches[name] for name in names if name in patches}
        if subset and strength != 0.0:
            restated.append((subset, strength * factor))
    return restated


def merge_patch_sets(
    target: nn.Module,
    target_patches: Sequence[_PatchSet],
    source: nn.Module,
    source_patches: Sequence[_PatchSet],
    strengths: Strengths,
    skip: Callable[[str], bool] = lambda name: False,
) -> list[_PatchSet]:
    """The patch sets that turn ``target`` (patched by ``target_patches``) into ``strength_model * itself +
    strength_patch * source`` (patched by ``source_patches``), parameter by parameter (module docstring)."""
    own, other = _weights(target), _weights(source)
    scaled: dict[float, list[str]] = {}  # strength_model - 1 -> names
    added: dict[float, list[str]] = {}  # strength_patch -> names
    mismatched = []
    for name, weight in other.items():  # ComfyUI walks model2's keys
        if name not in own or skip(name):
            continue
        strength_patch, strength_model = strengths(name)
        if strength_model != 1.0:
            scaled.setdefault(strength_model - 1.0, []).append(name)
        if strength_patch == 0.0:
            continue
        if weight.shape != own[name].shape:
            mismatched.append(f"{name} {tuple(weight.shape)} != {tuple(own[name].shape)}")
            continue
        added.setdefault(strength_patch, []).append(name)
    if mismatched:
        _log.warning("shapes differ, weights not merged: %s", "; ".join(mismatched))
    sets: list[_PatchSet] = []
    for factor, names in scaled.items():
        sets.append(({name: [_ParameterDelta(own[name])] for name in names}, factor))
        sets += _restated(target_patches, names, factor)
    for factor, names in added.items():
        sets.append(({name: [_ParameterDelta(other[name])] for name in names}, factor))
        sets += _restated(source_patches, names, factor)
    return sets


def merge_models(model1: ModelHandle, model2: ModelHandle, strengths: Strengths) -> ModelHandle:
    """model1's handle (its sampling, options and patches kept) with model2 merged in at ``strengths``."""
    merged = model1
    for patches, strength in merge_patch_sets(model1.unet, model1.patches, model2.unet, model2.patches, strengths):
        merged = merged.with_lora(patches, strength)
    return merged


def _unpatchable_encoders(clip: ClipHandle) -> set[str]:
    """The encoders of a CLIP that Loom's patches cannot reach: T5-XXL and Qwen3."""
    stack = clip.stack
    if isinstance(stack, T5FamilyEncoders) and stack.t5 is not None:
        return {"t5xxl"}
    if isinstance(stack, ZImageTextEncoder):
        return {"qwen3"}
    return set()


def merge_clips(clip1: ClipHandle, clip2: ClipHandle, strength_patch: float, strength_model: float) -> ClipHandle:
    """clip1's handle with clip2 merged in, encoder by encoder (the same name in both), at one pair of strengths;
    ``position_ids`` and ``logit_scale`` are left as they are, as in ComfyUI."""
    if strength_patch != 0.0 or strength_model != 1.0:
        shared = _unpatchable_encoders(clip1) & _unpatchable_encoders(clip2)
        if shared:
            raise NotImplementedError(
                f"merging the {', '.join(sorted(shared))} text encoder is not supported in Loom: its weights take "
                "no patches (CLIP encoders do)"
            )
    others = {
        role.name: (clip2.stack.encoders[role.name], clip2.patches.get(index, ()))
        for index, role in enumerate(clip2.stack.slots)
        if role.name in clip2.stack.encoders
    }
    merged = clip1
    for index, role in enumerate(clip1.stack.slots):
        if role.name not in clip1.stack.encoders or role.name not in others:
            continue
        other, other_patches = others[role.name]
        sets = merge_patch_sets(
            clip1.stack.encoders[role.name],
            clip1.patches.get(index, ()),
            other,
            other_patches,
            lambda name: (strength_patch, strength_model),
            skip=lambda name: name.endswith(_CLIP_SKIPPED_SUFFIXES),
        )
        for patches, strength in sets:
            merged = merged.with_lora({index: patches}, strength)
    return merged


def block_strengths(ratios: Mapping[str, float]) -> Strengths:
    """Each parameter at the ratio of the longest name in ``ratios`` it starts with, else at the first ratio."""
    default = next(iter(ratios.values()))

    def strengths(name: str) -> tuple[float, float]:
        ratio, longest = default, 0
        for prefix, value in ratios.items():
            if name.startswith(prefix) and len(prefix) > longest:
                ratio, longest = value, len(prefix)
        return 1.0 - ratio, ratio

    return strengths


@node(category=CATEGORY, outputs=[Output("MODEL")])
def ModelMergeSimple(model1=Socket("MODEL"), model2=Socket("MODEL"), ratio=Float(1.0, **_RATIO)):
    """ratio x model1 + (1 - ratio) x model2, weight by weight: ratio 1 is model1, 0 is model2."""
    return merge_models(model1, model2, lambda name: (1.0 - ratio, ratio))


@node(category=CATEGORY, outputs=[Output("MODEL")])
def ModelMergeSubtract(model1=Socket("MODEL"), model2=Socket("MODEL"), multiplier=Float(1.0, **_MULTIPLIER)):
    """multiplier x (model1 - model2): the difference a fine-tune made, for ModelMergeAdd or LoraSave."""
    return merge_models(model1, model2, lambda name: (-multiplier, multiplier))


@node(category=CATEGORY, outputs=[Output("MODEL")])
def ModelMergeAdd(model1=Socket("MODEL"), model2=Socket("MODEL")):
    """model1 + model2, weight by weight (model2 is usually a difference from ModelMergeSubtract)."""
    return merge_models(model1, model2, lambda name: (1.0, 1.0))


@node(category=CATEGORY, outputs=[Output("CLIP")])
def CLIPMergeSimple(clip1=Socket("CLIP"), clip2=Socket("CLIP"), ratio=Float(1.0, **_RATIO)):
    """ratio x clip1 + (1 - ratio) x clip2, encoder by encoder."""
    return merge_clips(clip1, clip2, 1.0 - ratio, ratio)


@node(category=CATEGORY, outputs=[Output("CLIP")])
def CLIPMergeSubtract(clip1=Socket("CLIP"), clip2=Socket("CLIP"), multiplier=Float(1.0, **_MULTIPLIER)):
    """multiplier x (clip1 - clip2), encoder by encoder."""
    return merge_clips(clip1, clip2, -multiplier, multiplier)


@node(category=CATEGORY, outputs=[Output("CLIP")])
def CLIPMergeAdd(clip1=Socket("CLIP"), clip2=Socket("CLIP")):
    """clip1 + clip2, encoder by encoder."""
    return merge_clips(clip1, clip2, 1.0, 1.0)


@node(category=CATEGORY, outputs=[Output("MODEL")])
def ModelMergeBlocks(
    model1=Socket("MODEL"),
    model2=Socket("MODEL"),
    input=Float(1.0, **_RATIO),
    middle=Float(1.0, **_RATIO),
    out=Float(1.0, **_RATIO),
):
    """ModelMergeSimple with a ratio per part of a UNet: input blocks, middle block, output blocks (and the
    final layers, "out"); the time and label embeddings take the input ratio."""
    return merge_models(model1, model2, block_strengths({"input": input, "middle": middle, "out": out}))


def _block_merge_node(class_type: str, blocks: Sequence[str], description: str) -> Callable[..., ModelHandle]:
    """A per-block merge node whose ratio inputs are named by the parameter prefixes they cover
    (``input_blocks.4.``), names ``@node`` cannot take as Python parameters; the spec is written out here."""
    declared: list[tuple[str, Input]] = [("model1", Socket("MODEL")), ("model2", Socket("MODEL"))]
    declared += [(block, Float(1.0, **_RATIO)) for block in blocks]

    def merge(model1: ModelHandle, model2: ModelHandle, **ratios: float) -> ModelHandle:
        return merge_models(model1, model2, block_strengths({block: ratios.get(block, 1.0) for block in blocks}))

    def run(_instance: object, kwargs: dict[str, object]) -> NodeResult:
        return NodeResult(values=(merge(**kwargs),))  # type: ignore[arg-type]

    spec = NodeSpec(
        class_type=class_type,
        input_source=lambda: tuple(declaration.to_spec(name) for name, declaration in declared),
        outputs=(Output("MODEL").to_spec(),),
        run=run,
        category=f"{CATEGORY}/model_specific",
        description=description,
        python_module=__name__,
    )
    merge.__name__ = merge.__qualname__ = class_type
    setattr(merge, SPEC_ATTRIBUTE, spec)
    return merge


def _unet_blocks(inputs: int, outputs: int, separator: str) -> list[str]:
    return [
        "time_embed.",
        "label_emb.",
        *(f"input_blocks.{i}{separator}" for i in range(inputs)),
        *(f"middle_block.{i}{separator}" for i in range(3)),
        *(f"output_blocks.{i}{separator}" for i in range(outputs)),
        "out.",
    ]


_SD1_DESCRIPTION = "ModelMergeSimple with a ratio per block of an SD1.x / SD2.x UNet (12 input, 3 middle, 12 output)."
ModelMergeSD1 = _block_merge_node("ModelMergeSD1", _unet_blocks(12, 12, "."), _SD1_DESCRIPTION)
ModelMergeSD2 = _block_merge_node("ModelMergeSD2", _unet_blocks(12, 12, "."), _SD1_DESCRIPTION)
# ComfyUI names SDXL's block inputs without the trailing dot; with nine blocks a side no name is another's prefix.
ModelMergeSDXL = _block_merge_node(
    "ModelMergeSDXL",
    _unet_blocks(9, 9, ""),
    "ModelMergeSimple with a ratio per block of an SDXL UNet (9 input, 3 middle, 9 output).",
)
