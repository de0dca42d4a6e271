"""Which inputs choose model files, read from the node specs (``server.model_inputs``), and the files a
workflow's loaders name in either format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graph.declare import Combo, Output, node
from graph.registry import NodeRegistry
from graph.services import services_context
from nodes.runtime import RuntimeOptions, build_runtime
from server.model_inputs import LoaderInputs, NamedModelFile, model_file_inputs, named_model_files, value_nodes
from tests.server.standin_nodes import standin_registry


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path) -> Iterator[None]:
    """A loader's inputs list its folder's files, so they are read with a runtime lent, as a request has."""
    with services_context(build_runtime(RuntimeOptions(base_dir=tmp_path, device="cpu"))):
        yield


def inputs_of(registry: NodeRegistry, class_type: str) -> dict[str, str]:
    spec = registry.get(class_type)
    assert spec is not None
    return model_file_inputs(spec)


def test_the_loaders_declare_their_folders_and_other_combos_do_not() -> None:
    registry = standin_registry()
    assert inputs_of(registry, "CheckpointLoaderSimple") == {"ckpt_name": "checkpoints"}
    assert inputs_of(registry, "UNETLoader") == {"unet_name": "diffusion_models"}, "weight_dtype is no file"
    assert inputs_of(registry, "DualCLIPLoader") == {"clip_name1": "text_encoders", "clip_name2": "text_encoders"}
    assert inputs_of(registry, "LoraLoader") == {"lora_name": "loras"}
    assert inputs_of(registry, "VAELoader") == {"vae_name": "vae"}
    assert inputs_of(registry, "ControlNetLoader") == {"control_net_name": "controlnet"}
    assert inputs_of(registry, "UpscaleModelLoader") == {"model_name": "upscale_models"}
    assert inputs_of(registry, "CLIPVisionLoader") == {"clip_name": "clip_vision"}
    assert inputs_of(registry, "StyleModelLoader") == {"style_model_name": "style_models"}
    assert inputs_of(registry, "KSampler") == {}
    assert inputs_of(registry, "LoadImage") == {}, "an input picture is not a model file"


@node(category="test", outputs=[Output("STRING")])
def PluginLoader(weights=Combo(["a.bin"], model_folder="hypernetworks"), mode=Combo(["fast", "slow"])):
    return weights


def test_any_node_that_declares_a_model_folder_is_a_loader() -> None:
    registry = NodeRegistry()
    registry.register(PluginLoader.__loom_spec__)
    assert inputs_of(registry, "PluginLoader") == {"weights": "hypernetworks"}
    info = registry.object_info()["PluginLoader"]["input"]["required"]["weights"]
    assert info[1] == {"model_folder": "hypernetworks"}, "clients see the declaration in /object_info"


def names(workflow: Any) -> list[tuple[str, str]]:
    files = named_model_files(value_nodes(workflow), LoaderInputs(standin_registry()))
    return [(f.directory, f.name) for f in files]


def test_editor_widgets_subgraph_nodes_and_api_inputs_name_the_same_files() -> None:
    loader = {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["sd15\\base.safetensors"]}
    lora = {"id": 5, "type": "LoraLoader", "inputs": [{"name": "model", "link": 1}], "widgets_values": ["x.pt", 1, 1]}
    inner = {"id": 2, "type": "UNETLoader", "widgets_values": ["flux1-dev.safetensors", "fp8_e4m3fn"]}
    subgraph = {"id": "d1", "nodes": [inner], "links": [], "inputs": [], "outputs": []}
    editor = {"nodes": [loader, lora, {"id": 7, "type": "d1"}], "links": [], "definitions": {"subgraphs": [subgraph]}}
    expected = [
        ("checkpoints", "sd15\\base.safetensors"),
        ("loras", "x.pt"),
        ("diffusion_models", "flux1-dev.safetensors"),
    ]
    assert names(editor) == expected

    api = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15\\base.safetensors"}},
        "5": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.pt", "model": ["4", 0], "clip": ["4", 1]}},
        "7:2": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}},
        "8": {"class_type": "UNETLoader", "inputs": {"unet_name": ["9", 0]}},
    }
    assert names(api) == expected, "a linked input names no file"


def test_a_file_named_twice_or_with_either_separator_is_one_file() -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/base.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15\\base.safetensors"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "sd15/base.safetensors"}},
    }
    assert names(prompt) == [("checkpoints", "sd15/base.safetensors"), ("vae", "sd15/base.safetensors")]
    assert NamedModelFile("clip", "a\\b.st").key == NamedModelFile("text_encoders", "a/b.st").key


def test_unknown_types_controls_and_empty_values_name_nothing() -> None:
    workflow = {
        "nodes": [
            {"id": 1, "type": "NoSuchLoader", "widgets_values": ["x.safetensors"]},
            {"id": 2, "type": "Note", "widgets_values": ["ckpt.safetensors"]},
            {"id": 3, "type": "KSampler", "widgets_values": [1, "randomize", 20, 8, "euler", "normal", 1]},
            {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": [""]},
        ]
    }
    assert names(workflow) == []
    assert names("not a workflow") == [] and names({"1": "nope"}) == []
