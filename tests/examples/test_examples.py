"""Every workflow in ``examples/`` runs: the editor file converts to the API file, and the API file
executes with tiny checkpoints, diffusion models, text encoders, VAEs, LoRAs, ControlNets and upscalers under
the example's model names.

For speed the run shrinks pictures to 64 px and sampling to 2 steps; everything else is as shipped. Each
example saves one picture; a Preview Image on the way (the ControlNet example's edges) writes its own to temp/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.tiny_parts import write_tiny_file
from graph.formats.editor import editor_to_api
from nodes.folders import Folders
from nodes.shared_models import load_shared_checkpoint
from tests.diffusion.upscalers.tiny_upscalers import tiny_srvgg
from tests.nodes.tiny_models import kohya_lora_tensors, make_executor, run_prompt, tiny_checkpoint, write_lora

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
API_FILES = sorted(EXAMPLES.glob("*.api.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_each_family_has_every_kind_of_workflow_in_both_formats() -> None:
    kinds = {"txt2img", "img2img", "inpaint", "lora", "hires_fix", "model_upscale"}
    names = {path.name for path in EXAMPLES.glob("*.json")}
    for family in ("sd15", "sdxl"):
        for kind in kinds:
            assert {f"{family}_{kind}.api.json", f"{family}_{kind}.workflow.json"} <= names


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda path: path.name.removesuffix(".api.json"))
def test_the_editor_file_converts_to_the_api_file(api_file: Path, folders: Folders) -> None:
    workflow = load(api_file.with_name(api_file.name.replace(".api.json", ".workflow.json")))
    assert workflow["version"] == 0.4
    converted = editor_to_api(workflow, make_executor().registry).prompt
    expected = load(api_file)
    strip = lambda prompt: {key: (node["class_type"], node["inputs"]) for key, node in prompt.items()}  # noqa: E731
    assert strip(converted) == strip(expected)


FLOW_FAMILIES = {"flux_dev", "flux_schnell", "flux_fill", "flux_canny", "flux_depth", "sd35_large", "zimage", "chroma"}
#: A CLIPLoader type's tiny file: (family, part).
CLIP_LOADER_PARTS = {"lumina2": ("zimage", "qwen3_4b"), "chroma": ("chroma", "t5xxl")}


def name_family(name: str) -> str:
    """The family a model file's usual name implies (``flux1-fill-dev`` -> ``flux_fill``)."""
    if name.startswith("sd3.5"):
        return "sd35_large"
    if name.startswith(("z_image", "Chroma")):
        return "zimage" if name.startswith("z_image") else "chroma"
    if name.startswith("flux1-"):
        variants = ("fill", "schnell", "canny", "depth")
        return next((f"flux_{variant}" for variant in variants if f"-{variant}-" in name), "flux_dev")
    return "sdxl" if "xl" in name else "sd15"


def provide_models(prompt: dict[str, Any], folders: Folders) -> None:
    """Tiny stand-ins for every file the prompt names, of the family the name implies."""
    checkpoints = {}
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple" and name_family(inputs["ckpt_name"]) in FLOW_FAMILIES:
            name = inputs["ckpt_name"]
            dtype = "fp8_scaled" if "fp8_scaled" in name else "fp8" if "fp8" in name else "fp16"
            write_tiny_file(folders.models / "checkpoints" / name, name_family(name), "checkpoint", dtype)
        elif node["class_type"] == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            family = "sdxl" if "xl" in name else "sd15"
            checkpoints[name] = tiny_checkpoint(folders.models, name, family=family, inpaint="inpainting" in name)
        elif node["class_type"] == "UNETLoader":
            name = inputs["unet_name"]
            dtype = "fp8_scaled" if "fp8_scaled" in name else "fp8_mixed" if "fp8mixed" in name else "fp32"
            write_tiny_file(folders.models / "diffusion_models" / name, name_family(name), "diffusion_model", dtype)
        elif node["class_type"] == "CLIPLoader":
            family, part = CLIP_LOADER_PARTS[inputs["type"]]
            write_tiny_file(folders.models / "text_encoders" / inputs["clip_name"], family, part)
        elif node["class_type"] == "LoraLoaderModelOnly":
            family = name_family(inputs["lora_name"])
            write_tiny_file(folders.models / "loras" / inputs["lora_name"], family, "lora")
        elif node["class_type"] == "DualCLIPLoader":
            for name in (inputs["clip_name1"], inputs["clip_name2"]):
                part = "t5xxl" if "t5" in name else "clip_g" if "clip_g" in name else "clip_l"
                write_tiny_file(folders.models / "text_encoders" / name, "flux_dev", part)
        elif node["class_type"] == "VAELoader":
            write_tiny_file(folders.models / "vae" / inputs["vae_name"], "flux_dev", "vae")
        elif node["class_type"] in ("ControlNetLoader", "DiffControlNetLoader"):
            name = inputs["control_net_name"]
            part = "controlnet_union" if "union" in name else "controlnet"
            write_tiny_file(folders.models / "controlnet" / name, name_family(name), part)
        elif node["class_type"] == "CLIPVisionLoader":
            name = inputs["clip_name"]
            kind = "siglip_vision" if "sigclip" in name else "clip_vision_g" if "vision_g" in name else "clip_vision_h"
            write_tiny_file(folders.models / "clip_vision" / name, "sd15", kind)
        elif node["class_type"] == "StyleModelLoader":
            write_tiny_file(folders.models / "style_models" / inputs["style_model_name"], "flux_dev", "style_model")
        elif node["class_type"] == "UpscaleModelLoader":
            (folders.models / "upscale_models").mkdir(exist_ok=True)
            torch.save(tiny_srvgg(upscale=4).state_dict(), folders.models / "upscale_models" / inputs["model_name"])
        elif node["class_type"] == "LoadImage":
            rgba = np.random.default_rng(0).integers(0, 256, (48, 48, 4)).astype(np.uint8)
            rgba[..., 3] = 255
            rgba[16:32, 16:32, 3] = 0
            Image.fromarray(rgba, "RGBA").save(folders.input / inputs["image"])
    for node in prompt.values():
        if node["class_type"] == "LoraLoader":
            loaded = load_shared_checkpoint(next(iter(checkpoints.values())))
            write_lora(
                folders.models / "loras" / node["inputs"]["lora_name"],
                kohya_lora_tensors(loaded.unet, list(loaded.text_encoders.encoders.values())),
            )


def shrink(prompt: dict[str, Any]) -> None:
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=64, height=64)
        if node["class_type"] == "FluxKontextImageScale":
            # Kontext's sizes are about a megapixel; a tiny model is as well served by the picture as it is.
            node["class_type"], node["inputs"] = "ImageScaleBy", {**inputs, "upscale_method": "area", "scale_by": 1.0}
        if "steps" in inputs:
            inputs["steps"] = 2


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda path: path.name.removesuffix(".api.json"))
def test_the_example_runs_on_tiny_models(api_file: Path, folders: Folders) -> None:
    prompt = load(api_file)
    provide_models(prompt, folders)
    shrink(prompt)
    record = run_prompt(make_executor(), prompt, api_file.name)
    saved = [key for key in record.outputs if prompt[key]["class_type"] == "SaveImage"]
    assert len(saved) == 1, "every example ends in one Save Image"
    for key, output in record.outputs.items():
        (image,) = output["images"]
        folder = folders.output if image["type"] == "output" else folders.temp
        assert (folder / image["subfolder"] / image["filename"]).is_file(), f"node {key} shows a picture it wrote"
