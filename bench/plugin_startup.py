"""Start-up cost of node packs: importing 500 plugin nodes and answering ``/object_info`` with them.

Run from the repository root: ``.venv/bin/python bench/plugin_startup.py``. Issue 21's goal: start-up with
500 plugin nodes at most 1.5 s more than without.

Each measurement runs in a fresh interpreter (``python -c``), so module caches of one run do not help the
next: the built-in registry alone, then the same plus 50 generated ComfyUI-style packs of 10 V1 nodes each
(the shape of real packs: a package, a sub-module per few nodes, ``import folder_paths`` and ``from nodes
import MAX_RESOLUTION`` at the top, ``NODE_CLASS_MAPPINGS`` and display names), loaded through the server's
own path (``server.plugins.load_plugin_folders``, ComfyUI's modules installed). Reported: the time to a
ready registry, and the time of one full ``object_info()`` (what ``GET /object_info`` serialises), as the
median of ``--repeats`` runs, and the difference the packs make.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKS, NODES_PER_PACK = 50, 10

_NODE = """
class {name}:
    @classmethod
    def INPUT_TYPES(cls):
        return {{
            "required": {{
                "image": ("IMAGE",),
                "width": ("INT", {{"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}}),
                "mode": (["fast", "best", "{name}"],),
                "strength": ("FLOAT", {{"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}}),
            }},
            "optional": {{"mask": ("MASK",), "model_name": (folder_paths.get_filename_list("checkpoints"),)}},
        }}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "run"
    CATEGORY = "bench/{pack}"

    def run(self, image, width, mode, strength, mask=None, model_name=None):
        return (image, mask)
"""

_MEASURE = """
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, {root!r})
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes
from nodes.runtime import RuntimeOptions, build_runtime
from server.plugins import load_plugin_folders
registry = NodeRegistry()
register_builtin_nodes(registry)
runtime = build_runtime(RuntimeOptions({base!r}))
reports = load_plugin_folders(registry, {folders!r}, runtime)
ready = time.perf_counter()
from graph.services import services_context
with services_context(runtime):
    info = registry.object_info()
done = time.perf_counter()
print(json.dumps({{"ready": ready - started, "object_info": done - ready, "types": len(info),
                  "failed": [r.name for r in reports if r.status.value == "failed"]}}))
"""


def write_packs(folder: Path) -> None:
    for pack in range(PACKS):
        package = folder / f"bench_pack_{pack:02d}"
        (package / "nodes").mkdir(parents=True)
        names = [f"BenchPack{pack:02d}Node{index}" for index in range(NODES_PER_PACK)]
        header = "import folder_paths\nfrom nodes import MAX_RESOLUTION\n"
        for half, chunk in enumerate((names[:5], names[5:])):
            body = "".join(_NODE.format(name=name, pack=package.name) for name in chunk)
            (package / "nodes" / f"part{half}.py").write_text(header + body)
        (package / "nodes" / "__init__.py").write_text("")
        mappings = ", ".join(f'"{name}": {name}' for name in names)
        titles = ", ".join(f'"{name}": "{name} (bench)"' for name in names)
        (package / "__init__.py").write_text(
            textwrap.dedent(f"""
            from .nodes.part0 import {", ".join(names[:5])}
            from .nodes.part1 import {", ".join(names[5:])}
            NODE_CLASS_MAPPINGS = {{{mappings}}}
            NODE_DISPLAY_NAME_MAPPINGS = {{{titles}}}
            """)
        )


def measure(base: Path, folders: list[str]) -> dict[str, float]:
    code = _MEASURE.format(root=str(ROOT), base=str(base), folders=folders)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as tmp:
        base, packs = Path(tmp) / "base", Path(tmp) / "packs"
        base.mkdir()
        write_packs(packs)
        rows = {}
        for label, folders in (("built-ins only", []), (f"+ {PACKS * NODES_PER_PACK} plugin nodes", [str(packs)])):
            runs = [measure(base, folders) for _ in range(repeats)]
            failed = {name for run in runs for name in run["failed"]}
            if failed:
                raise SystemExit(f"packs failed to load: {sorted(failed)}")
            keys = ("ready", "object_info", "types")
            rows[label] = {key: statistics.median(run[key] for run in runs) for key in keys}
    print("| registry | node types | ready (median) | object_info() (median) |")
    print("|---|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | {row['types']:.0f} | {row['ready']:.3f} s | {row['object_info']:.3f} s |")
    without, with_packs = rows.values()
    extra = (with_packs["ready"] + with_packs["object_info"]) - (without["ready"] + without["object_info"])
    print(f"\nstart-up and object_info cost of the packs: +{extra:.3f} s (goal: at most +1.5 s)")


if __name__ == "__main__":
    main()
