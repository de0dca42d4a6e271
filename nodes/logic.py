"""ComfyUI's logic and value nodes: a lazy switch, arithmetic, number conversion, image sizes, a combo.

Names, inputs, defaults and outputs follow ComfyUI's current V3 schemas (``comfy_extras/nodes_logic.py``,
``nodes_math.py``, ``nodes_number_convert.py``, ``nodes_resolution.py``) so workflows that use them run
unchanged. Three of ComfyUI's V3 input kinds have no counterpart in Loom's specs and are written as
ComfyUI's executor ends up seeing them:

- ``MatchType`` (the switch's branches and output): the socket type ``*``. ComfyUI's editor narrows
  the type once a link is made; Loom links any type, and the branches pass values through untouched.
- ``Autogrow`` (``ComfyMathExpression``'s ``values``): one socket per name the template allows,
  ``values.a`` .. ``values.z``, which is what ComfyUI's prompts carry; the first is required, as
  the template's ``min=1`` makes it in ComfyUI.
- ``accept_all_inputs`` (``CustomCombo``): inputs the prompt carries beyond the declared ones reach
  the node; the editor's selected ``index`` among them becomes the INDEX output.
"""

from __future__ import annotations

import inspect
import math
import string
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from graph.declare import SPEC_ATTRIBUTE, Boolean, Combo, Float, Int, Output, Socket, String, node, spec_of
from graph.signature import custom_validation
from graph.spec import InputSpec, NodeResult, NodeSpec
from graph.types import ANY, BOOLEAN, FLOAT, INT, STRING
from nodes.primitives import (
    MATH_EXPRESSION,
    ExpressionError,
    ExpressionLanguage,
    Number,
    bounded_power,
    evaluate_expression,
    parse_expression,
)

__all__ = [
    "COMFY_MATH",
    "ComfyMathExpression",
    "ComfyNumberConvert",
    "ComfySwitchNode",
    "CustomCombo",
    "ResolutionSelector",
    "comfy_math",
    "number_convert",
]

F = TypeVar("F", bound=Callable[..., Any])


def _experimental(function: F) -> F:
    """Mark a declared node experimental, as ComfyUI's schema flags it (``/object_info`` says so)."""
    spec_of(function).experimental = True
    return function


# -- Switch ----------------------------------------------------------------------------------------


def _switch_needs(switch: bool, on_false: Any = None, on_true: Any = None) -> list[str]:
    """Only the branch the switch selects is computed; the other one never runs."""
    if switch and on_true is None:
        return ["on_true"]
    if not switch and on_false is None:
        return ["on_false"]
    return []


@_experimental
@node(category="logic", display_name="Switch", outputs=[Output(ANY, "output")], lazy_status=_switch_needs)
def ComfySwitchNode(
    switch=Boolean(False),
    on_false=Socket(ANY, lazy=True),
    on_true=Socket(ANY, lazy=True),
):
    """Pass on_true when switch is on, on_false when it is off; only the selected side is computed."""
    return on_true if switch else on_false


# -- ComfyMathExpression ----------------------------------------------------------------------------

#: The names ComfyUI's autogrow template offers, in order: ``values.a`` .. ``values.z`` in a prompt.
VALUE_NAMES = tuple(string.ascii_lowercase)
_VALUE_PREFIX = "values."


def _sum(*numbers: Any) -> Any:
    """``sum(values)`` and ``sum(a, b, c)`` alike, as ComfyUI's expression node offers both."""
    if len(numbers) == 1 and isinstance(numbers[0], tuple):
        return sum(numbers[0])
    return sum(numbers)


#: ComfyUI's expression language on Loom's evaluator: a..z are the connected values and ``values`` all
#: of them in input order; ``e`` is the fifth value there, so of the constants only pi and tau remain.
COMFY_MATH = ExpressionLanguage(
    variables=(*VALUE_NAMES, "values"),
    constants={name: MATH_EXPRESSION.constants[name] for name in ("pi", "tau")},
    functions={**MATH_EXPRESSION.functions, "sum": _sum, "pow": bounded_power, "int": int, "float": float},
    names_hint="use a..z (the connected values), values (all of them), pi or tau",
)


