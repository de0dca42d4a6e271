"""Whole workflows on tiny checkpoints, through validation and the executor, as a client sends them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import nodes.shared_models as shared_models
from graph.executor import Executor
from nodes.folders import Folders
from nodes.shared_models import load_shared_checkpoint
from tests.nodes.tiny_models import kohya_lora_tensors, make_executor, run_prompt, tiny_checkpoint, write_lora

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
INPAINT = "512-inpainting-ema.safetensors"


@pytest.fixture
def models(folders: Folders) -> Path:
    tiny_checkpoint(folders.models, SD15)
    lora_target = load_shared_checkpoint(folders.models / "checkpoints" / SD15)
    write_lora(
        folders.models / "loras" / "style.safetensors",
        kohya_lora_tensors(lora_target.unet, [lora_target.text_encoders.encoders["clip_l"]], scale=0.5),
    )
    embedding = torch.randn(2, 64, generator=torch.Generator().manual_seed(5))
    (folders.models / "embeddings").mkdir()
    save_file({"emb_params": embedding}, folders.models / "embeddings" / "cat_style.safetensors")
    return folders.models


def txt2img(
    seed: int = 42,
    text: str = "a photo of a cat",
    ckpt: str = SD15,
    lora: tuple[str, float, float] | None = None,
    size: int = 64,
) -> dict[str, Any]:
    model, clip = ["4", 0], ["4", 1]
    prompt: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "seed": seed,
                "steps": 3,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }
    if lora is not None:
        name, strength_model, strength_clip = lora
        prompt["10"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["4", 0],
                "clip": ["4", 1],
                "lora_name": name,
                "strength_model": strength_model,
                "strength_clip": strength_clip,
            },
        }
        prompt["3"]["inputs"]["model"] = ["10", 0]
        for node_id in ("6", "7"):
            prompt[node_id]["inputs"]["clip"] = ["10", 1]
    return prompt


def saved(folders: Folders, record: Any, node_id: str = "9") -> Path:
    entry = record.outputs[node_id]["images"][0]
    return folders.output / entry["subfolder"] / entry["filename"]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


def test_the_default_sd15_workflow_runs_and_a_fixed_seed_gives_identical_bytes(folders: Folders, models: Path) -> None:
    first = saved(folders, run_prompt(make_executor(), txt2img(), "a"))
    second = saved(folders, run_prompt(make_executor(), txt2img(), "b"))
    assert first != second and first.read_bytes() == second.read_bytes()
    assert pixels(first).shape == (64, 64, 3)  # the size asked for: the tiny VAE has the real 8x factor
    other_seed = saved(folders, run_prompt(make_executor(), txt2img(seed=43), "c"))
    assert not np.array_equal(pixels(other_seed), pixels(first))


def test_a_new_seed_reruns_only_the_sampler_decoder_and_save(folders: Folders, models: Path) -> None:
    executor = make_executor()
    run_prompt(executor, txt2img(seed=1), "a")
    record = run_prompt(executor, txt2img(seed=2), "b")
    assert sorted(record.executed) == ["3", "8", "9"]
    assert sorted(record.cached) == ["4", "5", "6", "7"]


def test_the_saved_png_carries_the_prompt_and_workflow_sent(folders: Folders, models: Path) -> None:
    workflow = {
        "version": 0.4,
        "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [42, "fixed", 3]}],
        "links": [],
    }
    prompt = txt2img()
    record = run_prompt(make_executor(), prompt, "a", extra_data={"extra_pnginfo": {"workflow": workflow}})
    with Image.open(saved(folders, record)) as picture:
        assert json.loads(picture.text["workflow"]) == workflow
        assert json.loads(picture.text["prompt"]) == prompt


def test_lora_changes_the_image_strength_zero_is_the_base_and_nothing_is_reloaded(
    folders: Folders, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = make_executor()
    base = pixels(saved(folders, run_prompt(executor, txt2img(), "base")))
    loads: list[Path] = []
    real = shared_models.load_checkpoint
    monkeypatch.setattr(shared_models, "load_checkpoint", lambda path: loads.append(path) or real(path))
    with_lora = pixels(saved(folders, run_prompt(executor, txt2img(lora=("style.safetensors", 1.0, 1.0)), "lora")))
    assert np.abs(with_lora - base).max() > 0.01
    model_only = pixels(saved(folders, run_prompt(executor, txt2img(lora=("style.safetensors", 1.0, 0.0)), "model")))
    assert not np.array_equal(model_only, with_lora)
    zero = pixels(saved(folders, run_prompt(executor, txt2img(lora=("style.safetensors", 0.0, 0.0)), "zero")))
    assert np.array_equal(zero, base)
    again = pixels(saved(folders, run_prompt(executor, txt2img(), "removed")))
    assert np.array_equal(again, base)
    assert loads == []


def test_an_embedding_in_the_prompt_changes_the_image(folders: Folders, models: Path) -> None:
    executor = make_executor()
    plain = pixels(saved(folders, run_prompt(executor, txt2img(text="a photo of a cat"), "plain")))
    embedded = pixels(saved(folders, run_prompt(executor, txt2img(text="a photo of a embedding:cat_style"), "emb")))
    assert not np.array_equal(plain, embedded)


def write_input(
    folders: Folders, name: str, alpha_box: tuple[int, int, int, int] | None = None, size: int = 32
) -> None:
    generator = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size] * 256 // size
    rgb = np.stack([xs, ys, (xs + ys) // 2], axis=-1) + generator.integers(0, 16, (size, size, 3))
    rgba = np.concatenate([rgb.clip(0, 255), np.full((size, size, 1), 255)], axis=-1).astype(np.uint8)
    if alpha_box is not None:
        top, left, bottom, right = alpha_box
        rgba[top:bottom, left:right, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folders.input / name)


def img2img(denoise: float) -> dict[str, Any]:
    prompt = txt2img()
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"].update(latent_image=["11", 0], denoise=denoise)
    del prompt["5"]
    return prompt


def test_a_tiny_checkpoint_makes_exactly_the_image_size_asked_for(folders: Folders, models: Path) -> None:
    """What a real checkpoint makes: the tiny VAE has the real 8x factor, so clients see real sizes."""
    prompt = txt2img()
    prompt["5"]["inputs"].update(width=64, height=48)
    assert pixels(saved(folders, run_prompt(make_executor(), prompt))).shape == (48, 64, 3)


def test_img2img_keeps_the_picture_size_and_more_denoise_changes_more(folders: Folders, models: Path) -> None:
    write_input(folders, "photo.png")
    executor = make_executor()
    round_trip = txt2img()
    round_trip["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    round_trip["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    round_trip["8"]["inputs"]["samples"] = ["11", 0]
    for node_id in ("3", "5", "6", "7"):
        del round_trip[node_id]
    reference = pixels(saved(folders, run_prompt(executor, round_trip, "rt")))
    light = pixels(saved(folders, run_prompt(executor, img2img(0.3), "light")))
    heavy = pixels(saved(folders, run_prompt(executor, img2img(1.0), "heavy")))
    assert light.shape == heavy.shape == (32, 32, 3)
    assert np.abs(light - reference).mean() < np.abs(heavy - reference).mean()


BOX = (8, 8, 24, 24)  # top, left, bottom, right: the transparent square LoadImage turns into the mask


def test_inpainting_keeps_the_pixels_outside_the_mask(folders: Folders, models: Path) -> None:
    """Decoded in 64 px tiles, every tile that does not overlap the mask must come out as the plain
    VAE round trip does: sampling left its latent cells exactly as encoded. (Whole-image decoding
    cannot show this with a random tiny VAE: its GroupNorm statistics and attention are global.)"""
    write_input(folders, "masked.png", BOX, size=128)
    executor = make_executor()
    prompt = txt2img()
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "masked.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    prompt["3"]["inputs"].update(latent_image=["12", 0], steps=2)
    prompt["8"] = {
        "class_type": "VAEDecodeTiled",
        "inputs": {"samples": ["3", 0], "vae": ["4", 2], "tile_size": 64, "overlap": 16},
    }
    del prompt["5"]
    inpainted = pixels(saved(folders, run_prompt(executor, prompt, "inpaint")))
    prompt["8"]["inputs"]["samples"] = ["11", 0]  # the same picture through the VAE only
    for node_id in ("3", "12", "6", "7"):
        del prompt[node_id]
    reference = pixels(saved(folders, run_prompt(executor, prompt, "reference")))
    assert inpainted.shape == reference.shape == (128, 128, 3)
    top, left, bottom, right = BOX
    assert np.abs(inpainted[top:bottom, left:right] - reference[top:bottom, left:right]).mean() > 0.05
    far = np.ones((128, 128), dtype=bool)
    far[:64, :64] = False  # the tiles that overlap the mask
    assert np.abs(inpainted[far] - reference[far]).max() <= 1 / 255


def test_an_inpainting_model_runs_with_inpaint_model_conditioning(folders: Folders, models: Path) -> None:
    tiny_checkpoint(folders.models, INPAINT, inpaint=True)
    write_input(folders, "masked.png", BOX)
    prompt = txt2img(ckpt=INPAINT)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "masked.png"}}
    prompt["11"] = {
        "class_type": "InpaintModelConditioning",
        "inputs": {"positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0], "mask": ["10", 1]},
    }
    prompt["3"]["inputs"].update(positive=["11", 0], negative=["11", 1], latent_image=["11", 2])
    del prompt["5"]
    executor = make_executor()
    inpainted = pixels(saved(folders, run_prompt(executor, prompt, "inpaint")))
    assert inpainted.shape == (32, 32, 3)


def test_hires_fix_upscales_the_latent_and_samples_again(folders: Folders, models: Path) -> None:
    prompt = txt2img()
    prompt["20"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": 1.5},
    }
    prompt["21"] = {
        "class_type": "KSampler",
        "inputs": {**prompt["3"]["inputs"], "latent_image": ["20", 0], "denoise": 0.5},
    }
    prompt["8"]["inputs"]["samples"] = ["21", 0]
    record = run_prompt(make_executor(), prompt)
    assert pixels(saved(folders, record)).shape == (96, 96, 3)


def test_sdxl_txt2img_runs_through_the_same_nodes(folders: Folders, models: Path) -> None:
    tiny_checkpoint(folders.models, SDXL, family="sdxl")
    first = saved(folders, run_prompt(make_executor(), txt2img(ckpt=SDXL), "a"))
    second = saved(folders, run_prompt(make_executor(), txt2img(ckpt=SDXL), "b"))
    assert first.read_bytes() == second.read_bytes()
    assert pixels(first).shape == (64, 64, 3)


def test_a_missing_checkpoint_fails_with_the_folders_searched(folders: Folders, models: Path) -> None:
    executor: Executor = make_executor()
    prompt = txt2img()
    (folders.models / "checkpoints" / SD15).unlink()
    checked = executor.execute(prompt, ["9"], prompt_id="gone")
    assert checked.error is not None
    message = json.dumps(checked.error)
    assert SD15 in message and str(folders.models / "checkpoints") in message
