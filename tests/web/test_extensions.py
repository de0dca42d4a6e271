"""Plugins in the editor: the example pack's colour widget used like a person would, and broken plugins reported.

The server here loads the repository's ``custom_nodes/`` plus a folder of plugins that go wrong in
the editor's two ways: a Python pack that cannot be imported (a notice above the canvas) and browser
scripts that throw or export no valid extension (a toast each; the editor keeps working). A third
script is a well-behaved extension whose hooks and menu entry record what they saw, and a fourth
draws a socket type of its pack's node as a widget.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.web.conftest import EditorPage, RunningServer, free_port, open_editor, serve_in_thread

PLUGINS = {
    "broken_python/__init__.py": "import loom_missing_dependency_for_the_editor_test\n",
    "browser_bits/__init__.py": """
        WEB_DIRECTORY = "./web"


        class BitsLabel:
            \"\"\"Its label's type is one only the browser extension label_widget.js draws, as a widget.\"\"\"

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"label": ("BITS_LABEL", {"default": "hello"}), "times": ("INT", {"default": 2})}}

            RETURN_TYPES = ("STRING",)
            FUNCTION = "repeat"
            CATEGORY = "test"

            def repeat(self, label, times):
                return (label * times,)


        NODE_CLASS_MAPPINGS = {"BitsLabel": BitsLabel}
    """,
    "browser_bits/web/label_widget.js": """
        export default {
          name: 'browser_bits.label_widget',
          widgets: { BITS_LABEL: { height: 24, create({ value, setValue }) {
            const element = Object.assign(document.createElement('input'), { className: 'bits-label', value });
            element.addEventListener('input', () => setValue(element.value));
            return { element, update: (v) => { element.value = v; } };
          } } },
        };
    """,
    "browser_bits/web/throws.js": "throw new Error('this extension cannot start');\n",
    "browser_bits/web/nameless.js": "export default { widgets: {} };\n",
    "browser_bits/web/recorder.js": """
        window.recorded = { setup: 0, graphChanges: 0, events: [] };
        export default {
          name: 'browser_bits.recorder',
          menuItems: [{ label: 'Recorder: hello', onSelect: (editor) => editor.notify(`hello, ${editor.graph.nodes.size} nodes`) }],
          setup(editor) { window.recorded.setup += 1; window.recorded.defs = Object.keys(editor.nodeDefs).length; },
          onGraphChanged() { window.recorded.graphChanges += 1; },
          onExecutionEvent(type) { window.recorded.events.push(type); },
        };
    """,
}


@pytest.fixture(scope="module")
def plugin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from server.config import ServerConfig

    base = tmp_path_factory.mktemp("loom-plugins-web")
    for relative, text in PLUGINS.items():
        (base / "plugins" / relative).parent.mkdir(parents=True, exist_ok=True)
        (base / "plugins" / relative).write_text(textwrap.dedent(text))
    config = ServerConfig(
        base_dir=base,
        auth_token=None,
        preview_method="none",
        port=free_port(),
        extra_custom_node_dirs=(base / "plugins",),
    )
    with serve_in_thread(config) as server:
        yield server


@pytest.fixture
def plugin_editor(browser: Any, plugin_server: RunningServer, request: pytest.FixtureRequest) -> Iterator[EditorPage]:
    with open_editor(browser, plugin_server, request.node.name) as driver:
        yield driver


def type_into_widget(editor: EditorPage, node_id: int, name: str, text: str) -> None:
    editor.page.mouse.click(*editor.widget(node_id, name))
    editor.page.wait_for_selector(".widget-editor")
    editor.page.fill(".widget-editor", text)
    editor.page.keyboard.press("Enter")


def color_widget(editor: EditorPage, node_id: int):
    return editor.page.locator(f'.dom-widget[data-node="{node_id}"][data-widget="color"]')


def test_the_example_packs_colour_widget_picks_the_tint_that_the_saved_image_gets(plugin_editor: EditorPage) -> None:
    editor = plugin_editor
    editor.clear_graph()
    source = editor.add_node("emptyimg", (200, 250))
    tint = editor.add_node("color tint", (520, 250))
    save = editor.add_node("saveimage", (820, 250))
    assert [editor.nodes_of(t) for t in ("EmptyImage", "ExampleColorTint", "SaveImage")] == [[source], [tint], [save]]
    for name, value in (("width", "64"), ("height", "48"), ("color", str(0xFFFFFF))):
        type_into_widget(editor, source, name, value)
    editor.connect(source, 0, tint, 0)
    editor.connect(tint, 0, save, 0)

    widget = color_widget(editor, tint)
    picker = widget.locator("input[type=color]")
    assert picker.input_value() == "#c08040", "the widget shows the input's declared default"
    picker.fill("#3366cc")
    assert editor.widget_value(tint, 0) == "#3366cc"
    assert widget.locator("code").text_content() == "#3366cc"
    assert editor.js("async (id) => (await loom.prompt())[id].inputs.color", str(tint)) == "#3366cc"
    editor.shot("picked")

    # The element sits on the widget's row and follows the view when the canvas is zoomed and panned.
    for _ in range(2):
        editor.page.mouse.move(400, 500)
        editor.page.mouse.wheel(0, 150)
        editor.drag((400, 560), (470, 600))
    editor.page.wait_for_timeout(100)
    scale = editor.js("() => loom.editor.view.scale")
    assert scale < 0.8
    box = widget.bounding_box()
    centre_x, centre_y = editor.widget(tint, "color")
    assert abs(box["x"] + box["width"] / 2 - centre_x) < 2 and abs(box["y"] + box["height"] / 2 - centre_y) < 2
    assert abs(box["height"] - 24 * scale) < 1.5
    editor.shot("zoomed")

    editor.page.click("#btn-queue")
    editor.page.wait_for_function(
        "(id) => (loom.execution.outputs.get(id) || []).length > 0", arg=str(save), timeout=30000
    )
    image = editor.js("(id) => loom.execution.outputs.get(id)[0]", str(save))
    saved = Image.open(editor.server.base_dir / "output" / image["subfolder"] / image["filename"]).convert("RGB")
    assert saved.size == (64, 48)
    assert saved.getpixel((10, 10)) == (0x33, 0x66, 0xCC), "white tinted by the picked colour is that colour"
    editor.shot("ran")

    editor.page.mouse.click(*editor.title(tint))
    editor.page.keyboard.press("Delete")
    assert editor.nodes_of("ExampleColorTint") == []
    editor.page.wait_for_selector(".dom-widget", state="detached", timeout=2000)  # the element leaves with its node
    editor.page.keyboard.press("Control+z")
    editor.page.wait_for_selector(f'.dom-widget[data-node="{tint}"]')
    assert color_widget(editor, tint).locator("input[type=color]").input_value() == "#3366cc", (
        "undo brings it back with its value"
    )


def test_a_socket_type_an_extension_draws_is_queued_with_its_widget_value(plugin_editor: EditorPage) -> None:
    """Only the browser knows BITS_LABEL is a widget; the server's conversion learns it from the editor."""
    editor = plugin_editor
    editor.clear_graph()
    node = editor.add_node("bitslabel", (400, 300), pick="BitsLabel")
    field = editor.page.locator(f'.dom-widget[data-node="{node}"] input.bits-label')
    field.fill("hey ")
    assert editor.widget_value(node, 0) == "hey "
    assert editor.js("async (id) => (await loom.prompt())[id].inputs", str(node)) == {"label": "hey ", "times": 2}
    editor.shot("label-widget")


