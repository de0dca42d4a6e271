"""Convert an editor workflow (saved graph, version 0.4 or 1) into the API prompt the engine runs.

The official frontend does this in the browser (``graphToPrompt``, docs/compatibility.md §C.5.1); a server that
runs saved workflows has to do it itself. The rules, with the format quirks they exist for:

- Virtual nodes (``Reroute``, ``PrimitiveNode``, notes) never run. A link through reroutes is
  followed to its real source; a ``PrimitiveNode`` gives its widget value as a constant.
- Muted nodes (mode 2) are left out and inputs linked to them are dropped. Bypassed nodes (mode 4)
  are left out too, but their consumers are rewired to the bypassed node's input of the same type.
- ``widgets_values`` is positional over the node type's widget inputs (required, then optional), and
  a seed-like widget is followed by the editor-only "control after generate" value, which is skipped.
  An ``image_upload`` widget adds the upload button's value ("image") after the required widgets,
  also skipped. A widget turned into a socket still owns its slot. ``widgets_values_named`` (or a
  dict) is by name. Which inputs are widgets is the node spec's business, plus any socket types the
  client says it draws as widgets (editor extensions, docs/plugins.md), since only the client knows.
- List values are wrapped as ``{"__value__": [...]}`` so the backend does not read them as links.
- A node whose ``type`` is the id of a subgraph definition is flattened: its inner nodes get ids
  ``"<instance id>:<inner id>"`` (nested: ``"57:3:8"``), inner links from the subgraph's input node
  (id -10) continue outside through the instance's links, and links into its output node (id -20)
  are what the instance's outputs resolve to. An unlinked widget-type subgraph input takes its
  value from the instance's ``widgets_values`` (one slot per subgraph input that feeds a widget,
  in input order), or, when the instance stores none (promoted "proxy" widgets), from the inner
  node's own widget.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graph.errors import NodeInputsUnavailableError, UnknownNode, UnknownNodeTypeError, WorkflowFormatError
from graph.registry import NodeRegistry
from graph.spec import InputSpec, NodeSpec
from graph.types import COMBO, INT, types_compatible

VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
MODE_NEVER = 2
MODE_BYPASS = 4
#: What the editor stores after a widget with ``control_after_generate``; never sent to the backend.
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
#: What the upload button of an ``image_upload`` widget stores; never sent to the backend.
UPLOAD_VALUE = "image"
SUBGRAPH_INPUT_NODE = -10
SUBGRAPH_OUTPUT_NODE = -20


@dataclass
class EditorConversion:
    """The API prompt, plus what was lossy or suspicious in the file (for logs, never fatal)."""

    prompt: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def editor_to_api(
    workflow: Mapping[str, Any], registry: NodeRegistry, widget_types: Collection[str] = ()
) -> EditorConversion:
    """Convert a saved editor workflow; raises ``UnknownNodeTypeError`` naming every unknown real node.

    ``widget_types`` are socket types the client draws as widgets, whose values sit in ``widgets_values``.
    """
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowFormatError("nodes", "an editor workflow needs a 'nodes' list")
    return _Converter(workflow, registry, frozenset(widget_types)).convert()


@dataclass(frozen=True)
class _Link:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str


class _Constant:
    """A link that resolves to a value (a PrimitiveNode, or a subgraph input's widget)."""

    def __init__(self, value: Any) -> None:
        self.value = value


#: The link leads nowhere that runs (a muted node, a dangling link): the input is left out.
_DROPPED = object()
#: An unlinked subgraph input with no stored value: the inner node keeps its own widget value.
_UNSET = object()


@dataclass
class _Scope:
    """One graph level: the workflow itself, or one instance of a subgraph definition."""

    path: str
    prefix: str
    nodes: dict[str, Mapping[str, Any]]
    links: dict[str, _Link]
    parent: _Scope | None = None
    instance: Mapping[str, Any] | None = None
    definition: Mapping[str, Any] | None = None
    #: Subgraph input name → the value the instance's widget holds for it.
    outer_values: dict[str, Any] = field(default_factory=dict)
    #: Ids of the definitions being expanded around this scope, to refuse a subgraph containing itself.
    lineage: tuple[str, ...] = ()

    def api_id(self, node_id: Any) -> str:
        return f"{self.prefix}{node_id}"

    @property
    def input_node_id(self) -> str:
        return str(((self.definition or {}).get("inputNode") or {}).get("id", SUBGRAPH_INPUT_NODE))

    @property
    def output_node_id(self) -> str:
        return str(((self.definition or {}).get("outputNode") or {}).get("id", SUBGRAPH_OUTPUT_NODE))


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], registry: NodeRegistry, widget_types: frozenset[str]) -> None:
        self.registry = registry
        self.widget_types = widget_types
        self.prompt: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.unknown: list[UnknownNode] = []
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.definitions: dict[str, tuple[int, Mapping[str, Any]]] = {
            str(definition.get("id")): (index, definition) for index, definition in enumerate(subgraphs)
        }
        self.root = _Scope(path="", prefix="", nodes=_index_nodes(workflow, ""), links=_index_links(workflow, ""))
        self.children: dict[str, _Scope] = {}

    def convert(self) -> EditorConversion:
        self._emit(self.root)
        if self.unknown:
            raise UnknownNodeTypeError(self.unknown)
        return EditorConversion(prompt=self.prompt, warnings=self.warnings)

    # -- walking the graph ---------------------------------------------------------------------

    def _emit(self, scope: _Scope) -> None:
        for node_id, node in scope.nodes.items():
            node_type = node.get("type")
            if node.get("mode") in (MODE_NEVER, MODE_BYPASS) or node_type in VIRTUAL_NODE_TYPES:
                continue
            if str(node_type) in self.definitions:
                self._emit(self._child(scope, node))
                continue
            spec = self.registry.get(str(node_type))
            if spec is None:
                self.unknown.append(UnknownNode(scope.api_id(node_id), str(node_type)))
                continue
            self.prompt[scope.api_id(node_id)] = self._convert_node(scope, node, spec)

    def _child(self, scope: _Scope, instance: Mapping[str, Any]) -> _Scope:
        key = scope.api_id(instance.get("id"))
        if key in self.children:
            return self.children[key]
        definition_id = str(instance.get("type"))
        index, definition = self.definitions[definition_id]
        if definition_id in scope.lineage:
            raise WorkflowFormatError(
                f"definitions.subgraphs[{index}]", f"subgraph {definition_id} contains itself (via node {key})"
            )
        path = f"definitions.subgraphs[{index}]"
        child = _Scope(
            path=path,
            prefix=key + ":",
            nodes=_index_nodes(definition, path),
            links=_index_links(definition, path),
            parent=scope,
            instance=instance,
            definition=definition,
            lineage=(*scope.lineage, definition_id),
        )
        child.outer_values = self._instance_values(child, instance, key)
        self.children[key] = child
        return child

    def _instance_values(self, child: _Scope, instance: Mapping[str, Any], key: str) -> dict[str, Any]:
        assert child.definition is not None
        declared = [entry for entry in child.definition.get("inputs") or [] if isinstance(entry, Mapping)]
        named = _named_values(instance)
        if named is not None:
            return {entry["name"]: named[entry["name"]] for entry in declared if entry.get("name") in named}
        values = instance.get("widgets_values") or []
        bearing = [entry for index, entry in enumerate(declared) if self._feeds_widget(child, index)]
        if values and len(values) != len(bearing):
            self.warnings.append(
                f"node {key}: {len(values)} widget values for {len(bearing)} widget inputs of its subgraph; "
                "matched in order"
            )
        return {str(entry.get("name")): value for entry, value in zip(bearing, values)}

    @staticmethod
    def _feeds_widget(child: _Scope, index: int) -> bool:
        """Whether a subgraph input shows a widget on the instance: it feeds an inner widget input."""
        for link in child.links.values():
            if link.origin_id == child.input_node_id and link.origin_slot == index:
                target = child.nodes.get(link.target_id) or {}
                entries = target.get("inputs") or []
                if link.target_slot < len(entries) and entries[link.target_slot].get("widget"):
                    return True
        return False

    # -- resolving where a link really comes from ------------------------------------------------

    def _resolve_link(self, scope: _Scope, link_id: Any, trail: frozenset[tuple[str, str]] = frozenset()) -> Any:
        link = scope.links.get(str(link_id))
        if link is None:
            self.warnings.append(
                f"link {link_id} in {scope.path or 'the workflow'} does not exist; its input is left out"
            )
            return _DROPPED
        return self._resolve_output(scope, link.origin_id, link.origin_slot, link.type, trail)

    def _resolve_output(
        self, scope: _Scope, origin_id: str, slot: int, link_type: str, trail: frozenset[tuple[str, str]]
    ) -> Any:
        here = (scope.prefix, origin_id)
        if here in trail:
            raise WorkflowFormatError(
                scope.path, f"links loop through reroutes or bypassed nodes at node {scope.api_id(origin_id)}"
            )
        trail = trail | {here}
        if scope.instance is not None and origin_id == scope.input_node_id:
            return self._resolve_subgraph_input(scope, slot, trail)
        node = scope.nodes.get(origin_id)
        if node is None:
            self.warnings.append(
                f"a link comes from node {scope.api_id(origin_id)}, which does not exist; its input is left out"
            )
            return _DROPPED
        node_type = str(node.get("type"))
        if node_type == "Reroute":
            entries = node.get("inputs") or []
            link_id = entries[0].get("link") if entries else None
            return _DROPPED if link_id is None else self._resolve_link(scope, link_id, trail)
        if node_type == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return _Constant(values[0]) if values else _DROPPED
        if node.get("mode") == MODE_NEVER or node_type in VIRTUAL_NODE_TYPES:
            return _DROPPED
        if node.get("mode") == MODE_BYPASS:
            entry = _bypass_input(node, slot, link_type)
            return _DROPPED if entry is None else self._resolve_link(scope, entry["link"], trail)
        if node_type in self.definitions:
            child = self._child(scope, node)
            for link in child.links.values():
                if link.target_id == child.output_node_id and link.target_slot == slot:
                    return self._resolve_output(child, link.origin_id, link.origin_slot, link.type, trail)
            return _DROPPED
        return [scope.api_id(origin_id), slot]

    def _resolve_subgraph_input(self, scope: _Scope, slot: int, trail: frozenset[tuple[str, str]]) -> Any:
        assert scope.instance is not None and scope.parent is not None and scope.definition is not None
        declared = scope.definition.get("inputs") or []
        if slot >= len(declared):
            raise WorkflowFormatError(scope.path, f"an inner link uses subgraph input {slot}, which is not declared")
        name = declared[slot].get("name")
        for entry in scope.instance.get("inputs") or []:
            if entry.get("name") == name and entry.get("link") is not None:
                return self._resolve_link(scope.parent, entry["link"], trail)
        if name in scope.outer_values:
            return _Constant(scope.outer_values[name])
        return _UNSET

    # -- one real node ---------------------------------------------------------------------------

    def _convert_node(self, scope: _Scope, node: Mapping[str, Any], spec: NodeSpec) -> dict[str, Any]:
        api_id = scope.api_id(node.get("id"))
        try:
            declared = [item for item in spec.inputs() if item.section != "hidden"]
        except Exception as error:  # a plugin's INPUT_TYPES may raise anything
            raise NodeInputsUnavailableError(api_id, spec.class_type, f"{type(error).__name__}: {error}") from error
        widgets = self._widget_values(api_id, node, [item for item in declared if self._is_widget(item)])
        sockets = _sockets_by_name(node)
        inputs: dict[str, Any] = {}
        for item in declared:
            entry = sockets.get(item.name)
            if entry is not None and entry.get("link") is not None:
                resolved = self._resolve_link(scope, entry["link"])
                if resolved is _DROPPED:
                    continue
                if resolved is not _UNSET:
                    inputs[item.name] = _as_input(resolved)
                    continue
            if item.name in widgets:
                inputs[item.name] = _wrap(widgets[item.name])
        known = {item.name for item in declared}
        for name, entry in sockets.items():
            # Sockets the spec does not list (inputs a node grows at edit time) still carry their links.
            if name not in known and name not in inputs and entry.get("link") is not None:
                resolved = self._resolve_link(scope, entry["link"])
                if resolved is not _DROPPED and resolved is not _UNSET:
                    inputs[name] = _as_input(resolved)
        return {
            "inputs": inputs,
            "class_type": spec.class_type,
            "_meta": {"title": node.get("title") or spec.display_name},
        }

    def _is_widget(self, item: InputSpec) -> bool:
        return item.is_widget or (item.type in self.widget_types and not item.options.get("forceInput", False))

    def _widget_values(self, api_id: str, node: Mapping[str, Any], widgets: Sequence[InputSpec]) -> dict[str, Any]:
        named = _named_values(node)
        if named is not None:
            found = {item.name: named[item.name] for item in widgets if item.name in named}
        else:
            found = _positional_widget_values(list(node.get("widgets_values") or []), widgets)
        for item in widgets:
            if item.name not in found:
                default = item.default
                if default is None:
                    self.warnings.append(f"node {api_id}: no value stored for widget {item.name!r} and no default")
                    continue
                self.warnings.append(
                    f"node {api_id}: no value stored for widget {item.name!r}; using its default {default!r}"
                )
                found[item.name] = default
        return found


