"""ComfyUI's ``comfy_execution.graph_utils`` for node packs: ``GraphBuilder`` for node expansion.

A node expands by returning ``{"result": (...), "expand": builder.finalize()}``: Loom's executor adds
those nodes to the running prompt, runs them (cached like any other node) and gives the expanding
node's outputs the values its ``result`` links to (``graph.executor``, docs/plugins.md).

Supported: ``GraphBuilder(prefix=None)`` with ``node(class_type, id=None, **inputs)`` (returns the
existing node for an id already used), ``lookup_node``, ``remove_node``, ``replace_node_output``,
``finalize()`` (links with an int index, the only kind Loom's executor follows); ``Node.out(index)``,
``set_input`` (None removes the input), ``get_input``, ``set_override_display_id``;
``is_link``; ``ExecutionBlocker`` (``graph.spec``'s). Node ids are ``<prefix><id>``, and the default
prefix is ``"<running node id>.<call>.<graph>."`` as ComfyUI's executor sets it, so two builders,
two expansions of one node or nested expansions never reuse an id. Loom's executor sets no prefix
itself; the running node's id comes from ``graph.progress.current_node_id()``.

Not supported: ``add_graph_prefix`` and ComfyUI's other executor helpers.
"""

from __future__ import annotations

import contextvars
from typing import Any

from graph.progress import current_node_id
from graph.spec import ExecutionBlocker

__all__ = ["ExecutionBlocker", "GraphBuilder", "Node", "is_link"]


def is_link(obj: Any) -> bool:
    """Whether ``obj`` is a link ``[node id, output index]`` (ComfyUI also accepts a float index)."""
    return (
        isinstance(obj, list)
        and len(obj) == 2
        and isinstance(obj[0], str)
        and isinstance(obj[1], (int, float))
        and not isinstance(obj[1], bool)
    )


class Node:
    """One node of a subgraph being built: an id, a class type and its inputs (constants or links)."""

    def __init__(self, id: str, class_type: str, inputs: dict[str, Any]) -> None:
        self.id = id
        self.class_type = class_type
        self.inputs = inputs
        self.override_display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        return [self.id, int(index)]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str | None) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        inputs = {key: [value[0], int(value[1])] if is_link(value) else value for key, value in self.inputs.items()}
        serialized: dict[str, Any] = {"class_type": self.class_type, "inputs": inputs}
        if self.override_display_id is not None:
            serialized["override_display_id"] = self.override_display_id
        return serialized


class GraphBuilder:
    """Builds the API-format subgraph a node expands into (module doc)."""

    #: ``(root, call index, next graph index)`` of the default prefix, per thread and task.
    _default_prefix: contextvars.ContextVar[tuple[str, int, int]] = contextvars.ContextVar(
        "comfy_compat_graph_builder_prefix", default=("", 0, 0)
    )

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = GraphBuilder.alloc_prefix() if prefix is None else prefix
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        cls._default_prefix.set((prefix_root, call_index, graph_index))

    @classmethod
    def alloc_prefix(
        cls, root: str | None = None, call_index: int | None = None, graph_index: int | None = None
    ) -> str:
        default_root, default_call, default_graph = cls._default_prefix.get()
        running = current_node_id()
        if running is not None and running != default_root:
            default_root, default_call, default_graph = running, 0, 0
        result = (
            f"{default_root if root is None else root}."
            f"{default_call if call_index is None else call_index}."
            f"{default_graph if graph_index is None else graph_index}."
        )
        cls._default_prefix.set((default_root, default_call, default_graph + 1))
        return result

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> Node:
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        full_id = self.prefix + id
        existing = self.nodes.get(full_id)
        if existing is not None:
            return existing
        created = self.nodes[full_id] = Node(full_id, class_type, inputs)
        return created

    def lookup_node(self, id: str) -> Node | None:
        return self.nodes.get(self.prefix + id)

    def remove_node(self, id: str) -> None:
        del self.nodes[self.prefix + id]

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Point every input linked to output ``index`` of ``node_id`` at ``new_value`` (None unlinks them)."""
        source = self.prefix + node_id
        for built in self.nodes.values():
            for key, value in list(built.inputs.items()):
                if is_link(value) and value[0] == source and value[1] == index:
                    built.set_input(key, new_value)

    def finalize(self) -> dict[str, dict[str, Any]]:
        """The subgraph in API format: ``{id: {"class_type", "inputs", ["override_display_id"]}}``."""
        return {node_id: built.serialize() for node_id, built in self.nodes.items()}
