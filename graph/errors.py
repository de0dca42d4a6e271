"""Typed errors of prompt validation and workflow loading, and their wire form.

Validation problems are values, not exceptions: a prompt can have many at once and every one of
them is reported (docs/compatibility.md §1.3). Each kind is a class with the fields a caller needs (node id, class
type, input name, the received value), and ``to_wire()`` renders the ``{type, message, details,
extra_info}`` dict that ComfyUI clients read. The ``type`` strings are the wire contract; the
wording of ``message``/``details`` is Loom's own.

Problems with a workflow *file* (unknown node types, a broken structure, a bad PNG) stop the
conversion, so they are exceptions deriving from ``WorkflowError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

#: Combo lists longer than this are summarised in error payloads instead of listed (docs/compatibility.md §1.3).
MAX_LISTED_CHOICES = 20


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, kw_only=True)
class NodeError(ABC):
    """One problem of one node: an entry of ``node_errors[node_id]["errors"]``."""

    type: ClassVar[str]
    node_id: str
    class_type: str
    input_name: str | None = None
    #: The input's ``/object_info`` entry, echoed so a client can show what was expected.
    input_config: Any = None

    @property
    @abstractmethod
    def message(self) -> str:
        """The short headline a client shows."""

    @property
    def details(self) -> str:
        return self.input_name or ""

    def extra_info(self) -> dict[str, Any]:
        if self.input_name is None:
            return {}
        return {"input_name": self.input_name, "input_config": self.input_config}

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "details": self.details, "extra_info": self.extra_info()}


@dataclass(frozen=True, kw_only=True)
class RequiredInputMissing(NodeError):
    type: ClassVar[str] = "required_input_missing"

    @property
    def message(self) -> str:
        return "Required input is missing"

    def extra_info(self) -> dict[str, Any]:
        return {"input_name": self.input_name}


@dataclass(frozen=True, kw_only=True)
class BadLinkedInput(NodeError):
    """A link that is not ``[node_id, slot]``, or that names a node or output slot that does not exist."""

    type: ClassVar[str] = "bad_linked_input"
    received_value: Any
    reason: str

    @property
    def message(self) -> str:
        return "Bad linked input"

    @property
    def details(self) -> str:
        return f"{self.input_name}: {self.reason}"

    def extra_info(self) -> dict[str, Any]:
        return {**super().extra_info(), "received_value": self.received_value}


@dataclass(frozen=True, kw_only=True)
class ReturnTypeMismatch(NodeError):
    """A link whose source output type cannot feed the input; names both ends."""

    type: ClassVar[str] = "return_type_mismatch"
    received_type: str
    input_type: str
    linked_node: tuple[str, int]
    linked_class_type: str

    @property
    def message(self) -> str:
        return "Return type mismatch between linked nodes"

    @property
    def details(self) -> str:
        source, slot = self.linked_node
        return (
            f"{self.input_name}: node {source} ({self.linked_class_type}) output {slot} is {self.received_type}, "
            f"node {self.node_id} ({self.class_type}) input {self.input_name} needs {self.input_type}"
        )

    def extra_info(self) -> dict[str, Any]:
        return {**super().extra_info(), "received_type": self.received_type, "linked_node": list(self.linked_node)}


@dataclass(frozen=True, kw_only=True)
class InvalidInputType(NodeError):
    """A constant that cannot be converted to the input's type (``"abc"`` for an INT)."""

    type: ClassVar[str] = "invalid_input_type"
    received_value: Any
    input_type: str
    reason: str

    @property
    def message(self) -> str:
        return f"Failed to convert an input value to a {self.input_type} value"

    @property
    def details(self) -> str:
        return f"{self.input_name}: {_short(self.received_value)} ({self.reason})"

    def extra_info(self) -> dict[str, Any]:
        return {
            **super().extra_info(),
            "received_value": self.received_value,
            "received_type": type(self.received_value).__name__,
            "exception_message": self.reason,
        }


@dataclass(frozen=True, kw_only=True)
class ValueSmallerThanMin(NodeError):
    type: ClassVar[str] = "value_smaller_than_min"
    received_value: float
    minimum: float

    @property
    def message(self) -> str:
        return f"Value {self.received_value} smaller than min of {self.minimum}"

    def extra_info(self) -> dict[str, Any]:
        return {**super().extra_info(), "received_value": self.received_value}


