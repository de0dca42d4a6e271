"""Loom's declarative node API: a node type is one decorated function.

Each parameter's default value declares that input (its type, widget constraints, whether it is
optional, lazy or hidden), so a name is written once and the order of parameters is the order of
sockets and widgets. The docstring is the description shown in the editor::

    @node(category="image/transform", outputs=[Output("IMAGE")])
    def ImageScaleBy(
        image=Socket("IMAGE"),
        upscale_method=Combo(["nearest-exact", "bilinear", "area"]),
        scale_by=Float(1.0, min=0.01, max=8.0, step=0.01),
    ):
        \"\"\"Resize an image by a factor.\"\"\"
        return resize(image, upscale_method, scale_by)

Return the value for a one-output node, a tuple for several, or ``NodeOutput(..., ui=...)`` to also
send UI data (images to show). The decorated function stays a plain callable, so it can be tested
directly; its spec is attached as ``__loom_spec__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graph.signature import accepted_names, call_with_accepted, custom_validation
from graph.spec import InputSpec, NodeDefinitionError, NodeResult, NodeSpec, OutputSpec, Section
from graph.types import BOOLEAN, COMBO, FLOAT, INT, STRING

SPEC_ATTRIBUTE = "__loom_spec__"
_NO_DEFAULT = object()

#: Python-style option names and the wire names ComfyUI clients read.
_WIRE_NAMES = {
    "force_input": "forceInput",
    "default_input": "defaultInput",
    "control_after_generate": "control_after_generate",
    "image_upload": "image_upload",
    "dynamic_prompts": "dynamicPrompts",
    "label_on": "label_on",
    "label_off": "label_off",
    "raw_link": "rawLink",
}


class Input:
    """Base of the input declarations; ``options`` are served to clients as they are."""

    type: str = ""

    def __init__(
        self, *, default: Any = _NO_DEFAULT, optional: bool = False, tooltip: str | None = None, **options: Any
    ) -> None:
        self.optional = optional
        self.options: dict[str, Any] = {} if default is _NO_DEFAULT else {"default": default}
        if tooltip is not None:
            self.options["tooltip"] = tooltip
        for key, value in options.items():
            if value is not None and value is not False:
                self.options[_WIRE_NAMES.get(key, key)] = value

    def section(self) -> Section:
        return "optional" if self.optional else "required"

    def to_spec(self, name: str) -> InputSpec:
        return InputSpec(
            name=name, type=self.type, section=self.section(), options=dict(self.options), declared=self.type
        )


class Socket(Input):
    """A wired input of any type (``"MODEL"``, ``"IMAGE"``, ``"*"``, ``"IMAGE,MASK"``...)."""

    def __init__(
        self, type_: str, *, optional: bool = False, lazy: bool = False, tooltip: str | None = None, **options: Any
    ) -> None:
        super().__init__(optional=optional, tooltip=tooltip, lazy=lazy, **options)
        self.type = type_


class Int(Input):
    type = INT

    def __init__(
        self,
        default: int = 0,
        *,
        min: int | None = None,
        max: int | None = None,
        step: int | None = None,
        control_after_generate: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(
            default=default, min=min, max=max, step=step, control_after_generate=control_after_generate, **options
        )


class Float(Input):
    type = FLOAT

    def __init__(
        self,
        default: float = 0.0,
        *,
        min: float | None = None,
        max: float | None = None,
        step: float | None = None,
        round: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(default=default, min=min, max=max, step=step, round=round, **options)


class String(Input):
    type = STRING

    def __init__(self, default: str = "", *, multiline: bool = False, **options: Any) -> None:
        super().__init__(default=default, multiline=multiline, **options)


class Boolean(Input):
    type = BOOLEAN

    def __init__(self, default: bool = False, **options: Any) -> None:
        super().__init__(default=default, **options)


class Combo(Input):
    """A choice among values; ``choices`` may be a callable so lists of model files stay current."""

    type = COMBO

    def __init__(
        self, choices: Sequence[Any] | Callable[[], Sequence[Any]], *, default: Any = None, **options: Any
    ) -> None:
        super().__init__(default=_NO_DEFAULT if default is None else default, **options)
        self.choices = choices

    def to_spec(self, name: str) -> InputSpec:
        choices = tuple(self.choices() if callable(self.choices) else self.choices)
        return InputSpec(
            name=name,
            type=COMBO,
            section=self.section(),
            options=dict(self.options),
            choices=choices,
            declared=list(choices),
        )


class Hidden(Input):
    """A value the executor supplies: ``PROMPT``, ``EXTRA_PNGINFO``, ``UNIQUE_ID`` or ``DYNPROMPT``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.type = kind

    def section(self) -> Section:
        return "hidden"