def comfy_math(expression: str, values: Mapping[str, Any]) -> tuple[float, int]:
    """(FLOAT, INT) of ``expression`` with ``values`` (``a``..``z`` to numbers) bound, as ComfyUI returns them.

    A result that is not a number (``values`` alone) or not finite is an ``ExpressionError``, a
    ``ValueError`` that names the expression.
    """
    if not expression.strip():
        raise ExpressionError(expression, "the expression is empty")
    numbers = {name: values[name] for name in VALUE_NAMES if values.get(name) is not None}
    result = evaluate_expression(expression, {**numbers, "values": tuple(numbers.values())}, COMFY_MATH)
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise ExpressionError(expression, f"the result is not a number but {type(result).__name__} {result!r}")
    try:
        as_float = float(result)
    except OverflowError:
        raise ExpressionError(expression, "the result is too large for a FLOAT") from None
    if not math.isfinite(as_float):
        raise ExpressionError(expression, f"the result {as_float} is not a finite number")
    return as_float, int(result)


def _validate_comfy_expression(expression: str | None = None) -> bool | str:
    """A malformed expression is reported when the prompt is queued rather than when it runs."""
    if expression is None:
        return True
    if not expression.strip():
        return str(ExpressionError(expression, "the expression is empty"))
    try:
        parse_expression(expression, COMFY_MATH)
    except ExpressionError as error:
        return str(error)
    return True


def ComfyMathExpression(expression: str = "a + b", values: Mapping[str, Number] | None = None) -> tuple[float, int]:
    """Arithmetic on the connected values a, b, c ... (values is all of them): + - * / // % **,
    parentheses, pi, tau, and abs min max sum round floor ceil trunc sqrt exp log log2 log10 sin cos
    tan atan2 pow int float. FLOAT is the result, INT drops its fraction (towards zero)."""
    return comfy_math(expression, values or {})


def _math_inputs() -> tuple[InputSpec, ...]:
    # ComfyUI's template requires its first name (min=1); the others appear as they are connected.
    sockets = (
        Socket("FLOAT,INT", optional=index > 0).to_spec(_VALUE_PREFIX + name) for index, name in enumerate(VALUE_NAMES)
    )
    return (String("a + b", multiline=True).to_spec("expression"), *sockets)


def _run_math(_instance: Any, inputs: dict[str, Any]) -> NodeResult:
    # A prompt carries ``values.a`` ...; a pack calling ComfyUI's ``execute(expression, values)`` a dict.
    values = dict(inputs.get("values") or {})
    values.update(
        (name[len(_VALUE_PREFIX) :], value) for name, value in inputs.items() if name.startswith(_VALUE_PREFIX)
    )
    return NodeResult(values=ComfyMathExpression(inputs["expression"], values))


setattr(
    ComfyMathExpression,
    SPEC_ATTRIBUTE,
    NodeSpec(
        class_type="ComfyMathExpression",
        input_source=_math_inputs,
        outputs=(Output(FLOAT, "FLOAT").to_spec(), Output(INT, "INT").to_spec()),
        run=_run_math,
        display_name="Math Expression",
        category="logic",
        description=inspect.cleandoc(ComfyMathExpression.__doc__ or ""),
        python_module=__name__,
        **custom_validation(_validate_comfy_expression),
    ),
)


# -- ComfyNumberConvert ------------------------------------------------------------------------------


