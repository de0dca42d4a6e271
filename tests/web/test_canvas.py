"""The canvas itself: pan, zoom around the cursor, rubber-band selection, groups, bypass and mute,
widget/socket conversion through the context menu, the minimap, the shortcuts overlay and resizing
a node by its corner."""

from __future__ import annotations

import pytest

from tests.web.conftest import EditorPage

pytestmark = pytest.mark.browser


def view(editor: EditorPage) -> dict:
    return editor.js("() => loom.editor.view.toDs()")


def test_pan_by_dragging_and_zoom_around_the_cursor(editor: EditorPage) -> None:
    editor.clear_graph()
    node = editor.add_node("invert", (500, 400))
    start = view(editor)
    editor.drag((300, 700), (400, 650))
    panned = view(editor)
    assert panned["scale"] == start["scale"]
    assert pytest.approx(panned["offset"][0] - start["offset"][0], abs=0.5) == 100 / start["scale"]
    before = editor.title(node)
    editor.page.mouse.move(*before)
    editor.page.mouse.wheel(0, -300)
    editor.page.wait_for_timeout(100)
    assert view(editor)["scale"] > panned["scale"]
    after = editor.title(node)
    assert abs(after[0] - before[0]) < 1 and abs(after[1] - before[1]) < 1, "the point under the cursor stays put"


def test_rubber_band_selects_and_group_moves_with_its_nodes(editor: EditorPage) -> None:
    editor.clear_graph()
    a = editor.add_node("invert", (250, 300))
    b = editor.add_node("invert", (550, 300))
    c = editor.add_node("invert", (550, 650))
    editor.page.keyboard.down("Control")
    editor.drag((200, 220), (900, 420))
    editor.page.keyboard.up("Control")
    assert sorted(editor.js("() => [...loom.editor.selection]")) == [a, b]
    editor.page.keyboard.press("Control+G")
    group = editor.js("() => loom.graph.groups[0]")
    assert group["title"] == "Group"
    gx, gy = editor.js(
        "() => loom.editor.view.toScreen(loom.graph.groups[0].bounding[0] + 30, loom.graph.groups[0].bounding[1] + 12)"
    )
    rect = editor.js("() => loom.controller.canvas.getBoundingClientRect().top")
    positions = {n["id"]: n["pos"] for n in editor.workflow()["nodes"]}
    editor.drag((gx, gy + rect), (gx + 50, gy + rect + 40))
    moved = {n["id"]: n["pos"] for n in editor.workflow()["nodes"]}
    scale = view(editor)["scale"]
    for node in (a, b):
        assert moved[node][0] - positions[node][0] == pytest.approx(50 / scale, abs=1)
    assert moved[c] == positions[c], "a node outside the group stays"
    editor.shot("group")


def test_bypass_mute_and_collapse_shortcuts(editor: EditorPage) -> None:
    editor.clear_graph()
    node = editor.add_node("invert", (400, 300))
    editor.page.mouse.click(*editor.title(node))
    mode = lambda: editor.js("(n) => loom.graph.nodes.get(n).mode", node)  # noqa: E731
    editor.page.keyboard.press("Control+B")
    assert mode() == 4
    editor.page.keyboard.press("Control+M")
    assert mode() == 2
    editor.page.keyboard.press("Control+M")
    assert mode() == 0
    editor.page.keyboard.press("Alt+C")
    assert editor.js("(n) => loom.graph.nodes.get(n).flags.collapsed", node) is True
    other = editor.add_node("invert", (400, 500))
    editor.page.mouse.click(*editor.title(other))
    editor.page.keyboard.press("Control+B")
    editor.page.mouse.click(640, 700)
    editor.shot("collapsed-and-bypassed")


def test_widget_becomes_an_input_socket_and_back(editor: EditorPage) -> None:
    editor.clear_graph()
    number = editor.add_node("PrimitiveInt", (150, 300))
    image = editor.add_node("emptyimg", (550, 300))
    editor.page.mouse.click(*editor.title(image), button="right")
    editor.page.hover(".menu-entry:text('Convert widget to input')")
    editor.page.click(".context-menu[data-level='1'] .menu-entry:text-is('height')")
    inputs = editor.js("(n) => loom.graph.nodes.get(n).inputs", image)
    assert inputs == [{"name": "height", "type": "INT", "link": None, "widget": {"name": "height"}}]
    editor.connect(number, 0, image, 0)
    assert editor.js("() => loom.prompt()")[str(image)]["inputs"]["height"] == [str(number), 0]
    editor.shot("converted")
    editor.page.mouse.click(*editor.slot(image, "input", 0), button="right")
    editor.page.click(".menu-entry:text('Convert height to widget')")
    assert editor.js("(n) => loom.graph.nodes.get(n).inputs", image) == []
    assert editor.js("() => loom.prompt()")[str(image)]["inputs"]["height"] == 512