@dataclass(frozen=True, kw_only=True)
class ValueBiggerThanMax(NodeError):
    type: ClassVar[str] = "value_bigger_than_max"
    received_value: float
    maximum: float

    @property
    def message(self) -> str:
        return f"Value {self.received_value} bigger than max of {self.maximum}"

    def extra_info(self) -> dict[str, Any]:
        return {**super().extra_info(), "received_value": self.received_value}


@dataclass(frozen=True, kw_only=True)
class ValueNotInList(NodeError):
    """A combo value that is not one of the choices (most often a model file that is not installed)."""

    type: ClassVar[str] = "value_not_in_list"
    received_value: Any
    choices: tuple[Any, ...]

    @property
    def message(self) -> str:
        return "Value not in list"

    @property
    def details(self) -> str:
        if len(self.choices) > MAX_LISTED_CHOICES:
            listed = f"(list of length {len(self.choices)})"
        else:
            listed = repr(list(self.choices))
        return f"{self.input_name}: {self.received_value!r} not in {listed}"

    def extra_info(self) -> dict[str, Any]:
        config = None if len(self.choices) > MAX_LISTED_CHOICES else self.input_config
        return {"input_name": self.input_name, "input_config": config, "received_value": self.received_value}


@dataclass(frozen=True, kw_only=True)
class CustomValidationFailed(NodeError):
    """The node's own validator (V1 ``VALIDATE_INPUTS``) returned ``False`` or an error message."""

    type: ClassVar[str] = "custom_validation_failed"
    reason: str

    @property
    def message(self) -> str:
        return "Custom validation failed for node"

    @property
    def details(self) -> str:
        return self.reason


@dataclass(frozen=True, kw_only=True)
class NodeCodeRaised(NodeError):
    """Validation ran the node type's own code and it raised; the exception is reported, not propagated.

    ComfyUI names two such moments with two wire ``type`` strings, so each keeps its subclass while
    the payload, which is the same for both, is written here once.
    """

    exception_type: str
    exception_message: str

    @property
    def details(self) -> str:
        return f"{self.exception_type}: {self.exception_message}"

    def extra_info(self) -> dict[str, Any]:
        return {"exception_type": self.exception_type, "exception_message": self.exception_message}


@dataclass(frozen=True, kw_only=True)
class ExceptionDuringInnerValidation(NodeCodeRaised):
    """The node's own validator raised instead of answering."""

    type: ClassVar[str] = "exception_during_inner_validation"

    @property
    def message(self) -> str:
        return "Exception when validating inner node"


@dataclass(frozen=True, kw_only=True)
class ExceptionDuringValidation(NodeCodeRaised):
    """The node type could not even describe its inputs (its ``INPUT_TYPES`` raised)."""

    type: ClassVar[str] = "exception_during_validation"

    @property
    def message(self) -> str:
        return "Exception when reading the node's inputs"


@dataclass(frozen=True, kw_only=True)
class DependencyCycle(NodeError):
    """The node is part of a cycle of links, so nothing in the cycle can ever run (Loom addition)."""

    type: ClassVar[str] = "dependency_cycle"
    cycle: tuple[str, ...]

    @property
    def message(self) -> str:
        return "Dependency cycle"

    @property
    def details(self) -> str:
        return "nodes " + " -> ".join((*self.cycle, self.cycle[0])) + " depend on each other"

    def extra_info(self) -> dict[str, Any]:
        return {"nodes": list(self.cycle)}


@dataclass(frozen=True, kw_only=True)
class UnknownNodeType(NodeError):
    """The node's ``class_type`` names no registered node type (a plugin that is not installed, a typo)."""

    type: ClassVar[str] = "unknown_node_type"

    @property
    def message(self) -> str:
        return "Node type does not exist"

    @property
    def details(self) -> str:
        return f"no installed node or plugin provides {self.class_type!r}"

    @property
    def clause(self) -> str:
        """Why the whole prompt cannot run, in ComfyUI's words ("node X does not exist")."""
        return f"node {self.class_type} does not exist"


@dataclass(frozen=True, kw_only=True)
class MalformedNode(NodeError):
    """The node is not ``{"class_type": str, "inputs": {...}}``, so it cannot even be looked up.

    ``class_type`` is the node's class name when it has a usable one, else ``""``.
    """

    type: ClassVar[str] = "malformed_node"
    #: What is wrong, as a predicate of the node: "has no class_type", "is a list, not an object".
    reason: str

    @property
    def message(self) -> str:
        return "Malformed node"

    @property
    def details(self) -> str:
        return f"the node {self.reason}"

    @property
    def clause(self) -> str:
        return f"node {self.node_id} {self.reason}"


