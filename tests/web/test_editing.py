"""Building a graph by hand: search to add nodes, drag to connect (type-checked), edit widgets."""

from __future__ import annotations

import pytest

from tests.web.conftest import EditorPage

pytestmark = pytest.mark.browser


def test_add_connect_and_edit_like_a_person(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (200, 250))
    invert = editor.add_node("invert", (560, 250))
    save = editor.add_node("save image", (900, 250), pick="SaveImage")
    assert [editor.js("(n) => loom.graph.nodes.get(n).type", i) for i in (source, invert, save)] == [
        "EmptyImage",
        "ImageInvert",
        "SaveImage",
    ]

    editor.connect(source, 0, invert, 0)
    editor.connect(invert, 0, save, 0)
    links = editor.workflow()["links"]
    assert [link[1:] for link in links] == [[source, 0, invert, 0, "IMAGE"], [invert, 0, save, 0, "IMAGE"]]

    # Number widget: the right arrow steps up, typing sets, min is honoured.
    editor.page.mouse.click(*editor.widget(source, "width", "right"))
    assert editor.widget_value(source, 0) == 513
    editor.page.mouse.click(*editor.widget(source, "height"))
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type("-40")
    editor.page.keyboard.press("Enter")
    assert editor.widget_value(source, 1) == 1, "height has min 1"
    editor.page.mouse.click(*editor.widget(source, "height"))
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type("64")
    editor.page.keyboard.press("Enter")
    assert editor.widget_value(source, 1) == 64
    # Dragging a number scrubs it one step per 6 px.
    x, y = editor.widget(source, "batch_size")
    editor.drag((x, y), (x + 61, y), steps=6)
    assert editor.widget_value(source, 2) == 11
    # A text widget opens an editor over itself.
    editor.page.mouse.click(*editor.widget(save, "filename_prefix"))
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type("by_hand")
    editor.page.keyboard.press("Enter")
    assert editor.widget_value(save, 0) == "by_hand"

    prompt = editor.js("() => loom.prompt()")
    assert prompt[str(source)]["inputs"] == {"width": 513, "height": 64, "batch_size": 11, "color": 0}
    assert prompt[str(save)]["inputs"] == {"images": [str(invert), 0], "filename_prefix": "by_hand"}
    editor.shot("built")


def test_incompatible_slots_are_refused(editor: EditorPage) -> None:
    editor.clear_graph()
    number = editor.add_node("PrimitiveInt", (200, 300))
    invert = editor.add_node("invert", (600, 300))
    start = editor.slot(number, "output", 0)
    editor.page.mouse.move(*start)
    editor.page.mouse.down()
    editor.page.mouse.move(*editor.slot(invert, "input", 0), steps=6)
    editor.shot("dimmed-while-dragging")
    editor.page.mouse.up()
    assert editor.workflow()["links"] == []


def test_combo_menu_and_boolean_toggle(editor: EditorPage) -> None:
    editor.clear_graph()
    scale = editor.add_node("upscale image", (300, 250), pick="ImageScale")
    editor.page.mouse.click(*editor.widget(scale, "upscale_method", "right"))
    assert editor.widget_value(scale, 0) == "bilinear"
    editor.page.mouse.click(*editor.widget(scale, "upscale_method"))
    editor.page.click(".context-menu .menu-entry:text-is('lanczos')")
    assert editor.widget_value(scale, 0) == "lanczos"
    flag = editor.add_node("PrimitiveBoolean", (300, 550))
    editor.page.mouse.click(*editor.widget(flag, "value"))
    assert editor.widget_value(flag, 0) is True


def test_link_dropped_on_empty_canvas_offers_compatible_nodes(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (200, 300))
    editor.drag(editor.slot(source, "output", 0), (700, 420))
    editor.page.wait_for_selector(".search-dialog")
    offered = editor.page.eval_on_selector_all(".search-results li", "els => els.map(e => e.dataset.type)")
    assert "ImageInvert" in offered and "SaveImage" in offered
    assert "PrimitiveInt" not in offered and "StringConcatenate" not in offered
    editor.page.keyboard.type("invert")
    editor.page.keyboard.press("Enter")
    (invert,) = editor.nodes_of("ImageInvert")
    assert [link[1:5] for link in editor.workflow()["links"]] == [[source, 0, invert, 0]]


def test_dragging_a_link_off_an_input_removes_it(editor: EditorPage) -> None:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (200, 300))
    invert = editor.add_node("invert", (600, 300))
    editor.connect(source, 0, invert, 0)
    assert len(editor.workflow()["links"]) == 1
    editor.drag(editor.slot(invert, "input", 0), (420, 650))
    editor.page.keyboard.press("Escape")
    assert editor.workflow()["links"] == []


def test_load_image_upload_previews_the_file_and_selects_it(editor: EditorPage) -> None:
    import io

    from PIL import Image

    editor.clear_graph()
    loader = editor.add_node("load image", (400, 250), pick="LoadImage")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 160, 90)).save(buffer, format="PNG")
    with editor.page.expect_file_chooser() as chooser:
        editor.page.mouse.click(*editor.widget(loader, "upload"))
    chooser.value.set_files(files=[{"name": "green.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    editor.page.wait_for_function("(n) => loom.graph.nodes.get(n).widgets_values[0] === 'green.png'", arg=loader)
    assert (editor.server.base_dir / "input" / "green.png").is_file()
    assert editor.js("async (n) => (await loom.prompt())[String(n)].inputs", loader) == {"image": "green.png"}
    editor.page.wait_for_function(
        "() => [...loom.editor.imageCache.values()].some(i => i.complete && i.naturalWidth === 40)"
    )
    editor.shot("uploaded")


def test_an_upload_button_is_saved_after_the_required_widgets_as_comfyui_does(editor: EditorPage) -> None:
    editor.clear_graph()
    mask = editor.add_node("load image mask", (400, 250), pick="LoadImageMask")
    assert editor.widget_value(mask, 1) == "alpha" and editor.widget_value(mask, 2) == "image"
    inputs = editor.js("async (n) => (await loom.prompt())[String(n)].inputs", mask)
    assert set(inputs) == {"image", "channel"} and inputs["channel"] == "alpha", "the server reads the same slots"
    editor.shot("mask-loader")


def test_node_library_item_dragged_onto_the_canvas(editor: EditorPage) -> None:
    editor.clear_graph()
    editor.page.click(".tab[data-panel=library]")
    editor.page.drag_and_drop(".library-item[data-type=ImageInvert]", "#canvas", target_position={"x": 300, "y": 300})
    editor.page.wait_for_function("() => loom.graph.nodes.size === 1")
    (node,) = editor.workflow()["nodes"]
    assert node["type"] == "ImageInvert"
    screen = editor.js("(p) => loom.editor.view.toScreen(p[0], p[1])", node["pos"])
    assert abs(screen[0] - 300) < 2 and abs(screen[1] - 300) < 2
    editor.shot("library")
