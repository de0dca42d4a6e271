"""Native reroutes (ComfyUI's points on a link, `reroutes` and links' `parentId`): drawn on their link,
dragged, added from the link's menu and deleted from their own, saved back in the file and undoable.
They change where a link is drawn, never what runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.web.conftest import EditorPage, fixture_json

pytestmark = pytest.mark.browser


def reroutes(editor: EditorPage) -> list[dict[str, Any]]:
    return editor.workflow()["extra"].get("reroutes", [])


def reroute_on_screen(editor: EditorPage, reroute_id: int) -> tuple[float, float]:
    x, y = editor.js("(id) => loom.controller.pageOf(...loom.graph.reroutes.get(id).pos)", reroute_id)
    return x, y


def open_fixture(editor: EditorPage) -> dict[str, Any]:
    original = fixture_json("native_reroutes_v1.json")
    editor.open_file("reroutes.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 3")
    return original


def test_reroutes_of_a_v1_file_are_drawn_dragged_and_saved(editor: EditorPage) -> None:
    original = open_fixture(editor)
    prompt = editor.js("() => loom.prompt()")
    assert prompt["2"]["inputs"]["image"] == ["1", 0], "reroutes are only drawn: the link still runs 1 → 2"
    # Saved as the v0.4 files ComfyUI writes: the reroutes and each link's last reroute go in `extra`.
    assert reroutes(editor) == original["reroutes"]
    assert editor.workflow()["extra"]["linkExtensions"] == [{"id": 1, "parentId": 2}]
    x, y = reroute_on_screen(editor, 1)
    editor.shot("opened")

    editor.drag((x, y), (x + 40, y + 90))
    assert reroutes(editor)[0]["pos"] == [490, 510], "dragged by (40, 90) at scale 1"
    assert reroutes(editor)[1]["pos"] == [600, 420], "only the dragged reroute moves"
    editor.shot("dragged")
    editor.page.keyboard.press("Control+z")
    assert reroutes(editor)[0]["pos"] == [450, 420]

    # Reopened, the saved file gives the same reroutes again.
    saved = editor.workflow()
    editor.open_file("saved.json", json.dumps(saved).encode())
    editor.page.wait_for_function("() => loom.graph.reroutes.size === 2")
    assert editor.workflow()["extra"]["reroutes"] == saved["extra"]["reroutes"]
    assert editor.workflow()["extra"]["linkExtensions"] == saved["extra"]["linkExtensions"]


def test_reroutes_are_added_on_a_link_and_deleted(editor: EditorPage) -> None:
    open_fixture(editor)
    # The second link has no reroute: its marker sits half way, where a click opens the link's menu.
    a, b = editor.slot(2, "output", 0), editor.slot(3, "input", 0)
    editor.page.mouse.click((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    editor.page.click(".context-menu .menu-entry:text-is('Add reroute point')")
    added = [r for r in reroutes(editor) if 2 in r["linkIds"]]
    assert len(added) == 1 and "parentId" not in added[0]
    assert {"id": 2, "parentId": added[0]["id"]} in editor.workflow()["extra"]["linkExtensions"]
    assert editor.nodes_of("Reroute") == [], "a point on the link, not a Reroute node"
    editor.shot("added")

    # Deleting the first link's origin-side reroute joins its neighbours: the link keeps the other one.
    x, y = reroute_on_screen(editor, 1)
    editor.page.mouse.click(x, y, button="right")
    editor.page.click(".context-menu .menu-entry:text-is('Delete reroute')")
    assert [r["id"] for r in reroutes(editor)] == [2, added[0]["id"]]
    assert next(r for r in reroutes(editor) if r["id"] == 2).get("parentId") is None
    # Selected (a click) and deleted with the Delete key, the last reroute of link 1 goes too.
    editor.page.mouse.click(*reroute_on_screen(editor, 2))
    editor.page.keyboard.press("Delete")
    assert [r["id"] for r in reroutes(editor)] == [added[0]["id"]]
    assert editor.workflow()["extra"]["linkExtensions"] == [{"id": 2, "parentId": added[0]["id"]}]
    assert editor.js("() => loom.graph.nodes.size") == 3, "deleting reroutes deletes no node"
    editor.page.keyboard.press("Control+z")
    assert [r["id"] for r in reroutes(editor)] == [2, added[0]["id"]]


# Dragging links out of reroutes, and floating reroutes (ComfyUI's `floatingLinks`). A reroute shows an
# output slot beside it under the pointer: dragging from there, or Shift+dragging the point itself,
# draws a new link from the output the reroute carries, through the reroute. A plain drag moves it.

SLOT_OFFSET = 17


def reroute_slot_on_screen(editor: EditorPage, reroute_id: int) -> tuple[float, float]:
    x, y = editor.js(
        "([id, dx]) => { const [x, y] = loom.graph.reroutes.get(id).pos; return loom.controller.pageOf(x + dx, y); }",
        [reroute_id, SLOT_OFFSET],
    )
    return x, y


def link_parents(editor: EditorPage) -> dict[int, int]:
    """Link id → the last reroute it passes, as the saved (v0.4) file's `extra.linkExtensions` says."""
    return {e["id"]: e["parentId"] for e in editor.workflow()["extra"].get("linkExtensions", [])}