def test_link_menu_adds_a_reroute(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (150, 300))
    invert = editor.add_node("invert", (650, 300))
    editor.connect(source, 0, invert, 0)
    a, b = editor.slot(source, "output", 0), editor.slot(invert, "input", 0)
    editor.page.mouse.click((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    editor.page.click(".menu-entry:text('Add reroute')")
    (reroute,) = editor.nodes_of("Reroute")
    assert editor.js("() => loom.prompt()")[str(invert)]["inputs"]["image"] == [str(source), 0]
    assert [link[1] for link in editor.workflow()["links"]] == [source, reroute]


def test_minimap_click_centres_the_view_and_help_lists_shortcuts(editor: EditorPage) -> None:
    before = view(editor)
    top = editor.js("() => loom.controller.canvas.getBoundingClientRect().top")
    height = editor.js("() => loom.controller.canvas.clientHeight")
    editor.page.mouse.click(1280 - 12 - 10, top + height - 12 - 10)
    assert view(editor)["offset"] != before["offset"]
    editor.page.keyboard.press("?")
    text = editor.page.text_content(".help-overlay")
    assert "Ctrl+Z" in text and "Undo" in text and "Ctrl+Enter" in text
    editor.shot("help")
    editor.page.keyboard.press("Escape")
    assert editor.page.query_selector(".help-overlay") is None


def test_typing_on_the_canvas_opens_the_search(editor: EditorPage) -> None:
    editor.page.mouse.move(640, 500)
    editor.page.mouse.click(640, 700)
    editor.page.keyboard.type("inv")
    editor.page.wait_for_selector(".search-dialog")
    assert editor.page.input_value(".search-input") == "inv"
    first = editor.page.get_attribute(".search-results li.active", "data-type")
    assert first == "ImageInvert"
    editor.shot("search")


def test_double_click_on_a_title_renames_the_node(editor: EditorPage) -> None:
    editor.clear_graph()
    node = editor.add_node("invert", (400, 300))
    editor.page.mouse.dblclick(*editor.title(node))
    editor.page.wait_for_selector(".modal input")
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type("Negative")
    editor.page.keyboard.press("Enter")
    assert editor.js("() => loom.prompt()")[str(node)]["_meta"] == {"title": "Negative"}
    assert editor.workflow()["nodes"][0]["title"] == "Negative"


def node_size(editor: EditorPage, node_id: int) -> list[float]:
    return next(n["size"] for n in editor.workflow()["nodes"] if n["id"] == node_id)


def resize_handle(editor: EditorPage, node_id: int) -> tuple[float, float]:
    x, y = editor.js("(n) => loom.resizeHandle(n)", node_id)
    return x, y


def test_dragging_the_corner_resizes_the_node_in_one_undoable_saved_edit(editor: EditorPage) -> None:
    editor.clear_graph()
    save = editor.add_node("save image", (300, 250), pick="SaveImage")
    fitted = node_size(editor, save)
    editor.page.mouse.move(300, 250)
    editor.page.mouse.wheel(0, -200)
    scale = view(editor)["scale"]
    assert scale > 1.2, "zoomed in, so screen pixels and graph units differ"
    corner = resize_handle(editor, save)
    editor.page.mouse.move(*corner)
    assert editor.js("() => loom.controller.canvas.style.cursor") == "nwse-resize"
    editor.drag(corner, (corner[0] + 200, corner[1] + 150))
    grown = node_size(editor, save)
    assert grown[0] == pytest.approx(fitted[0] + 200 / scale, abs=2)
    assert grown[1] == pytest.approx(fitted[1] + 150 / scale, abs=2)
    assert resize_handle(editor, save) == pytest.approx((corner[0] + 200, corner[1] + 150), abs=2), (
        "the corner follows the pointer"
    )

    left, top = editor.js("(n) => loom.controller.pageOf(...loom.graph.nodes.get(n).pos)", save)
    editor.drag(resize_handle(editor, save), (left + 20, top + 10))
    smallest = node_size(editor, save)
    assert smallest == [160, fitted[1]], "no narrower than the minimum width, no shorter than its slots and widget"
    assert editor.widget(save, "filename_prefix")[1] < resize_handle(editor, save)[1], "the widget still fits"

    for keys, expected in (
        ("Control+Z", grown),
        ("Control+Z", fitted),
        ("Control+Shift+Z", grown),
        ("Control+Y", smallest),
        ("Control+Z", grown),
    ):
        editor.page.keyboard.press(keys)
        assert node_size(editor, save) == expected, keys

    editor.page.reload()
    editor.page.wait_for_function("window.loom && window.loom.ready", timeout=15000)
    assert node_size(editor, save) == grown, "the size is saved with the workflow"
    editor.shot("resized")


def test_a_taller_node_gives_the_room_to_its_image_and_its_text_box(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (150, 200))
    save = editor.add_node("save image", (520, 200), pick="SaveImage")
    text = editor.add_node("string multiline", (150, 480), pick="PrimitiveStringMultiline")
    editor.connect(source, 0, save, 0)
    for name, value in (("width", "96"), ("height", "64"), ("color", str(0x3F789E))):
        editor.page.mouse.click(*editor.widget(source, name))
        editor.page.keyboard.press("Control+A")
        editor.page.keyboard.type(value)
        editor.page.keyboard.press("Enter")
    editor.page.mouse.click(*editor.widget(text, "value"))
    editor.page.keyboard.type("\n".join(f"line {i}" for i in range(1, 9)))
    editor.page.keyboard.press("Control+Enter")
    editor.page.mouse.click(640, 700)
    editor.page.keyboard.press("Control+Enter")
    editor.page.wait_for_function("(id) => loom.execution.outputs.has(String(id))", arg=save, timeout=20000)
    scale = view(editor)["scale"]
    image_height = "(n) => loom.editor.layout(loom.graph.nodes.get(n)).image.h"
    text_height = "(n) => loom.editor.layout(loom.graph.nodes.get(n)).widgets[0].h"
    image_before, text_before = editor.js(image_height, save), editor.js(text_height, text)

    corner = resize_handle(editor, save)
    editor.drag(corner, (corner[0] + 100, corner[1] + 150))
    assert editor.js(image_height, save) == pytest.approx(image_before + 150 / scale, abs=2)
    corner = resize_handle(editor, text)
    editor.drag(corner, (corner[0], corner[1] + 90))
    assert editor.js(text_height, text) == pytest.approx(text_before + 90 / scale, abs=2)
    editor.shot("image-and-text")
