"""Check an API-format prompt against the node registry before anything runs (docs/compatibility.md §4.1).

Every problem is collected, never just the first, so a client can mark all broken inputs at once.
The steps follow ComfyUI's order: a node without ``class_type`` or of an unknown class fails the
whole prompt; output nodes (optionally narrowed to the requested targets) are the roots; every node
upstream of a root is checked input by input; an output with a problem anywhere upstream is
dropped and the others still run. Unlike ComfyUI, an unknown or malformed node does not stop the
check: the known nodes are still checked (including those the unknown node links to, since it may
be the output that was meant to run), so one answer lists every problem. Loom adds three checks
ComfyUI leaves to run time or to luck: links to nodes or output slots that do not exist, dependency
cycles (named node by node), and combo values that differ from a listed file only by path separator
(a workflow saved on Windows). Links are rewritten to ``[str, int]`` (``graph.formats.api``), the
one form the executor and the cache keys read.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from graph.errors import (
    BadLinkedInput,
    CustomValidationFailed,
    DependencyCycle,
    ExceptionDuringInnerValidation,
    ExceptionDuringValidation,
    InvalidInputType,
    MalformedNode,
    NodeError,
    PromptError,
    RequiredInputMissing,
    ReturnTypeMismatch,
    UnknownNodeType,
    UnresolvedNode,
    ValueBiggerThanMax,
    ValueNotInList,
    ValueSmallerThanMin,
    node_errors_to_wire,
)
from graph.formats.api import LinkShapeError, normalise_link, unwrap_value, wrap_value
from graph.registry import NodeRegistry
from graph.spec import InputSpec, NodeSpec
from graph.types import BOOLEAN, COMBO, FLOAT, INT, STRING, types_compatible


@dataclass
class ValidationResult:
    """What the server needs to accept or reject a prompt, in the docs/compatibility.md §1.3 shapes."""

    ok: bool
    #: The top-level error object (``{type, message, details, extra_info}``) when ``ok`` is false.
    error: dict[str, Any] | None
    #: Output node ids that passed and will run.
    outputs: list[str]
    #: ``{node_id: {class_type, dependent_outputs, errors}}``; may be non-empty when ``ok`` is true.
    node_errors: dict[str, Any]
    #: A copy of the prompt with ``__value__`` unwrapped, constants coerced to their input types and
    #: links normalised to ``[str, int]``: the prompt to execute.
    prompt: dict[str, Any]
    #: The same problems as ``node_errors``, as typed objects.
    problems: list[NodeError] = field(default_factory=list)


def validate_prompt(
    prompt: dict[str, Any], registry: NodeRegistry, targets: list[str] | None = None
) -> ValidationResult:
    """Validate ``prompt``; ``targets`` (``partial_execution_targets``) narrows the output nodes that run."""
    if not isinstance(prompt, dict):
        return _rejected(PromptError.not_a_prompt(prompt), {})
    checked = copy.deepcopy(prompt)
    specs, unresolved = _resolve_specs(checked, registry)
    wanted = None if targets is None else {str(target) for target in targets}
    outputs = [node_id for node_id, spec in specs.items() if spec.output_node and (wanted is None or node_id in wanted)]
    if not outputs and not unresolved:
        return _rejected(PromptError.no_outputs(), checked)

    checker = _PromptChecker(checked, specs, {problem.node_id: problem for problem in unresolved})
    checker.visit_upstream([*outputs, *(problem.node_id for problem in unresolved)])
    checker.report_cycles()
    problems: list[NodeError] = [*unresolved, *checker.problems]
    broken = {problem.node_id for problem in problems}
    upstream = {output: nx.ancestors(checker.links, output) | {output} for output in outputs}
    dependents = {node_id: [o for o in outputs if node_id in upstream[o]] for node_id in broken}
    node_errors = node_errors_to_wire(problems, dependents)
    error: dict[str, Any] | None
    if unresolved:
        passed: list[str] = []
        error = PromptError.unresolved(unresolved).to_wire()
    else:
        passed = [output for output in outputs if not upstream[output] & broken]
        error = None if passed else PromptError.outputs_failed(problems).to_wire()
    return ValidationResult(
        ok=bool(passed), error=error, outputs=passed, node_errors=node_errors, prompt=checked, problems=problems
    )


def _rejected(error: PromptError, prompt: dict[str, Any]) -> ValidationResult:
    return ValidationResult(ok=False, error=error.to_wire(), outputs=[], node_errors={}, prompt=prompt)


def _resolve_specs(prompt: dict[str, Any], registry: NodeRegistry) -> tuple[dict[str, NodeSpec], list[UnresolvedNode]]:
    """Step 1: the spec of every node that is an object naming a registered class; a problem for every other."""
    specs: dict[str, NodeSpec] = {}
    unresolved: list[UnresolvedNode] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            unresolved.append(
                MalformedNode(node_id=node_id, class_type="", reason=f"is a {type(node).__name__}, not an object")
            )
            continue
        class_type = node.get("class_type")
        inputs = node.setdefault("inputs", {})
        if class_type is None:
            reason = "has no class_type"
        elif not isinstance(class_type, str):
            reason = f"has a class_type that is a {type(class_type).__name__}, not a string"
        elif not isinstance(inputs, dict):
            reason = f"has inputs that are a {type(inputs).__name__}, not an object"
        else:
            spec = registry.get(class_type)
            if spec is None:
                unresolved.append(UnknownNodeType(node_id=node_id, class_type=class_type))
            else:
                specs[node_id] = spec
            continue
        named = class_type if isinstance(class_type, str) else ""
        unresolved.append(MalformedNode(node_id=node_id, class_type=named, reason=reason))
    return specs, unresolved


class _PromptChecker:
    """Walks upstream from the outputs, checking each node once and recording the links it follows."""

    def __init__(
        self, prompt: dict[str, Any], specs: dict[str, NodeSpec], unresolved: dict[str, UnresolvedNode]
    ) -> None:
        self.prompt = prompt
        self.specs = specs
        #: Nodes without a spec (already reported): walked through, never checked.
        self.unresolved = unresolved
        self.problems: list[NodeError] = []
        #: Edges point from the source node to the consumer, as data flows.
        self.links = nx.DiGraph()

    def visit_upstream(self, roots: Iterable[str]) -> None:
        pending = list(roots)
        seen = set(pending)
        while pending:
            node_id = pending.pop()
            self.links.add_node(node_id)
            sources = self._check_node(node_id) if node_id in self.specs else self._linked_sources(node_id)
            for source in sources:
                self.links.add_edge(source, node_id)
                if source not in seen:
                    seen.add(source)
                    pending.append(source)

    def report_cycles(self) -> None:
        for component in nx.strongly_connected_components(self.links):
            first = next(iter(component))
            if len(component) == 1 and not self.links.has_edge(first, first):
                continue
            cycle = _cycle_order(self.links.subgraph(component), component)
            for node_id in cycle:
                self.problems.append(
                    DependencyCycle(node_id=node_id, class_type=self._class_type(node_id), cycle=cycle)
                )

    def _class_type(self, node_id: str) -> str:
        spec = self.specs.get(node_id)
        return spec.class_type if spec is not None else self.unresolved[node_id].class_type

    def _linked_sources(self, node_id: str, exclude: Collection[str] = ()) -> list[str]:
        """The existing nodes a node links to through inputs other than ``exclude``: all of an unresolved
        node's (they cannot be checked without a spec), or the undeclared ones of a node that accepts all."""
        node = self.prompt[node_id]
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            return []
        sources = []
        for name, value in inputs.items():
            if name in exclude:
                continue
            if isinstance(value, list):
                try:
                    source = normalise_link(value)[0]
                except LinkShapeError:
                    continue
                if source in self.prompt:
                    sources.append(source)
        return sources

    def _check_node(self, node_id: str) -> list[str]:
        """Check one node's inputs; returns the ids of existing nodes it links to."""
        spec = self.specs[node_id]
        inputs = self.prompt[node_id]["inputs"]
        base = {"node_id": node_id, "class_type": spec.class_type}
        try:
            declared = [item for item in spec.inputs() if item.section != "hidden"]
        except Exception as error:  # a plugin's INPUT_TYPES may raise anything
            self.problems.append(
                ExceptionDuringValidation(**base, exception_type=type(error).__name__, exception_message=str(error))
            )
            return []
        exempt = _exempt_from_builtin_checks(spec, declared)
        sources: list[str] = []
        constants: dict[str, Any] = {}
        received_types: dict[str, str] = {}
        for item in declared:
            where = {**base, "input_name": item.name, "input_config": item.object_info_entry()}
            if item.name not in inputs:
                if item.section == "required" and not _given_as_parts(spec, item.name, inputs):
                    self.problems.append(RequiredInputMissing(**base, input_name=item.name))
                continue
            value = inputs[item.name]
            if isinstance(value, list):
                try:
                    link = normalise_link(value)
                except LinkShapeError as error:
                    self.problems.append(BadLinkedInput(**where, received_value=value, reason=error.reason))
                    continue
                inputs[item.name] = link
                source = self._check_link(spec, item, link, where, received_types)
                if source is not None:
                    sources.append(source)
                continue
            # Unwrapped only now: a wrapped list is a constant, never a link (docs/compatibility.md §2.1).
            value = unwrap_value(value)
            try:
                value = _coerce(item.type, value)
            except (TypeError, ValueError, OverflowError) as error:
                self.problems.append(
                    InvalidInputType(**where, received_value=value, input_type=item.type, reason=str(error))
                )
                continue
            if item.name not in exempt:
                value = self._check_constant(item, value, where)
            inputs[item.name] = wrap_value(value)
            constants[item.name] = value
        if spec.validate is not None:
            self._run_custom_validation(spec, base, constants, received_types)
        if spec.accepts_all_inputs:
            named = {item.name for item in declared}
            sources += self._linked_sources(node_id, exclude=named)
        return sources

    def _check_link(
        self, spec: NodeSpec, item: InputSpec, link: list[Any], where: dict[str, Any], received_types: dict[str, str]
    ) -> str | None:
        """Check a normalised link; returns the source node's id when that node exists."""
        source: str = link[0]  # ``normalise_link`` made it ``[str, int]``
        slot: int = link[1]
        if source not in self.prompt:
            self.problems.append(
                BadLinkedInput(**where, received_value=link, reason=f"node {source!r} is not in the prompt")
            )
            return None
        source_spec = self.specs.get(source)
        if source_spec is None:
            return source  # unresolved, and reported as such: its outputs have no known types
        if not 0 <= slot < len(source_spec.outputs):
            reason = (
                f"node {source} ({source_spec.class_type}) has {len(source_spec.outputs)} outputs, no output {slot}"
            )
            self.problems.append(BadLinkedInput(**where, received_value=link, reason=reason))
            return source
        output_type = source_spec.outputs[slot].type
        received_types[item.name] = output_type
        if not spec.validate_wants_types and not types_compatible(output_type, item.type):
            self.problems.append(
                ReturnTypeMismatch(
                    **where,
                    received_type=output_type,
                    input_type=item.type,
                    linked_node=(source, slot),
                    linked_class_type=source_spec.class_type,
                )
            )
        return source

    def _check_constant(self, item: InputSpec, value: Any, where: dict[str, Any]) -> Any:
        """Range and membership checks; returns the value to keep (a combo choice may be normalised)."""
        if item.type in (INT, FLOAT):
            minimum, maximum = item.options.get("min"), item.options.get("max")
            if minimum is not None and value < minimum:
                self.problems.append(ValueSmallerThanMin(**where, received_value=value, minimum=minimum))
            elif maximum is not None and value > maximum:
                self.problems.append(ValueBiggerThanMax(**where, received_value=value, maximum=maximum))
        elif item.type == COMBO:
            choices = item.choices or ()
            choice = _matching_choice(value, choices)
            if choice is _NO_CHOICE:
                self.problems.append(ValueNotInList(**where, received_value=value, choices=tuple(choices)))
            else:
                return choice
        return value

    def _run_custom_validation(
        self, spec: NodeSpec, base: dict[str, Any], constants: dict[str, Any], received_types: dict[str, str]
    ) -> None:
        assert spec.validate is not None
        try:
            verdict = spec.validate(constants, received_types if spec.validate_wants_types else None)
        except Exception as error:  # the validator is plugin code
            self.problems.append(
                ExceptionDuringInnerValidation(
                    **base, exception_type=type(error).__name__, exception_message=str(error)
                )
            )
            return
        if verdict is not True:
            reason = verdict if isinstance(verdict, str) else f"the node's validator returned {verdict!r}"
            self.problems.append(CustomValidationFailed(**base, reason=reason))


