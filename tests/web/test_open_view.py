"""The view a workflow opens with: the saved `extra.ds` is kept when it shows the graph, and a file
saved on a larger screen, whose view shows nothing in this window, is fitted so every node is seen."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.web.conftest import EditorPage, fixture_json

pytestmark = pytest.mark.browser

LARGE_SCREEN_FILE = "comfy_notes_large_screen.json"


def open_workflow(editor: EditorPage, workflow: dict[str, Any]) -> None:
    editor.clear_graph()
    editor.open_file("workflow.json", json.dumps(workflow).encode())
    editor.page.wait_for_function("(n) => loom.graph.nodes.size === n", arg=len(workflow["nodes"]))


def canvas_rect(editor: EditorPage) -> list[float]:
    return editor.js(
        "() => { const r = loom.controller.canvas.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"
    )


def node_bounds(editor: EditorPage) -> dict[int, list[float]]:
    return {
        node_id: editor.js("(n) => loom.bounds(n)", node_id)
        for node_id in editor.js("() => [...loom.graph.nodes.keys()]")
    }


def assert_fitted(editor: EditorPage) -> None:
    """Every node wholly inside the canvas and clear of the minimap, the graph centred across or along it."""
    left, top, right, bottom = canvas_rect(editor)
    mx, my, mw, mh = editor.js("() => loom.editor.minimapExtent.frame")
    minimap = (left + mx, top + my, left + mx + mw, top + my + mh)
    bounds = node_bounds(editor)
    for node_id, (x0, y0, x1, y1) in bounds.items():
        assert left <= x0 < x1 <= right and top <= y0 < y1 <= bottom, f"node {node_id} is inside the canvas"
        assert x1 <= minimap[0] or y1 <= minimap[1], f"node {node_id} is not under the minimap"
    xs = [b for box in bounds.values() for b in (box[0], box[2])]
    ys = [b for box in bounds.values() for b in (box[1], box[3])]
    assert abs((min(xs) - left) - (right - max(xs))) < 2 or abs((min(ys) - top) - (bottom - max(ys))) < 2, "centred"


def test_a_view_saved_on_a_large_screen_is_fitted_to_the_window(editor: EditorPage) -> None:
    workflow = fixture_json(LARGE_SCREEN_FILE)
    assert workflow["extra"]["ds"] == {"scale": 0.39, "offset": [2466, 1069]}
    open_workflow(editor, workflow)
    left, _, right, _ = canvas_rect(editor)
    assert right - left == 1280, "the window is 1280 wide"
    assert_fitted(editor)
    assert editor.js("() => loom.editor.view.scale") == 1, "a graph that fits at natural size is not magnified"
    assert editor.workflow()["extra"]["ds"] == editor.js("() => loom.editor.view.toDs()"), (
        "a save keeps the fitted view"
    )
    editor.shot("fitted")

    workflow["nodes"][3]["pos"] = [6000, 2500]
    open_workflow(editor, workflow)
    assert_fitted(editor)
    assert 0.1 <= editor.js("() => loom.editor.view.scale") < 0.3, "a wide graph is zoomed out until it all shows"
    editor.shot("fitted-wide")


def test_a_saved_view_that_shows_nodes_is_kept(editor: EditorPage) -> None:
    workflow = fixture_json(LARGE_SCREEN_FILE)
    workflow["extra"]["ds"] = {"scale": 1, "offset": [-1700, -300]}
    open_workflow(editor, workflow)
    assert editor.js("() => loom.editor.view.toDs()") == workflow["extra"]["ds"]
    left, top, right, bottom = canvas_rect(editor)
    shown = [b for b in node_bounds(editor).values() if b[0] < right and b[2] > left and b[1] < bottom and b[3] > top]
    assert 0 < len(shown) < len(workflow["nodes"]), "the view is kept though it shows only part of the graph"
    editor.shot("kept")