def test_broken_plugins_are_reported_and_a_good_extension_gets_its_hooks(plugin_editor: EditorPage) -> None:
    editor = plugin_editor
    notice = editor.page.locator("#plugin-notice")
    notice.wait_for()
    assert "broken_python" in notice.text_content()
    assert "missing Python module 'loom_missing_dependency_for_the_editor_test'" in notice.text_content()
    toasts = editor.page.locator(".toast.error").all_text_contents()
    assert any("throws.js" in t and "this extension cannot start" in t for t in toasts), toasts
    assert any("nameless.js" in t and "no name" in t for t in toasts), toasts
    editor.shot("notice")

    recorded = editor.js("() => window.recorded")
    assert recorded["setup"] == 1 and recorded["defs"] == len(editor.js("() => Object.keys(loom.defs)"))
    before = recorded["graphChanges"]
    editor.clear_graph()
    assert editor.js("() => window.recorded.graphChanges") == before + 1

    editor.page.mouse.click(640, 400, button="right")
    editor.page.click(".menu-entry:text-is('Extensions')")
    editor.page.click(".menu-entry:text-is('Recorder: hello')")
    editor.page.wait_for_selector(".toast:not(.error):text('hello, 0 nodes')")

    note = editor.add_node("Prompt Template", (400, 300), pick="ExamplePromptTemplate")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => window.recorded.events.includes('execution_success')", timeout=20000)
    assert {"execution_start", "executing", "executed"} <= set(editor.js("() => window.recorded.events"))
    assert editor.nodes_of("ExamplePromptTemplate") == [note]
    notice.locator("button.dismiss").click()
    assert editor.page.locator("#plugin-notice").count() == 0
