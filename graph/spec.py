"""The node specification: one data description per node type.

Everything else is derived from a ``NodeSpec``: validation checks inputs against it, the executor
calls through it, ``/object_info`` serves it, and the editor draws it. Two front doors produce the
same spec — ComfyUI-style V1 classes (``graph.v1``) and Loom's declarative functions
(``graph.declare``) — so the rest of the engine never knows which one a plugin used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from graph.types import COMBO, WIDGET_TYPES

Section = Literal["required", "optional", "hidden"]
SECTIONS: tuple[Section, ...] = ("required", "optional", "hidden")

#: Hidden input kinds the executor knows how to fill (docs/compatibility.md §3.3).
HIDDEN_KINDS = frozenset(
    {"PROMPT", "DYNPROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"}
)


@dataclass(frozen=True)
class InputSpec:
    """One input socket or widget of a node type, as declared."""

    name: str
    type: str
    section: Section
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Any, ...] | None = None
    #: The first element of the ``/object_info`` entry: the type string, or the legacy list of choices.
    declared: Any = None

    @property
    def is_widget(self) -> bool:
        """Whether an unconnected value is typed in place; ``forceInput`` makes it a socket only."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def lazy(self) -> bool:
        return bool(self.options.get("lazy", False))

    @property
    def has_default(self) -> bool:
        return "default" in self.options

    @property
    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.type == COMBO and self.choices:
            return self.choices[0]
        return None

    @property
    def control_after_generate(self) -> bool:
        """Seeds and some combos carry an extra editor-only value after theirs in ``widgets_values``."""
        return bool(self.options.get("control_after_generate", False))

    def object_info_entry(self) -> Any:
        """The ``[type, options]`` pair (or the hidden kind string) as ``/object_info`` serves it."""
        if self.section == "hidden":
            return self.declared if self.declared is not None else self.type
        head = self.declared if self.declared is not None else self.type
        if isinstance(head, tuple):
            head = list(head)
        if self.options:
            return [head, dict(self.options)]
        return [head]


@dataclass(frozen=True)
class OutputSpec:
    """One output socket of a node type."""

    type: str
    name: str
    is_list: bool = False
    tooltip: str | None = None
    declared: Any = None


class ExecutionBlocker:
    """An output value that stops every consumer (docs/compatibility.md §3.8).

    With a message the prompt fails with that message; with ``None`` consumers are skipped silently.
    """

    def __init__(self, message: str | None) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


@dataclass
class NodeResult:
    """What one call of a node function produced, whatever shape the plugin returned."""

    values: tuple[Any, ...]
    ui: dict[str, list[Any]] | None = None
    expand: dict[str, Any] | None = None


class NodeDefinitionError(ValueError):
    """A node type is declared inconsistently (raised at registration, never at run time)."""

    def __init__(self, class_type: str, reason: str) -> None:
        super().__init__(f"node type {class_type!r}: {reason}")
        self.class_type = class_type
        self.reason = reason


class NodeReturnError(TypeError):
    """A node function returned something that does not match its declared outputs."""

    def __init__(self, class_type: str, reason: str) -> None:
        super().__init__(f"node type {class_type!r} returned {reason}")
        self.class_type = class_type
        self.reason = reason


InputSource = Callable[[], tuple[InputSpec, ...]]


