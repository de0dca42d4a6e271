"""Read a ComfyUI-style V1 node class (docs/compatibility.md §3.1–3.7) into a ``NodeSpec``.

V1 classes are duck-typed: ``INPUT_TYPES`` is a classmethod returning sections of
``name: (TYPE, {options})``, outputs are parallel tuples, and optional hooks are looked up by name.
Plugins written for ComfyUI must work unchanged, so every optional attribute is honoured here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graph.signature import accepted_names, call_with_accepted, custom_validation
from graph.spec import SECTIONS, InputSpec, NodeDefinitionError, NodeSpec, OutputSpec
from graph.types import type_name


def _input_specs(class_type: str, declared: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    if not isinstance(declared, Mapping):
        raise NodeDefinitionError(class_type, f"INPUT_TYPES returned {type(declared).__name__}, not a dict")
    specs: list[InputSpec] = []
    for section in SECTIONS:
        for name, entry in (declared.get(section) or {}).items():
            specs.append(_input_spec(class_type, section, name, entry))
    return tuple(specs)


def _input_spec(class_type: str, section: Any, name: str, entry: Any) -> InputSpec:
    if section == "hidden":
        kind = entry[0] if isinstance(entry, (list, tuple)) else entry
        return InputSpec(name=name, type=str(kind), section="hidden", declared=entry)
    if isinstance(entry, str):
        entry = (entry,)
    if not isinstance(entry, (list, tuple)) or not entry:
        raise NodeDefinitionError(class_type, f"input {name!r} must be (TYPE, {{options}}), got {entry!r}")
    head = entry[0]
    options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
    choices: tuple[Any, ...] | None = None
    if isinstance(head, (list, tuple)):
        choices = tuple(head)
    elif head == "COMBO":
        choices = tuple(options.get("options", ()))
    return InputSpec(name=name, type=type_name(head), section=section, options=options, choices=choices, declared=head)


def spec_from_v1_class(
    class_type: str, cls: type[Any], display_name: str | None = None, python_module: str = "nodes"
) -> NodeSpec:
    """Build the spec of a V1 class; raises ``NodeDefinitionError`` for a class that cannot run."""
    for attribute in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
        if not hasattr(cls, attribute):
            raise NodeDefinitionError(class_type, f"V1 class {cls.__name__} lacks {attribute}")
    return_types = tuple(cls.RETURN_TYPES)
    names = tuple(getattr(cls, "RETURN_NAMES", None) or (type_name(t) for t in return_types))
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(return_types))
    tooltips = tuple(getattr(cls, "OUTPUT_TOOLTIPS", None) or ())
    if len(names) != len(return_types) or len(is_list) != len(return_types):
        raise NodeDefinitionError(class_type, "RETURN_NAMES / OUTPUT_IS_LIST length differs from RETURN_TYPES")
    outputs = tuple(
        OutputSpec(
            type=type_name(t),
            name=str(n),
            is_list=bool(li),
            tooltip=tooltips[i] if i < len(tooltips) else None,
            declared=list(t) if isinstance(t, (list, tuple)) else t,
        )
        for i, (t, n, li) in enumerate(zip(return_types, names, is_list))
    )
    function_name = cls.FUNCTION

    def run(instance: Any, kwargs: dict[str, Any]) -> Any:
        return getattr(instance, function_name)(**kwargs)

    fingerprint = None
    if hasattr(cls, "IS_CHANGED"):
        changed = cls.IS_CHANGED
        changed_takes = accepted_names(changed)

        def fingerprint(constants: dict[str, Any]) -> Any:
            return call_with_accepted(changed, changed_takes, constants)

    lazy_status = None
    if hasattr(cls, "check_lazy_status"):

        def lazy_status(instance: Any, inputs: dict[str, Any]) -> list[str]:
            return list(instance.check_lazy_status(**inputs) or [])

    return NodeSpec(
        class_type=class_type,
        input_source=lambda: _input_specs(class_type, cls.INPUT_TYPES()),
        outputs=outputs,
        run=run,
        create_instance=cls,
        display_name=display_name or class_type,
        category=getattr(cls, "CATEGORY", "sd"),
        description=getattr(cls, "DESCRIPTION", "") or "",
        python_module=getattr(cls, "RELATIVE_PYTHON_MODULE", python_module),
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        not_idempotent=bool(getattr(cls, "NOT_IDEMPOTENT", False)),
        deprecated=bool(getattr(cls, "DEPRECATED", False)),
        experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
        fingerprint=fingerprint,
        **custom_validation(getattr(cls, "VALIDATE_INPUTS", None)),
        lazy_status=lazy_status,
        output_tooltips=tooltips or None,
    )
