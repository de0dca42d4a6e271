"""The editor's pure modules, run in the page against the live server: the workflow model against the
server's conversion, the workflow loader, widget number rules and seed controls. These are the edge
cases that are slow to reach by mouse; the other browser tests cover the same code through the UI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.web.conftest import FIXTURES as WEB_FIXTURES
from tests.web.conftest import EditorPage

FORMAT_FIXTURES = Path(__file__).resolve().parents[1] / "graph" / "formats" / "fixtures"

pytestmark = pytest.mark.browser

#: Workflow files of every shape the editor opens: v0.4 and v1, subgraphs, bypassed and muted nodes,
#: PrimitiveNode, Reroute and notes.
WORKFLOW_FILES = [
    WEB_FIXTURES / "comfy_v04_workflow.json",
    WEB_FIXTURES / "comfy_v1_subgraph_workflow.json",
    *(
        FORMAT_FIXTURES / name
        for name in (
            "default_v04.json",
            "groups_v1.json",
            "muted_bypassed_v04.json",
            "reroute_primitive_v04.json",
            "subgraph_v04.json",
        )
    ),
]

#: The server's conversion of a file as it is, and of the same file after the editor opened it.
CONVERT_BOTH = """async (workflow) => {
  const { Graph } = await import('/js/graph_model.js');
  const { serverPrompt } = await import('/js/api_prompt.js');
  const asFiled = await loom.api.post('/loom/api_prompt', { workflow });
  const asOpened = await serverPrompt(loom.api, Graph.fromJSON(workflow));
  return [asFiled.prompt, asOpened.prompt];
}"""


def test_the_editor_keeps_everything_the_servers_conversion_reads(editor: EditorPage) -> None:
    """The editor has no converter of its own, so its one duty is to lose nothing on the way."""
    for path in WORKFLOW_FILES:
        as_filed, as_opened = editor.js(CONVERT_BOTH, json.loads(path.read_text()))
        assert as_filed, path.name
        assert as_opened == as_filed, path.name


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
    """Type 4 frames name their node in JSON metadata; type 1 frames belong to the node that runs
    (docs/compatibility.md §C.3)."""
    import io

    from PIL import Image

    editor.clear_graph()
    target = editor.add_node("invert", (400, 300))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    shown = editor.js(
        """async ([id, png]) => {
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
    }""",
        [target, list(buffer.getvalue())],
    )
    assert shown == [True, True]
    editor.page.wait_for_function(
        "() => [...loom.editor.imageCache.values()].some(i => i.complete && i.naturalWidth === 16)"
    )
    editor.shot("preview")


def test_the_socket_reconnects_with_the_same_client_id(editor: EditorPage) -> None:
    editor.page.wait_for_function("() => loom.api.socket.readyState === WebSocket.OPEN && loom.api.clientId")
    first = editor.js("() => loom.api.clientId")
    editor.js(
        "() => { window.reopened = false; loom.api.addEventListener('open', () => { window.reopened = true; }); loom.api.socket.close(); }"
    )
    editor.page.wait_for_function("() => window.reopened", timeout=10000)
    assert editor.js("() => loom.api.clientId") == first
    assert "offline" not in editor.page.get_attribute("#connection", "class")
