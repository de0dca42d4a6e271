"""Small node types the server tests run: waiting, failing, reporting previews, recording text.

Each is a real declared node (``graph.declare``), so the tests exercise the same registry,
validation and executor paths real nodes take; they just do no pixel work.
"""

from __future__ import annotations

import time

from PIL import Image

from graph.declare import Float, Int, NodeOutput, Output, Socket, String, node
from graph.progress import report_progress
from graph.registry import NodeRegistry
from nodes import register_builtin_nodes


@node(category="test", outputs=[Output("STRING")])
def Wait(seconds=Float(0.0, min=0.0, max=60.0), text=String("")):
    """Sleep in 20 ms slices, reporting progress each time (which is where interrupts land)."""
    slices = max(1, int(seconds / 0.02))
    for index in range(slices):
        time.sleep(seconds / slices)
        report_progress(index + 1, slices)
    return text


@node(category="test", outputs=[Output("STRING")])
def Fail(message=String("boom")):
    raise RuntimeError(message)


@node(category="test", outputs=[Output("STRING")])
def Previewing(steps=Int(2, min=1, max=10), text=String("")):
    """Reports one JPEG preview per step, as a sampler does."""
    for index in range(steps):
        report_progress(index + 1, steps, ("JPEG", Image.new("RGB", (32, 16), (200, 10, 10)), 64))
    return text


@node(category="test", output_node=True)
def Record(value=Socket("*")):
    return NodeOutput(ui={"text": [str(value)]})


STANDIN_NODES = (Wait, Fail, Previewing, Record)


def standin_registry() -> NodeRegistry:
    """The built-in nodes plus the stand-ins above."""
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    for function in STANDIN_NODES:
        registry.register(function.__loom_spec__)
    return registry
