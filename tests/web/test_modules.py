"""The editor's pure modules, run in the page against the live /object_info: the graph → API prompt
rules, the workflow loader, widget number rules and seed controls. These are the edge cases that are
slow to reach by mouse; the other browser tests cover the same code through the UI."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import EditorPage

pytestmark = pytest.mark.browser

CONVERT = """async (workflow) => {
  const { Graph } = await import('/js/graph_model.js');
  const { graphToPrompt } = await import('/js/to_api.js');
  return graphToPrompt(Graph.fromJSON(workflow), loom.defs);
}"""


def node(node_id: int, kind: str, inputs: list[Any] = (), outputs: list[Any] = (), values: list[Any] = (), mode: int = 0) -> dict:
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 80], "flags": {}, "mode": mode,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": t, "type": t, "links": links} for t, links in outputs], "properties": {},
            "widgets_values": list(values)}


def test_muted_upstream_links_are_dropped_and_bypass_passes_the_same_type(editor: EditorPage) -> None:
    workflow = {"nodes": [
        node(1, "EmptyImage", outputs=[("IMAGE", [1])], values=[8, 8, 1, 0], mode=2),
        node(2, "EmptyImage", outputs=[("IMAGE", [2])], values=[16, 16, 1, 0]),
        node(3, "ImageBatch", inputs=[("image1", "IMAGE", 1), ("image2", "IMAGE", 2)], outputs=[("IMAGE", [3])], mode=4),
        node(4, "ImageInvert", inputs=[("image", "IMAGE", 3)], outputs=[("IMAGE", [])]),
        node(5, "SaveImage", inputs=[("images", "IMAGE", 1)], values=["x"]),
    ], "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 1, 0, 5, 0, "IMAGE"]]}
    workflow["nodes"][0]["outputs"][0]["links"] = [1, 4]
    prompt = editor.js(CONVERT, workflow)
    assert sorted(prompt) == ["2", "4", "5"]
    assert prompt["4"]["inputs"] == {"image": ["2", 0]}, "the bypassed batch passes its first live IMAGE input"
    assert prompt["5"]["inputs"] == {"filename_prefix": "x"}, "a link from a muted node is dropped"


def test_version_1_links_and_list_values(editor: EditorPage) -> None:
    workflow = {"version": 1, "state": {"lastNodeId": 2, "lastLinkId": 1}, "nodes": [
        node(1, "PrimitiveString", outputs=[("STRING", [1])], values=["hi"]),
        node(2, "StringConcatenate", inputs=[("string_a", "STRING", 1)], outputs=[("STRING", [])], values=["a", ["b", "c"], "-"]),
    ], "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "STRING"}]}
    workflow["nodes"][1]["inputs"][0]["widget"] = {"name": "string_a"}
    prompt = editor.js(CONVERT, workflow)
    assert prompt["2"]["inputs"] == {"string_a": ["1", 0], "string_b": {"__value__": ["b", "c"]}, "delimiter": "-"}


def test_malformed_workflows_name_the_offending_path(editor: EditorPage) -> None:
    message = editor.js("""async () => { const { Graph } = await import('/js/graph_model.js');
        try { Graph.fromJSON({ nodes: [{ id: 1 }] }); return null; } catch (e) { return [e.name, e.path, e.message]; } }""")
    assert message == ["Error", "nodes[0].type", "workflow nodes[0].type: missing node type"]


def test_number_rules_and_seed_controls(editor: EditorPage) -> None:
    result = editor.js("""async () => {
      const { clampNumber, stepNumber } = await import('/js/widgets/number.js');
      const { nextControlledValue } = await import('/js/widgets/seed_control.js');
      const cfg = { kind: 'float', options: { min: 0, max: 100, step: 0.1, round: 0.01 } };
      const width = { kind: 'int', options: { min: 16, max: 64, step: 8 } };
      const seeds = Array.from({ length: 200 }, () => nextControlledValue(5, 'randomize', { min: 0, max: 9 }));
      return { cfg: [clampNumber(cfg, 7.456), stepNumber(cfg, 0.2, 1), clampNumber(cfg, 101)],
               width: [clampNumber(width, 21), clampNumber(width, 63), stepNumber(width, 64, 1), clampNumber(width, 3)],
               controls: [nextControlledValue(9, 'increment', { max: 9 }), nextControlledValue(0, 'decrement', { min: 0 }),
                          nextControlledValue(4, 'fixed', {}), nextControlledValue(4, 'increment', { step: 1 })],
               seedRange: [Math.min(...seeds), Math.max(...seeds), new Set(seeds).size > 5] };
    }""")
    assert result["cfg"] == [7.46, 0.3, 100]
    assert result["width"] == [24, 64, 64, 16]
    assert result["controls"] == [9, 0, 4, 5]
    assert result["seedRange"][0] >= 0 and result["seedRange"][1] <= 9 and result["seedRange"][2]


def test_fuzzy_search_prefers_names(editor: EditorPage) -> None:
    ranked = editor.js("""async () => { const { searchNodes } = await import('/js/search.js');
        return [searchNodes(loom.defs, 'save').map(d => d.name).slice(0, 1), searchNodes(loom.defs, 'imginv').map(d => d.name)[0],
                searchNodes(loom.defs, 'zzzq').length]; }""")
    assert ranked == [["SaveImage"], "ImageInvert", 0]


def test_binary_preview_frames_show_on_the_running_node(editor: EditorPage) -> None:
    """Type 4 frames name their node in JSON metadata; type 1 frames belong to the node that runs (docs/compatibility.md §C.3)."""
    import io

    from PIL import Image

    editor.clear_graph()
    target = editor.add_node("invert", (400, 300))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    shown = editor.js("""async ([id, png]) => {
      const bytes = new Uint8Array(png);
      const meta = new TextEncoder().encode(JSON.stringify({ node_id: String(id), display_node_id: String(id), image_type: 'image/png' }));
      const frame = new Uint8Array(8 + meta.length + bytes.length);
      const view = new DataView(frame.buffer);
      view.setUint32(0, 4); view.setUint32(4, meta.length);
      frame.set(meta, 8); frame.set(bytes, 8 + meta.length);
      loom.api.onBinary(frame.buffer);
      const first = loom.execution.previews.has(String(id));
      loom.execution.previews.clear();
      loom.api.onMessage(JSON.stringify({ type: 'executing', data: { node: String(id), prompt_id: 'p' } }));
      const legacy = new Uint8Array(8 + bytes.length);
      new DataView(legacy.buffer).setUint32(0, 1); new DataView(legacy.buffer).setUint32(4, 2);
      legacy.set(bytes, 8);
      loom.api.onBinary(legacy.buffer);
      return [first, loom.execution.previews.has(String(id))];
    }""", [target, list(buffer.getvalue())])
    assert shown == [True, True]
    editor.page.wait_for_function("() => [...loom.editor.imageCache.values()].some(i => i.complete && i.naturalWidth === 16)")
    editor.shot("preview")


def test_the_socket_reconnects_with_the_same_client_id(editor: EditorPage) -> None:
    editor.page.wait_for_function("() => loom.api.socket.readyState === WebSocket.OPEN && loom.api.clientId")
    first = editor.js("() => loom.api.clientId")
    editor.js("() => { window.reopened = false; loom.api.addEventListener('open', () => { window.reopened = true; }); loom.api.socket.close(); }")
    editor.page.wait_for_function("() => window.reopened", timeout=10000)
    assert editor.js("() => loom.api.clientId") == first
    assert "offline" not in editor.page.get_attribute("#connection", "class")