def number_convert(value: Any) -> tuple[float, int]:
    """(FLOAT, INT) of an INT, FLOAT, BOOLEAN or numeric STRING, as ComfyUI converts them.

    A string keeps its exact integer when it is one (``"12345678901234567890"``), else the float's
    integer part; true is 1. Anything else, or a value with no finite float, is a ``ValueError``.
    """
    if isinstance(value, bool):
        return float(value), int(value)
    if isinstance(value, int):
        try:
            return float(value), value
        except OverflowError:
            raise ValueError(f"value {value} is too large for a FLOAT") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"value {value} is not a finite number")
        return value, int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("value is an empty string, not a number")
        try:
            as_float = float(text)
        except ValueError:
            raise ValueError(f"value {value!r} is not a number") from None
        if not math.isfinite(as_float):
            raise ValueError(f"value {value!r} is not a finite number")
        try:
            return as_float, int(text)
        except ValueError:
            return as_float, int(as_float)
    raise ValueError(f"value must be an INT, FLOAT, STRING or BOOLEAN, not {type(value).__name__}")


@node(category="math", display_name="Number Convert", outputs=[Output(FLOAT, "FLOAT"), Output(INT, "INT")])
def ComfyNumberConvert(value=Socket(f"{INT},{FLOAT},{STRING},{BOOLEAN}")):
    """A number, a true/false or a numeric text as FLOAT and INT (the INT drops the fraction)."""
    return number_convert(value)


# -- ResolutionSelector --------------------------------------------------------------------------------


#: ComfyUI's choices in its order (what workflows store), with their width and height ratios.
ASPECT_RATIOS: Mapping[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}


@node(
    category="utilities",
    display_name="Resolution Selector",
    outputs=[
        Output(INT, "width", tooltip="The width in pixels, a multiple of `multiple`."),
        Output(INT, "height", tooltip="The height in pixels, a multiple of `multiple`."),
    ],
)
def ResolutionSelector(
    aspect_ratio=Combo(list(ASPECT_RATIOS), default="1:1 (Square)", tooltip="Width to height."),
    megapixels=Float(
        1.0, min=0.1, max=16.0, step=0.1, tooltip="Pixels in all, in units of 1024 x 1024 (1.0 is 1024 x 1024 square)."
    ),
    multiple=Int(8, min=8, max=128, step=4, advanced=True, tooltip="Both sides are rounded to a multiple of this."),
):
    """Width and height for an aspect ratio and a pixel count, to size an empty latent."""
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"aspect_ratio {aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
    if not megapixels > 0:
        raise ValueError(f"megapixels must be above 0, not {megapixels}")
    if multiple < 1:
        raise ValueError(f"multiple must be 1 or more, not {multiple}")
    w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
    # Python's round (half to even), as ComfyUI computes it.
    return round(w_ratio * scale / multiple) * multiple, round(h_ratio * scale / multiple) * multiple


# -- CustomCombo ----------------------------------------------------------------------------------------


def _any_choice(choice: Any = None) -> bool:
    """The options are the user's own (written in ComfyUI's editor), so any choice is valid."""
    return True


def CustomCombo(choice: str, index: int = 0, **editor_widgets: Any) -> tuple[str, int]:
    """A choice among options the user writes; outputs the chosen text and its index."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"index must be a whole number, not {index!r}")
    return choice, index


def _run_custom_combo(_instance: Any, inputs: dict[str, Any]) -> NodeResult:
    # ComfyUI's accept_all_inputs: the editor's own widgets (the selected index, the options) arrive too.
    return NodeResult(values=CustomCombo(**inputs))


setattr(
    CustomCombo,
    SPEC_ATTRIBUTE,
    NodeSpec(
        class_type="CustomCombo",
        # Only ``choice`` is served, as ComfyUI serves it: the option widgets are its editor's.
        input_source=lambda: (Combo([]).to_spec("choice"),),
        outputs=(Output(STRING, "STRING").to_spec(), Output(INT, "INDEX").to_spec()),
        run=_run_custom_combo,
        display_name="Custom Combo",
        category="utils",
        description=inspect.cleandoc(CustomCombo.__doc__ or ""),
        python_module=__name__,
        experimental=True,
        accepts_all_inputs=True,
        **custom_validation(_any_choice),
    ),
)
