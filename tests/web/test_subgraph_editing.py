"""Editing subgraphs beyond their insides: a subgraph's inputs and outputs are made by dropping a link
on its boundary's empty slot, renamed and removed from their menu, and every instance follows;
instances are copied with their definitions; native reroutes move in and out with the nodes they
belong to; seed controls inside subgraphs advance after each queued prompt; errors and progress of
inner nodes show on their instance."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from PIL import Image

from graph.formats.editor import editor_to_api
from graph.formats.schema import schema_issues
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from tests.web.conftest import EditorPage, fixture_json
from tests.web.test_reroutes import reroute_slot_on_screen
from tests.web.test_subgraphs import computations

pytestmark = pytest.mark.browser

INSTANCE = 10
DEFINITION = "7e1f6a52-5c1b-4e0e-9d3a-2f4b8c6d0e11"


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def whole_file(editor: EditorPage) -> dict[str, Any]:
    """The workflow as saving writes it, whichever level the canvas shows."""
    return editor.js("() => loom.editor.root.toJSON()")


def definition(saved: dict[str, Any], definition_id: str = DEFINITION) -> dict[str, Any]:
    return next(d for d in saved["definitions"]["subgraphs"] if d["id"] == definition_id)


def node_of(graph: dict[str, Any], node_id: int) -> dict[str, Any]:
    return next(n for n in graph["nodes"] if n["id"] == node_id)


def menu(editor: EditorPage, at: tuple[float, float], entry: str) -> None:
    editor.page.mouse.click(*at, button="right")
    editor.page.click(f".context-menu .menu-entry:text-is('{entry}')")


def answer(editor: EditorPage, text: str) -> None:
    editor.page.wait_for_selector(".modal input")
    editor.page.fill(".modal input", text)
    editor.page.keyboard.press("Enter")


def open_crop_workflow(editor: EditorPage) -> dict[str, Any]:
    original = fixture_json("comfy_v1_subgraph_workflow.json")
    editor.open_file("subgraph.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 8")
    return original


def enter(editor: EditorPage, instance: int) -> None:
    depth = editor.js("() => loom.editor.path.length")
    editor.page.mouse.dblclick(*editor.title(instance))
    editor.page.wait_for_function("(d) => loom.editor.path.length === d + 1", arg=depth)


def leave(editor: EditorPage) -> None:
    editor.page.click(".subgraph-breadcrumb button.crumb:text-is('Workflow')")
    editor.page.wait_for_selector(".subgraph-breadcrumb", state="hidden")


def assert_valid_interface(sub: dict[str, Any]) -> None:
    """ComfyUI's shape: every entry has a uuid, name, type and the ids of exactly the links at its slot."""
    links = {link["id"]: link for link in sub["links"]}
    for side, end, at in (("inputs", "origin", sub["inputNode"]["id"]), ("outputs", "target", sub["outputNode"]["id"])):
        for index, entry in enumerate(sub[side]):
            assert {"id", "name", "type", "linkIds"} <= set(entry), entry
            assert len(entry["id"]) == 36
            slot_links = sorted(i for i, k in links.items() if k[f"{end}_id"] == at and k[f"{end}_slot"] == index)
            assert sorted(entry["linkIds"]) == slot_links, (side, index)


