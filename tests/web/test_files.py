"""Workflow files: the hand-written ComfyUI v0.4 file (seed control, reroute, bypass, group), a v1 file
with a subgraph run and exported as the server converts it, saving to and reopening from the server,
export, dropped PNGs with a workflow or only a prompt, reload restore."""

from __future__ import annotations

import io
import json
import urllib.request
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.web.conftest import EditorPage, fixture_json

pytestmark = pytest.mark.browser


def png_with_text(**chunks: str) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_comfy_v04_file_loads_converts_and_runs(editor: EditorPage) -> None:
    original = fixture_json("comfy_v04_workflow.json")
    editor.drop_file("comfy_v04_workflow.json", json.dumps(original).encode(), "application/json")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    assert editor.js("() => loom.editor.view.toDs()") == original["extra"]["ds"]
    assert editor.js("() => loom.graph.groups[0].title") == "Source"
    # Bypassed ImageInvert and the reroute vanish; the linked width comes from the primitive; the control
    # value after the seed is not sent.
    assert editor.js("() => loom.prompt()") == {
        "1": {"inputs": {"value": 64}, "class_type": "PrimitiveInt", "_meta": {"title": "Int"}},
        "2": {
            "inputs": {"width": ["1", 0], "height": 48, "batch_size": 1, "color": 16711680},
            "class_type": "EmptyImage",
            "_meta": {"title": "EmptyImage"},
        },
        "5": {
            "inputs": {"images": ["2", 0], "filename_prefix": "loom_v04"},
            "class_type": "SaveImage",
            "_meta": {"title": "Save the red frame"},
        },
    }
    saved = editor.workflow()
    assert [n["widgets_values"] for n in saved["nodes"]] == [n.get("widgets_values", []) for n in original["nodes"]]
    assert saved["links"] == original["links"]
    assert saved["nodes"][4]["shape"] == 1 and saved["models"] == [], "fields the editor does not use are kept"
    assert [(n["id"], n["mode"], n["inputs"]) for n in saved["nodes"]] == [
        (n["id"], n["mode"], n["inputs"]) for n in original["nodes"]
    ]
    editor.shot("loaded")

    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => loom.execution.outputs.has('5')", timeout=20000)
    assert editor.widget_value(1, 0) == 65, "control 'increment' applies after queueing"
    editor.page.wait_for_timeout(300)
    editor.shot("ran")


#: comfy_v1_subgraph_workflow.json as the server runs it: the PrimitiveNode's width, through the reroute into
#: the subgraph (flattened to "10:<inner id>", its crop width from the instance's widget), past the
#: bypassed invert; the note and the muted save are left out.
SUBGRAPH_PROMPT = {
    "1": {
        "inputs": {"width": 32, "height": 48, "batch_size": 1, "color": 16711680},
        "class_type": "EmptyImage",
        "_meta": {"title": "EmptyImage"},
    },
    "10:1": {
        "inputs": {"image": ["1", 0], "width": 24, "height": 16, "x": 0, "y": 0},
        "class_type": "ImageCrop",
        "_meta": {"title": "Image Crop"},
    },
    "10:2": {"inputs": {"image": ["10:1", 0]}, "class_type": "ImageInvert", "_meta": {"title": "Invert Image"}},
    "5": {
        "inputs": {"images": ["10:2", 0], "filename_prefix": "loom_subgraph"},
        "class_type": "SaveImage",
        "_meta": {"title": "Save Image"},
    },
}


def server_get(editor: EditorPage, route: str) -> Any:
    with urllib.request.urlopen(editor.server.url + route) as reply:
        return json.loads(reply.read())