@dataclass(frozen=True)
class Output:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    def to_spec(self) -> OutputSpec:
        return OutputSpec(
            type=self.type, name=self.name or self.type, is_list=self.is_list, tooltip=self.tooltip, declared=self.type
        )


class NodeOutput:
    """Several output values plus optional UI data (``{"images": [...]}``, ``{"text": [...]}``)."""

    def __init__(
        self, *values: Any, ui: dict[str, list[Any]] | None = None, expand: dict[str, Any] | None = None
    ) -> None:
        self.values = values
        self.ui = ui
        self.expand = expand


def _declared_inputs(function: Callable[..., Any], class_type: str) -> list[tuple[str, Input]]:
    declared = []
    for parameter in inspect.signature(function).parameters.values():
        if not isinstance(parameter.default, Input):
            raise NodeDefinitionError(
                class_type, f"parameter {parameter.name!r} needs an input declaration as its default"
            )
        declared.append((parameter.name, parameter.default))
    return declared


def _hook(function: Callable[..., Any] | None) -> Callable[[dict[str, Any]], Any] | None:
    if function is None:
        return None
    accepted = accepted_names(function)
    return lambda values: call_with_accepted(function, accepted, values)


def node(
    *,
    outputs: Sequence[Output] = (),
    category: str = "loom",
    display_name: str | None = None,
    class_type: str | None = None,
    description: str | None = None,
    output_node: bool = False,
    input_is_list: bool = False,
    not_idempotent: bool = False,
    fingerprint: Callable[..., Any] | None = None,
    validate: Callable[..., Any] | None = None,
    lazy_status: Callable[..., Sequence[str]] | None = None,
    python_module: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a node type. Hooks take keyword arguments by input name, like the node function.

    ``fingerprint(**constants)`` joins the cache key (return a file hash, say); ``validate(**constants)``
    returns ``True`` or an error message; ``lazy_status(**inputs)`` returns the names of lazy inputs
    still needed (unevaluated ones arrive as ``None``).
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        name = class_type or function.__name__
        declared = _declared_inputs(function, name)
        output_specs = tuple(out.to_spec() for out in outputs)

        def run(_instance: Any, kwargs: dict[str, Any]) -> NodeResult:
            # An absent optional input must not reach the function as its declaration object.
            call_kwargs = {pname: declaration.options.get("default") for pname, declaration in declared}
            call_kwargs.update(kwargs)
            returned = function(**call_kwargs)
            if isinstance(returned, NodeOutput):
                return NodeResult(values=returned.values, ui=returned.ui, expand=returned.expand)
            if len(output_specs) == 1:
                return NodeResult(values=(returned,))
            if returned is None and not output_specs:
                return NodeResult(values=())
            return NodeResult(values=tuple(returned))

        lazy_hook = _hook(lazy_status)
        spec = NodeSpec(
            class_type=name,
            input_source=lambda: tuple(declaration.to_spec(pname) for pname, declaration in declared),
            outputs=output_specs,
            run=run,
            display_name=display_name or name,
            category=category,
            description=description if description is not None else inspect.cleandoc(function.__doc__ or ""),
            python_module=python_module or function.__module__,
            output_node=output_node,
            input_is_list=input_is_list,
            not_idempotent=not_idempotent,
            fingerprint=_hook(fingerprint),
            **custom_validation(validate),
            lazy_status=(lambda _instance, inputs: list(lazy_hook(inputs) or [])) if lazy_hook else None,
        )
        setattr(function, SPEC_ATTRIBUTE, spec)
        return function

    return decorate


def spec_of(function: Callable[..., Any]) -> NodeSpec:
    """The spec attached by ``@node``; raises ``NodeDefinitionError`` for an undecorated function."""
    spec = getattr(function, SPEC_ATTRIBUTE, None)
    if not isinstance(spec, NodeSpec):
        raise NodeDefinitionError(getattr(function, "__name__", repr(function)), "is not declared with @node")
    return spec
