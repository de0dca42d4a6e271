"""The API ("prompt") format: link and value conventions, and loading whatever file a user has.

A prompt is ``{node_id: {"class_type", "inputs", "_meta"?}}`` (docs/compatibility.md §2.1). Users hand Loom three
kinds of file: an API prompt, an editor workflow, or a PNG the engine saved, which carries both as
text chunks. ``load_document`` reads any of them; ``prompt_from_document`` gives the runnable prompt,
preferring the API prompt a PNG carries because that is exactly what ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graph.errors import WorkflowFormatError
from graph.formats.editor import EditorConversion, editor_to_api
from graph.formats.png import PNG_SIGNATURE, read_text_chunks
from graph.formats.strict_json import JsonDocumentError, parse_json
from graph.registry import NodeRegistry

#: The wrapper the editor puts around list-valued widgets so they are not mistaken for links.
VALUE_KEY = "__value__"


class LinkShapeError(ValueError):
    """A list input value that cannot be read as ``[source_id, output_slot]``; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_link(value: list[Any]) -> list[Any]:
    """``value`` as a link in the one form the engine runs on: ``[str, int]``.

    Clients write output slots as JSON numbers and some send ``0.0`` (JavaScript, scripts that do
    arithmetic on slots); an integral float names the same slot, so it becomes an ``int`` here.
    A fractional number or a boolean names no slot (``True`` would silently be slot 1), so it is an
    error, as is any list that is not a pair of a node id and a number (docs/compatibility.md §2.1).
    """
    if len(value) != 2 or not isinstance(value[0], str):
        raise LinkShapeError("a link must be [node_id, output_slot]")
    slot = value[1]
    if isinstance(slot, bool) or not isinstance(slot, (int, float)):
        raise LinkShapeError(f"the output slot {slot!r} is not a number")
    if isinstance(slot, float) and not slot.is_integer():
        raise LinkShapeError(f"the output slot {slot!r} is not a whole number")
    return [value[0], int(slot)]


def is_link(value: Any) -> bool:
    """Whether an input value of a *validated* prompt is a link ``[source_id, output_slot]``.

    Validation rewrites every link with ``normalise_link``, so in the prompts the executor and the
    cache keys see a link is exactly a two-item list of ``str`` and ``int``; anything else is a
    constant. Exact types keep the test cheap (it runs for every input of every prompt) and keep
    ``True`` from passing for ``1``.
    """
    return type(value) is list and len(value) == 2 and type(value[0]) is str and type(value[1]) is int


def unwrap_value(value: Any) -> Any:
    """``{"__value__": [...]}`` → ``[...]``; anything else unchanged (a curve dict keeps its ``__type__``)."""
    if isinstance(value, dict) and set(value) == {VALUE_KEY}:
        return value[VALUE_KEY]
    return value


def wrap_value(value: Any) -> Any:
    """A list constant as ``{"__value__": [...]}``, so that no later reader (the executor, the cache key,
    a PNG's ``prompt`` chunk read back) can take ``["a", 1]`` for a link; anything else unchanged."""
    return {VALUE_KEY: value} if isinstance(value, list) else value


def detect_format(document: Any) -> Literal["api", "editor"]:
    """Tell an editor workflow (``nodes`` list) from an API prompt (objects with ``class_type``)."""
    if isinstance(document, Mapping):
        if isinstance(document.get("nodes"), list):
            return "editor"
        if document and all(isinstance(node, Mapping) and "class_type" in node for node in document.values()):
            return "api"
    raise WorkflowFormatError(
        "", "neither an editor workflow (no 'nodes' list) nor an API prompt (nodes need 'class_type')"
    )


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
        payload = parse_json(data)
    except JsonDocumentError as error:
        raise WorkflowFormatError(str(path), f"not JSON and not a PNG: {error.reason}") from error
    return parse_document(payload, str(path))


def _json_chunk(chunks: dict[str, str], key: str, path: Path) -> dict[str, Any] | None:
    if key not in chunks:
        return None
    try:
        value = parse_json(chunks[key])
    except JsonDocumentError as error:
        raise WorkflowFormatError(f"{path}:{key}", f"text chunk is not JSON: {error.reason}") from error
    if not isinstance(value, dict):
        raise WorkflowFormatError(f"{path}:{key}", f"text chunk holds a {type(value).__name__}, not an object")
    return value


def prompt_from_document(document: WorkflowDocument, registry: NodeRegistry) -> EditorConversion:
    """The runnable API prompt: the one the document carries, else its workflow converted."""
    if document.prompt is not None:
        return EditorConversion(prompt=document.prompt, warnings=[])
    assert document.workflow is not None
    return editor_to_api(document.workflow, registry)