def _positional_widget_values(values: list[Any], widgets: Sequence[InputSpec]) -> dict[str, Any]:
    """Match ``widgets_values`` to widget inputs in order, stepping over the editor-only values.

    The control value is expected where the spec declares ``control_after_generate``; it is also
    recognised after any INT or combo widget (the editor adds one to every ``seed``/``noise_seed``
    widget, declared or not), unless the next widget is a combo that offers that very word. The
    upload button of a required ``image_upload`` widget is appended to the required widgets (as
    the frontend does), so its value is expected after the last of them.
    """
    uploads = any(item.section == "required" and item.options.get("image_upload") for item in widgets)
    found: dict[str, Any] = {}
    position = 0
    for index, item in enumerate(widgets):
        if position >= len(values):
            break
        found[item.name] = values[position]
        position += 1
        following = widgets[index + 1] if index + 1 < len(widgets) else None
        if position < len(values) and _is_control_value(values[position]):
            offered = (
                following is not None and following.type == COMBO and values[position] in (following.choices or ())
            )
            if item.control_after_generate or (item.type in (INT, COMBO) and not offered):
                position += 1
        last_required = item.section == "required" and (following is None or following.section != "required")
        if uploads and last_required and position < len(values) and values[position] == UPLOAD_VALUE:
            position += 1
    return found