def links_into(editor: EditorPage, node_id: int, slot: int = 0) -> list[int]:
    return [link[0] for link in editor.workflow()["links"] if link[3] == node_id and link[4] == slot]


def link_into(editor: EditorPage, node_id: int, slot: int = 0) -> int:
    (link_id,) = links_into(editor, node_id, slot)
    return int(link_id)


def test_a_link_dragged_out_of_a_reroute_passes_through_it(editor: EditorPage) -> None:
    open_fixture(editor)
    preview = editor.add_node("preview", (640, 600), pick="PreviewImage")
    # Hovering near the reroute shows its output slot; dragging from the slot draws a new link.
    editor.page.mouse.move(*reroute_slot_on_screen(editor, 2))
    editor.shot("slot-shown")
    editor.page.mouse.down()
    editor.page.mouse.move(*editor.slot(preview, "input", 0), steps=8)
    editor.shot("dragging-from-slot")
    editor.page.mouse.up()
    new_link = link_into(editor, preview)
    assert link_parents(editor)[new_link] == 2, "the new link passes through the reroute it was dragged from"
    assert [r["linkIds"] for r in reroutes(editor)] == [[1, new_link], [1, new_link]], "and the reroutes before it"
    assert editor.js("() => loom.prompt()")[str(preview)]["inputs"]["images"] == ["1", 0]
    assert [r["pos"] for r in reroutes(editor)] == [[450, 420], [600, 420]], "dragging from the slot moved nothing"
    editor.shot("linked-from-slot")

    # Shift+drag on the point itself does the same; the input's old link (no reroutes) is replaced.
    editor.page.keyboard.down("Shift")
    editor.drag(reroute_on_screen(editor, 1), editor.slot(3, "input", 0))
    editor.page.keyboard.up("Shift")
    into_save = link_into(editor, 3)
    assert link_parents(editor)[into_save] == 1
    assert editor.js("() => loom.prompt()")["3"]["inputs"]["images"] == ["1", 0]
    assert reroutes(editor)[0]["pos"] == [450, 420]
    assert "floatingLinks" not in editor.workflow(), "the replaced link went through no reroute"
    editor.page.keyboard.press("Control+z")
    assert editor.js("() => loom.prompt()")["3"]["inputs"]["images"] == ["2", 0]


def test_a_link_from_a_reroute_dropped_on_the_canvas_adds_a_node_through_it(editor: EditorPage) -> None:
    open_fixture(editor)
    editor.drag(reroute_slot_on_screen(editor, 1), (560, 640))
    editor.page.wait_for_selector(".search-dialog")
    offered = editor.page.eval_on_selector_all(".search-results li", "els => els.map(e => e.dataset.type)")
    assert "PreviewImage" in offered and "PrimitiveInt" not in offered, "nodes that take the reroute's IMAGE"
    editor.page.keyboard.type("invert")
    editor.page.keyboard.press("Enter")
    added = max(editor.nodes_of("ImageInvert"))
    new_link = link_into(editor, added)
    assert link_parents(editor)[new_link] == 1
    assert editor.js("() => loom.prompt()")[str(added)]["inputs"]["image"] == ["1", 0]
    editor.shot("searched")


