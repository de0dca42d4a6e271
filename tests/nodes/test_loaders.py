"""Loader nodes: files from the model folders, handles that share modules, LoRA and clip skip, and
loaded models that live only as long as the cache budget keeps their handles."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.checkpoint.errors import CheckpointError
from graph.cache import OutputCache
from graph.executor import Executor
from graph.registry import NodeRegistry
from graph.sizeof import nbytes
from nodes import register_builtin_nodes
from nodes.conditioning import CLIPTextEncode
from nodes.folders import Folders
from nodes.loaders import (
    CheckpointLoaderSimple,
    CLIPLoader,
    CLIPSetLastLayer,
    LoraLoader,
    LoraLoaderModelOnly,
    VAELoader,
)
from nodes.model_folders import ModelNotFoundError
from nodes.shared_models import load_shared_checkpoint
from tests.nodes.tiny_models import decode_prompt, kohya_lora_tensors, run_prompt, tiny_checkpoint, write_lora


@pytest.fixture
def loaded(folders: Folders):
    tiny_checkpoint(folders.models, "sd15.safetensors")
    model, clip, vae = CheckpointLoaderSimple("sd15.safetensors")
    write_lora(folders.models / "loras" / "style.safetensors", kohya_lora_tensors(model.unet, clip.encoders))
    return model, clip, vae


def test_the_checkpoint_combo_lists_the_folder_and_inputs_match_comfyui(loaded, folders: Folders) -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    info = registry.object_info()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["sd15.safetensors"]
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    lora = info["LoraLoader"]["input"]["required"]
    assert lora["lora_name"][0] == ["style.safetensors"]
    assert lora["strength_model"][1] == {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    assert info["CLIPSetLastLayer"]["input"]["required"]["stop_at_clip_layer"][1] == {
        "default": -1,
        "min": -24,
        "max": -1,
        "step": 1,
    }


def test_loader_outputs_share_one_load(loaded, folders: Folders) -> None:
    model, clip, vae = loaded
    again = CheckpointLoaderSimple("sd15.safetensors")
    assert again[0].unet is model.unet and again[1].stack is clip.stack and again[2].model is vae.model
    assert model.family.value == "sd15" and clip.family == "sd15" and vae.latent_channels == 4


def test_a_missing_file_names_the_folders_searched(folders: Folders) -> None:
    with pytest.raises(ModelNotFoundError, match=str(folders.models / "checkpoints")):
        CheckpointLoaderSimple("nope.safetensors")


def test_a_checkpoint_linked_in_from_another_disk_is_listed_and_loads(folders: Folders, tmp_path_factory) -> None:
    """Linking model files from another install is what users do; the folder is the owner's to link."""
    elsewhere = tmp_path_factory.mktemp("other_install")
    shared = tiny_checkpoint(elsewhere, "shared.safetensors")
    (folders.models / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folders.models / "checkpoints" / "linked.safetensors").symlink_to(shared)
    (folders.models / "checkpoints" / "library").symlink_to(shared.parent, target_is_directory=True)
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    listed = registry.object_info()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert listed == ["library/shared.safetensors", "linked.safetensors"]
    for name in listed:
        model, clip, vae = CheckpointLoaderSimple(name)
        assert model.family.value == "sd15" and vae.latent_channels == 4


def test_vae_loader_reads_the_vae_of_a_file_and_refuses_one_without(loaded, folders: Folders) -> None:
    tiny_checkpoint(folders.models, "vae.safetensors", folder="vae")
    vae = VAELoader("vae.safetensors")
    assert torch.equal(vae.model.decoder.conv_out.weight, loaded[2].model.decoder.conv_out.weight)
    write_lora(folders.models / "vae" / "not_a_vae.safetensors", {"something.else": torch.zeros(2)})
    with pytest.raises(CheckpointError):
        VAELoader("not_a_vae.safetensors")


def test_lora_loader_patches_each_side_with_its_strength(loaded) -> None:
    model, clip, _ = loaded
    patched_model, patched_clip = LoraLoader(model, clip, "style.safetensors", 0.5, 0.0)
    assert patched_clip is clip and patched_model is not model
    ((patches, strength),) = patched_model.patches
    assert strength == 0.5 and all(name.endswith(("to_q.weight", "to_k.weight", "to_v.weight")) for name in patches)
    assert LoraLoader(model, clip, "style.safetensors", 0.0, 0.0) == (model, clip)
    _, clip_only = LoraLoader(model, clip, "style.safetensors", 0.0, 1.0)
    assert not torch.equal(clip_only.encode("a cat")[0], clip.encode("a cat")[0])
    stacked = LoraLoaderModelOnly(patched_model, "style.safetensors", 1.0)
    assert [strength for _, strength in stacked.patches] == [0.5, 1.0]


