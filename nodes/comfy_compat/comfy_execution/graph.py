"""ComfyUI's ``comfy_execution.graph`` for node packs: ``ExecutionBlocker`` only.

It is Loom's own class (``graph.spec.ExecutionBlocker``): returned as an output, it stops every node
that consumes it; with a message the prompt fails with "Execution Blocked: <message>", with None the
consumers are skipped silently. ``DynamicPrompt`` and the rest of ComfyUI's execution graph are the
executor's internals, which Loom does not expose.
"""

from __future__ import annotations

from graph.spec import ExecutionBlocker

__all__ = ["ExecutionBlocker"]