def _is_control_value(value: Any) -> bool:
    return isinstance(value, str) and value in CONTROL_VALUES


def _named_values(node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    named = node.get("widgets_values_named")
    if isinstance(named, Mapping):
        return named
    values = node.get("widgets_values")
    return values if isinstance(values, Mapping) else None


def _sockets_by_name(node: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Input slots by input name; a widget turned into a socket is also found by its widget name."""
    sockets: dict[str, Mapping[str, Any]] = {}
    for entry in node.get("inputs") or []:
        widget = entry.get("widget") or {}
        name = widget.get("name") or entry.get("name")
        sockets.setdefault(str(name), entry)
    return sockets


def _bypass_input(node: Mapping[str, Any], slot: int, link_type: str) -> Mapping[str, Any] | None:
    """The linked input a bypassed node passes through for output ``slot``: same type, same index first."""
    outputs = node.get("outputs") or []
    wanted = str(outputs[slot].get("type", link_type)) if slot < len(outputs) else str(link_type)
    inputs: list[Mapping[str, Any]] = node.get("inputs") or []
    entries = [entry for entry in inputs if entry.get("link") is not None]
    same_index = [entry for entry in inputs[slot : slot + 1] if entry.get("link") is not None]
    for candidate in same_index + entries:
        if str(candidate.get("type")) == wanted:
            return candidate
    for candidate in entries:
        if types_compatible(wanted, str(candidate.get("type"))):
            return candidate
    return None


def _as_input(resolved: Any) -> Any:
    return _wrap(resolved.value) if isinstance(resolved, _Constant) else resolved


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def _index_nodes(graph: Mapping[str, Any], path: str) -> dict[str, Mapping[str, Any]]:
    nodes: dict[str, Mapping[str, Any]] = {}
    for index, node in enumerate(graph.get("nodes") or []):
        where = f"{path}.nodes[{index}]" if path else f"nodes[{index}]"
        if not isinstance(node, Mapping) or "id" not in node or "type" not in node:
            raise WorkflowFormatError(where, "a node needs an 'id' and a 'type'")
        nodes[str(node["id"])] = node
    return nodes


def _index_links(graph: Mapping[str, Any], path: str) -> dict[str, _Link]:
    """Links by id from either form: v0.4 ``[id, origin, slot, target, slot, type]`` or v1 objects."""
    links: dict[str, _Link] = {}
    for index, raw in enumerate(graph.get("links") or []):
        where = f"{path}.links[{index}]" if path else f"links[{index}]"
        try:
            if isinstance(raw, Mapping):
                link_id = raw["id"]
                link = _Link(
                    str(raw["origin_id"]),
                    int(raw["origin_slot"]),
                    str(raw["target_id"]),
                    int(raw["target_slot"]),
                    str(raw.get("type", "*")),
                )
            else:
                link_id, origin, origin_slot, target, target_slot = raw[:5]
                link_type = raw[5] if len(raw) > 5 else "*"
                link = _Link(str(origin), int(origin_slot), str(target), int(target_slot), str(link_type))
        except (KeyError, TypeError, ValueError) as error:
            raise WorkflowFormatError(
                where, f"not a link ([id, origin, slot, target, slot, type] or an object): {error}"
            ) from error
        links[str(link_id)] = link
    return links
