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