def test_deleting_the_target_leaves_a_floating_reroute_that_reconnects(editor: EditorPage) -> None:
    open_fixture(editor)
    editor.page.mouse.click(*editor.title(2))
    editor.page.keyboard.press("Delete")
    saved = editor.workflow()
    # ComfyUI's shape: the output end kept, the lost input end -1, stopping at the last reroute.
    assert saved["floatingLinks"] == [
        {"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": -1, "target_slot": -1, "type": "IMAGE", "parentId": 2}
    ]
    assert reroutes(editor) == [
        {"id": 1, "pos": [450, 420], "linkIds": []},
        {"id": 2, "parentId": 1, "pos": [600, 420], "linkIds": [], "floating": {"slotType": "output"}},
    ]
    assert saved["links"] == [] and saved["extra"]["linkExtensions"] == []
    assert "images" not in editor.js("() => loom.prompt()")["3"]["inputs"], "floating links feed nothing"
    editor.shot("floating")

    # A floating reroute is dragged like any other.
    x, y = reroute_on_screen(editor, 2)
    editor.drag((x, y), (x + 60, y + 80))
    assert reroutes(editor)[1]["pos"] == [660, 500]
    editor.shot("floating-dragged")

    # Reconnected by dragging a link out of it, it is a normal reroute again.
    editor.drag(reroute_slot_on_screen(editor, 2), editor.slot(3, "input", 0))
    saved = editor.workflow()
    assert "floatingLinks" not in saved
    new_link = link_into(editor, 3)
    assert link_parents(editor)[new_link] == 2
    assert reroutes(editor) == [
        {"id": 1, "pos": [450, 420], "linkIds": [new_link]},
        {"id": 2, "parentId": 1, "pos": [660, 500], "linkIds": [new_link]},
    ]
    assert editor.js("() => loom.prompt()")["3"]["inputs"]["images"] == ["1", 0]
    editor.shot("reconnected")
    editor.page.keyboard.press("Control+z")
    assert len(editor.workflow()["floatingLinks"]) == 1


def test_a_disconnected_input_leaves_its_reroutes_floating_until_they_are_deleted(editor: EditorPage) -> None:
    open_fixture(editor)
    editor.page.mouse.click(*editor.slot(2, "input", 0), button="right")
    editor.page.click(".context-menu .menu-entry:text-is('Disconnect')")
    assert [(f["origin_id"], f["target_id"], f["parentId"]) for f in editor.workflow()["floatingLinks"]] == [(1, -1, 2)]
    # Deleting the last reroute moves the floating end to the one before it ...
    editor.page.mouse.click(*reroute_on_screen(editor, 2), button="right")
    editor.page.click(".context-menu .menu-entry:text-is('Delete reroute')")
    assert [(f["parentId"]) for f in editor.workflow()["floatingLinks"]] == [1]
    assert reroutes(editor) == [{"id": 1, "pos": [450, 420], "linkIds": [], "floating": {"slotType": "output"}}]
    # ... and deleting that one (selected, Delete key) leaves nothing floating.
    editor.page.mouse.click(*reroute_on_screen(editor, 1))
    editor.page.keyboard.press("Delete")
    assert "floatingLinks" not in editor.workflow() and reroutes(editor) == []
    assert editor.js("() => loom.graph.nodes.size") == 3


def test_a_link_dragged_off_its_input_keeps_its_reroutes(editor: EditorPage) -> None:
    open_fixture(editor)
    preview = editor.add_node("preview", (640, 600), pick="PreviewImage")
    # Moved from one input to another, the link still runs through its reroutes.
    editor.drag(editor.slot(2, "input", 0), editor.slot(preview, "input", 0))
    moved = link_into(editor, preview)
    assert link_parents(editor)[moved] == 2 and links_into(editor, 2) == []
    assert "floatingLinks" not in editor.workflow()
    # Dropped nowhere (the search closed), the reroutes float.
    editor.drag(editor.slot(preview, "input", 0), (300, 650))
    editor.page.wait_for_selector(".search-dialog")
    editor.page.keyboard.press("Escape")
    assert [f["parentId"] for f in editor.workflow()["floatingLinks"]] == [2]