@dataclass
class NodeSpec:
    """The complete description of a node type plus the callables that run it.

    ``input_source`` is re-evaluated on every ``inputs()`` call because combo choices such as the
    list of checkpoint files are computed when asked (the caller caches per request if it wants).
    """

    class_type: str
    input_source: InputSource
    outputs: tuple[OutputSpec, ...]
    run: Callable[[Any, dict[str, Any]], Any]
    create_instance: Callable[[], Any] = lambda: None
    display_name: str = ""
    category: str = "sd"
    description: str = ""
    python_module: str = "nodes"
    output_node: bool = False
    input_is_list: bool = False
    not_idempotent: bool = False
    deprecated: bool = False
    experimental: bool = False
    #: ``fingerprint(constants) -> token``: part of the cache key (V1 ``IS_CHANGED``).
    fingerprint: Callable[[dict[str, Any]], Any] | None = None
    #: ``validate(constants, input_types) -> True | str``: custom validation (V1 ``VALIDATE_INPUTS``).
    validate: Callable[[dict[str, Any], dict[str, str] | None], Any] | None = None
    #: Names the custom validator takes over from built-in checks; ``None`` means all inputs.
    validate_takes: frozenset[str] | None = None
    #: Whether the custom validator wants linked input types and so replaces the link type check.
    validate_wants_types: bool = False
    #: ``lazy_status(instance, inputs) -> names still needed`` (V1 ``check_lazy_status``).
    lazy_status: Callable[[Any, dict[str, Any]], list[str]] | None = None
    output_tooltips: tuple[str, ...] | None = None
    #: Whether constant inputs the node does not declare reach it (ComfyUI V3's ``accept_all_inputs``);
    #: otherwise they are dropped, as ComfyUI drops them, so a file from a newer version still runs.
    accepts_all_inputs: bool = False
    #: Extra keys merged into the ``/object_info`` entry (for front-end hints a plugin declares).
    extra_info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.display_name:
            self.display_name = self.class_type

    def inputs(self) -> tuple[InputSpec, ...]:
        return self.input_source()

    def input_map(self) -> dict[str, InputSpec]:
        return {spec.name: spec for spec in self.inputs()}

    @property
    def uses_unique_id(self) -> bool:
        """Declaring ``UNIQUE_ID`` ties outputs to the node id, so the id joins the cache key."""
        return any(spec.section == "hidden" and spec.type == "UNIQUE_ID" for spec in self.inputs())

    def normalize_result(self, raw: Any) -> NodeResult:
        """Accept every return shape plugins use: tuple, list, dict with result/ui/expand, blocker."""
        if isinstance(raw, NodeResult):
            return raw
        if isinstance(raw, ExecutionBlocker):
            return NodeResult(values=(raw,) * len(self.outputs))
        if isinstance(raw, dict):
            unknown = set(raw) - {"result", "ui", "expand"}
            if unknown:
                raise NodeReturnError(self.class_type, f"a dict with unknown keys {sorted(unknown)}")
            values = raw.get("result", ())
            if isinstance(values, ExecutionBlocker):
                values = (values,) * len(self.outputs)
            values = tuple(values) if values is not None else ()
            if values and len(values) != len(self.outputs):
                raise NodeReturnError(self.class_type, f"{len(values)} results for {len(self.outputs)} outputs")
            if not values and self.outputs and not raw.get("expand"):
                values = (None,) * len(self.outputs)
            return NodeResult(values=values, ui=raw.get("ui"), expand=raw.get("expand"))
        if isinstance(raw, (tuple, list)):
            if len(raw) != len(self.outputs):
                raise NodeReturnError(self.class_type, f"{len(raw)} values for {len(self.outputs)} outputs")
            return NodeResult(values=tuple(raw))
        if raw is None and not self.outputs:
            return NodeResult(values=())
        raise NodeReturnError(self.class_type, f"{type(raw).__name__}; expected a tuple of {len(self.outputs)} values")

    def object_info(self) -> dict[str, Any]:
        """The ``/object_info`` entry (docs/compatibility.md §1.5) with every field clients read."""
        sections: dict[str, dict[str, Any]] = {"required": {}}
        for spec in self.inputs():
            sections.setdefault(spec.section, {})[spec.name] = spec.object_info_entry()
        info: dict[str, Any] = {
            "input": sections,
            "input_order": {section: list(entries) for section, entries in sections.items()},
            "output": [out.declared if out.declared is not None else out.type for out in self.outputs],
            "output_is_list": [out.is_list for out in self.outputs],
            "output_name": [out.name for out in self.outputs],
            "name": self.class_type,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        tooltips = self.output_tooltips or tuple(out.tooltip for out in self.outputs if out.tooltip)
        if tooltips:
            info["output_tooltips"] = list(tooltips)
        if self.deprecated:
            info["deprecated"] = True
        if self.experimental:
            info["experimental"] = True
        info.update(self.extra_info)
        return info