#: The problems that make a node unusable as a whole; any of them fails the entire prompt.
UnresolvedNode = UnknownNodeType | MalformedNode


def node_errors_to_wire(errors: Iterable[NodeError], dependent_outputs: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Group problems per node in the ``node_errors`` shape; ``dependent_outputs`` maps node id → outputs."""
    grouped: dict[str, dict[str, Any]] = {}
    for error in errors:
        entry = grouped.setdefault(
            error.node_id,
            {
                "errors": [],
                "dependent_outputs": list(dependent_outputs.get(error.node_id, ())),
                "class_type": error.class_type,
            },
        )
        entry["errors"].append(error.to_wire())
    return grouped


@dataclass(frozen=True)
class PromptError:
    """The top-level ``error`` object of a rejected prompt."""

    type: str
    message: str
    details: str = ""
    extra_info: Mapping[str, Any] | None = None

    @classmethod
    def unresolved(cls, problems: Sequence[UnresolvedNode]) -> PromptError:
        """``invalid_prompt`` naming every node that is malformed or of an unknown type.

        One unknown node reads as ComfyUI's "Cannot execute because node X does not exist."; the
        per-node entries in ``node_errors`` carry the same problems for clients that mark nodes.
        """
        clauses = "; ".join(dict.fromkeys(problem.clause for problem in problems))
        ids = ", ".join(f"'#{problem.node_id}'" for problem in problems)
        return cls(
            "invalid_prompt", f"Cannot execute because {clauses}.", f"Node ID{'s' if len(problems) > 1 else ''} {ids}"
        )

    @classmethod
    def not_a_prompt(cls, received: Any) -> PromptError:
        return cls("invalid_prompt", f"A prompt is an object of nodes keyed by id, not a {type(received).__name__}.")

    @classmethod
    def no_outputs(cls) -> PromptError:
        return cls(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "No output node to run (or none of the requested targets is one).",
        )

    @classmethod
    def outputs_failed(cls, errors: Iterable[NodeError]) -> PromptError:
        lines = dict.fromkeys(f"{error.message}: {error.details}" for error in errors)
        return cls("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "details": self.details,
            "extra_info": dict(self.extra_info or {}),
        }


class WorkflowError(ValueError):
    """A workflow document cannot be read or converted."""


@dataclass(frozen=True)
class UnknownNode:
    node_id: str
    class_type: str


class UnknownNodeTypeError(WorkflowError):
    """Real (non-virtual, not muted or bypassed) nodes whose type no registered node provides."""

    def __init__(self, nodes: Sequence[UnknownNode]) -> None:
        listed = ", ".join(f"node {n.node_id} ({n.class_type})" for n in nodes)
        super().__init__(f"unknown node type: {listed}")
        self.nodes = tuple(nodes)

    @property
    def node_id(self) -> str:
        return self.nodes[0].node_id

    @property
    def class_type(self) -> str:
        return self.nodes[0].class_type


class NodeInputsUnavailableError(WorkflowError):
    """A node type could not list its inputs (a plugin's ``INPUT_TYPES`` raised), so its widgets cannot be read."""

    def __init__(self, node_id: str, class_type: str, reason: str) -> None:
        super().__init__(f"node {node_id} ({class_type}): cannot read its inputs: {reason}")
        self.node_id = node_id
        self.class_type = class_type
        self.reason = reason


class WorkflowFormatError(WorkflowError):
    """The document's structure is broken where the converter has to read it; ``path`` points there."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class PngFormatError(WorkflowError):
    """Bytes that are not a well-formed PNG; ``offset`` is where reading stopped."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"not a valid PNG at byte {offset}: {reason}")
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True)
class SchemaIssue:
    """One schema violation, located by a readable JSON path such as ``nodes[3].widgets_values``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(document)'}: {self.message}"


class SchemaError(WorkflowError):
    """A document that does not match its JSON Schema; every violation found is listed."""

    def __init__(self, schema: str, issues: Sequence[SchemaIssue]) -> None:
        shown = "; ".join(str(issue) for issue in issues[:10])
        more = f" (and {len(issues) - 10} more)" if len(issues) > 10 else ""
        super().__init__(f"not a valid {schema} document: {shown}{more}")
        self.schema = schema
        self.issues = tuple(issues)