def test_floating_links_of_a_comfyui_file_are_kept_drawn_and_saved_unchanged(editor: EditorPage) -> None:
    from graph.formats.schema import schema_issues

    original = fixture_json("floating_reroutes_v1.json")
    assert schema_issues(original) == [], "the server's schema takes version 1 files with floatingLinks"
    editor.open_file("floating.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 4 && loom.graph.reroutes.size === 3")
    saved = editor.workflow()
    assert saved["floatingLinks"] == original["floatingLinks"]
    assert saved["extra"]["reroutes"] == original["reroutes"]
    assert saved["extra"]["linkExtensions"] == [{"id": 1, "parentId": 1}]
    assert schema_issues(saved) == [], "and the v0.4 files the editor saves with them"
    prompt = editor.js("() => loom.prompt()")
    as_filed = editor.js("async (workflow) => (await loom.api.post('/loom/api_prompt', { workflow })).prompt", original)
    assert prompt == as_filed, "the server converts the file as filed and as the editor saves it alike"
    assert prompt["2"]["inputs"]["image"] == ["1", 0]
    assert "images" not in prompt.get("4", {}).get("inputs", {}), "a floating link feeds nothing"
    editor.shot("opened")

    # A reroute whose floating link lost its origin has no output to drag a link from: Shift+drag moves it.
    x, y = reroute_on_screen(editor, 3)
    editor.page.keyboard.down("Shift")
    editor.drag((x, y), (x - 40, y + 30))
    editor.page.keyboard.up("Shift")
    assert next(r for r in reroutes(editor) if r["id"] == 3)["pos"] == [780, 630]
    editor.page.keyboard.press("Control+z")

    # Saved and reopened, the file has the same floating links and reroutes again.
    editor.open_file("saved.json", json.dumps(saved).encode())
    editor.page.wait_for_function("() => loom.graph.floatingLinks.size === 2")
    assert editor.workflow()["floatingLinks"] == original["floatingLinks"]
    assert editor.workflow()["extra"]["reroutes"] == original["reroutes"]


def test_floating_links_inside_a_subgraph_are_opened_and_written_back(editor: EditorPage) -> None:
    from graph.formats.schema import schema_issues

    original = fixture_json("comfy_v1_subgraph_workflow.json")
    (definition,) = original["definitions"]["subgraphs"]
    definition["reroutes"] = [{"id": 1, "pos": [560, 260], "linkIds": [], "floating": {"slotType": "output"}}]
    definition["floatingLinks"] = [
        {"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": -1, "target_slot": -1, "type": "IMAGE", "parentId": 1}
    ]
    definition["state"]["lastRerouteId"] = 1
    assert schema_issues(original) == []
    editor.open_file("subgraph.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 8")

    def stored() -> dict[str, Any]:
        (inside,) = editor.js("() => loom.editor.root.toJSON()")["definitions"]["subgraphs"]
        return inside

    def leave() -> None:
        editor.page.click(".subgraph-breadcrumb button.crumb:text-is('Workflow')")
        editor.page.wait_for_selector(".subgraph-breadcrumb", state="hidden")

    editor.page.mouse.dblclick(*editor.title(10))
    editor.page.wait_for_selector(".subgraph-breadcrumb:not([hidden])")
    assert editor.js("() => [...loom.graph.floatingLinks.keys()]") == [1]
    editor.shot("subgraph-floating")
    leave()
    assert stored() == definition, "opened and left, the definition is the file's own"

    editor.page.mouse.dblclick(*editor.title(10))
    editor.page.wait_for_selector(".subgraph-breadcrumb:not([hidden])")
    editor.drag(reroute_slot_on_screen(editor, 1), editor.slot(2, "input", 0))
    editor.shot("subgraph-reconnected")
    leave()
    inside = stored()
    assert "floatingLinks" not in inside
    (into_invert,) = [link for link in inside["links"] if link["target_id"] == 2]
    assert into_invert["origin_id"] == 1 and into_invert["parentId"] == 1
    assert inside["reroutes"] == [{"id": 1, "pos": [560, 260], "linkIds": [into_invert["id"]]}]
    assert schema_issues(editor.js("() => loom.editor.root.toJSON()")) == []