def test_clip_set_last_layer_picks_an_earlier_layer(loaded) -> None:
    _, clip, _ = loaded
    skipped = CLIPSetLastLayer(clip, -2)
    assert skipped.clip_skip == -2 and skipped.stack is clip.stack
    cond, _ = skipped.encode("a cat")
    expected, _ = clip.stack.encode("a cat", clip_skip=-2)
    torch.testing.assert_close(cond, expected)
    assert not torch.equal(cond, clip.encode("a cat")[0])


def test_lora_keys_that_match_nothing_are_logged_not_fatal(
    loaded, folders: Folders, caplog: pytest.LogCaptureFixture
) -> None:
    model, clip, _ = loaded
    tensors = kohya_lora_tensors(model.unet, clip.encoders)
    tensors["lora_unet_no_such_block.lora_up.weight"] = torch.zeros(4, 2)
    tensors["lora_unet_no_such_block.lora_down.weight"] = torch.zeros(2, 4)
    write_lora(folders.models / "loras" / "partial.safetensors", tensors)
    with caplog.at_level("WARNING"):
        patched, _ = LoraLoader(model, clip, "partial.safetensors", 1.0, 1.0)
    assert patched.patches and "1 keys match nothing" in caplog.text and "lora_unet_no_such_block" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        LoraLoaderModelOnly(model, "style.safetensors", 1.0)
    assert caplog.text == ""


def test_a_cache_budget_smaller_than_two_checkpoints_keeps_one(folders: Folders) -> None:
    for name in ("first.safetensors", "second.safetensors"):
        tiny_checkpoint(folders.models, name)
    checkpoint = nbytes(CheckpointLoaderSimple("first.safetensors"))  # MODEL, CLIP and VAE: the file, once
    gc.collect()
    cache = OutputCache(budget_bytes=checkpoint * 3 // 2)
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    executor = Executor(registry, cache)

    run_prompt(executor, decode_prompt("first.safetensors"), "first")
    loaded = load_shared_checkpoint(folders.models / "checkpoints" / "first.safetensors")
    first = [weakref.ref(module) for module in (loaded.unet, loaded.vae, *loaded.text_encoders.encoders.values())]
    del loaded
    run_prompt(executor, decode_prompt("second.safetensors"), "second")
    gc.collect()
    assert all(ref() is None for ref in first), "the first checkpoint's modules are gone, not merely uncached"
    assert checkpoint < cache.stats().bytes <= checkpoint * 3 // 2

    again = run_prompt(executor, decode_prompt("first.safetensors", size=72), "first again")
    assert "1" in again.executed and again.outputs["4"]["images"]


def test_clip_loader_reads_a_standalone_clip_l_as_the_sd15_checkpoint_s_own_clip(loaded, folders: Folders) -> None:
    _, checkpoint_clip, _ = loaded
    prefix = "cond_stage_model.transformer."
    tensors = load_file(folders.models / "checkpoints" / "sd15.safetensors")
    clip_l = {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}
    (folders.models / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file(clip_l, folders.models / "text_encoders" / "clip_l.safetensors")
    clip = CLIPLoader("clip_l.safetensors", "stable_diffusion")
    assert clip.family == "sd15"
    ((cond, options),) = CLIPTextEncode("a (red:1.2) fox", clip)
    ((expected, expected_options),) = CLIPTextEncode("a (red:1.2) fox", checkpoint_clip)
    assert torch.equal(cond, expected) and torch.equal(options["pooled_output"], expected_options["pooled_output"])


def test_clip_loader_offers_comfyui_s_inputs(folders: Folders) -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    info = registry.object_info()["CLIPLoader"]["input"]
    assert list(info["required"]) == ["clip_name", "type"] and list(info["optional"]) == ["device"]
    assert info["required"]["type"][0][:1] == ["stable_diffusion"] and "sd3" in info["required"]["type"][0]
