"""``loom run``: execute one workflow file without a server and report what happened.

The same pipeline as ``POST /prompt`` (load → convert the editor form → validate → execute), minus
the queue: the exit code tells scripts the outcome (0 success, 1 the run failed, 2 the file is
invalid and nothing ran).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from graph import events
from graph.errors import WorkflowError
from graph.executor import Executor
from graph.formats.api import load_document, prompt_from_document
from graph.plugins import PluginStatus
from graph.registry import NodeRegistry
from graph.services import services_context
from graph.validation import ValidationResult, validate_prompt
from nodes import register_builtin_nodes
from nodes.compute import ComputeSettingsError
from nodes.extra_model_paths import ExtraModelPathsError
from nodes.runtime import Runtime, RuntimeOptions, build_runtime
from server.plugins import load_plugin_folders

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


def format_validation_errors(result: ValidationResult) -> list[str]:
    """The top-level error, then one line per problem: node id, class, input and reason.

    Every problem is listed, unknown node types and the known nodes' errors alike, so one run of
    ``loom run`` shows everything to fix. The top-level details are printed only when no node has
    its own entry: otherwise they repeat the per-node lines.
    """
    lines = []
    if result.error:
        message, details = result.error.get("message", "invalid prompt"), result.error.get("details", "")
        lines.append(f"{message}: {details}" if details and not result.node_errors else message)
    for node_id, entry in result.node_errors.items():
        class_type = entry.get("class_type") or "?"
        for error in entry.get("errors", []):
            input_name = (error.get("extra_info") or {}).get("input_name")
            where = f"node {node_id} ({class_type})" + (f", input '{input_name}'" if input_name else "")
            lines.append(f"{where}: {error.get('message')}: {error.get('details')}")
    return lines


class _ProgressPrinter:
    """Turns executor events into tqdm bars: one over the nodes, one per node's own steps."""

    def __init__(self, total_nodes: int, stream: TextIO, enabled: bool) -> None:
        self.enabled = enabled
        self.stream = stream
        self.nodes = tqdm(total=total_nodes, desc="nodes", unit="node", file=stream, disable=not enabled)
        self.steps: tqdm | None = None
        self.running: str | None = None
        self.prompt: dict[str, Any] = {}

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == events.EXECUTION_CACHED:
            self.nodes.update(len(data.get("nodes", [])))
        elif event == events.EXECUTING and data.get("node") is not None:
            self._finish_node()
            self.running = data["node"]
            self.nodes.set_postfix_str(f"{self.running} {self.prompt.get(self.running, {}).get('class_type', '')}")
        elif event == events.PROGRESS:
            if self.steps is None:
                self.steps = tqdm(
                    total=data["max"],
                    desc=f"  node {data['node']}",
                    unit="step",
                    file=self.stream,
                    leave=False,
                    disable=not self.enabled,
                )
            self.steps.n = data["value"]
            self.steps.refresh()
        elif event == events.EXECUTION_SUCCESS:
            self._finish_node()

    def _finish_node(self) -> None:
        self._close_steps()
        if self.running is not None:
            self.nodes.update(1)
            self.running = None

    def _close_steps(self) -> None:
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def close(self) -> None:
        self._close_steps()
        self.nodes.close()


def run_workflow_file(
    path: str,
    options: RuntimeOptions,
    *,
    show_progress: bool = True,
    plugin_folders: Sequence[Path] = (),
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the workflow in ``path``; prints outputs to ``out`` and problems to ``err``.

    ``options`` are the server's own (folders, extra model paths, device, dtype, previews), built
    into a runtime the same way; ``out``/``err`` default to the standard streams at call time. The
    nodes are the built-ins plus the plugins in ``plugin_folders`` (``loom run`` passes the
    repository's ``custom_nodes/``), so a workflow that uses a plugin runs here as in the server; a
    plugin that cannot be imported is reported on ``err`` and only its nodes are missing.
    """
    out, err = out or sys.stdout, err or sys.stderr
    try:
        runtime = build_runtime(options)
    except (ComputeSettingsError, ExtraModelPathsError, ValueError) as error:
        print(f"loom run: {error}", file=err)
        return EXIT_INVALID
    with services_context(runtime):
        return _run(path, runtime, show_progress, plugin_folders, out, err)


def _run(
    path: str, runtime: Runtime, show_progress: bool, plugin_folders: Sequence[Path], out: TextIO, err: TextIO
) -> int:
    directory = runtime.folders.directory
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    for report in load_plugin_folders(registry, plugin_folders, runtime):
        if report.status is PluginStatus.FAILED:
            print(f"warning: plugin {report.name} could not be imported: {report.error}", file=err)
    try:
        document = load_document(path)
        conversion = prompt_from_document(document, registry)
    except (OSError, WorkflowError) as error:
        print(f"loom run: cannot read {path}: {error}", file=err)
        return EXIT_INVALID
    for warning in conversion.warnings:
        print(f"warning: {warning}", file=err)
    result = validate_prompt(conversion.prompt, registry)
    if not result.ok or result.node_errors:
        print(f"loom run: {path} is not a valid workflow:", file=err)
        for line in format_validation_errors(result):
            print(f"  {line}", file=err)
        return EXIT_INVALID

    executor = Executor(registry)
    needed = executor.keys_for(result.prompt, result.outputs)
    printer = _ProgressPrinter(len(needed), err, show_progress)
    printer.prompt = result.prompt
    extra_pnginfo = {"workflow": document.workflow} if document.workflow is not None else {}
    try:
        record = executor.execute(
            result.prompt,
            result.outputs,
            prompt_id=str(uuid.uuid4()),
            extra_data={"extra_pnginfo": extra_pnginfo},
            listener=printer,
        )
    finally:
        printer.close()
    if record.error is not None:
        failure = record.error
        print(
            f"loom run: node {failure.get('node_id')} ({failure.get('node_type')}) failed: "
            f"{failure.get('exception_type')}: {failure.get('exception_message')}",
            file=err,
        )
        return EXIT_FAILED
    for line in _output_lines(record.outputs, directory):
        print(line, file=out)
    return EXIT_OK


def _output_lines(outputs: dict[str, dict[str, list[Any]]], directory: Any) -> list[str]:
    lines = []
    for node_id, ui in outputs.items():
        for image in ui.get("images", []):
            folder = Path(directory(image.get("type", "output")))
            lines.append(f"node {node_id}: {folder / image.get('subfolder', '') / image['filename']}")
        for text in ui.get("text", []):
            lines.append(f"node {node_id}: {text}")
    return lines
