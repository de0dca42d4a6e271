"""The model files a workflow's loader nodes name, found from the node specs alone.

A loader's file is a combo input whose spec declares the models folder its choices come from: the option
``model_folder`` (``Combo(list_checkpoints, model_folder="checkpoints")``), served in ``/object_info``
like any input option. Which node types are loaders is read from the registry, not kept in a list here,
so a plugin whose combo declares ``model_folder`` is covered as well. ComfyUI's ``models`` metadata
(``server.model_downloads.model_sources``) says where a file comes from; these inputs say which files a
workflow really loads, which is all most workflows (Loom's examples among them) record.

Both formats are read: an editor workflow's nodes, those inside ``definitions.subgraphs`` included, whose
``widgets_values`` are matched to inputs by the editor conversion's own rules (``graph.formats.editor``),
and an API prompt's ``inputs``. Names compare with either path separator, as validation compares combo
choices: ComfyUI on Windows writes ``sd15\\model.safetensors`` for ``sd15/model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from graph.errors import WorkflowError
from graph.formats.editor import VIRTUAL_NODE_TYPES, editor_to_api
from graph.registry import NodeRegistry
from graph.spec import NodeSpec
from graph.types import COMBO
from nodes.folders import UnsafePathError
from nodes.model_folders import ModelPaths, canonical_key
from server.model_downloads import workflow_graphs, workflow_nodes

__all__ = [
    "MODEL_FOLDER_OPTION",
    "LoaderInputs",
    "NamedModelFile",
    "file_name_key",
    "model_file_inputs",
    "model_file_present",
    "named_model_files",
    "value_nodes",
]

#: The input option that declares a combo's choices to be the files of that models folder.
MODEL_FOLDER_OPTION = "model_folder"
#: What an editor node keeps of its values; the rest (position, links, properties) names no file.
_EDITOR_VALUE_KEYS = ("id", "type", "widgets_values", "widgets_values_named")


@dataclass(frozen=True)
class NamedModelFile:
    """A model file a loader input names: its folder key (as the spec declares it) and the name as written."""

    directory: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        """What makes two mentions the same file: the canonical folder and the name with ``/`` separators."""
        return canonical_key(self.directory), file_name_key(self.name)


def file_name_key(name: str) -> str:
    return name.replace("\\", "/")


def model_file_inputs(spec: NodeSpec) -> dict[str, str]:
    """Input name -> models folder key, for the inputs of ``spec`` that choose a model file."""
    try:
        inputs = spec.inputs()
    except Exception:  # a plugin's INPUT_TYPES may raise anything; its node then names no file we can tell
        return {}
    folders = {}
    for item in inputs:
        folder = item.options.get(MODEL_FOLDER_OPTION)
        if item.type == COMBO and item.section != "hidden" and isinstance(folder, str) and folder:
            folders[item.name] = folder
    return folders


class LoaderInputs:
    """``model_file_inputs`` of each node type of one registry, asked once per type (a spec's inputs list
    the model folders each time they are read)."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry
        self._known: dict[str, dict[str, str]] = {}

    def of(self, class_type: str) -> dict[str, str]:
        if class_type not in self._known:
            spec = self.registry.get(class_type)
            self._known[class_type] = model_file_inputs(spec) if spec is not None else {}
        return self._known[class_type]


def value_nodes(workflow: object) -> list[dict[str, Any]]:
    """The nodes of an editor workflow (subgraph definitions' too) or an API prompt, trimmed to their type and
    values: all ``named_model_files`` reads, small enough to keep for every template file."""
    if not isinstance(workflow, Mapping):
        return []
    if isinstance(workflow.get("nodes"), list):
        return [
            {key: node[key] for key in _EDITOR_VALUE_KEYS if key in node}
            for graph in workflow_graphs(workflow)
            for node in workflow_nodes(graph)
            if isinstance(node.get("type"), str) and node["type"] not in VIRTUAL_NODE_TYPES
        ]
    return [
        {"class_type": node["class_type"], "inputs": node.get("inputs")}
        for node in workflow.values()
        if isinstance(node, Mapping) and isinstance(node.get("class_type"), str)
    ]


def _editor_values(node: Mapping[str, Any], registry: NodeRegistry) -> Mapping[str, Any]:
    """The node's input values by name, as the editor conversion reads its ``widgets_values``.

    The node is converted alone and without its links, so a widget turned into a socket still gives the
    value it shows, and muted or bypassed nodes count too: the file is needed once the node runs again.
    """
    try:
        prompt = editor_to_api({"nodes": [{**node, "id": 1}], "links": []}, registry).prompt
    except WorkflowError:
        return {}
    return next((entry["inputs"] for entry in prompt.values()), {})


def named_model_files(nodes: Iterable[Mapping[str, Any]], loaders: LoaderInputs) -> list[NamedModelFile]:
    """The files the loader inputs of ``nodes`` (from ``value_nodes``) name, each once, in file order."""
    found: dict[tuple[str, str], NamedModelFile] = {}
    for node in nodes:
        editor = "type" in node
        folders = loaders.of(str(node["type"] if editor else node.get("class_type")))
        if not folders:
            continue
        values = _editor_values(node, loaders.registry) if editor else node.get("inputs")
        for name, folder in folders.items():
            value = values.get(name) if isinstance(values, Mapping) else None
            if isinstance(value, str) and value.strip():
                named = NamedModelFile(folder, value)
                found.setdefault(named.key, named)
    return list(found.values())


def model_file_present(model_paths: ModelPaths, directory: str, name: str) -> bool:
    """Whether ``name`` is a file of folder ``directory``, whichever separator its subfolders are written with."""
    try:
        listed = model_paths.names(directory)
    except (KeyError, UnsafePathError):  # a folder key this server does not know
        return False
    wanted = file_name_key(name)
    return any(file_name_key(listed_name) == wanted for listed_name in listed)