def _exempt_from_builtin_checks(spec: NodeSpec, declared: list[InputSpec]) -> frozenset[str]:
    """Inputs a custom validator takes are its to judge (docs/compatibility.md §3.5); ``**kwargs`` takes them all."""
    if spec.validate is None:
        return frozenset()
    if spec.validate_takes is None:
        return frozenset(item.name for item in declared)
    return spec.validate_takes


_BOOLEAN_WORDS = {"true": True, "false": False}


def _coerce(input_type: str, value: Any) -> Any:
    """Convert a constant to its widget type, as ComfyUI writes back before running (docs/compatibility.md §2.1).

    Strings are accepted for numbers (``"20"``) as ComfyUI does; for BOOLEAN only the words
    ``true``/``false`` are, since ``bool("false")`` would silently be true.
    """
    if input_type == INT:
        return int(value)
    if input_type == FLOAT:
        return float(value)
    if input_type == STRING:
        return str(value)
    if input_type == BOOLEAN:
        if isinstance(value, str):
            word = value.strip().lower()
            if word not in _BOOLEAN_WORDS:
                raise ValueError(f"{value!r} is not true or false")
            return _BOOLEAN_WORDS[word]
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("NaN is not true or false")
        return bool(value)
    return value


_NO_CHOICE = object()


def _matching_choice(value: Any, choices: Iterable[Any]) -> Any:
    """The listed choice ``value`` names: itself, or the one equal up to ``\\`` vs ``/`` separators."""
    choices = list(choices)
    if any(value == choice for choice in choices):
        return value
    if isinstance(value, str):
        wanted = value.replace("\\", "/")
        for choice in choices:
            if isinstance(choice, str) and choice.replace("\\", "/") == wanted:
                return choice
    return _NO_CHOICE


def _cycle_order(subgraph: nx.DiGraph, members: set[str]) -> tuple[str, ...]:
    """The members in the order one cycle visits them, then any other members of the same knot."""
    ordered = [source for source, _ in nx.find_cycle(subgraph)]
    rest = sorted(members - set(ordered))
    return (*ordered, *rest)


def _given_as_parts(spec: NodeSpec, name: str, inputs: Mapping[str, Any]) -> bool:
    """Whether a node that accepts all inputs got ``name`` as parts (``images.image0`` ...), as ComfyUI's growing
    and dynamic inputs arrive."""
    return spec.accepts_all_inputs and any(key.startswith(name + ".") for key in inputs)
