"""Model-merging nodes: ComfyUI's inputs and categories, and merges that equal models merged by hand.

Two tiny SD1.5 checkpoints of different seeds stand for two fine-tunes; a merge must sample exactly like a
checkpoint whose weights were merged with ComfyUI's formula beforehand, while the loaded weights and the
files stay untouched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import nodes.model_merging as model_merging
from diffusion.lora import apply_lora_patches
from graph.registry import NodeRegistry
from nodes.clip_handles import ClipHandle
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.latent import EmptyLatentImage
from nodes.loaders import CheckpointLoaderSimple, LoraLoaderModelOnly
from nodes.model_handles import ModelHandle
from nodes.model_merging import (
    CLIPMergeAdd,
    CLIPMergeSimple,
    CLIPMergeSubtract,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSD1,
    ModelMergeSDXL,
    ModelMergeSimple,
    ModelMergeSubtract,
)
from nodes.sampling import KSampler
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora

UNET = "model.diffusion_model."
CLIP_L = "cond_stage_model.transformer.text_model."


def checkpoint(folders: Folders, name: str, seed: int, family: str = "sd15", inpaint: bool = False) -> Path:
    """``models/checkpoints/<name>``: a tiny checkpoint of ``family`` and ``seed``."""
    return tiny_checkpoint(folders.models, name, family, inpaint, seed=seed)


def hand_merged(folders: Folders, name: str, merge: Mapping[str, Any]) -> str:
    """A checkpoint whose weights are ``merge[key](a, b)`` of a.safetensors and b.safetensors (a's elsewhere)."""
    a = load_file(folders.models / "checkpoints" / "a.safetensors")
    b = load_file(folders.models / "checkpoints" / "b.safetensors")
    merged = {}
    for key, tensor in a.items():
        rule = next((rule for prefix, rule in merge.items() if key.startswith(prefix)), None)
        merged[key] = tensor if rule is None else rule(tensor, b[key]).contiguous()
    save_file(merged, folders.models / "checkpoints" / name)
    return name


@pytest.fixture
def pair(folders: Folders) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, Any]]:
    checkpoint(folders, "a.safetensors", seed=0)
    checkpoint(folders, "b.safetensors", seed=1)
    return CheckpointLoaderSimple("a.safetensors"), CheckpointLoaderSimple("b.safetensors")


def sample(model: ModelHandle, clip: ClipHandle, seed: int = 7) -> torch.Tensor:
    positive, negative = CLIPTextEncode("a photo of a cat", clip), CLIPTextEncode("blurry", clip)
    latent = EmptyLatentImage(64, 64, 1)
    return KSampler(model, seed, 3, 7.0, "euler", "normal", positive, negative, latent, 1.0)["samples"]


def weights(model: ModelHandle) -> dict[str, torch.Tensor]:
    """The model's weights as it samples with them: loaded values with its patches applied."""
    patched = apply_lora_patches(model.unet, model.patches)
    return {name: patched.get(name, parameter.detach()) for name, parameter in model.unet.named_parameters()}


