"""Saving nodes: ComfyUI's inputs and files; a saved merge reloads (in Loom and in diffusers) as the merge it was.

The checkpoints are tiny SD files in the real single-file layouts (``diffusion.tiny``); the runtime computes
in fp32 on the CPU, so files are written in fp32 and a reloaded merge is the in-memory merge bit for bit.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import nodes.model_merging as model_merging
import nodes.model_saving as model_saving
from diffusion.checkpoint import ModelFamily
from diffusion.checkpoint.save import PendingTensor, low_rank_factors, single_file_tensors, write_safetensors
from diffusion.lora import apply_lora_patches, parse_lora
from graph.executor import Executor
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.folders import Folders, UnsafePathError
from nodes.latent import VAEDecode
from nodes.loaders import CheckpointLoaderSimple, CLIPLoader, LoraLoaderModelOnly, VAELoader
from nodes.model_handles import ModelHandle
from nodes.model_merging import CLIPMergeSimple, ModelMergeSimple, ModelMergeSubtract
from nodes.model_saving import CheckpointSave, CLIPSave, LoraSave, ModelSave, VAESave
from tests.nodes.test_model_merging import assert_same_sample, checkpoint, sample
from tests.nodes.tiny_models import kohya_lora_tensors, run_prompt, write_lora

MERGING = "advanced/model_merging"
HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
# ComfyUI's comfy_extras/nodes_model_merging.py and nodes_lora_extract.py:
# class -> (display name, category, required inputs in order, optional inputs, hidden inputs).
SPECS: dict[str, tuple[str, str, list[tuple[str, Any]], list[tuple[str, Any]], dict[str, str]]] = {
    "CheckpointSave": (
        "Save Checkpoint",
        MERGING,
        [("model", ["MODEL"]), ("clip", ["CLIP"]), ("vae", ["VAE"]),
         ("filename_prefix", ["STRING", {"default": "checkpoints/ComfyUI"}])],
        [],
        HIDDEN,
    ),
    "ModelSave": (
        "ModelSave",
        MERGING,
        [("model", ["MODEL"]), ("filename_prefix", ["STRING", {"default": "diffusion_models/ComfyUI"}])],
        [],
        HIDDEN,
    ),
    "CLIPSave": (
        "CLIPSave",
        MERGING,
        [("clip", ["CLIP"]), ("filename_prefix", ["STRING", {"default": "clip/ComfyUI"}])],
        [],
        HIDDEN,
    ),
    "VAESave": (
        "VAESave",
        MERGING,
        [("vae", ["VAE"]), ("filename_prefix", ["STRING", {"default": "vae/ComfyUI_vae"}])],
        [],
        HIDDEN,
    ),
    "LoraSave": (
        "Extract and Save Lora",
        "_for_testing",
        [
            ("filename_prefix", ["STRING", {"default": "loras/ComfyUI_extracted_lora"}]),
            ("rank", ["INT", {"default": 8, "min": 1, "max": 4096, "step": 1}]),
            ("lora_type", [["standard", "full_diff"]]),
            ("bias_diff", ["BOOLEAN", {"default": True}]),
        ],
        [
            ("model_diff", ["MODEL", {"tooltip": "The ModelSubtract output to be converted to a lora."}]),
            ("text_encoder_diff", ["CLIP", {"tooltip": "The CLIPSubtract output to be converted to a lora."}]),
        ],
        {},
    ),
}  # fmt: skip


@pytest.mark.parametrize("class_type", sorted(SPECS))
def test_inputs_and_category_are_comfyuis(class_type: str) -> None:
    registry = NodeRegistry()
    registry.register_module(model_saving)
    info = registry.object_info()[class_type]
    display_name, category, required, optional, hidden = SPECS[class_type]
    assert (info["display_name"], info["category"]) == (display_name, category)
    assert info["output"] == [] and info["output_node"] is True
    assert info["input_order"]["required"] == [name for name, _ in required]
    assert info["input"]["required"] == dict(required)
    assert info["input"].get("optional", {}) == dict(optional)
    assert info["input"].get("hidden", {}) == hidden
    assert info.get("experimental", False) is (class_type == "LoraSave")


@pytest.fixture
def pair(folders: Folders):
    checkpoint(folders, "a.safetensors", seed=0)
    checkpoint(folders, "b.safetensors", seed=1)
    return CheckpointLoaderSimple("a.safetensors"), CheckpointLoaderSimple("b.safetensors")


def saved(folders: Folders, pattern: str) -> list[Path]:
    return sorted((folders.output).glob(pattern))


def installed(folders: Folders, path: Path, kind: str) -> str:
    """Copy a saved file into ``models/<kind>`` and return its name there, for a loader to find."""
    target = folders.models / kind / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return path.name


def metadata(path: Path) -> dict[str, str] | None:
    with safe_open(str(path), "pt") as opened:
        return opened.metadata()


def test_a_saved_merge_reloads_and_samples_as_the_merge_in_memory(pair, folders: Folders) -> None:
    (model1, clip1, vae1), (model2, clip2, _) = pair
    model, clip = ModelMergeSimple(model1, model2, 0.3), CLIPMergeSimple(clip1, clip2, 0.6)
    CheckpointSave(model, clip, vae1, "checkpoints/merged", None, None)
    (path,) = saved(folders, "checkpoints/merged_*")
    assert path.name == "merged_00001_.safetensors"
    reloaded, reloaded_clip, reloaded_vae = CheckpointLoaderSimple(installed(folders, path, "checkpoints"))
    assert reloaded.family is ModelFamily.SD15 and not reloaded.patches
    assert torch.equal(sample(reloaded, reloaded_clip), sample(model, clip))
    assert torch.equal(reloaded_clip.encode("a cat")[0], clip.encode("a cat")[0])
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    assert torch.equal(VAEDecode(latent, reloaded_vae), VAEDecode(latent, vae1))


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl", "sdxl_refiner"])
def test_checkpoints_are_written_in_their_familys_single_file_layout(folders: Folders, family: str) -> None:
    """A loaded checkpoint saved unchanged is the original file, key for key and value for value; SD1's CLIP-L
    loses the position_ids buffer, which ComfyUI does not write for SD1 either."""
    original = checkpoint(folders, f"{family}.safetensors", seed=0, family=family)
    CheckpointSave(*CheckpointLoaderSimple(original.name), f"checkpoints/{family}", None, None)
    (path,) = saved(folders, f"checkpoints/{family}_*")
    written, expected = load_file(path), load_file(original)
    if family == "sd15":
        del expected["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert written.keys() == expected.keys()
    for key, tensor in expected.items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key


def test_the_metadata_is_comfyuis(folders: Folders) -> None:
    checkpoint(folders, "sd15.safetensors", seed=0)
    checkpoint(folders, "xl.safetensors", seed=0, family="sdxl")
    prompt, workflow = {"1": {"x": 1}}, {"nodes": [], "links": []}
    CheckpointSave(*CheckpointLoaderSimple("sd15.safetensors"), "checkpoints/sd", prompt, {"workflow": workflow})
    CheckpointSave(*CheckpointLoaderSimple("xl.safetensors"), "checkpoints/xl/ComfyUI", None, None)
    (sd,), (xl,) = saved(folders, "checkpoints/sd_*"), saved(folders, "checkpoints/xl/ComfyUI_*")
    assert metadata(sd) == {
        "modelspec.predict_key": "epsilon",
        "prompt": json.dumps(prompt),
        "workflow": json.dumps(workflow),
    }
    assert metadata(xl) == {
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.implementation": "sgm",
        "modelspec.title": "ComfyUI 1",
        "modelspec.predict_key": "epsilon",
        "prompt": "",
    }


def test_a_v_prediction_model_keeps_its_marker(folders: Folders) -> None:
    from diffusion.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(folders.models / "checkpoints" / "v.safetensors", "sdxl", prediction="v")
    model, clip, vae = CheckpointLoaderSimple("v.safetensors")
    CheckpointSave(model, clip, vae, "checkpoints/v", None, None)
    (path,) = saved(folders, "checkpoints/v_*")
    assert metadata(path)["modelspec.predict_key"] == "v"
    assert load_file(path)["v_pred"].shape == (0,)
    assert CheckpointLoaderSimple(installed(folders, path, "checkpoints"))[0].checkpoint.info.prediction == "v"


def test_the_workflow_and_prompt_come_from_the_executor(pair, folders: Folders) -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    for module, probe in ((model_saving, "CheckpointSave"), (model_merging, "ModelMergeSimple")):
        if registry.get(probe) is None:
            registry.register_module(module)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.5}},
        "4": {
            "class_type": "CheckpointSave",
            "inputs": {"model": ["3", 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": "checkpoints/run"},
        },
    }
    workflow = {"nodes": [{"id": 4, "type": "CheckpointSave"}]}
    run_prompt(Executor(registry), prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    (path,) = saved(folders, "checkpoints/run_*")
    written = metadata(path)
    assert json.loads(written["workflow"]) == workflow
    assert {key: node["class_type"] for key, node in json.loads(written["prompt"]).items()} == {
        "1": "CheckpointLoaderSimple",
        "2": "CheckpointLoaderSimple",
        "3": "ModelMergeSimple",
        "4": "CheckpointSave",
    }


def test_files_are_numbered_and_stay_inside_the_output_folder(pair, folders: Folders) -> None:
    (model1, clip1, vae1), _ = pair
    ModelSave(model1, "diffusion_models/ComfyUI", None, None)
    ModelSave(model1, "diffusion_models/ComfyUI", None, None)
    assert [path.name for path in saved(folders, "diffusion_models/*")] == [
        "ComfyUI_00001_.safetensors",
        "ComfyUI_00002_.safetensors",
    ]
    assert all(key.startswith("model.diffusion_model.") for key in load_file(saved(folders, "diffusion_models/*")[0]))
    with pytest.raises(UnsafePathError):
        VAESave(vae1, "../escaped", None, None)


def test_diffusers_loads_a_saved_merge_and_computes_the_same_unet_output(pair, folders: Folders, tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    (model1, clip1, vae1), (model2, _, _) = pair
    merged = ModelMergeSimple(model1, model2, 0.3)
    CheckpointSave(merged, clip1, vae1, "checkpoints/for_diffusers", None, None)
    (path,) = saved(folders, "checkpoints/for_diffusers_*")
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(diffusers_sd15_config(tmp_path / "config")), local_files_only=True, safety_checker=None
    )
    generator = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 5, 64, generator=generator)
    timesteps = torch.tensor([999.0, 250.0])
    with torch.no_grad():
        expected = pipe.unet(x, timesteps, encoder_hidden_states=context).sample
    with merged.unet_fn() as call:
        got = call(x, timesteps, context)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def diffusers_sd15_config(root: Path) -> Path:
    """A local diffusers pipeline folder (configs and tokenizer, no weights) for the tiny SD1.5 checkpoint, so
    ``from_single_file`` downloads nothing."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from tests.diffusion.reference_clip import reference_tokenizer

    UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
    ).save_config(root / "unet")
    AutoencoderKL(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
    ).save_config(root / "vae")
    CLIPTextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    ).save_pretrained(root / "text_encoder")
    vocabulary = root / "vocabulary"
    vocabulary.mkdir(parents=True)
    reference_tokenizer(vocabulary).save_pretrained(root / "tokenizer")
    PNDMScheduler(steps_offset=1).save_config(root / "scheduler")
    components = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    index = {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False, **components}
    (root / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return root


def test_vae_save_writes_the_vae_alone_for_the_vae_loader(pair, folders: Folders) -> None:
    (_, _, vae1), _ = pair
    VAESave(vae1, "vae/ComfyUI_vae", None, None)
    (path,) = saved(folders, "vae/ComfyUI_vae_*")
    assert metadata(path) == {"prompt": ""}
    original = load_file(folders.models / "checkpoints" / "a.safetensors")
    expected = {
        k.removeprefix("first_stage_model."): v for k, v in original.items() if k.startswith("first_stage_model.")
    }
    assert load_file(path).keys() == expected.keys()
    vae = VAELoader(installed(folders, path, "vae"))
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    assert torch.equal(VAEDecode(latent, vae), VAEDecode(latent, vae1))


def test_clip_save_writes_each_encoder_in_transformers_layout(pair, folders: Folders) -> None:
    (_, clip1, _), (_, clip2, _) = pair
    merged = CLIPMergeSimple(clip1, clip2, 0.5)
    CLIPSave(merged, "clip/merged", None, None)
    (path,) = saved(folders, "clip/*")
    assert path.name == "merged_clip_l_00001_.safetensors"
    assert metadata(path) == {"format": "pt", "prompt": ""}
    assert all(key.startswith("text_model.") for key in load_file(path))
    reloaded = CLIPLoader(installed(folders, path, "text_encoders"), "stable_diffusion")
    assert torch.equal(reloaded.encode("a cat")[0], merged.encode("a cat")[0])


def test_clip_save_of_sdxl_writes_clip_l_and_clip_g(folders: Folders) -> None:
    checkpoint(folders, "xl.safetensors", seed=0, family="sdxl")
    _, clip, _ = CheckpointLoaderSimple("xl.safetensors")
    CLIPSave(clip, "clip/ComfyUI", None, None)
    assert [path.name for path in saved(folders, "clip/*")] == [
        "ComfyUI_clip_g_00001_.safetensors",
        "ComfyUI_clip_l_00001_.safetensors",
    ]
    clip_g = load_file(saved(folders, "clip/ComfyUI_clip_g_*")[0])
    assert "text_projection.weight" in clip_g and "text_model.encoder.layers.0.self_attn.q_proj.weight" in clip_g


def test_a_checkpoint_holds_one_familys_parts(folders: Folders) -> None:
    checkpoint(folders, "sd15.safetensors", seed=0)
    checkpoint(folders, "xl.safetensors", seed=0, family="sdxl")
    model, _, vae = CheckpointLoaderSimple("sd15.safetensors")
    _, xl_clip, _ = CheckpointLoaderSimple("xl.safetensors")
    with pytest.raises(ValueError, match="sdxl text encoder"):
        CheckpointSave(model, xl_clip, vae, "checkpoints/mixed", None, None)
    assert not saved(folders, "checkpoints/*")


def test_flow_transformers_are_not_written_in_an_sd_layout(folders: Folders) -> None:
    from diffusion.tiny_parts import write_tiny_file
    from nodes.loaders import UNETLoader

    write_tiny_file(folders.models / "diffusion_models" / "flux.safetensors", "flux_dev", "diffusion_model")
    with pytest.raises(NotImplementedError, match="flux"):
        ModelSave(UNETLoader("flux.safetensors", "default"), "diffusion_models/flux", None, None)
    assert not saved(folders, "diffusion_models/*")
    with pytest.raises(NotImplementedError, match="flux"):
        single_file_tensors(ModelFamily.FLUX, {})


def test_clip_save_of_flux_writes_clip_l_and_t5_as_loaded(folders: Folders) -> None:
    from diffusion.tiny_parts import write_tiny_file
    from nodes.loaders import DualCLIPLoader

    encoders = folders.models / "text_encoders"
    write_tiny_file(encoders / "clip_l.safetensors", "flux_dev", "clip_l")
    write_tiny_file(encoders / "t5.safetensors", "flux_dev", "t5xxl")
    CLIPSave(DualCLIPLoader("clip_l.safetensors", "t5.safetensors", "flux", "default"), "clip/flux", None, None)
    clip_l, t5 = saved(folders, "clip/flux_*")
    assert (clip_l.name, t5.name) == ("flux_clip_l_00001_.safetensors", "flux_t5xxl_00001_.safetensors")
    for path, original in ((clip_l, encoders / "clip_l.safetensors"), (t5, encoders / "t5.safetensors")):
        written, expected = load_file(path), load_file(original)
        assert written.keys() == expected.keys()
        assert all(torch.equal(written[key], tensor) for key, tensor in expected.items())


def test_tensors_are_computed_one_at_a_time_after_the_header() -> None:
    """Streaming: the header is written first, and each tensor is computed only once the previous one is written."""
    file = io.BytesIO()
    positions: list[int] = []

    def pending(size: int) -> PendingTensor:
        def produce() -> torch.Tensor:
            positions.append(file.tell())
            return torch.ones(size)

        return PendingTensor((size,), torch.float32, produce)

    write_safetensors(file, {"a": pending(3), "b": pending(5), "c": pending(2)})
    header = 8 + int.from_bytes(file.getvalue()[:8], "little")
    assert positions == [header, header + 12, header + 32]
    assert header % 8 == 0


def fine_tuned(model: ModelHandle, clip: Any, folders: Folders, scale: float) -> ModelHandle:
    """A "fine-tune" of ``model``: its attention projections moved by a rank-4 difference, as training moves them."""
    tensors = kohya_lora_tensors(model.unet, clip.encoders, rank=4, scale=scale, seed=3)
    write_lora(folders.models / "loras" / "tune.safetensors", tensors)
    return LoraLoaderModelOnly(model, "tune.safetensors", 1.0)


def extracted(folders: Folders, diff: ModelHandle, base: ModelHandle, rank: int, lora_type: str, prefix: str) -> Any:
    LoraSave(f"loras/{prefix}", rank, lora_type, True, diff, None)
    (path,) = saved(folders, f"loras/{prefix}_*")
    return LoraLoaderModelOnly(base, installed(folders, path, "loras"), 1.0)


def weights(model: ModelHandle) -> dict[str, torch.Tensor]:
    patched = apply_lora_patches(model.unet, model.patches)
    return {name: patched.get(name, parameter.detach()) for name, parameter in model.unet.named_parameters()}


def test_lora_save_writes_comfyuis_keys(pair, folders: Folders) -> None:
    (model1, clip1, _), (model2, clip2, _) = pair
    LoraSave("loras/keys", 4, "standard", True, ModelMergeSubtract(model2, model1, 1.0), None)
    LoraSave("loras/no_bias", 4, "standard", False, ModelMergeSubtract(model2, model1, 1.0), None)
    LoraSave("loras/clip", 4, "standard", True, None, CLIPMergeSimple(clip2, clip1, 0.5))
    LoraSave("loras/nothing", 4, "standard", True, None, None)
    (keys,), (no_bias,), (clip,) = (saved(folders, f"loras/{p}_*") for p in ("keys", "no_bias", "clip"))
    assert not saved(folders, "loras/nothing_*") and metadata(keys) is None
    written = load_file(keys)
    assert written["diffusion_model.input_blocks.1.1.proj_in.lora_up.weight"].shape == (32, 4, 1, 1)
    assert written["diffusion_model.input_blocks.1.1.proj_in.lora_down.weight"].shape == (4, 32, 1, 1)
    assert written["diffusion_model.input_blocks.0.0.lora_down.weight"].shape == (4, 4, 3, 3)  # rank <= in channels
    assert written["diffusion_model.out.0.diff"].shape == (32,) and "diffusion_model.out.0.diff_b" in written
    assert all(tensor.dtype == torch.float16 for tensor in written.values())
    assert not any(key.endswith((".diff", ".diff_b")) for key in load_file(no_bias))
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight" in load_file(
        clip
    )
    # Loom's LoRA reader resolves the text-encoder part it wrote.
    patches = parse_lora(load_file(clip), model1.unet, clip1.encoders, clip)
    assert patches.text[0] and not [stem for stem in patches.unmatched if stem.startswith("text_encoders.")]


