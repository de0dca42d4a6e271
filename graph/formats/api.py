"""The API ("prompt") format: link and value conventions, and loading whatever file a user has.

A prompt is ``{node_id: {"class_type", "inputs", "_meta"?}}`` (COMPAT 2.1). Users hand Loom three
kinds of file: an API prompt, an editor workflow, or a PNG the engine saved, which carries both as
text chunks. ``load_document`` reads any of them; ``prompt_from_document`` gives the runnable prompt,
preferring the API prompt a PNG carries because that is exactly what ran.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graph.errors import WorkflowFormatError
from graph.formats.editor import EditorConversion, editor_to_api
from graph.formats.png import PNG_SIGNATURE, read_text_chunks
from graph.registry import NodeRegistry

#: The wrapper the editor puts around list-valued widgets so they are not mistaken for links.
VALUE_KEY = "__value__"


def is_link(value: Any) -> bool:
    """Whether an input value is a link ``[source_id, output_slot]`` rather than a constant."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def unwrap_value(value: Any) -> Any:
    """``{"__value__": [...]}`` → ``[...]``; anything else unchanged (a curve dict keeps its ``__type__``)."""
    if isinstance(value, dict) and set(value) == {VALUE_KEY}:
        return value[VALUE_KEY]
    return value


def detect_format(document: Any) -> Literal["api", "editor"]:
    """Tell an editor workflow (``nodes`` list) from an API prompt (objects with ``class_type``)."""
    if isinstance(document, Mapping):
        if isinstance(document.get("nodes"), list):
            return "editor"
        if document and all(isinstance(node, Mapping) and "class_type" in node for node in document.values()):
            return "api"
    raise WorkflowFormatError("", "neither an editor workflow (no 'nodes' list) nor an API prompt (nodes need 'class_type')")


@dataclass(frozen=True)
class WorkflowDocument:
    """What a file holds: an API prompt, an editor workflow, or both (a saved PNG)."""

    source: str
    prompt: dict[str, Any] | None = None
    workflow: dict[str, Any] | None = None


def parse_document(payload: Any, source: str = "") -> WorkflowDocument:
    """Classify decoded JSON: an API prompt, an editor workflow, or a ``POST /prompt`` body."""
    if isinstance(payload, Mapping) and isinstance(payload.get("prompt"), Mapping) and "nodes" not in payload:
        extra = payload.get("extra_data") or {}
        workflow = (extra.get("extra_pnginfo") or {}).get("workflow") if isinstance(extra, Mapping) else None
        return WorkflowDocument(source, prompt=dict(payload["prompt"]), workflow=workflow)
    if detect_format(payload) == "editor":
        return WorkflowDocument(source, workflow=dict(payload))
    return WorkflowDocument(source, prompt=dict(payload))


def load_document(path: str | Path) -> WorkflowDocument:
    """Read a ``.json`` file (either format) or a PNG with ``prompt``/``workflow`` text chunks."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(PNG_SIGNATURE):
        chunks = read_text_chunks(data)
        prompt = _json_chunk(chunks, "prompt", path)
        workflow = _json_chunk(chunks, "workflow", path)
        if prompt is None and workflow is None:
            raise WorkflowFormatError(str(path), "the PNG carries no 'prompt' or 'workflow' text chunk")
        return WorkflowDocument(str(path), prompt=prompt, workflow=workflow)
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WorkflowFormatError(str(path), f"not JSON and not a PNG: {error}") from error
    return parse_document(payload, str(path))


def _json_chunk(chunks: dict[str, str], key: str, path: Path) -> dict[str, Any] | None:
    if key not in chunks:
        return None
    try:
        value = json.loads(chunks[key])
    except json.JSONDecodeError as error:
        raise WorkflowFormatError(f"{path}:{key}", f"text chunk is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise WorkflowFormatError(f"{path}:{key}", f"text chunk holds a {type(value).__name__}, not an object")
    return value


def prompt_from_document(document: WorkflowDocument, registry: NodeRegistry) -> EditorConversion:
    """The runnable API prompt: the one the document carries, else its workflow converted."""
    if document.prompt is not None:
        return EditorConversion(prompt=document.prompt, warnings=[])
    assert document.workflow is not None
    return editor_to_api(document.workflow, registry)