# Dragging back from a reroute's input side, the slot left of it, to an output re-sources the reroute:
# every link through it comes from that output, as in ComfyUI.


def reroute_input_on_screen(editor: EditorPage, reroute_id: int) -> tuple[float, float]:
    x, y = editor.js(
        "([id, dx]) => { const [x, y] = loom.graph.reroutes.get(id).pos; return loom.controller.pageOf(x - dx, y); }",
        [reroute_id, SLOT_OFFSET],
    )
    return x, y


def test_a_link_dragged_from_a_reroutes_input_side_to_an_output_resources_its_links(editor: EditorPage) -> None:
    open_fixture(editor)
    preview = editor.add_node("preview", (640, 620), pick="PreviewImage")
    editor.drag(reroute_slot_on_screen(editor, 2), editor.slot(preview, "input", 0))
    source = editor.add_node("emptyimg", (260, 560))
    assert editor.js("(id) => loom.graph.nodes.get(id).type", source) == "EmptyImage"
    into_invert, into_preview = link_into(editor, 2), link_into(editor, preview)

    # Under the pointer a reroute shows its input slot on the left; a link is dragged from there to the new output.
    editor.page.mouse.move(*reroute_input_on_screen(editor, 2))
    editor.shot("input-slot-shown")
    editor.page.mouse.down()
    editor.page.mouse.move(*editor.slot(source, "output", 0), steps=8)
    editor.shot("dragging-to-output")
    editor.page.mouse.up()
    prompt = editor.js("() => loom.prompt()")
    assert prompt["2"]["inputs"]["image"] == [str(source), 0], "the link through the reroute comes from the new output"
    assert prompt[str(preview)]["inputs"]["images"] == [str(source), 0], "and so does every other link through it"
    new_links = [link_into(editor, 2), link_into(editor, preview)]
    assert all(link_parents(editor)[link] == 2 for link in new_links)
    assert reroutes(editor) == [{"id": 2, "pos": [600, 420], "linkIds": sorted(new_links)}], (
        "the reroute starts the chain now; the one before it carried nothing else and went"
    )
    assert "floatingLinks" not in editor.workflow()
    editor.shot("resourced")
    editor.page.keyboard.press("Control+z")
    assert [link_into(editor, 2), link_into(editor, preview)] == [into_invert, into_preview]
    assert [r["id"] for r in reroutes(editor)] == [1, 2]

    # An output whose type the inputs do not take is refused with a toast, and nothing changes.
    latent = editor.add_node("empty latent", (260, 700), pick="EmptyLatentImage")
    before = editor.workflow()
    editor.drag(reroute_input_on_screen(editor, 2), editor.slot(latent, "output", 0))
    toast = editor.page.wait_for_selector(".toast:text('Not connected')")
    assert "LATENT" in toast.text_content() and "IMAGE" in toast.text_content()
    editor.shot("refused")
    assert editor.workflow() == before


def test_a_floating_reroute_that_lost_its_origin_gets_one_from_its_input_side(editor: EditorPage) -> None:
    original = fixture_json("floating_reroutes_v1.json")
    editor.open_file("floating.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 4 && loom.graph.reroutes.size === 3")
    (lost,) = [f for f in original["floatingLinks"] if f["origin_id"] == -1]
    editor.drag(reroute_input_on_screen(editor, lost["parentId"]), editor.slot(1, "output", 0))
    prompt = editor.js("() => loom.prompt()")
    assert prompt[str(lost["target_id"])]["inputs"]["images"] == ["1", 0], "the floating link is a link again"
    assert all(f["origin_id"] != -1 for f in editor.workflow()["floatingLinks"])
    editor.shot("reconnected")
