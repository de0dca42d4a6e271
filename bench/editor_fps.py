"""Canvas editor frame rate with a 300-node graph: pan, zoom and the whole-graph view, in headless chromium.

Run from the repository root: ``.venv/bin/python bench/editor_fps.py`` (``--nodes N``, ``--subgraphs K``,
``--seconds S``).

Starts the real server on a free loopback port, opens the editor with a generated 300-node workflow
(chains of EmptyImage → ImageScale → ImageInvert → SaveImage nodes with widgets, of which ``K``, 10 by
default, are subgraph instances: each wraps an EmptyImage → ImageInvert pair and shows the inner width as a
promoted widget, as ComfyUI's files do), and for each scenario drives the view from a requestAnimationFrame
loop in the page: every frame moves the view (pan by a few pixels, or zoom around the centre), the editor
redraws, and we count redraws per second. It also reports the median time one redraw spends issuing canvas calls
(measured by calling the renderer directly; rasterisation happens afterwards and is in the fps only). The issue's
bar is 30 frames per second; headless chromium caps requestAnimationFrame at the display rate (60).
Software rendering (--disable-gpu) is used, as on the project's CI machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
CHAIN = [
    ("EmptyImage", [512, 512, 1, 0], [], ["IMAGE"]),
    ("ImageScale", ["bilinear", 512, 512, "disabled"], [("image", "IMAGE")], ["IMAGE"]),
    ("ImageInvert", [], [("image", "IMAGE")], ["IMAGE"]),
    ("SaveImage", ["bench"], [("images", "IMAGE")], []),
]


def subgraph(index: int) -> dict[str, Any]:
    """A subgraph definition: EmptyImage → ImageInvert, its picture the one output."""
    return {
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": 2, "lastLinkId": 2, "lastRerouteId": 0},
        "revision": 0,
        "config": {},
        "name": f"Inverted canvas {index}",
        "inputNode": {"id": -10, "bounding": [-200, 100, 120, 60]},
        "outputNode": {"id": -20, "bounding": [900, 100, 120, 60]},
        "inputs": [],
        "outputs": [{"id": f"10000000-0000-4000-8000-{index:012d}", "name": "IMAGE", "type": "IMAGE", "linkIds": [2]}],
        "widgets": [],
        "nodes": [
            {
                "id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [260, 120], "flags": {}, "order": 0, "mode": 0,
                "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "properties": {},
                "widgets_values": [512, 512, 1, 0],
            },
            {
                "id": 2, "type": "ImageInvert", "pos": [400, 0], "size": [260, 60], "flags": {}, "order": 1, "mode": 0,
                "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "properties": {}, "widgets_values": [],
            },
        ],
        "links": [
            {"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"},
            {"id": 2, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
        "groups": [],
        "extra": {},
    }  # fmt: skip


def big_workflow(count: int, subgraphs: int = 0) -> dict[str, Any]:
    """`count` nodes in a 20-wide grid, each chain of four linked left to right; every `count // subgraphs`-th
    chain's first node is an instance of a subgraph of its own instead of an EmptyImage."""
    nodes: list[dict[str, Any]] = []
    links: list[list[Any]] = []
    definitions: list[dict[str, Any]] = []
    stride = max(1, count // len(CHAIN) // max(subgraphs, 1))
    for i in range(count):
        kind, values, inputs, outputs = CHAIN[i % len(CHAIN)]
        node_id = i + 1
        node = {
            "id": node_id,
            "type": kind,
            "pos": [(i % 20) * 320, (i // 20) * 300],
            "size": [260, 120],
            "flags": {},
            "order": i,
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
            "properties": {},
            "widgets_values": values,
        }
        if kind == "EmptyImage" and len(definitions) < subgraphs and i % (stride * len(CHAIN)) == 0:
            definitions.append(subgraph(len(definitions)))
            node.update(
                type=definitions[-1]["id"],
                title=definitions[-1]["name"],
                properties={"proxyWidgets": [["1", "width"]]},
                widgets_values=[],
            )
        if inputs and i % len(CHAIN):
            link_id = len(links) + 1
            links.append([link_id, node_id - 1, 0, node_id, 0, "IMAGE"])
            node["inputs"][0]["link"] = link_id
            nodes[-1]["outputs"][0]["links"].append(link_id)
        nodes.append(node)
    return {
        "last_node_id": count,
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [-2400, -1800]}},
        "version": 0.4,
        **({"definitions": {"subgraphs": definitions}} if definitions else {}),
    }


def start_server(base: Path) -> str:
    from aiohttp import web

    from server.app import create_app
    from server.config import ServerConfig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    runner = web.AppRunner(create_app(ServerConfig(base_dir=base, auth_token=None, preview_method="none", port=port)))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(30)
    return f"http://127.0.0.1:{port}"


ANIMATE = """async ([mode, seconds]) => {
  const c = loom.controller, v = loom.editor.view;
  if (mode === 'fit') c.fit();
  else { v.scale = 1; v.offset = [-2400, -1800]; }
  const start = c.frames, t0 = performance.now();
  let i = 0;
  await new Promise((done) => {
    const step = () => {
      i += 1;
      if (mode === 'zoom') v.zoomAt((0.8 + 0.6 * Math.sin(i / 25)) / v.scale, c.width / 2, c.height / 2);
      else v.panBy(Math.sin(i / 30) * 8, Math.cos(i / 30) * 4);
      loom.editor.markDirty();
      if (performance.now() - t0 < seconds * 1000) requestAnimationFrame(step); else done();
    };
    requestAnimationFrame(step);
  });
  const elapsed = (performance.now() - t0) / 1000;
  const { renderFrame } = await import('/js/canvas/render.js');
  const costs = [];
  for (let k = 0; k < 30; k++) {
    const s = performance.now();
    renderFrame(c.ctx, loom.editor, c.width, c.height, c.overlay);
    costs.push(performance.now() - s);
  }
  costs.sort((a, b) => a - b);
  return { fps: (c.frames - start) / elapsed, drawMs: costs[15], scale: v.scale };
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--subgraphs", type=int, default=10, help="how many of the chains start in a subgraph")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as base:
        url = start_server(Path(base))
        workflow = json.dumps(big_workflow(args.nodes, args.subgraphs))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.add_init_script(f"localStorage.setItem('loom.workflow', {json.dumps(workflow)})")
            page.goto(url + "/")
            page.wait_for_function("window.loom && window.loom.ready")
            assert page.evaluate("() => loom.graph.nodes.size") == args.nodes
            instances = page.evaluate(
                "() => [...loom.graph.nodes.values()].filter((n) => loom.editor.isInstance(n)).length"
            )
            assert instances == args.subgraphs, f"{instances} subgraph instances drawn, {args.subgraphs} asked for"
            print(
                f"{args.nodes} nodes ({instances} subgraph instances), {page.evaluate('() => loom.graph.links.size')} "
                "links, 1280x800, software canvas"
            )
            print(f"{'scenario':<26}{'fps':>8}{'draw ms (median)':>20}{'scale':>8}")
            for label, mode in (("pan at 100%", "pan"), ("zoom in/out", "zoom"), ("whole graph, panning", "fit")):
                result = page.evaluate(ANIMATE, [mode, args.seconds])
                print(f"{label:<26}{result['fps']:>8.1f}{result['drawMs']:>20.2f}{result['scale']:>8.2f}")
            browser.close()


if __name__ == "__main__":
    main()