def test_boundary_slots_are_added_renamed_and_removed_and_the_instance_follows(
    editor: EditorPage, registry: NodeRegistry
) -> None:
    open_crop_workflow(editor)
    enter(editor, INSTANCE)
    boundary_outputs = "() => loom.graph.nodes.get(-10).outputs.map((o) => o.empty ? '+' : o.name)"
    assert editor.js(boundary_outputs) == ["image", "crop_width", "+"]
    assert editor.js("() => loom.graph.nodes.get(-20).inputs.map((i) => i.empty ? '+' : i.name)") == ["IMAGE", "+"]

    # The crop's height becomes a socket, and a link dragged from it to the input node's "+" makes an input.
    editor.page.mouse.click(*editor.title(1), button="right")
    editor.page.hover(".menu-entry:text('Convert widget to input')")
    editor.page.click(".context-menu[data-level='1'] .menu-entry:text-is('height')")
    editor.drag(editor.slot(1, "input", 2), editor.slot(-10, "output", 2))
    assert editor.js(boundary_outputs) == ["image", "crop_width", "height", "+"]
    # A link from the crop's output to the output node's "+" makes an output.
    editor.drag(editor.slot(1, "output", 0), editor.slot(-20, "input", 1))
    assert editor.js("() => loom.graph.nodes.get(-20).inputs.map((i) => i.empty ? '+' : i.name)") == [
        "IMAGE",
        "IMAGE_2",
        "+",
    ]
    editor.shot("added")

    saved = whole_file(editor)
    sub = definition(saved)
    assert [e["name"] for e in sub["inputs"]] == ["image", "crop_width", "height"]
    assert sub["inputs"][2]["type"] == "INT" and sub["inputs"][2]["localized_name"] == "height"
    assert [e["name"] for e in sub["outputs"]] == ["IMAGE", "IMAGE_2"]
    assert_valid_interface(sub)
    instance = node_of(saved, INSTANCE)
    assert [i["name"] for i in instance["inputs"]] == ["image", "crop_width", "height"]
    assert instance["inputs"][2]["widget"] == {"name": "height"}
    assert instance["widgets_values"] == [24, 16], "the instance stores the inner height it now shows"
    assert [o["name"] for o in instance["outputs"]] == ["IMAGE", "IMAGE_2"]

    # Renamed from the slot's menu: the definition and the instance take the new name.
    menu(editor, editor.slot(-10, "output", 2), "Rename input")
    answer(editor, "crop_height")
    menu(editor, editor.slot(-20, "input", 1), "Rename output")
    answer(editor, "cropped")
    # Removed from its menu: its inner link goes, the instance loses the slot and its stored value.
    menu(editor, editor.slot(-10, "output", 1), "Remove input")
    assert editor.js(boundary_outputs) == ["image", "crop_height", "+"]
    assert editor.js("() => loom.graph.nodes.get(1).inputs[1].link") is None
    editor.shot("renamed-removed")

    leave(editor)
    shown = editor.js("(id) => loom.editor.widgetsFor(loom.graph.nodes.get(id)).map((w) => w.name)", INSTANCE)
    assert shown == ["crop_height"]
    # The new output is used outside: the second SaveImage, unmuted, now saves the subgraph's crop.
    editor.connect(INSTANCE, 1, 7, 0)
    editor.page.mouse.click(*editor.title(7))
    editor.page.keyboard.press("Control+m")
    editor.shot("outside")
    saved = whole_file(editor)
    sub = definition(saved)
    assert [(e["name"], e.get("label")) for e in sub["inputs"]] == [("image", None), ("crop_height", "crop_height")]
    assert [(e["name"], e.get("label")) for e in sub["outputs"]] == [("IMAGE", None), ("cropped", "cropped")]
    assert_valid_interface(sub)
    instance = node_of(saved, INSTANCE)
    assert [(i["name"], i["link"]) for i in instance["inputs"]] == [("image", 3), ("crop_height", None)]
    assert instance["inputs"][1]["widget"] == {"name": "crop_height"}
    assert instance["widgets_values"] == [16]
    assert [o["name"] for o in instance["outputs"]] == ["IMAGE", "cropped"]
    assert node_of(saved, 4)["inputs"][0]["link"] in instance["outputs"][0]["links"]

    assert schema_issues(saved) == [], "a valid ComfyUI workflow file"
    conversion = editor_to_api(saved, registry)
    assert conversion.warnings == []
    prompt = conversion.prompt
    assert prompt["10:1"]["inputs"]["height"] == 16 and prompt["10:1"]["inputs"]["width"] == 512
    assert prompt["7"]["inputs"]["images"] == ["10:1", 0], "the new output is the crop"
    assert prompt["5"]["inputs"]["images"] == ["10:2", 0], "the outer link to the first output is kept"

    # The stored value is the instance's own: changed on the instance, the prompt follows.
    editor.page.mouse.click(*editor.widget(INSTANCE, "crop_height", "right"))
    assert editor.js("() => loom.prompt()")["10:1"]["inputs"]["height"] == 17
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => loom.execution.outputs.has('7')", timeout=20000)

    # Undo walks back through each step: the widget step, unmuting, the new link, then the removal.
    for _ in range(4):
        editor.page.keyboard.press("Control+z")
    sub = definition(whole_file(editor))
    assert [e["name"] for e in sub["inputs"]] == ["image", "crop_width", "crop_height"]
    assert node_of(whole_file(editor), INSTANCE)["widgets_values"] == [24, 16]


