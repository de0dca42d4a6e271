"""Note and MarkdownNote, the frontend-only nodes of ComfyUI files: drawn as notes (not as missing
nodes), markdown rendered without letting the file inject markup, edited by typing, saved unchanged
otherwise, never sent to the server, and added from the node search like any node."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.web.conftest import EditorPage, fixture_json

pytestmark = pytest.mark.browser

NOTES_FILE = "comfy_notes_large_screen.json"
NOTE, MARKDOWN = 3, 4
#: Only these tags and attributes may come out of the markdown renderer.
SAFE_MARKUP = """(html) => {
  const allowed = new Set(['H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'P', 'BR', 'STRONG', 'EM', 'CODE', 'PRE', 'UL', 'OL', 'LI', 'A']);
  const box = document.createElement('div');
  box.innerHTML = html;
  const bad = [];
  for (const el of box.querySelectorAll('*')) {
    if (!allowed.has(el.tagName)) bad.push(el.tagName);
    for (const attr of el.attributes) if (!(el.tagName === 'A' && ['href', 'target', 'rel'].includes(attr.name))) bad.push(`${el.tagName}[${attr.name}]`);
    if (el.tagName === 'A' && !/^https?:\\/\\//i.test(el.getAttribute('href'))) bad.push(`href ${el.getAttribute('href')}`);
  }
  return bad;
}"""


def note_field(node_id: int) -> str:
    return f'.dom-widget[data-node="{node_id}"] textarea'


def markdown_view(node_id: int) -> str:
    return f'.dom-widget[data-node="{node_id}"] .markdown-view'


def node_record(workflow: dict[str, Any], node_id: int) -> dict[str, Any]:
    (node,) = [n for n in workflow["nodes"] if n["id"] == node_id]
    return node


def click_empty_canvas(editor: EditorPage) -> None:
    """A click on bare canvas, as a person ends typing in a note (the fitted graph leaves this corner free)."""
    left, bottom = editor.js(
        "() => { const r = loom.controller.canvas.getBoundingClientRect(); return [r.left, r.bottom]; }"
    )
    editor.page.mouse.click(left + 15, bottom - 15)


def test_notes_from_a_comfy_file_render_edit_save_and_stay_out_of_the_prompt(editor: EditorPage) -> None:
    original = fixture_json(NOTES_FILE)
    editor.clear_graph()
    editor.open_file(NOTES_FILE, json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 4")

    assert editor.js("(ids) => ids.map((n) => loom.editor.titleOf(loom.graph.nodes.get(n)))", [NOTE, MARKDOWN]) == [
        "Note",
        "Markdown Note",
    ]
    assert editor.page.input_value(note_field(NOTE)) == original["nodes"][2]["widgets_values"][0], (
        "a Note is plain text"
    )
    view = editor.page.locator(markdown_view(MARKDOWN))
    assert view.locator("h1").inner_text() == "Read me first"
    assert view.locator("strong").inner_text() == "red frame"
    assert view.locator("code").inner_text() == "SaveImage"
    assert view.locator("ul > li").count() == 2 and view.locator("ol > li").count() == 2
    link = view.locator("a")
    assert link.count() == 1, "the javascript: link stays plain text"
    assert link.get_attribute("href") == "https://example.com/docs?a=1&b=2"
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert "<script>window.pwned = 1</script>" in view.inner_text(), "raw HTML shows as the text it is"
    assert editor.js(f"(html) => ({SAFE_MARKUP})(html)", view.inner_html()) == []
    assert editor.js("() => window.pwned") is None
    assert [node_record(editor.workflow(), n) for n in (NOTE, MARKDOWN)] == [
        node_record(original, n) for n in (NOTE, MARKDOWN)
    ], "opened and saved unchanged: type, position, size, text, colours, properties"
    editor.shot("opened")

    editor.page.click(note_field(NOTE))
    editor.page.keyboard.press("Control+End")
    editor.page.keyboard.type("\nadded by typing")
    click_empty_canvas(editor)
    plain = original["nodes"][2]["widgets_values"][0] + "\nadded by typing"
    assert editor.widget_value(NOTE, 0) == plain

    editor.page.dblclick(markdown_view(MARKDOWN))
    editor.page.keyboard.press("Control+End")
    editor.page.keyboard.type("\n\n## Added *here*")
    editor.shot("editing-markdown")
    click_empty_canvas(editor)
    markdown = original["nodes"][3]["widgets_values"][0] + "\n\n## Added *here*"
    assert editor.widget_value(MARKDOWN, 0) == markdown
    assert view.locator("h2 em").inner_text() == "here", "the edited markdown is rendered again"
    editor.page.keyboard.press("Control+Z")
    assert editor.widget_value(MARKDOWN, 0) == original["nodes"][3]["widgets_values"][0], (
        "the whole edit is one undo step"
    )
    editor.page.wait_for_selector(f"{markdown_view(MARKDOWN)} h2", state="detached")
    editor.page.keyboard.press("Control+Shift+Z")
    editor.page.wait_for_selector(f"{markdown_view(MARKDOWN)} h2 em:text('here')")
    editor.shot("edited")

    editor.page.click("#btn-save")
    editor.page.fill(".modal input", "notes")
    editor.page.keyboard.press("Enter")
    editor.page.wait_for_selector(".toast:text('Saved notes.json')")
    on_disk = json.loads((editor.server.base_dir / "user" / "default" / "workflows" / "notes.json").read_text())
    for node_id, text in ((NOTE, plain), (MARKDOWN, markdown)):
        assert node_record(on_disk, node_id) == {**node_record(original, node_id), "widgets_values": [text]}
    editor.clear_graph()
    editor.page.click(".tab[data-panel=workflows]")
    editor.page.click(".workflow-item[data-path='notes.json'] .workflow-name")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 4")
    assert editor.page.input_value(note_field(NOTE)) == plain
    assert editor.page.locator(markdown_view(MARKDOWN)).locator("h2").inner_text() == "Added here"
    editor.page.click(".tab[data-panel=workflows]")

    with editor.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as queued:
        editor.page.click("#btn-queue")
    prompt_id = queued.value.json()["prompt_id"]
    editor.page.wait_for_function("() => loom.execution.outputs.has('2')", timeout=20000)
    with urllib.request.urlopen(f"{editor.server.url}/history/{prompt_id}") as reply:
        _, _, ran, extra_data, _ = json.loads(reply.read())[prompt_id]["prompt"]
    assert {key: entry["class_type"] for key, entry in ran.items()} == {"1": "EmptyImage", "2": "SaveImage"}
    assert {n["type"] for n in extra_data["extra_pnginfo"]["workflow"]["nodes"]} >= {"Note", "MarkdownNote"}, (
        "the notes travel in the workflow the image embeds"
    )
    editor.shot("ran")


def test_notes_are_added_from_the_node_search_and_typed_into(editor: EditorPage) -> None:
    editor.clear_graph()
    note = editor.add_node("note", (200, 250), pick="Note")
    editor.page.click(note_field(note))
    editor.page.keyboard.type("remember:\nlow steps first")
    markdown = editor.add_node("markdown", (660, 250), pick="MarkdownNote")
    assert editor.widget_value(note, 0) == "remember:\nlow steps first", "leaving the text keeps it"
    editor.page.dblclick(markdown_view(markdown))
    editor.page.keyboard.type("# Plan\n- **bold** step")
    click_empty_canvas(editor)
    view = editor.page.locator(markdown_view(markdown))
    assert view.locator("h1").inner_text() == "Plan" and view.locator("li strong").inner_text() == "bold"
    assert editor.js("() => loom.prompt()") == {}, "notes alone queue nothing"
    saved = editor.workflow()
    assert [(n["type"], n["widgets_values"], n["inputs"], n["outputs"]) for n in saved["nodes"]] == [
        ("Note", ["remember:\nlow steps first"], [], []),
        ("MarkdownNote", ["# Plan\n- **bold** step"], [], []),
    ]
    editor.shot("added")


def test_markdown_rendering_lets_no_markup_through(editor: EditorPage) -> None:
    nasty = [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[x](javascript:alert(1))",
        '[x](https://a.example/"onmouseover="alert(1))',
        "[x](https://a.example/'><img src=x onerror=alert(1)>)",
        "**<b onclick=alert(1)>bold</b>**",
        "`<svg onload=alert(1)>`",
        "```\n<iframe src=javascript:alert(1)>\n```",
        '# <a href="javascript:alert(1)">head</a>',
        "- [*x*](data:text/html,<script>alert(1)</script>)",
        "\u0000 0 \u0000 [a](https://ok.example) `c`",
        "[x](HTTPS://ok.example/a_b_c_d)",
    ]
    rendered = editor.js(
        """async (sources) => { const { renderMarkdown } = await import('/js/markdown.js');
        return sources.map(renderMarkdown); }""",
        nasty,
    )
    for source, html in zip(nasty, rendered):
        assert editor.js(f"(html) => ({SAFE_MARKUP})(html)", html) == [], f"{source!r} rendered as {html!r}"
    assert 'href="HTTPS://ok.example/a_b_c_d"' in rendered[-1], "emphasis rules leave a link's address alone"
