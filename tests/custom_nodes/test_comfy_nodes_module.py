"""``import nodes`` gives ComfyUI packs what ComfyUI's ``nodes`` module gives them, on Loom's nodes.

The core classes are called the way packs call them (positional arguments in ComfyUI's order, its
method names), on a tiny SD1.5 checkpoint, and must give what Loom's own node functions give.
``NODE_CLASS_MAPPINGS`` is checked through the server's plugin loading, as packs see it at import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import nodes
from graph.plugins import PluginStatus
from graph.registry import NodeRegistry
from graph.services import services_context
from nodes import conditioning, latent, loaders, register_builtin_nodes, sampling
from nodes.runtime import Runtime, RuntimeOptions, build_runtime
from nodes.v1_classes import COMFY_METHODS
from server.config import ServerConfig
from server.plugins import load_configured_plugins
from tests.graph.test_plugins import write_tree
from tests.nodes.tiny_models import kohya_lora_tensors, tiny_checkpoint, write_lora

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(RuntimeOptions(base_dir=tmp_path / "loom", device="cpu", dtype="fp32"))
    with services_context(built):
        yield built


@pytest.fixture
def checkpoint(runtime: Runtime) -> tuple:
    tiny_checkpoint(runtime.folders.models, "tiny.safetensors")
    model, clip, vae = loaders.CheckpointLoaderSimple("tiny.safetensors")
    write_lora(runtime.folders.models / "loras" / "style.safetensors", kohya_lora_tensors(model.unet, clip.encoders))
    return model, clip, vae


def test_importing_nodes_and_server_stays_light() -> None:
    check = "import sys, nodes, server; heavy = {'torch', 'aiohttp'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True)


def test_comfyui_module_names_resolve_lazily() -> None:
    from nodes import MAX_RESOLUTION, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, common_ksampler

    assert MAX_RESOLUTION == 16384
    assert NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS and callable(common_ksampler)
    assert NODE_DISPLAY_NAME_MAPPINGS["CheckpointLoaderSimple"] == "Load Checkpoint"
    with pytest.raises(AttributeError):
        nodes.NotAComfyName  # noqa: B018
    assert nodes.io.__name__ == "nodes.io", "submodules are still submodules"


def test_every_builtin_has_its_comfyui_method_and_a_v1_class(runtime: Runtime) -> None:
    registry = NodeRegistry()
    builtins = register_builtin_nodes(registry)
    assert set(COMFY_METHODS) == set(builtins), "the table of ComfyUI method names covers exactly the built-ins"
    for name in builtins:
        cls = getattr(nodes, name)
        assert nodes.NODE_CLASS_MAPPINGS[name] is cls
        assert cls.FUNCTION == COMFY_METHODS[name].name and callable(getattr(cls(), cls.FUNCTION)), name
        spec = registry.get(name)
        assert len(cls.RETURN_TYPES) == len(spec.outputs) and cls.OUTPUT_NODE == spec.output_node, name
        assert set(cls.INPUT_TYPES()["required"]) == {i.name for i in spec.inputs() if i.section == "required"}
    assert {name: getattr(nodes, name).FUNCTION for name in ("CLIPTextEncode", "KSampler", "LoraLoader")} == {
        "CLIPTextEncode": "encode",
        "KSampler": "sample",
        "LoraLoader": "load_lora",
    }
    assert (nodes.VAEDecode.FUNCTION, nodes.VAEEncode.FUNCTION, nodes.EmptyLatentImage.FUNCTION) == (
        "decode",
        "encode",
        "generate",
    )
    assert (nodes.CheckpointLoaderSimple.FUNCTION, nodes.SaveImage.FUNCTION) == ("load_checkpoint", "save_images")


def test_core_nodes_called_the_comfyui_way_give_what_loom_gives(checkpoint) -> None:
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny.safetensors")
    assert model.unet is checkpoint[0].unet, "the same shared load"
    lora_model, lora_clip = nodes.LoraLoader().load_lora(model, clip, "style.safetensors", 0.5, 0.25)
    (positive,) = nodes.CLIPTextEncode().encode(lora_clip, "a photo of a cat")
    (negative,) = nodes.CLIPTextEncode().encode(lora_clip, "blurry")
    torch.testing.assert_close(
        positive[0][0], conditioning.CLIPTextEncode(text="a photo of a cat", clip=lora_clip)[0][0], rtol=0, atol=0
    )
    (empty,) = nodes.EmptyLatentImage().generate(64, 64)
    assert empty["samples"].shape == (1, 4, 8, 8)

    (sampled,) = nodes.KSampler().sample(lora_model, 3, 2, 7.0, "euler", "normal", positive, negative, empty, 1.0)
    loom = sampling.KSampler(lora_model, 3, 2, 7.0, "euler", "normal", positive, negative, empty, 1.0)
    torch.testing.assert_close(sampled["samples"], loom["samples"], rtol=0, atol=0)
    (shared,) = nodes.common_ksampler(lora_model, 3, 2, 7.0, "euler", "normal", positive, negative, empty)
    torch.testing.assert_close(shared["samples"], sampled["samples"], rtol=0, atol=0)

    (image,) = nodes.VAEDecode().decode(vae, sampled)
    torch.testing.assert_close(image, latent.VAEDecode(samples=sampled, vae=vae), rtol=0, atol=0)
    assert image.shape == (1, 64, 64, 3)
    (encoded,) = nodes.VAEEncode().encode(vae, image)
    assert encoded["samples"].shape == (1, 4, 8, 8)
    (by_name,) = nodes.VAEDecode().decode(samples=sampled, vae=vae)
    torch.testing.assert_close(by_name, image, rtol=0, atol=0)


def test_common_ksampler_windows_the_schedule_as_ksampler_advanced_does(checkpoint) -> None:
    model, clip, _ = checkpoint
    (positive,) = nodes.CLIPTextEncode().encode(clip, "a lighthouse")
    (empty,) = nodes.EmptyLatentImage().generate(64, 64, 1)
    args = (model, 5, 4, 6.0, "euler", "karras", positive, positive, empty)
    (window,) = nodes.common_ksampler(*args, start_step=1, last_step=3, force_full_denoise=False)
    advanced = sampling.KSamplerAdvanced(
        model, "enable", 5, 4, 6.0, "euler", "karras", positive, positive, empty, 1, 3, "enable"
    )
    torch.testing.assert_close(window["samples"], advanced["samples"], rtol=0, atol=0)
    (quiet,) = nodes.KSamplerAdvanced().sample(
        model, "disable", 5, 4, 6.0, "euler", "karras", positive, positive, empty, 0, 10000, "disable"
    )
    (same,) = nodes.common_ksampler(*args, disable_noise=True)
    torch.testing.assert_close(quiet["samples"], same["samples"], rtol=0, atol=0)


def test_arguments_are_checked_as_python_checks_them(checkpoint) -> None:
    _, _, vae = checkpoint
    (empty,) = nodes.EmptyLatentImage().generate(64, 64, 1)
    with pytest.raises(TypeError, match="multiple values for argument 'vae'"):
        nodes.VAEDecode().decode(vae, empty, vae=vae)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        nodes.VAEDecode().decode(vae, empty, "extra")


def test_save_image_and_its_subclasses_write_where_their_attributes_say(runtime: Runtime, tmp_path: Path) -> None:
    pictures = torch.rand(2, 16, 24, 3)
    saved = nodes.SaveImage().save_images(pictures, "pack/shot", prompt={"1": {"class_type": "X", "inputs": {}}})
    assert saved == {
        "ui": {
            "images": [
                {"filename": "shot_00001_.png", "subfolder": "pack", "type": "output"},
                {"filename": "shot_00002_.png", "subfolder": "pack", "type": "output"},
            ]
        }
    }
    with Image.open(runtime.folders.output / "pack" / "shot_00001_.png") as written:
        assert written.size == (24, 16) and json.loads(written.text["prompt"]) == {
            "1": {"class_type": "X", "inputs": {}}
        }

    class Elsewhere(nodes.SaveImage):  # the subclassing contract packs rely on
        def __init__(self) -> None:
            self.output_dir = str(tmp_path / "elsewhere")
            self.type = "temp"
            self.prefix_append = "_mine"
            self.compress_level = 1

    [entry] = Elsewhere().save_images(pictures[:1], "grid")["ui"]["images"]
    assert entry == {"filename": "grid_mine_00001_.png", "subfolder": "", "type": "temp"}
    assert (tmp_path / "elsewhere" / "grid_mine_00001_.png").is_file()

    [preview] = nodes.PreviewImage().save_images(pictures[:1])["ui"]["images"]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    assert (runtime.folders.temp / preview["filename"]).is_file()
    assert set(nodes.SaveImage.INPUT_TYPES()["hidden"]) == {"prompt", "extra_pnginfo"}


#: Packs that read ``nodes`` at import time: the second sees the built-ins and the first pack, not the third.
MAPPING_PACKS = {
    "a_first/__init__.py": """
        from graph.declare import Int, Output, node

        class FirstNode:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, value):
                return (value + 1,)

        @node(outputs=[Output("INT")], display_name="First (declared)")
        def FirstDeclared(value=Int(0)):
            return value * 10

        NODE_CLASS_MAPPINGS = {"FirstNode": FirstNode}
    """,
    "b_second/__init__.py": """
        import nodes
        from nodes import MAX_RESOLUTION, NODE_CLASS_MAPPINGS as CORE_NODES

        SEEN = {name: name in nodes.NODE_CLASS_MAPPINGS for name in ("KSampler", "FirstNode", "ThirdNode")}
        FIRST_AT_IMPORT = CORE_NODES["FirstNode"]

        class Sized:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"width": ("INT", {"default": 512, "max": MAX_RESOLUTION})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self, width):
                return (width,)

        NODE_CLASS_MAPPINGS = {"Sized": Sized}
    """,
    "c_third.py": """
        class ThirdNode:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self):
                return (3,)

        NODE_CLASS_MAPPINGS = {"ThirdNode": ThirdNode}
    """,
}


def test_node_class_mappings_show_the_builtins_and_the_packs_loaded_so_far(tmp_path: Path) -> None:
    folder = write_tree(tmp_path / "packs", MAPPING_PACKS)
    config = ServerConfig(base_dir=tmp_path / "loom", extra_custom_node_dirs=(folder,), auth_token=None)
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    reports = {report.name: report for report in load_configured_plugins(registry, config)}
    assert all(reports[name].status is PluginStatus.LOADED for name in ("a_first", "b_second", "c_third"))

    second = sys.modules["b_second"]
    assert second.SEEN == {"KSampler": True, "FirstNode": True, "ThirdNode": False}
    assert second.FIRST_AT_IMPORT is sys.modules["a_first"].FirstNode, "a V1 class is listed as itself"
    assert registry.get("Sized").inputs()[0].options["max"] == 16384

    assert {"KSampler", "FirstNode", "FirstDeclared", "Sized", "ThirdNode"} <= set(nodes.NODE_CLASS_MAPPINGS)
    assert len(nodes.NODE_CLASS_MAPPINGS) == len(registry)
    declared = nodes.NODE_CLASS_MAPPINGS["FirstDeclared"]
    assert declared.FUNCTION == "execute" and declared().execute(4) == (40,)
    assert declared.RETURN_TYPES == ("INT",)
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["FirstDeclared"] == "First (declared)"