def test_low_rank_factors_are_comfyuis_clamped_svd() -> None:
    diff = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    up, down = low_rank_factors(diff, 6)
    u, s, vh = torch.linalg.svd(diff)
    reference_up, reference_down = u[:, :6] @ torch.diag(s[:6]), vh[:6]
    limit = torch.quantile(torch.cat([reference_up.flatten(), reference_down.flatten()]), 0.99)
    torch.testing.assert_close(up, reference_up.clamp(-limit, limit), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(down, reference_down.clamp(-limit, limit), rtol=1e-4, atol=1e-4)


def test_an_extracted_lora_applied_to_the_base_gives_the_merge_back(pair, folders: Folders) -> None:
    """LoraSave of (merge - base): full_diff is the merge within fp16 rounding; standard LoRAs are ComfyUI's
    clamped SVD, close at full rank and coarser at rank 1."""
    (base, clip, _), _ = pair
    merged = ModelMergeSimple(base, fine_tuned(base, clip, folders, scale=0.05), 0.5)
    diff = ModelMergeSubtract(merged, base, 1.0)
    target, untouched = sample(merged, clip), sample(base, clip)
    full_diff = extracted(folders, diff, base, 8, "full_diff", "full_diff")
    assert_same_sample(sample(full_diff, clip), target, rtol=1e-3)
    full_rank = sample(extracted(folders, diff, base, 4096, "standard", "full_rank"), clip)
    rank_one = sample(extracted(folders, diff, base, 1, "standard", "rank_one"), clip)
    baseline = float((untouched - target).abs().max())
    assert float((full_rank - target).abs().max()) < 0.25 * baseline
    assert float((full_rank - target).abs().max()) < float((rank_one - target).abs().max()) < baseline
    wanted, got = weights(merged), weights(full_diff)
    for name, value in wanted.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=2e-3 * float(value.abs().max()) + 1e-6)


def test_scaled_fp8_weights_are_written_as_their_real_values() -> None:
    from diffusion.checkpoint.save import patched_tensors
    from diffusion.fused_linear import FusedLinear
    from diffusion.stored_weights import attach_weight_scales

    module = torch.nn.Sequential(FusedLinear(4, 3))
    module[0].weight.data = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).to(torch.float8_e4m3fn)
    attach_weight_scales(module, {"0": torch.tensor(0.5)})
    written = patched_tensors(module, (), torch.float32)
    assert set(written) == {"0.weight", "0.bias"}
    expected = module[0].weight.detach().to(torch.float32) * 0.5
    assert torch.equal(written["0.weight"].produce(), expected)
    assert patched_tensors(module)["0.weight"].dtype == torch.float32  # fp8 cannot hold the scaled values