def assert_same_sample(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal up to float rounding of the weights: relative to the latent's scale (hundreds for these tiny models)."""
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ComfyUI's comfy_extras/nodes_model_merging.py and nodes_model_merging_model_specific.py:
# class -> (category, inputs in order as (name, type, options), outputs).
RATIO = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
MULTIPLIER = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
MERGING = "advanced/model_merging"
MODELS = [("model1", "MODEL", None), ("model2", "MODEL", None)]
CLIPS = [("clip1", "CLIP", None), ("clip2", "CLIP", None)]


def _sd1_blocks() -> list[str]:
    return [
        "time_embed.",
        "label_emb.",
        *(f"input_blocks.{i}." for i in range(12)),
        *(f"middle_block.{i}." for i in range(3)),
        *(f"output_blocks.{i}." for i in range(12)),
        "out.",
    ]


SDXL_BLOCKS = [
    "time_embed.",
    "label_emb.",
    *(f"input_blocks.{i}" for i in range(9)),
    *(f"middle_block.{i}" for i in range(3)),
    *(f"output_blocks.{i}" for i in range(9)),
    "out.",
]
SPECS: dict[str, tuple[str, list[tuple[str, str, dict[str, Any] | None]], list[str]]] = {
    "ModelMergeSimple": (MERGING, [*MODELS, ("ratio", "FLOAT", RATIO)], ["MODEL"]),
    "ModelMergeBlocks": (
        MERGING,
        [*MODELS, ("input", "FLOAT", RATIO), ("middle", "FLOAT", RATIO), ("out", "FLOAT", RATIO)],
        ["MODEL"],
    ),
    "ModelMergeSubtract": (MERGING, [*MODELS, ("multiplier", "FLOAT", MULTIPLIER)], ["MODEL"]),
    "ModelMergeAdd": (MERGING, MODELS, ["MODEL"]),
    "CLIPMergeSimple": (MERGING, [*CLIPS, ("ratio", "FLOAT", RATIO)], ["CLIP"]),
    "CLIPMergeSubtract": (MERGING, [*CLIPS, ("multiplier", "FLOAT", MULTIPLIER)], ["CLIP"]),
    "CLIPMergeAdd": (MERGING, CLIPS, ["CLIP"]),
    "ModelMergeSD1": (f"{MERGING}/model_specific", [*MODELS, *((b, "FLOAT", RATIO) for b in _sd1_blocks())], ["MODEL"]),
    "ModelMergeSD2": (f"{MERGING}/model_specific", [*MODELS, *((b, "FLOAT", RATIO) for b in _sd1_blocks())], ["MODEL"]),
    "ModelMergeSDXL": (f"{MERGING}/model_specific", [*MODELS, *((b, "FLOAT", RATIO) for b in SDXL_BLOCKS)], ["MODEL"]),
}


@pytest.mark.parametrize("class_type", sorted(SPECS))
def test_inputs_outputs_and_category_are_comfyuis(class_type: str) -> None:
    registry = NodeRegistry()
    registry.register_module(model_merging)
    info = registry.object_info()[class_type]
    category, inputs, outputs = SPECS[class_type]
    assert info["category"] == category and info["display_name"] == class_type
    assert info["output"] == outputs and not info["output_node"]
    assert info["input_order"] == {"required": [name for name, _, _ in inputs]}
    for name, type_, options in inputs:
        assert info["input"]["required"][name] == ([type_, options] if options else [type_])


def test_a_merge_samples_like_a_checkpoint_merged_by_hand(pair, folders: Folders) -> None:
    (model1, clip1, _), (model2, _, _) = pair
    merged = ModelMergeSimple(model1, model2, 0.3)
    by_hand, _, _ = CheckpointLoaderSimple(
        hand_merged(folders, "hand.safetensors", {UNET: lambda a, b: 0.3 * a + 0.7 * b})
    )
    expected = sample(by_hand, clip1)
    assert_same_sample(sample(merged, clip1), expected)
    assert not torch.allclose(sample(model1, clip1), expected, atol=1e-3)


def test_ratio_one_is_model1_itself_and_ratio_zero_is_model2(pair) -> None:
    (model1, clip1, _), (model2, _, _) = pair
    assert ModelMergeSimple(model1, model2, 1.0) is model1
    assert torch.equal(sample(ModelMergeSimple(model1, model2, 1.0), clip1), sample(model1, clip1))
    zero = weights(ModelMergeSimple(model1, model2, 0.0))
    for name, parameter in model2.unet.named_parameters():
        torch.testing.assert_close(zero[name], parameter.detach(), rtol=0, atol=1e-6)


def test_merging_copies_nothing_and_leaves_loaded_weights_and_files_untouched(pair, folders: Folders) -> None:
    (model1, clip1, _), (model2, _, _) = pair
    files = [folders.models / "checkpoints" / name for name in ("a.safetensors", "b.safetensors")]
    hashes = [sha256(path) for path in files]
    before = {name: parameter.detach().clone() for name, parameter in model1.unet.named_parameters()}
    merged = ModelMergeSimple(model1, model2, 0.5)
    # The merge's deltas are the models' own parameters, not copies of them.
    held = {
        id(tensor)
        for patches, _ in merged.patches
        for deltas in patches.values()
        for d in deltas
        for tensor in [d.diff]
    }
    assert held <= {id(p) for p in model1.unet.parameters()} | {id(p) for p in model2.unet.parameters()}
    sample(merged, clip1)
    assert all(torch.equal(before[name], p.detach()) for name, p in model1.unet.named_parameters())
    assert [sha256(path) for path in files] == hashes


def test_simple_merges_are_symmetric_as_comfyuis_are(pair) -> None:
    (model1, _, _), (model2, _, _) = pair
    forward, backward = weights(ModelMergeSimple(model1, model2, 0.3)), weights(ModelMergeSimple(model2, model1, 0.7))
    added, added_back = weights(ModelMergeAdd(model1, model2)), weights(ModelMergeAdd(model2, model1))
    difference, opposite = (
        weights(ModelMergeSubtract(model1, model2, 0.5)),
        weights(ModelMergeSubtract(model2, model1, 0.5)),
    )
    two = dict(model2.unet.named_parameters())
    for name, parameter in model1.unet.named_parameters():
        torch.testing.assert_close(forward[name], backward[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(added[name], added_back[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(difference[name], -opposite[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(difference[name], 0.5 * (parameter - two[name]), rtol=0, atol=1e-6)


def test_subtract_then_add_gives_the_fine_tune_back(pair) -> None:
    """The add-difference recipe: (fine-tune - base) + base."""
    (model1, clip1, _), (model2, _, _) = pair
    rebuilt = ModelMergeAdd(ModelMergeSubtract(model2, model1, 1.0), model1)
    assert_same_sample(sample(rebuilt, clip1), sample(model2, clip1))


def test_merges_include_the_loras_each_model_carries(pair, folders: Folders) -> None:
    """ComfyUI merges each model as patched so far, and its strength_model scales model1's LoRA too."""
    (model1, clip1, _), (model2, _, _) = pair
    write_lora(folders.models / "loras" / "style.safetensors", kohya_lora_tensors(model1.unet, clip1.encoders))
    styled1 = LoraLoaderModelOnly(model1, "style.safetensors", 0.8)
    styled2 = LoraLoaderModelOnly(model2, "style.safetensors", -0.5)
    merged = weights(ModelMergeSimple(styled1, styled2, 0.25))
    one, two = weights(styled1), weights(styled2)
    for name in one:
        torch.testing.assert_close(merged[name], 0.25 * one[name] + 0.75 * two[name], rtol=0, atol=1e-6)


def test_mismatched_shapes_are_scaled_but_not_merged_as_in_comfyui(folders: Folders, caplog) -> None:
    checkpoint(folders, "inpaint.safetensors", seed=0, inpaint=True)
    checkpoint(folders, "b.safetensors", seed=1)
    inpaint, _, _ = CheckpointLoaderSimple("inpaint.safetensors")
    plain, _, _ = CheckpointLoaderSimple("b.safetensors")
    with caplog.at_level(logging.WARNING):
        merged = weights(ModelMergeSimple(inpaint, plain, 0.4))
    assert "input_blocks.0.0.weight" in caplog.text
    first = dict(inpaint.unet.named_parameters())["input_blocks.0.0.weight"]
    torch.testing.assert_close(merged["input_blocks.0.0.weight"], 0.4 * first.detach(), rtol=0, atol=1e-6)
    # Subtracting with multiplier 1 (the inpainting recipe) keeps that weight whole.
    assert "input_blocks.0.0.weight" not in {n for p, _ in ModelMergeSubtract(inpaint, plain, 1.0).patches for n in p}


def test_block_ratios_touch_only_their_blocks(pair) -> None:
    (model1, _, _), (model2, _, _) = pair
    one, two = dict(model1.unet.named_parameters()), dict(model2.unet.named_parameters())
    # "out" is a prefix of "output_blocks" too, and the time embedding takes the first ratio (input), as in ComfyUI.
    merged = ModelMergeBlocks(model1, model2, 0.0, 1.0, 0.5)
    patched = weights(merged)
    touched = {name for patches, _ in merged.patches for name in patches}
    assert touched == {n for n in one if not n.startswith("middle_block")}
    for name in one:
        if name.startswith(("input_blocks", "time_embed")):
            torch.testing.assert_close(patched[name], two[name].detach(), rtol=0, atol=1e-6)
        elif name.startswith(("output_blocks", "out.")):
            torch.testing.assert_close(patched[name], 0.5 * (one[name] + two[name]).detach(), rtol=0, atol=1e-6)
    only_one = ModelMergeSD1(model1, model2, **{"output_blocks.1.": 0.0})
    assert {name for patches, _ in only_one.patches for name in patches} == {
        n for n in one if n.startswith("output_blocks.1.")
    }


def test_sdxl_block_names_have_no_trailing_dot(folders: Folders) -> None:
    checkpoint(folders, "xl_a.safetensors", seed=0, family="sdxl")
    checkpoint(folders, "xl_b.safetensors", seed=1, family="sdxl")
    (model1, _, _), (model2, _, _) = (
        CheckpointLoaderSimple("xl_a.safetensors"),
        CheckpointLoaderSimple("xl_b.safetensors"),
    )
    merged = ModelMergeSDXL(model1, model2, **{"input_blocks.4": 0.25, "label_emb.": 0.0})
    touched = {name for patches, _ in merged.patches for name in patches}
    names = [name for name, _ in model1.unet.named_parameters()]
    assert touched == {n for n in names if n.startswith(("input_blocks.4", "label_emb."))} and touched


def test_clip_merges_encode_like_encoders_merged_by_hand(pair, folders: Folders) -> None:
    (_, clip1, _), (_, clip2, _) = pair
    hand = hand_merged(folders, "clip_hand.safetensors", {CLIP_L: lambda a, b: 0.25 * a + 0.75 * b})
    _, by_hand, _ = CheckpointLoaderSimple(hand)
    torch.testing.assert_close(
        CLIPMergeSimple(clip1, clip2, 0.25).encode("a cat")[0], by_hand.encode("a cat")[0], rtol=1e-5, atol=1e-5
    )
    assert CLIPMergeSimple(clip1, clip2, 1.0) is clip1
    rebuilt = CLIPMergeAdd(CLIPMergeSubtract(clip2, clip1, 1.0), clip1)
    torch.testing.assert_close(rebuilt.encode("a cat")[0], clip2.encode("a cat")[0], rtol=1e-4, atol=1e-4)


def test_merged_handles_keep_model1s_sampling_and_clip_skip(pair) -> None:
    (model1, clip1, _), (model2, clip2, _) = pair
    assert ModelMergeSimple(model1, model2, 0.5).sampling is model1.sampling
    assert CLIPMergeSimple(clip1.with_clip_skip(-2), clip2, 0.5).clip_skip == -2


def test_flow_transformers_merge_by_parameter_name_too(folders: Folders) -> None:
    from diffusion.tiny_parts import write_tiny_file
    from nodes.loaders import UNETLoader

    for seed in (0, 1):
        write_tiny_file(
            folders.models / "diffusion_models" / f"flux{seed}.safetensors", "flux_dev", "diffusion_model", seed=seed
        )
    model1, model2 = (UNETLoader(f"flux{seed}.safetensors", "default") for seed in (0, 1))
    merged = weights(ModelMergeSimple(model1, model2, 0.25))
    two = dict(model2.unet.named_parameters())
    for name, parameter in model1.unet.named_parameters():
        torch.testing.assert_close(merged[name], (0.25 * parameter + 0.75 * two[name]).detach(), rtol=0, atol=1e-6)


def test_clips_with_t5_are_not_merged_since_t5_takes_no_patches(folders: Folders) -> None:
    from diffusion.tiny_parts import write_tiny_file
    from nodes.loaders import DualCLIPLoader

    write_tiny_file(folders.models / "text_encoders" / "clip_l.safetensors", "flux_dev", "clip_l")
    write_tiny_file(folders.models / "text_encoders" / "t5.safetensors", "flux_dev", "t5xxl")
    clip = DualCLIPLoader("clip_l.safetensors", "t5.safetensors", "flux", "default")
    with pytest.raises(NotImplementedError, match="t5xxl"):
        CLIPMergeSimple(clip, clip, 0.5)
    assert CLIPMergeSimple(clip, clip, 1.0) is clip