def paste_at(editor: EditorPage, at: tuple[float, float]) -> list[int]:
    """Ctrl+V with the pointer at `at`; returns the ids of the pasted nodes."""
    before = set(editor.js("() => [...loom.graph.nodes.keys()]"))
    editor.page.mouse.move(*at)
    editor.page.keyboard.press("Control+v")
    editor.page.wait_for_function("(n) => loom.graph.nodes.size > n", arg=len(before))
    return sorted(set(editor.js("() => [...loom.graph.nodes.keys()]")) - before)


def test_a_copied_instance_brings_its_definition_into_another_workflow(editor: EditorPage) -> None:
    original = open_crop_workflow(editor)
    editor.page.mouse.click(*editor.title(INSTANCE))
    editor.page.keyboard.press("Control+c")
    (same,) = paste_at(editor, (640, 700))
    saved = whole_file(editor)
    assert node_of(saved, same)["type"] == DEFINITION
    assert len(saved["definitions"]["subgraphs"]) == 1, "pasted into its own workflow, the definition is reused"

    # Another workflow, without the subgraph: the paste brings the definition along.
    editor.open_file("plain.json", json.dumps(fixture_json("comfy_v04_workflow.json")).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    assert "definitions" not in whole_file(editor)
    (pasted,) = paste_at(editor, (640, 650))
    saved = whole_file(editor)
    assert saved["definitions"]["subgraphs"] == original["definitions"]["subgraphs"]
    assert node_of(saved, pasted)["widgets_values"] == [24]
    editor.connect(2, 0, pasted, 0)
    editor.connect(pasted, 0, 5, 0)
    editor.shot("pasted")
    (ran,) = queue_and_collect(editor, 1)
    assert ran[f"{pasted}:1"]["class_type"] == "ImageCrop" and ran[f"{pasted}:1"]["inputs"]["width"] == 24
    assert ran["5"]["inputs"]["images"] == [f"{pasted}:2", 0]


def test_nested_definitions_are_copied_too(editor: EditorPage) -> None:
    open_crop_workflow(editor)
    enter(editor, INSTANCE)
    select_titles(editor, 1, 2)
    menu(editor, editor.title(2), "Convert to subgraph")
    leave(editor)
    nested = whole_file(editor)["definitions"]["subgraphs"]
    assert len(nested) == 2
    editor.page.mouse.click(*editor.title(INSTANCE))
    editor.page.keyboard.press("Control+c")

    editor.open_file("plain.json", json.dumps(fixture_json("comfy_v04_workflow.json")).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    (pasted,) = paste_at(editor, (640, 650))
    assert sorted(d["id"] for d in whole_file(editor)["definitions"]["subgraphs"]) == sorted(d["id"] for d in nested)
    editor.connect(2, 0, pasted, 0)
    prompt = editor.js("() => loom.prompt()")
    crops = [key for key, node in prompt.items() if node["class_type"] == "ImageCrop"]
    assert len(crops) == 1 and crops[0].startswith(f"{pasted}:") and crops[0].count(":") == 2, (
        "the nested instance runs"
    )
    assert prompt[crops[0]]["inputs"]["image"] == ["2", 0]
    editor.shot("nested-pasted")

    # Inside the subgraph, pasting an instance of it would make it contain itself: nothing is pasted.
    enter(editor, pasted)
    editor.page.mouse.move(640, 650)
    editor.page.keyboard.press("Control+v")
    shown = editor.js("() => [...loom.graph.nodes.values()].map((n) => n.type)")
    assert node_of(whole_file(editor), pasted)["type"] not in shown


def outer_reroutes(editor: EditorPage) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in whole_file(editor)["extra"].get("reroutes", [])}


def chain(reroutes: dict[int, dict[str, Any]], parent: int | None) -> list[int]:
    """A link's reroutes from its origin to its target."""
    ids: list[int] = []
    while parent is not None:
        ids.insert(0, parent)
        parent = reroutes[parent].get("parentId")
    return ids


def select_titles(editor: EditorPage, *ids: int) -> None:
    editor.page.mouse.click(*editor.title(ids[0]))
    editor.page.keyboard.down("Shift")
    for node_id in ids[1:]:
        editor.page.mouse.click(*editor.title(node_id))
    editor.page.keyboard.up("Shift")


def test_reroutes_move_into_a_new_subgraph_and_back_out(editor: EditorPage) -> None:
    original = fixture_json("native_reroutes_v1.json")
    editor.open_file("reroutes.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 3")
    before = editor.js("() => loom.prompt()")
    # A reroute point on the link from the invert to the save, from the link's menu.
    a, b = editor.slot(2, "output", 0), editor.slot(3, "input", 0)
    editor.page.mouse.click((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    editor.page.click(".context-menu .menu-entry:text-is('Add reroute point')")
    (added,) = [r for r in outer_reroutes(editor).values() if 2 in r["linkIds"]]

    select_titles(editor, 1, 2)
    menu(editor, editor.title(2), "Convert to subgraph")
    saved = whole_file(editor)
    (sub,) = saved["definitions"]["subgraphs"]
    inner = {r["id"]: r for r in sub["reroutes"]}
    (inner_link,) = [link for link in sub["links"] if link["origin_id"] == 1 and link["target_id"] == 2]
    assert chain(inner, inner_link.get("parentId")) == [1, 2], (
        "the link between the chosen nodes keeps its reroutes inside"
    )
    assert [inner[1]["pos"], inner[2]["pos"]] == [[450, 420], [600, 420]]
    assert all(r["linkIds"] == [inner_link["id"]] for r in inner.values())
    outside = outer_reroutes(editor)
    assert list(outside) == [added["id"]], "only the reroute of the link that leaves stays outside"
    (instance,) = [n for n in saved["nodes"] if n["type"] == sub["id"]]
    (leaving,) = instance["outputs"][0]["links"]
    assert outside[added["id"]]["linkIds"] == [leaving]
    assert {"id": leaving, "parentId": added["id"]} in saved["extra"]["linkExtensions"]
    assert editor.js("() => loom.prompt()")["3"]["inputs"]["images"] == [f"{instance['id']}:2", 0]
    editor.shot("converted")

    enter(editor, instance["id"])
    assert editor.js("() => [...loom.graph.reroutes.keys()].sort()") == [1, 2]
    editor.shot("inside")
    leave(editor)

    menu(editor, editor.title(instance["id"]), "Unpack subgraph")
    saved = whole_file(editor)
    reroutes = {r["id"]: r for r in saved["extra"]["reroutes"]}
    links = {link[0]: link for link in saved["links"]}
    parents = {e["id"]: e["parentId"] for e in saved["extra"]["linkExtensions"]}
    (image_link,) = [i for i, link in links.items() if saved_type(saved, link[1]) == "EmptyImage"]
    (save_link,) = [i for i, link in links.items() if saved_type(saved, link[3]) == "SaveImage"]
    first, second = chain(reroutes, parents[image_link])
    assert [
        reroutes[second]["pos"][0] - reroutes[first]["pos"][0],
        reroutes[second]["pos"][1] - reroutes[first]["pos"][1],
    ] == [150, 0]
    assert reroutes[first]["linkIds"] == [image_link] and reroutes[second]["linkIds"] == [image_link]
    assert chain(reroutes, parents[save_link]) == [added["id"]]
    assert computations(editor.js("() => loom.prompt()")) == computations(before)
    editor.shot("unpacked")

    # Undone twice, the nodes are back as they were; then the links enter the chosen nodes instead.
    editor.page.keyboard.press("Control+z")
    editor.page.keyboard.press("Control+z")
    select_titles(editor, 2, 3)
    menu(editor, editor.title(3), "Convert to subgraph")
    saved = whole_file(editor)
    (sub,) = saved["definitions"]["subgraphs"]
    assert [r["id"] for r in sub["reroutes"]] == [added["id"]], (
        "the link into the chosen nodes keeps its reroutes outside"
    )
    (entering,) = [e for e in saved["extra"]["linkExtensions"] if e["parentId"] == 2]
    assert chain(outer_reroutes(editor), 2) == [1, 2]
    assert outer_reroutes(editor)[1]["linkIds"] == [entering["id"]]


def saved_type(saved: dict[str, Any], node_id: int) -> str:
    return str(node_of(saved, node_id)["type"])


def build_noise_chain(editor: EditorPage) -> tuple[int, int, int]:
    """Empty image → Add Noise to Image → Save Image, 64×48, built by hand."""
    editor.clear_graph()
    source = editor.add_node("emptyimg", (180, 250))
    noise = editor.add_node("add noise to image", (540, 250), pick="ImageAddNoise")
    save = editor.add_node("save image", (900, 250), pick="SaveImage")
    editor.connect(source, 0, noise, 0)
    editor.connect(noise, 0, save, 0)
    for name, value in (("width", "64"), ("height", "48")):
        editor.page.mouse.click(*editor.widget(source, name))
        editor.page.keyboard.press("Control+A")
        editor.page.keyboard.type(value)
        editor.page.keyboard.press("Enter")
    return source, noise, save


def queue_and_collect(editor: EditorPage, count: int) -> list[dict[str, Any]]:
    """Queue with batch count `count`; the API prompts the server ran, in order."""
    ids: list[str] = []

    def on_response(response: Any) -> None:
        if response.request.method == "POST" and response.url.endswith("/prompt"):
            ids.append(response.json()["prompt_id"])

    editor.page.on("response", on_response)
    editor.page.fill("#batch-count", str(count))
    editor.page.click("#btn-queue")
    editor.page.wait_for_selector(f".toast:text('Queued {count} prompt')")
    editor.page.remove_listener("response", on_response)
    prompts = []
    for prompt_id in ids:
        editor.page.wait_for_function(
            "(id) => fetch('/history/' + id).then((r) => r.json()).then((h) => h[id] && h[id].status && h[id].status.completed)",
            arg=prompt_id,
            timeout=20000,
        )
        with urllib.request.urlopen(f"{editor.server.url}/history/{prompt_id}") as reply:
            prompts.append(json.loads(reply.read())[prompt_id]["prompt"][2])
    return prompts


def test_seeds_inside_a_subgraph_change_after_each_queued_prompt(editor: EditorPage) -> None:
    _, noise, _ = build_noise_chain(editor)
    assert editor.widget_value(noise, 1) == "randomize"
    editor.page.mouse.click(*editor.title(noise))
    menu(editor, editor.title(noise), "Convert to subgraph")
    (instance,) = [n for n in editor.js("() => [...loom.graph.nodes.values()]") if "-" in n["type"]]
    inner_seed = "(t) => loom.editor.root.subgraphOf(t).nodes[0].widgets_values[0]"
    first = editor.js(inner_seed, instance["type"])

    prompts = queue_and_collect(editor, 3)
    seeds = [p[f"{instance['id']}:{noise}"]["inputs"]["seed"] for p in prompts]
    assert seeds[0] == first, "the first prompt runs the seed on screen"
    assert len(set(seeds)) == 3, "each queued prompt gets a fresh seed"
    assert editor.js(inner_seed, instance["type"]) not in seeds, "and the next one is ready"

    # Queued from inside the subgraph, the inner node shown advances as well.
    enter(editor, instance["id"])
    shown = editor.widget_value(noise, 0)
    (prompt,) = queue_and_collect(editor, 1)
    assert prompt[f"{instance['id']}:{noise}"]["inputs"]["seed"] == shown
    assert editor.widget_value(noise, 0) != shown
    editor.shot("inside-after-queue")


def test_a_seed_the_instance_holds_follows_the_inner_control(editor: EditorPage) -> None:
    _, noise, _ = build_noise_chain(editor)
    editor.page.mouse.click(*editor.title(noise))
    menu(editor, editor.title(noise), "Convert to subgraph")
    (instance,) = [n["id"] for n in editor.js("() => [...loom.graph.nodes.values()]") if "-" in n["type"]]
    enter(editor, instance)
    # The seed becomes an input of the subgraph, shown on the instance; its control is set to increment.
    editor.page.mouse.click(*editor.title(noise), button="right")
    editor.page.hover(".menu-entry:text('Convert widget to input')")
    editor.page.click(".context-menu[data-level='1'] .menu-entry:text-is('seed')")
    editor.drag(editor.slot(noise, "input", 1), editor.slot(-10, "output", 1))
    editor.page.mouse.click(*editor.widget(noise, "control_after_generate"))
    editor.page.click(".context-menu .menu-entry:text-is('increment')")
    leave(editor)
    assert editor.js("(id) => loom.editor.widgetsFor(loom.graph.nodes.get(id)).map((w) => w.name)", instance) == [
        "seed"
    ]
    type_into(editor, instance, "seed", "1000")

    prompts = queue_and_collect(editor, 2)
    assert [p[f"{instance}:{noise}"]["inputs"]["seed"] for p in prompts] == [1000, 1001]
    assert editor.js("(id) => loom.graph.nodes.get(id).widgets_values", instance) == [1002]
    editor.shot("instance-seed")


def type_into(editor: EditorPage, node_id: int, widget: str, text: str) -> None:
    editor.page.mouse.click(*editor.widget(node_id, widget))
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type(text)
    editor.page.keyboard.press("Enter")


def outline_colour(editor: EditorPage, node_id: int, label: str) -> tuple[int, int, int]:
    """The colour drawn just outside the node's left edge, half way down, in a screenshot."""
    left, top, _, bottom = editor.js("(id) => loom.bounds(id)", node_id)
    picture = Image.open(editor.shot(label)).convert("RGB")
    red, green, blue = picture.getpixel((round(left - 1), round((top + bottom) / 2)))  # type: ignore[misc]
    return red, green, blue


def test_errors_and_progress_inside_a_subgraph_show_on_its_instance(editor: EditorPage) -> None:
    editor.allow_error("status of 400 (Bad Request)")
    open_crop_workflow(editor)
    # The subgraph's image input loses its source: the crop inside has no image, and the server says so.
    editor.page.mouse.click(*editor.slot(INSTANCE, "input", 0), button="right")
    editor.page.click(".context-menu .menu-entry:text-is('Disconnect')")
    editor.page.click("#btn-queue")
    editor.page.wait_for_selector(".toast.error")
    errors = editor.js("() => Object.fromEntries([...loom.execution.errors].map(([id, e]) => [id, e.message]))")
    assert "10:1" in errors, errors
    assert errors["10"].startswith("ImageCrop #1: ") and errors["10:1"] in errors["10"]
    assert outline_colour(editor, INSTANCE, "instance-error") == (0xFF, 0x52, 0x52), "the instance is outlined red"

    enter(editor, INSTANCE)
    assert editor.js("() => loom.editor.apiId(loom.graph.nodes.get(1))") == "10:1"
    assert outline_colour(editor, 1, "inner-error") == (0xFF, 0x52, 0x52), "inside, the crop itself is marked"
    leave(editor)

    # The server's progress messages for an inner node light up its instance.
    editor.page.mouse.click(*editor.slot(INSTANCE, "input", 0))  # nothing selected: no selection outline
    editor.js(
        "() => { loom.api.dispatchEvent(new CustomEvent('execution_start', { detail: { prompt_id: 'p' } }));"
        " loom.api.dispatchEvent(new CustomEvent('executing', { detail: { node: '10:1', display_node: '10:1', prompt_id: 'p' } })); }"
    )
    assert outline_colour(editor, INSTANCE, "instance-running") == (0x4C, 0xAF, 0x50)
    editor.js("() => loom.api.dispatchEvent(new CustomEvent('executing', { detail: { node: null, prompt_id: 'p' } }))")
    assert outline_colour(editor, INSTANCE, "instance-idle") != (0x4C, 0xAF, 0x50)


def test_a_boundary_slot_is_renamed_by_double_clicking_its_name(editor: EditorPage) -> None:
    open_crop_workflow(editor)
    enter(editor, INSTANCE)
    # The input node's names sit left of their dots, the output node's right of theirs.
    x, y = editor.slot(-10, "output", 1)
    editor.page.mouse.dblclick(x - 40, y)
    editor.page.wait_for_selector(".modal input")
    assert editor.page.input_value(".modal input") == "crop_width", "the prompt starts from the current name"
    editor.shot("rename-prompt")
    answer(editor, "side")
    x, y = editor.slot(-20, "input", 0)
    editor.page.mouse.dblclick(x + 30, y)
    answer(editor, "cropped")
    assert editor.js("() => loom.graph.nodes.get(-10).outputs.map((o) => o.label || o.name)") == ["image", "side", ""]
    editor.shot("renamed-by-double-click")

    sub = definition(whole_file(editor))
    assert [(e["name"], e.get("label")) for e in sub["inputs"]] == [("image", None), ("side", "side")]
    assert [(e["name"], e.get("label")) for e in sub["outputs"]] == [("cropped", "cropped")]
    instance = node_of(whole_file(editor), INSTANCE)
    assert [i["name"] for i in instance["inputs"]] == ["image", "side"]
    assert instance["inputs"][1]["widget"] == {"name": "side"}
    assert [o["name"] for o in instance["outputs"]] == ["cropped"]

    # A double-click on the "+" row or off the rows asks nothing.
    x, y = editor.slot(-10, "output", 2)
    editor.page.mouse.dblclick(x - 30, y)
    editor.page.wait_for_timeout(150)
    assert editor.page.query_selector(".modal") is None

    editor.page.keyboard.press("Control+z")
    editor.page.keyboard.press("Control+z")
    sub = definition(whole_file(editor))
    assert [e["name"] for e in sub["inputs"]] == ["image", "crop_width"]
    assert [e["name"] for e in sub["outputs"]] == ["IMAGE"]
    assert [i["name"] for i in node_of(whole_file(editor), INSTANCE)["inputs"]] == ["image", "crop_width"]


def test_a_floating_reroute_selected_with_its_node_moves_into_the_subgraph_and_back_out(editor: EditorPage) -> None:
    original = fixture_json("native_reroutes_v1.json")
    editor.open_file("reroutes.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 3")
    # Deleting the invert leaves the link's reroutes floating from the empty image's output.
    editor.page.mouse.click(*editor.title(2))
    editor.page.keyboard.press("Delete")
    floating = whole_file(editor)["floatingLinks"]
    assert [(f["origin_id"], f["parentId"]) for f in floating] == [(1, 2)]

    # Ctrl+drag a rectangle around the empty image and both reroutes, short of the save node.
    start = editor.js("() => loom.controller.pageOf(60, 140)")
    end = editor.js("() => loom.controller.pageOf(660, 470)")
    editor.page.keyboard.down("Control")
    editor.drag(start, end)
    editor.page.keyboard.up("Control")
    assert editor.js("() => [[...loom.editor.selection], [...loom.editor.selectedReroutes].sort()]") == [[1], [1, 2]]
    editor.shot("selected")
    menu(editor, editor.title(1), "Convert to subgraph")

    saved = whole_file(editor)
    (sub,) = saved["definitions"]["subgraphs"]
    assert sub["floatingLinks"] == [
        {"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": -1, "target_slot": -1, "type": "IMAGE", "parentId": 2}
    ]
    assert sub["reroutes"] == [
        {"id": 1, "pos": [450, 420], "linkIds": []},
        {"id": 2, "parentId": 1, "pos": [600, 420], "linkIds": [], "floating": {"slotType": "output"}},
    ]
    assert sub["state"]["lastRerouteId"] == 2
    assert "floatingLinks" not in saved and "reroutes" not in saved["extra"], "nothing floats outside any more"
    assert schema_issues(saved) == []
    (instance,) = [n for n in saved["nodes"] if n["type"] == sub["id"]]
    editor.shot("converted")

    enter(editor, instance["id"])
    assert editor.js("() => [...loom.graph.floatingLinks.keys()]") == [1]
    editor.shot("inside")
    leave(editor)

    menu(editor, editor.title(instance["id"]), "Unpack subgraph")
    saved = whole_file(editor)
    (image,) = [n for n in saved["nodes"] if n["type"] == "EmptyImage"]
    (link,) = saved["floatingLinks"]
    reroutes = {r["id"]: r for r in saved["extra"]["reroutes"]}
    assert link["origin_id"] == image["id"] and link["target_id"] == -1 and link["type"] == "IMAGE"
    last = reroutes[link["parentId"]]
    first = reroutes[last["parentId"]]
    assert sorted(reroutes) == sorted([first["id"], last["id"]]) and "parentId" not in first
    assert last["floating"] == {"slotType": "output"} and first["linkIds"] == last["linkIds"] == []
    offsets = [[r["pos"][0] - image["pos"][0], r["pos"][1] - image["pos"][1]] for r in (first, last)]
    assert offsets == [[350, 220], [500, 220]], "the reroutes keep their place beside the node"
    assert "definitions" not in saved or not saved["definitions"]["subgraphs"]
    assert schema_issues(saved) == []
    editor.shot("unpacked")

    # Reconnected from the last reroute, the unpacked route runs again.
    editor.drag(reroute_slot_on_screen(editor, last["id"]), editor.slot(3, "input", 0))
    assert editor.js("() => loom.prompt()")["3"]["inputs"]["images"] == [str(image["id"]), 0]
    assert "floatingLinks" not in whole_file(editor)

    for _ in range(3):
        editor.page.keyboard.press("Control+z")
    assert [(f["origin_id"], f["parentId"]) for f in whole_file(editor)["floatingLinks"]] == [(1, 2)]
    assert "definitions" not in whole_file(editor) or not whole_file(editor)["definitions"]["subgraphs"]
