"""Packs written with ComfyUI's V3 API (``comfy_api.latest``) load, validate and run as V1 packs do.

Three packs are written to a temporary folder as their authors write them for ComfyUI: one exports
its nodes through ``async def comfy_entrypoint()``, one lists V3 classes in ``NODE_CLASS_MAPPINGS``
(importing the pinned ``comfy_api.v0_0_2``), and one holds V1 classes with the ``INPUT_TYPES`` and
outputs ComfyUI derives from those V3 schemas (``comfy_api/latest/_io.py``: ``get_v1_info``). The
V3 nodes must be served in ``/object_info`` exactly as those V1 classes are, and run through the
real loader, validation and executor.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from graph.executor import Executor
from graph.plugins import PluginReport, PluginStatus, load_plugins
from graph.registry import NodeRegistry
from graph.services import services_context
from graph.spec import NodeSpec
from graph.validation import validate_prompt
from nodes.comfy_compat import install_comfy_modules
from nodes.runtime import Runtime, RuntimeOptions, build_runtime
from tests.graph.test_plugins import write_tree

ENTRYPOINT_PACK = {
    "v3_entry_pack/__init__.py": """
        from comfy_api.latest import ComfyExtension, io

        from .nodes import V3MakePoints, V3ShowPoints, V3SolidImage

        LOADED = []


        class PointsExtension(ComfyExtension):
            async def on_load(self):
                LOADED.append("on_load")

            async def get_node_list(self):
                return [V3SolidImage, V3MakePoints, V3ShowPoints]


        async def comfy_entrypoint():
            return PointsExtension()
    """,
    "v3_entry_pack/nodes.py": """
        import torch
        from comfy_api.latest import io, ui

        Points = io.Custom("V3TEST_POINTS")
        CALLS = []
        #: Every points value V3MakePoints made, as it made it.
        MADE = []
        #: What fingerprint_inputs answers per label; a test changes it to say the outside state changed.
        VERSIONS = {}


        class V3SolidImage(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="V3SolidImage",
                    category="v3test",
                    inputs=[io.Int.Input("size", default=8, min=1, max=64)],
                    outputs=[io.Image.Output()],
                )

            @classmethod
            def execute(cls, size):
                return io.NodeOutput(torch.full((1, size, size, 3), 0.5))


        class V3MakePoints(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="V3MakePoints",
                    display_name="Make points (V3)",
                    category="v3test/points",
                    description="Points over a picture, from widgets.",
                    inputs=[
                        io.Image.Input("image", tooltip="Where the points go."),
                        io.Int.Input("count", default=20, min=1, max=10000, step=1),
                        io.Float.Input(
                            "scale", default=1.0, min=0.0, max=4.0, step=0.05, round=0.01,
                            display_mode=io.NumberDisplay.slider,
                        ),
                        io.String.Input("label", multiline=True, default="pts"),
                        io.Combo.Input("mode", options=["grid", "random"], default="grid"),
                        io.Boolean.Input("flip", default=False, label_on="flipped", label_off="as is"),
                        io.Mask.Input("mask", optional=True),
                    ],
                    outputs=[Points.Output(display_name="points"), io.Int.Output("total", tooltip="How many points.")],
                    hidden=[io.Hidden.unique_id],
                )

            @classmethod
            def execute(cls, image, count, scale, label, mode, flip, mask=None):
                CALLS.append(("V3MakePoints", label))
                points = {
                    "node": cls.hidden.unique_id, "size": list(image.shape), "count": count, "scale": scale,
                    "label": label, "mode": mode, "flip": flip, "mask": mask is not None,
                }
                MADE.append(points)
                return io.NodeOutput(points, count * 2)

            @classmethod
            def validate_inputs(cls, label):
                return True if label.strip() else "label must not be blank"

            @classmethod
            def fingerprint_inputs(cls, label, **kwargs):
                return VERSIONS.get(label, 0)


        class V3ShowPoints(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="V3ShowPoints",
                    display_name="Show points (V3)",
                    category="v3test/points",
                    inputs=[Points.Input("points"), io.Image.Input("image")],
                    is_output_node=True,
                )

            @classmethod
            async def execute(cls, points, image):
                CALLS.append(("V3ShowPoints", points["label"]))
                return io.NodeOutput(ui=ui.PreviewImage(image, cls=cls))
    """,
}

MAPPED_PACK = {
    "v3_mapped_pack.py": """
        from comfy_api.v0_0_2 import io, ui

        CALLS = []


        class V3Switch(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="V3Switch",
                    display_name="Switch (V3)",
                    category="v3test/logic",
                    inputs=[
                        io.Boolean.Input("use_first", default=True),
                        io.String.Input("first", lazy=True, force_input=True),
                        io.String.Input("second", lazy=True, force_input=True),
                    ],
                    outputs=[io.String.Output()],
                    hidden=[io.Hidden.unique_id],
                    is_experimental=True,
                )

            @classmethod
            def check_lazy_status(cls, use_first, first=None, second=None):
                CALLS.append(("check_lazy_status", cls.hidden.unique_id))
                return ["first"] if use_first else ["second"]

            @classmethod
            def execute(cls, use_first, first=None, second=None):
                return io.NodeOutput(first if use_first else second)


        class V3Words(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="V3Words",
                    category="v3test/text",
                    inputs=[io.String.Input("text", default="")],
                    outputs=[io.String.Output()],
                    is_deprecated=True,
                )

            @classmethod
            def execute(cls, text):
                CALLS.append(("V3Words", text))
                return (text.upper(),)


        class V3Caption(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id="V3Caption",
                    display_name="Caption (V3)",
                    category="v3test/text",
                    inputs=[
                        io.String.Input("text", force_input=True),
                        io.String.Input("prompt", default="note:", tooltip="Named like a hidden value."),
                    ],
                    is_output_node=True,
                )

            @classmethod
            def execute(cls, text, prompt):
                return io.NodeOutput(ui=ui.PreviewText(f"{prompt} {text} ({sorted(cls.hidden.prompt)})"))


        NODE_CLASS_MAPPINGS = {"V3Switch": V3Switch, "V3Words": V3Words, "V3Caption": V3Caption}
        NODE_DISPLAY_NAME_MAPPINGS = {"V3Switch": "not shown: the schema names it", "V3Words": "Words (mapped)"}
    """,
}

#: The V1 classes with what ComfyUI derives from each V3 schema above: ``(io_type, as_dict())`` inputs
#: (options left at None omitted, ``optional`` moved to its section), ``(KIND,)`` hidden entries keyed
#: by the member name (an output node gets ``prompt`` and ``extra_pnginfo``), outputs named by
#: ``display_name``, else ``id``, else type, and output tooltips only where one is set.
V1_EQUIVALENT_PACK = {
    "v1_equivalent_pack.py": """
        class V3SolidImage:
            CATEGORY = "v3test"
            RETURN_TYPES = ("IMAGE",)
            RETURN_NAMES = ("IMAGE",)
            FUNCTION = "run"

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"size": ("INT", {"default": 8, "min": 1, "max": 64})}}


        class V3MakePoints:
            CATEGORY = "v3test/points"
            DESCRIPTION = "Points over a picture, from widgets."
            RETURN_TYPES = ("V3TEST_POINTS", "INT")
            RETURN_NAMES = ("points", "total")
            OUTPUT_TOOLTIPS = (None, "How many points.")
            FUNCTION = "run"

            @classmethod
            def INPUT_TYPES(cls):
                return {
                    "required": {
                        "image": ("IMAGE", {"tooltip": "Where the points go."}),
                        "count": ("INT", {"default": 20, "min": 1, "max": 10000, "step": 1}),
                        "scale": (
                            "FLOAT",
                            {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05, "round": 0.01, "display": "slider"},
                        ),
                        "label": ("STRING", {"default": "pts", "multiline": True}),
                        "mode": ("COMBO", {"default": "grid", "multiselect": False, "options": ["grid", "random"]}),
                        "flip": ("BOOLEAN", {"default": False, "label_on": "flipped", "label_off": "as is"}),
                    },
                    "optional": {"mask": ("MASK", {})},
                    "hidden": {"unique_id": ("UNIQUE_ID",)},
                }


        class V3ShowPoints:
            CATEGORY = "v3test/points"
            RETURN_TYPES = ()
            FUNCTION = "run"
            OUTPUT_NODE = True

            @classmethod
            def INPUT_TYPES(cls):
                return {
                    "required": {"points": ("V3TEST_POINTS", {}), "image": ("IMAGE", {})},
                    "hidden": {"prompt": ("PROMPT",), "extra_pnginfo": ("EXTRA_PNGINFO",)},
                }


        class V3Switch:
            CATEGORY = "v3test/logic"
            RETURN_TYPES = ("STRING",)
            RETURN_NAMES = ("STRING",)
            FUNCTION = "run"
            EXPERIMENTAL = True

            @classmethod
            def INPUT_TYPES(cls):
                return {
                    "required": {
                        "use_first": ("BOOLEAN", {"default": True}),
                        "first": ("STRING", {"lazy": True, "forceInput": True, "multiline": False}),
                        "second": ("STRING", {"lazy": True, "forceInput": True, "multiline": False}),
                    },
                    "hidden": {"unique_id": ("UNIQUE_ID",)},
                }


        class V3Words:
            CATEGORY = "v3test/text"
            RETURN_TYPES = ("STRING",)
            RETURN_NAMES = ("STRING",)
            FUNCTION = "run"
            DEPRECATED = True

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"text": ("STRING", {"default": "", "multiline": False})}}


        class V3Caption:
            CATEGORY = "v3test/text"
            RETURN_TYPES = ()
            FUNCTION = "run"
            OUTPUT_NODE = True

            @classmethod
            def INPUT_TYPES(cls):
                return {
                    "required": {
                        "text": ("STRING", {"forceInput": True, "multiline": False}),
                        "prompt": (
                            "STRING",
                            {"default": "note:", "tooltip": "Named like a hidden value.", "multiline": False},
                        ),
                    },
                    "hidden": {"hidden_prompt": ("PROMPT",), "extra_pnginfo": ("EXTRA_PNGINFO",)},
                }


        NODE_CLASS_MAPPINGS = {
            name: cls for name, cls in list(globals().items()) if name.startswith("V3") and isinstance(cls, type)
        }
        NODE_DISPLAY_NAME_MAPPINGS = {
            "V3MakePoints": "Make points (V3)",
            "V3ShowPoints": "Show points (V3)",
            "V3Switch": "Switch (V3)",
            "V3Words": "Words (mapped)",
            "V3Caption": "Caption (V3)",
        }
    """,
}

V3_NODES = ["V3SolidImage", "V3MakePoints", "V3ShowPoints", "V3Switch", "V3Words", "V3Caption"]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(RuntimeOptions(base_dir=tmp_path / "loom", device="cpu", dtype="fp32"))
    with services_context(built):
        yield built


def load(folder: Path, runtime: Runtime | None = None) -> tuple[NodeRegistry, dict[str, PluginReport]]:
    registry = NodeRegistry()
    reports = load_plugins(registry, [folder], before_import=lambda: install_comfy_modules(runtime))
    return registry, {report.name: report for report in reports}


@pytest.fixture
def v3(tmp_path: Path, runtime: Runtime) -> NodeRegistry:
    registry, reports = load(write_tree(tmp_path / "v3", {**ENTRYPOINT_PACK, **MAPPED_PACK}), runtime)
    for report in reports.values():
        assert report.status is PluginStatus.LOADED and not report.refused, (report.error, report.traceback)
    return registry


def node_spec(registry: NodeRegistry, class_type: str) -> NodeSpec:
    spec = registry.get(class_type)
    assert spec is not None, f"{class_type} is not registered"
    return spec


def pack_module(name: str) -> Any:
    return sys.modules[name]


def wire(info: dict[str, Any]) -> dict[str, Any]:
    """An ``/object_info`` entry as a client receives it (tuples are JSON arrays)."""
    return json.loads(json.dumps(info))


def points_prompt(label: str = "pts", **changes: Any) -> dict[str, Any]:
    inputs = {"image": ["1", 0], "count": 3, "scale": 0.5, "label": label, "mode": "random", "flip": True}
    return {
        "1": {"class_type": "V3SolidImage", "inputs": {"size": 4}},
        "2": {"class_type": "V3MakePoints", "inputs": {**inputs, **changes}},
        "3": {"class_type": "V3ShowPoints", "inputs": {"points": ["2", 0], "image": ["1", 0]}},
    }


# --- loading -----------------------------------------------------------------------------------------


def test_both_ways_of_exporting_v3_nodes_load(tmp_path: Path, runtime: Runtime) -> None:
    registry, reports = load(write_tree(tmp_path / "v3", {**ENTRYPOINT_PACK, **MAPPED_PACK}), runtime)
    entry, mapped = reports["v3_entry_pack"], reports["v3_mapped_pack"]
    assert entry.status is PluginStatus.LOADED, entry.traceback
    assert entry.nodes == ["V3SolidImage", "V3MakePoints", "V3ShowPoints"] and entry.refused == []
    assert pack_module("v3_entry_pack").LOADED == ["on_load"], "on_load is awaited once, at load time"
    assert mapped.status is PluginStatus.LOADED, mapped.traceback
    assert mapped.nodes == ["V3Switch", "V3Words", "V3Caption"]
    assert node_spec(registry, "V3MakePoints").python_module == "custom_nodes.v3_entry_pack"
    assert node_spec(registry, "V3Switch").python_module == "custom_nodes.v3_mapped_pack"
    titles = {name: node_spec(registry, name).display_name for name in V3_NODES}
    assert titles == {
        "V3SolidImage": "V3SolidImage",
        "V3MakePoints": "Make points (V3)",
        "V3ShowPoints": "Show points (V3)",
        "V3Switch": "Switch (V3)",  # the schema's title wins, as in ComfyUI
        "V3Words": "Words (mapped)",  # a schema without one falls back to the mapping
        "V3Caption": "Caption (V3)",
    }


def test_the_entrypoint_runs_when_the_loader_is_called_inside_an_event_loop(tmp_path: Path) -> None:
    folder = write_tree(tmp_path / "v3", ENTRYPOINT_PACK)

    async def host() -> tuple[NodeRegistry, dict[str, PluginReport]]:
        return load(folder)

    registry, reports = asyncio.run(host())
    assert reports["v3_entry_pack"].status is PluginStatus.LOADED, reports["v3_entry_pack"].traceback
    assert "V3MakePoints" in registry


def test_entrypoint_problems_fail_or_skip_the_pack_and_a_bad_node_alone_is_refused(tmp_path: Path) -> None:
    folder = write_tree(
        tmp_path / "v3",
        {
            "raises.py": "async def comfy_entrypoint():\n    raise RuntimeError('no API key configured')\n",
            "not_an_extension.py": "async def comfy_entrypoint():\n    return object()\n",
            "no_list.py": """
                class Extension:
                    async def get_node_list(self):
                        return {"not": "a list"}

                def comfy_entrypoint():
                    return Extension()
            """,
            "one_bad_node.py": """
                from comfy_api.latest import ComfyExtension, io

                class Good(io.ComfyNode):
                    @classmethod
                    def define_schema(cls):
                        return io.Schema("V3Good", outputs=[io.Int.Output()])

                    @classmethod
                    def execute(cls):
                        return io.NodeOutput(1)

                class BrokenSchema(io.ComfyNode):
                    @classmethod
                    def define_schema(cls):
                        raise KeyError("missing model list")

                    @classmethod
                    def execute(cls):
                        return io.NodeOutput()

                class Repeats(io.ComfyNode):
                    @classmethod
                    def define_schema(cls):
                        return io.Schema("V3Repeats", inputs=[io.Int.Input("x"), io.Float.Input("x")])

                    @classmethod
                    def execute(cls, x):
                        return io.NodeOutput()

                class NotANode:
                    pass

                class Extension(ComfyExtension):
                    async def get_node_list(self):
                        return [Good, BrokenSchema, Repeats, NotANode]

                async def comfy_entrypoint():
                    return Extension()
            """,
        },
    )
    registry, reports = load(folder)
    assert reports["raises"].status is PluginStatus.FAILED
    assert "RuntimeError: no API key configured" in str(reports["raises"].error)
    assert reports["not_an_extension"].status is PluginStatus.SKIPPED
    assert "comfy_entrypoint() returned object, not a ComfyExtension" in str(reports["not_an_extension"].error)
    assert reports["no_list"].status is PluginStatus.SKIPPED and "not a list" in str(reports["no_list"].error)

    partly = reports["one_bad_node"]
    assert partly.status is PluginStatus.LOADED and partly.nodes == ["V3Good"]
    refused = {refusal.class_type: refusal.reason for refusal in partly.refused}
    assert set(refused) == {"BrokenSchema", "V3Repeats", "NotANode"}
    assert "KeyError" in refused["BrokenSchema"] and "missing model list" in refused["BrokenSchema"]
    assert "Input ids must be unique, but ['x'] are not" in refused["V3Repeats"]
    assert "not a V3 node class" in refused["NotANode"]
    assert list(registry) == ["V3Good"]


def test_with_node_class_mappings_the_entrypoint_is_not_called_as_in_comfyui(tmp_path: Path) -> None:
    folder = write_tree(
        tmp_path / "v3",
        {
            "both.py": """
                class V1Only:
                    @classmethod
                    def INPUT_TYPES(cls):
                        return {"required": {}}
                    RETURN_TYPES = ("INT",)
                    FUNCTION = "run"
                    def run(self):
                        return (1,)

                NODE_CLASS_MAPPINGS = {"V1Only": V1Only}

                def comfy_entrypoint():
                    raise AssertionError("not called where NODE_CLASS_MAPPINGS exists")
            """
        },
    )
    registry, reports = load(folder)
    assert reports["both"].status is PluginStatus.LOADED and list(registry) == ["V1Only"]


# --- /object_info --------------------------------------------------------------------------------------


def test_object_info_equals_the_v1_class_with_the_inputs_comfyui_derives(tmp_path: Path, v3: NodeRegistry) -> None:
    v1, reports = load(write_tree(tmp_path / "v1", V1_EQUIVALENT_PACK))
    assert reports["v1_equivalent_pack"].nodes == V3_NODES
    for name in V3_NODES:
        served, expected = wire(node_spec(v3, name).object_info()), wire(node_spec(v1, name).object_info())
        assert served.pop("python_module") != expected.pop("python_module")
        assert set(served) == set(expected), name
        for field in expected:
            assert served[field] == expected[field], (name, field)


def test_object_info_entries_have_comfyuis_v3_shapes(v3: NodeRegistry) -> None:
    points = wire(node_spec(v3, "V3MakePoints").object_info())
    assert points["input"]["required"]["mode"] == [
        "COMBO",
        {"default": "grid", "multiselect": False, "options": ["grid", "random"]},
    ]
    assert points["input"]["hidden"] == {"unique_id": ["UNIQUE_ID"]}
    assert points["input_order"] == {
        "required": ["image", "count", "scale", "label", "mode", "flip"],
        "optional": ["mask"],
        "hidden": ["unique_id"],
    }
    assert (points["output"], points["output_name"]) == (["V3TEST_POINTS", "INT"], ["points", "total"])
    assert points["output_tooltips"] == [None, "How many points."]
    show = wire(node_spec(v3, "V3ShowPoints").object_info())
    assert show["output_node"] is True and set(show["input"]["hidden"]) == {"prompt", "extra_pnginfo"}
    assert wire(node_spec(v3, "V3Switch").object_info())["experimental"] is True
    assert wire(node_spec(v3, "V3Words").object_info())["deprecated"] is True


# --- validation -----------------------------------------------------------------------------------------


def test_prompts_through_v3_nodes_validate(v3: NodeRegistry) -> None:
    checked = validate_prompt(points_prompt(), v3)
    assert checked.ok, checked.node_errors
    assert checked.outputs == ["3"]


def test_bad_values_are_rejected_with_the_node_and_input_named(v3: NodeRegistry) -> None:
    checked = validate_prompt(points_prompt(count=0, scale=9.0, mode="hexagonal"), v3)
    assert not checked.ok
    errors = {error["extra_info"]["input_name"]: error for error in checked.node_errors["2"]["errors"]}
    assert {name: error["type"] for name, error in errors.items()} == {
        "count": "value_smaller_than_min",
        "scale": "value_bigger_than_max",
        "mode": "value_not_in_list",
    }
    assert checked.node_errors["2"]["class_type"] == "V3MakePoints"
    assert "'hexagonal' not in ['grid', 'random']" in errors["mode"]["details"]


def test_validate_inputs_judges_the_inputs_it_names(v3: NodeRegistry) -> None:
    checked = validate_prompt(points_prompt(label="   "), v3)
    [error] = checked.node_errors["2"]["errors"]
    assert error["type"] == "custom_validation_failed" and "label must not be blank" in error["details"]


# --- running ---------------------------------------------------------------------------------------------


def test_a_v3_prompt_runs_with_the_right_values_and_previews_its_image(v3: NodeRegistry, runtime: Runtime) -> None:
    checked = validate_prompt(points_prompt(), v3)
    extra: dict[str, Any] = {"extra_pnginfo": {"workflow": {"nodes": []}}}
    record = Executor(v3, services=runtime).execute(checked.prompt, checked.outputs, prompt_id="p1", extra_data=extra)
    assert record.error is None, record.error

    assert pack_module("v3_entry_pack.nodes").MADE[-1] == {
        "node": "2",
        "size": [1, 4, 4, 3],
        "count": 3,
        "scale": 0.5,
        "label": "pts",
        "mode": "random",
        "flip": True,
        "mask": False,
    }

    [image] = record.outputs["3"]["images"]
    assert image["type"] == "temp" and image["subfolder"] == "" and image["filename"].startswith("ComfyUI_temp_")
    assert record.outputs["3"]["animated"] == [False]
    with Image.open(runtime.folders.temp / image["filename"]) as written:
        assert isinstance(written, PngImageFile) and written.size == (4, 4)
        assert json.loads(written.text["prompt"]) == checked.prompt, "cls.hidden.prompt reaches the PNG"
        assert json.loads(written.text["workflow"]) == {"nodes": []}


def test_hidden_values_are_per_call_and_never_arguments(v3: NodeRegistry) -> None:
    nodes = pack_module("v3_entry_pack.nodes")
    spec = node_spec(v3, "V3MakePoints")
    arguments = {"image": torch.zeros(1, 2, 2, 3), "count": 1, "scale": 1.0, "label": "x", "mode": "grid"}
    first = spec.normalize_result(spec.run(spec.create_instance(), {**arguments, "flip": False, "unique_id": "7"}))
    second = spec.normalize_result(spec.run(spec.create_instance(), {**arguments, "flip": False, "unique_id": "8"}))
    assert (first.values[0]["node"], second.values[0]["node"]) == ("7", "8")
    assert first.values[1] == 2 and first.ui is None
    assert nodes.V3MakePoints.hidden is None, "the pack's class is never changed"


def test_fingerprint_inputs_keeps_the_cache_until_it_changes(v3: NodeRegistry, runtime: Runtime) -> None:
    nodes = pack_module("v3_entry_pack.nodes")
    executor = Executor(v3, services=runtime)
    prompt = validate_prompt(points_prompt(), v3).prompt
    executor.execute(prompt, ["3"], prompt_id="first")
    nodes.CALLS.clear()

    executor.execute(prompt, ["3"], prompt_id="again")
    assert nodes.CALLS == [], "unchanged inputs and fingerprint: served from the cache"

    nodes.VERSIONS["pts"] = 1
    record = executor.execute(prompt, ["3"], prompt_id="changed")
    assert record.error is None, record.error
    assert nodes.CALLS == [("V3MakePoints", "pts"), ("V3ShowPoints", "pts")]


def test_lazy_inputs_hidden_ids_and_text_ui_of_mapped_v3_classes(v3: NodeRegistry, runtime: Runtime) -> None:
    mapped = pack_module("v3_mapped_pack")
    prompt = {
        "1": {"class_type": "V3Words", "inputs": {"text": "kept"}},
        "2": {"class_type": "V3Words", "inputs": {"text": "never needed"}},
        "3": {"class_type": "V3Switch", "inputs": {"use_first": True, "first": ["1", 0], "second": ["2", 0]}},
        "4": {"class_type": "V3Caption", "inputs": {"text": ["3", 0], "prompt": "note:"}},
    }
    checked = validate_prompt(prompt, v3)
    assert checked.ok, checked.node_errors
    record = Executor(v3, services=runtime).execute(checked.prompt, checked.outputs, prompt_id="lazy")
    assert record.error is None, record.error
    assert record.outputs["4"]["text"] == ["note: KEPT (['1', '2', '3', '4'])"]
    assert ("V3Words", "never needed") not in mapped.CALLS, "the branch nobody asked for never ran"
    assert ("check_lazy_status", "3") in mapped.CALLS, "check_lazy_status reads cls.hidden, not an argument"
