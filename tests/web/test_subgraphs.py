"""Subgraphs in the editor: an instance shows its inputs, outputs and promoted widgets; double-click opens
it, the breadcrumb leads back out; inner nodes are edited like any; selections become subgraphs and
instances are unpacked, undoably; what is queued is the server's own conversion of the file; saving
gives back what was opened."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from graph.formats.editor import editor_to_api
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from tests.web.conftest import EditorPage, fixture_json

pytestmark = pytest.mark.browser

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def whole_file(editor: EditorPage) -> dict[str, Any]:
    """The workflow as saving writes it, whichever level the canvas shows."""
    return editor.js("() => loom.editor.root.toJSON()")


def shown_types(editor: EditorPage) -> list[str]:
    return editor.js("() => [...loom.graph.nodes.values()].map((n) => n.type).sort()")


def breadcrumb(editor: EditorPage) -> list[str]:
    return editor.js(
        "() => { const bar = document.querySelector('.subgraph-breadcrumb');"
        " return bar.hidden ? [] : [...bar.querySelectorAll('.crumb')].map((c) => c.textContent); }"
    )


def computations(prompt: dict[str, Any]) -> list[str]:
    """Every node of an API prompt as the whole computation that feeds it, ids left out: two prompts
    with equal lists compute the same things, however their nodes are numbered or nested."""

    def tree(node_id: str) -> Any:
        entry = prompt[node_id]
        return [entry["class_type"], sorted([name, value_of(value)] for name, value in entry["inputs"].items())]

    def value_of(value: Any) -> Any:
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt:
            return ["link", tree(value[0]), value[1]]
        return json.dumps(value)

    return sorted(json.dumps(tree(node_id)) for node_id in prompt)


def type_in(editor: EditorPage, node_id: int, widget: str, text: str) -> None:
    editor.page.mouse.click(*editor.widget(node_id, widget))
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type(text)
    editor.page.keyboard.press("Enter")


def menu(editor: EditorPage, at: tuple[float, float], entry: str) -> None:
    editor.page.mouse.click(*at, button="right")
    editor.page.click(f".context-menu .menu-entry:text-is('{entry}')")


def test_enter_edit_inside_leave_and_queue_the_servers_conversion(editor: EditorPage, registry: NodeRegistry) -> None:
    original = fixture_json("comfy_v1_subgraph_workflow.json")
    editor.open_file("subgraph.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 8")
    assert breadcrumb(editor) == []
    # The instance shows the subgraph's input that feeds a widget as that widget, with its stored value.
    assert editor.js("() => loom.editor.widgetsFor(loom.graph.nodes.get(10)).map((w) => w.name)") == ["crop_width"]
    assert editor.js("() => loom.editor.widgetValue(loom.graph.nodes.get(10), 0)") == 24
    editor.shot("root")

    editor.page.mouse.dblclick(*editor.title(10))
    editor.page.wait_for_selector(".subgraph-breadcrumb:not([hidden])")
    assert breadcrumb(editor) == ["Workflow", "Crop and invert"]
    assert shown_types(editor) == ["ImageCrop", "ImageInvert", "Subgraph Inputs", "Subgraph Outputs"]
    type_in(editor, 1, "height", "20")
    assert editor.widget_value(1, 1) == 20
    # A new node inside, wired from the subgraph's input: the inside is a graph like any.
    scale = editor.add_node("upscale image", (640, 560), pick="ImageScale")
    editor.connect(-10, 0, scale, 0)
    editor.shot("inside")

    editor.page.click(".subgraph-breadcrumb button.crumb:text-is('Workflow')")
    editor.page.wait_for_selector(".subgraph-breadcrumb", state="hidden")
    assert editor.js("() => loom.graph === loom.editor.root")
    saved = whole_file(editor)
    (definition,) = saved["definitions"]["subgraphs"]
    crop = next(n for n in definition["nodes"] if n["type"] == "ImageCrop")
    assert crop["widgets_values"][1] == 20, "the edit inside is written into the file's definition"
    assert [n["type"] for n in definition["nodes"]] == ["ImageCrop", "ImageInvert", "ImageScale"]
    assert (
        definition["inputs"][0]["linkIds"] == [1, 5]
        and definition["inputs"][0]["id"] == original["definitions"]["subgraphs"][0]["inputs"][0]["id"]
    ), "the input keeps its uuid and lists its new link"

    editor.js(
        "() => { window.started = []; loom.api.addEventListener('execution_start', (e) => started.push(e.detail.prompt_id)); }"
    )
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => loom.execution.outputs.has('5')", timeout=20000)
    (prompt_id,) = editor.js("() => started")
    with urllib.request.urlopen(f"{editor.server.url}/history/{prompt_id}") as reply:
        ran = json.loads(reply.read())[prompt_id]["prompt"]
    expected = editor_to_api(saved, registry).prompt
    assert ran[2] == expected, "the queued prompt is the server's conversion of the whole file"
    assert expected["10:1"]["inputs"]["height"] == 20
    assert expected["10:3"]["class_type"] == "ImageScale" and expected["10:3"]["inputs"]["image"] == ["1", 0]
    editor.page.wait_for_timeout(300)
    editor.shot("ran")


def test_promoted_widgets_edit_the_inner_nodes_and_the_file_round_trips(editor: EditorPage) -> None:
    original = example("flux_dev_subgraph.workflow.json")
    editor.open_file("flux_dev_subgraph.workflow.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 2")
    editor.close_missing_models()  # the examples' model files are not in this server's folders
    shown = editor.js("() => loom.editor.widgetsFor(loom.graph.nodes.get(31)).map((w) => w.name)")
    assert shown == ["text", "noise_seed", "steps", "width", "height", "guidance"]

    saved = whole_file(editor)
    for key in ("definitions", "links", "groups", "last_node_id", "last_link_id", "version"):
        assert saved[key] == original[key], key
    by_id = {node["id"]: node for node in saved["nodes"]}
    assert sorted(by_id) == sorted(node["id"] for node in original["nodes"])
    for before in original["nodes"]:
        after = by_id[before["id"]]
        for key in ("type", "inputs", "properties", "widgets_values", "mode", "pos", "flags"):
            assert after[key] == before[key], (before["id"], key)
        # `slot_index` is added, as ComfyUI's own frontend writes it.
        assert [{**o, "slot_index": i} for i, o in enumerate(before["outputs"])] == after["outputs"]
    editor.shot("flux-root")

    editor.page.mouse.click(*editor.widget(31, "steps", "right"))
    inner = editor.js(
        "() => loom.editor.root.subgraphOf(loom.graph.nodes.get(31).type).nodes.find((n) => n.id === 17).widgets_values"
    )
    assert inner == ["simple", 21, 1.0], "a promoted widget is the inner node's own"
    assert editor.js("() => loom.prompt()")["31:17"]["inputs"]["steps"] == 21
    editor.page.keyboard.press("Control+z")
    assert editor.js("() => loom.prompt()")["31:17"]["inputs"]["steps"] == 20, "undone like any edit"

    editor.page.mouse.dblclick(*editor.title(31))
    editor.page.wait_for_selector(".subgraph-breadcrumb:not([hidden])")
    assert breadcrumb(editor) == ["Workflow", "Text to image (FLUX.1 dev)"]
    assert editor.widget_value(17, 1) == 20
    editor.shot("flux-inside")


def test_convert_nested_unpack_and_undo(editor: EditorPage) -> None:
    original = example("zimage_turbo_subgraph.workflow.json")
    editor.open_file("zimage.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 2")
    editor.close_missing_models()  # the examples' model files are not in this server's folders
    before = computations(editor.js("() => loom.prompt()"))

    editor.page.mouse.dblclick(*editor.title(12))
    editor.page.wait_for_selector(".subgraph-breadcrumb:not([hidden])")
    # Select the text encoder and its zero-out (Shift+click adds), then make them a subgraph of their own.
    editor.page.mouse.click(*editor.title(5))
    editor.page.keyboard.down("Shift")
    editor.page.mouse.click(*editor.title(6))
    editor.page.keyboard.up("Shift")
    assert editor.js("() => [...loom.editor.selection].sort()") == [5, 6]
    menu(editor, editor.title(6), "Convert to subgraph")
    (nested,) = [n for n in editor.js("() => [...loom.graph.nodes.values()].map((n) => [n.id, n.type])") if "-" in n[1]]
    assert 5 not in editor.js("() => [...loom.graph.nodes.keys()]")
    assert editor.js("(id) => loom.graph.nodes.get(id).inputs.map((i) => i.name)", nested[0]) == ["clip"]
    assert editor.js("(id) => loom.graph.nodes.get(id).outputs.map((o) => o.name)", nested[0]) == [
        "CONDITIONING",
        "CONDITIONING_2",
    ]
    assert computations(editor.js("() => loom.prompt()")) == before, "the nested subgraph computes the same"
    editor.shot("converted")

    # The sign at the end of an instance's title bar opens it with one click.
    _, top, right, _ = editor.js("(id) => loom.bounds(id)", nested[0])
    editor.page.mouse.click(right - 11, top + 15)
    editor.page.wait_for_function("() => document.querySelectorAll('.subgraph-breadcrumb .crumb').length === 3")
    assert breadcrumb(editor) == ["Workflow", "Text to image (Z-Image-Turbo)", "New Subgraph"]
    assert shown_types(editor) == ["CLIPTextEncode", "ConditioningZeroOut", "Subgraph Inputs", "Subgraph Outputs"]
    editor.shot("nested-inside")
    editor.page.click(".subgraph-breadcrumb button.crumb:text-is('Text to image (Z-Image-Turbo)')")
    assert breadcrumb(editor) == ["Workflow", "Text to image (Z-Image-Turbo)"]

    menu(editor, editor.title(nested[0]), "Unpack subgraph")
    assert sorted(shown_types(editor)).count("CLIPTextEncode") == 1
    assert computations(editor.js("() => loom.prompt()")) == before, "unpacked, it still computes the same"
    assert len(whole_file(editor)["definitions"]["subgraphs"]) == 1, "the unused definition is gone"
    editor.shot("unpacked")

    editor.page.keyboard.press("Control+z")
    assert editor.js("(id) => loom.graph.nodes.has(id)", nested[0]), "undo brings the nested instance back"
    assert len(whole_file(editor)["definitions"]["subgraphs"]) == 2
    editor.page.keyboard.press("Control+z")
    assert editor.js("() => loom.graph.nodes.has(5) && loom.graph.nodes.has(6)")
    assert whole_file(editor)["definitions"] == original["definitions"], "undone back to the file as opened"
    assert breadcrumb(editor) == ["Workflow", "Text to image (Z-Image-Turbo)"], "undo keeps the level shown"


def test_convert_at_the_top_level_runs_the_same_prompt(editor: EditorPage) -> None:
    original = fixture_json("comfy_v04_workflow.json")
    editor.drop_file("comfy_v04_workflow.json", json.dumps(original).encode(), "application/json")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    before = computations(editor.js("() => loom.prompt()"))
    x0, y0, _, _ = editor.js("() => loom.bounds(1)")
    _, _, x1, y1 = editor.js("() => loom.bounds(2)")
    editor.page.keyboard.down("Control")
    editor.drag((x0 - 20, y0 - 20), (x1 + 10, y1 + 10))
    editor.page.keyboard.up("Control")
    assert editor.js("() => [...loom.editor.selection].sort()") == [1, 2]
    menu(editor, editor.title(2), "Convert to subgraph")
    (instance,) = [n for n in editor.js("() => [...loom.graph.nodes.values()].map((n) => n.id)") if n > 5]
    assert editor.js("(id) => loom.graph.nodes.get(id).outputs[0].links.length", instance) == 1
    assert computations(editor.js("() => loom.prompt()")) == before
    editor.shot("top-level-converted")

    editor.page.keyboard.press("Control+z")
    assert editor.js("() => loom.graph.nodes.size") == 5
    assert "definitions" not in whole_file(editor) or not whole_file(editor)["definitions"]["subgraphs"]