def server_conversion(editor: EditorPage, workflow: dict[str, Any]) -> dict[str, Any]:
    """What the server makes of a file sent straight to it, without the editor."""
    body = json.dumps({"workflow": workflow}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(editor.server.url + "/loom/api_prompt", data=body, headers=headers)
    with urllib.request.urlopen(request) as reply:
        return json.loads(reply.read())


def test_a_v1_file_with_a_subgraph_runs_and_exports_the_servers_conversion(editor: EditorPage) -> None:
    original = fixture_json("comfy_v1_subgraph_workflow.json")
    editor.open_file("subgraph.json", json.dumps(original).encode())
    editor.page.wait_for_function("() => loom.graph.nodes.size === 8")
    assert editor.workflow()["definitions"] == original["definitions"], "the subgraph definitions stay in the open file"
    assert editor.js("() => loom.editor.titleOf(loom.graph.nodes.get(10))") == "Crop and invert"
    editor.shot("subgraph-loaded")

    with editor.page.expect_download() as download:
        editor.page.click("#btn-export-api")
    exported = json.loads(open(download.value.path()).read())
    assert exported == SUBGRAPH_PROMPT
    assert exported == server_conversion(editor, original)["prompt"]

    editor.js("""() => { window.started = [];
        loom.api.addEventListener('execution_start', (e) => started.push(e.detail.prompt_id)); }""")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => loom.execution.outputs.has('5')", timeout=20000)
    (prompt_id,) = editor.js("() => started")
    ran = server_get(editor, f"/history/{prompt_id}")[prompt_id]["prompt"]
    assert ran[2] == exported, "the server ran the very prompt Export API wrote"
    assert ran[3]["extra_pnginfo"]["workflow"]["definitions"] == original["definitions"], "outputs carry the whole file"
    (image,) = editor.js("() => loom.execution.outputs.get('5')")
    with urllib.request.urlopen(editor.server.url + editor.js("(img) => loom.api.viewUrl(img)", image)) as reply:
        picture = Image.open(io.BytesIO(reply.read())).convert("RGB")
    assert picture.size == (24, 16), "cropped inside the subgraph to the instance's width"
    assert picture.getpixel((5, 5)) == (0, 255, 255), "red inverted once: the bypassed invert did nothing"
    editor.page.wait_for_timeout(300)
    editor.shot("subgraph-ran")


def test_a_workflow_the_server_cannot_convert_is_neither_exported_nor_queued(editor: EditorPage) -> None:
    editor.allow_error("status of 400 (Bad Request)")
    workflow = fixture_json("comfy_v04_workflow.json")
    workflow["nodes"][1]["type"] = "SomePluginImage"
    editor.drop_file("plugin.json", json.dumps(workflow).encode(), "application/json")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    editor.page.click("#btn-export-api")
    refusal = "The editor workflow cannot be converted: unknown node type: node 2 (SomePluginImage)"
    editor.page.wait_for_selector(f".toast.error:text('Not exported: {refusal}')")
    editor.page.click("#btn-queue")
    editor.page.wait_for_selector(f".toast.error:text('Not queued: {refusal}')")
    editor.shot("unconvertible")


def test_save_to_server_and_reopen_from_the_sidebar(editor: EditorPage) -> None:
    editor.drop_file("v04.json", json.dumps(fixture_json("comfy_v04_workflow.json")).encode(), "application/json")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    before = editor.workflow()
    editor.page.click("#btn-save")
    editor.page.fill(".modal input", "my flow")
    editor.page.keyboard.press("Enter")
    editor.page.wait_for_selector(".toast:text('Saved my flow.json')")
    on_disk = json.loads((editor.server.base_dir / "user" / "default" / "workflows" / "my flow.json").read_text())
    assert on_disk["nodes"] == before["nodes"]

    editor.clear_graph()
    editor.page.click(".tab[data-panel=workflows]")
    editor.page.click(".workflow-item[data-path='my flow.json'] .workflow-name")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    assert editor.workflow()["nodes"] == before["nodes"]
    editor.shot("reopened")


def test_export_downloads_the_workflow_and_the_api_prompt(editor: EditorPage) -> None:
    editor.drop_file("v04.json", json.dumps(fixture_json("comfy_v04_workflow.json")).encode(), "application/json")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    with editor.page.expect_download() as download:
        editor.page.click("#btn-export")
    exported = json.loads(open(download.value.path()).read())
    assert exported == editor.workflow() and exported["version"] == 0.4
    with editor.page.expect_download() as download:
        editor.page.click("#btn-export-api")
    api = json.loads(open(download.value.path()).read())
    assert api == editor.js("() => loom.prompt()") and sorted(api) == ["1", "2", "5"]


def test_dropped_png_with_a_workflow_opens_it(editor: EditorPage) -> None:
    workflow = fixture_json("comfy_v04_workflow.json")
    editor.drop_file("out.png", png_with_text(prompt="{}", workflow=json.dumps(workflow)), "image/png")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 5")
    assert editor.workflow()["links"] == workflow["links"]


def test_dropped_png_with_only_a_prompt_is_laid_out(editor: EditorPage) -> None:
    prompt = {
        "10": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 255}},
        "11": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "from_png"}},
    }
    editor.drop_file("api.png", png_with_text(prompt=json.dumps(prompt)), "image/png")
    editor.page.wait_for_function("() => loom.graph.nodes.size === 3")
    rebuilt = editor.js("() => loom.prompt()")
    assert {k: v["inputs"] for k, v in rebuilt.items()} == {k: v["inputs"] for k, v in prompt.items()}
    xs = [n["pos"][0] for n in sorted(editor.workflow()["nodes"], key=lambda n: n["id"])]
    assert xs[0] < xs[1] < xs[2], "laid out left to right by depth"
    editor.shot("laid-out")


def test_png_without_metadata_is_refused_with_a_message(editor: EditorPage) -> None:
    before = editor.workflow()
    editor.drop_file("plain.png", png_with_text(), "image/png")
    toast = editor.page.wait_for_selector(".toast.error")
    assert "plain.png" in toast.text_content() and 'no "workflow" or "prompt"' in toast.text_content()
    assert editor.workflow() == before, "the open graph is left as it was"


def test_the_open_graph_is_restored_after_a_reload(editor: EditorPage) -> None:
    editor.clear_graph()
    node = editor.add_node("invert", (400, 300))
    editor.drag(editor.title(node), (700, 500))
    moved = editor.workflow()["nodes"]
    editor.page.reload()
    editor.page.wait_for_function("window.loom && window.loom.ready")
    assert editor.workflow()["nodes"] == moved
