"""Undo/redo of edits, delete, duplicate, and copy/paste within a tab and into another tab."""

from __future__ import annotations

import pytest

from tests.web.conftest import EditorPage

pytestmark = pytest.mark.browser


def test_undo_and_redo_every_kind_of_edit(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (200, 300))
    invert = editor.add_node("invert", (600, 300))
    editor.connect(source, 0, invert, 0)
    editor.page.mouse.click(*editor.widget(source, "width", "right"))
    editor.drag(editor.title(invert), (700, 500))
    states = [editor.workflow()]
    editor.page.mouse.click(640, 700)
    for _ in range(4):
        editor.page.keyboard.press("Control+Z")
        states.append(editor.workflow())
    last, moved_back, widget_back, unlinked, one_node = states
    assert moved_back["nodes"][1]["pos"] != last["nodes"][1]["pos"]
    assert (last["nodes"][0]["widgets_values"][0], widget_back["nodes"][0]["widgets_values"][0]) == (513, 512)
    assert widget_back["links"] and not unlinked["links"]
    assert [n["type"] for n in one_node["nodes"]] == ["EmptyImage"]
    editor.page.keyboard.press("Control+Shift+Z")
    assert editor.workflow()["nodes"] == unlinked["nodes"]
    for _ in range(3):
        editor.page.keyboard.press("Control+Y")
    assert editor.workflow()["nodes"] == last["nodes"] and editor.workflow()["links"] == last["links"]


def test_delete_and_duplicate_with_the_keyboard(editor: EditorPage) -> None:
    editor.clear_graph()
    node = editor.add_node("invert", (400, 300))
    editor.page.mouse.click(*editor.title(node))
    editor.page.keyboard.press("Control+D")
    assert editor.nodes_of("ImageInvert") == [node, node + 1]
    editor.page.keyboard.press("Delete")
    assert editor.nodes_of("ImageInvert") == [node]
    editor.page.keyboard.press("Control+Z")
    assert len(editor.nodes_of("ImageInvert")) == 2


def test_copy_paste_keeps_internal_links_and_works_across_tabs(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (150, 250))
    invert = editor.add_node("invert", (500, 250))
    editor.connect(source, 0, invert, 0)
    editor.page.mouse.click(640, 650)
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.press("Control+C")
    editor.page.mouse.move(300, 550)
    editor.page.keyboard.press("Control+V")
    nodes = editor.workflow()["nodes"]
    assert [n["type"] for n in nodes] == ["EmptyImage", "ImageInvert", "EmptyImage", "ImageInvert"]
    assert [link[1:5] for link in editor.workflow()["links"]] == [
        [source, 0, invert, 0],
        [nodes[2]["id"], 0, nodes[3]["id"], 0],
    ]
    editor.shot("pasted")

    other = editor.page.context.new_page()
    other.goto(editor.server.url + "/")
    other.wait_for_function("window.loom && window.loom.ready")
    before = other.evaluate("() => loom.graph.nodes.size")
    other.mouse.click(640, 700)
    other.keyboard.press("Control+V")
    assert other.evaluate("() => loom.graph.nodes.size") == before + 2
    other.close()
