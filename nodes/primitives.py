"""Constants, arithmetic and text: the small nodes that wire values into widgets of other nodes.

``PrimitiveInt``..``PrimitiveBoolean``, ``StringConcatenate``, ``StringReplace`` and ``PreviewAny`` keep
ComfyUI's class and input names, so workflows that use them run unchanged. ``MathExpression`` is Loom's:
it evaluates arithmetic by walking a parsed syntax tree with a fixed set of operators and functions,
never ``eval``, because the expression arrives from any client that can queue a prompt. The same
evaluator serves ComfyUI's ``ComfyMathExpression`` (``nodes.logic``) with that node's names
(an ``ExpressionLanguage``).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graph.declare import Boolean, Float, Int, NodeOutput, Output, Socket, String, node

Number = int | float


@node(category="utils/primitive", display_name="Int", outputs=[Output("INT")])
def PrimitiveInt(value=Int(0, min=-sys.maxsize, max=sys.maxsize, control_after_generate=True)):
    """A whole number to wire into several widgets at once."""
    return value


@node(category="utils/primitive", display_name="Float", outputs=[Output("FLOAT")])
def PrimitiveFloat(value=Float(0.0, min=-sys.maxsize, max=sys.maxsize)):
    """A decimal number to wire into several widgets at once."""
    return value


@node(category="utils/primitive", display_name="String", outputs=[Output("STRING")])
def PrimitiveString(value=String("")):
    """One line of text to wire into several widgets at once."""
    return value


@node(category="utils/primitive", display_name="String (Multiline)", outputs=[Output("STRING")])
def PrimitiveStringMultiline(value=String("", multiline=True)):
    """A block of text to wire into several widgets at once."""
    return value


@node(category="utils/primitive", display_name="Boolean", outputs=[Output("BOOLEAN")])
def PrimitiveBoolean(value=Boolean(False)):
    """A switch to wire into several widgets at once."""
    return value


@node(category="utils/string", display_name="Concatenate", outputs=[Output("STRING")])
def StringConcatenate(string_a=String("", multiline=True), string_b=String("", multiline=True), delimiter=String("")):
    """Join two texts with a delimiter between them."""
    return f"{string_a}{delimiter}{string_b}"


@node(category="utils/string", display_name="Replace", outputs=[Output("STRING")])
def StringReplace(
    string=String("", multiline=True), find=String("", multiline=True), replace=String("", multiline=True)
):
    """Replace every occurrence of a text."""
    return string.replace(find, replace)


def _describe(value: Any) -> str:
    """Tensors (and anything else JSON cannot hold) as a one-line summary instead of their contents."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        device = getattr(value, "device", "cpu")
        return f"{type(value).__name__}(shape={list(value.shape)}, dtype={value.dtype}, device={device})"
    return repr(value)


def preview_text(value: Any) -> str:
    """How ``PreviewAny`` shows a value: text as is, numbers plainly, structures as indented JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return _describe(value)
    return json.dumps(value, indent=4, default=_describe)


@node(category="utils", display_name="Preview Any", output_node=True)
def PreviewAny(source=Socket("*")):
    """Show any value as text in the editor."""
    return NodeOutput(ui={"text": [preview_text(source)]})


class ExpressionError(ValueError):
    """An arithmetic expression that cannot be parsed or evaluated; ``column`` is 1-based when known."""

    def __init__(self, expression: str, reason: str, column: int | None = None) -> None:
        where = f" at column {column}" if column is not None else ""
        super().__init__(f"expression {expression!r}{where}: {reason}")
        self.expression = expression
        self.reason = reason
        self.column = column


MAX_EXPRESSION_LENGTH = 1000
#: Integer powers beyond this many bits would let one prompt stall the worker (``9**9**9``).
MAX_POWER_BITS = 4096
EXPRESSION_VARIABLES = ("a", "b", "c")
_CONSTANTS: Mapping[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_FUNCTIONS: Mapping[str, Callable[..., Number]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "trunc": math.trunc,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "atan2": math.atan2,
}


def bounded_power(base: Number, exponent: Number) -> Number:
    """``base ** exponent``, refused when an integer result would exceed ``MAX_POWER_BITS`` bits."""
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_POWER_BITS:
            raise OverflowError(f"{base} ** {exponent} has more than {MAX_POWER_BITS} bits")
    return base**exponent


@dataclass(frozen=True)
class ExpressionLanguage:
    """The names an expression may use: variables bound per evaluation, constants and functions.

    A variable may be bound to a tuple of numbers (``ComfyMathExpression``'s ``values``); such a value
    can only be handed to a function (``sum(values)``), never used in arithmetic.
    """

    variables: tuple[str, ...]
    constants: Mapping[str, float]
    functions: Mapping[str, Callable[..., Any]]
    #: How the error for an unknown name lists the known ones.
    names_hint: str


#: ``MathExpression``'s language: three operands and the constants pi, e and tau.
MATH_EXPRESSION = ExpressionLanguage(EXPRESSION_VARIABLES, _CONSTANTS, _FUNCTIONS, "use a, b, c, pi, e or tau")


_BINARY: Mapping[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: bounded_power,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def parse_expression(expression: str, language: ExpressionLanguage = MATH_EXPRESSION) -> ast.expr:
    """Parse and check that only numbers, the language's names, operators and its functions occur."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(expression[:40] + "...", f"longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        # The widget is multiline; line breaks are spacing, and columns count in the joined text.
        tree = ast.parse(" ".join(expression.splitlines()).strip(), mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(expression, error.msg or "invalid syntax", error.offset) from None
    except (MemoryError, RecursionError, ValueError):
        raise ExpressionError(expression, "too deeply nested or malformed") from None
    callees = {id(part.func) for part in ast.walk(tree) if isinstance(part, ast.Call)}
    for part in ast.walk(tree):
        _check_part(expression, part, id(part) in callees, language)
    return tree


def _check_part(expression: str, part: ast.AST, is_callee: bool, language: ExpressionLanguage) -> None:
    column = getattr(part, "col_offset", -1) + 1 or None
    if isinstance(part, ast.Constant):
        if isinstance(part.value, bool) or not isinstance(part.value, (int, float)):
            raise ExpressionError(expression, f"{part.value!r} is not a number", column)
    elif isinstance(part, ast.Name):
        if is_callee:
            return  # checked together with its call
        if part.id in language.functions and part.id not in language.variables:
            raise ExpressionError(expression, f"{part.id!r} is a function; call it with arguments", column)
        if part.id not in language.variables and part.id not in language.constants:
            raise ExpressionError(expression, f"unknown name {part.id!r}; {language.names_hint}", column)
    elif isinstance(part, ast.Call):
        if not isinstance(part.func, ast.Name) or part.func.id not in language.functions:
            known = ", ".join(language.functions)
            raise ExpressionError(expression, f"that is not a function; known ones: {known}", column)
        if part.keywords:
            raise ExpressionError(expression, f"{part.func.id}() takes plain arguments, not name=value", column)
    elif isinstance(part, ast.BinOp):
        if type(part.op) not in _BINARY:
            raise ExpressionError(expression, f"operator {type(part.op).__name__} is not supported", column)
    elif isinstance(part, ast.UnaryOp):
        if type(part.op) not in _UNARY:
            raise ExpressionError(expression, f"operator {type(part.op).__name__} is not supported", column)
    elif not isinstance(part, (ast.Load, ast.operator, ast.unaryop)):
        raise ExpressionError(expression, f"{type(part).__name__} is not allowed in arithmetic", column)


def evaluate_expression(
    expression: str, variables: Mapping[str, Any], language: ExpressionLanguage = MATH_EXPRESSION
) -> Any:
    """The value of ``expression`` with ``variables`` bound; every failure is an ``ExpressionError``.

    The value is a number unless the whole expression is a tuple-valued variable; callers check.
    """
    tree = parse_expression(expression, language)

    def operand(part: ast.expr) -> Number:
        found = value(part)
        if isinstance(found, bool) or not isinstance(found, (int, float)):
            # A tuple in arithmetic would be repetition (``values * 10**9``), never what was meant.
            where = f"{part.id!r}" if isinstance(part, ast.Name) else "that part"
            raise ExpressionError(
                expression, f"{where} is not a number; pass it to a function such as sum()", part.col_offset + 1
            )
        return found

    def value(part: ast.expr) -> Any:
        column = part.col_offset + 1
        if isinstance(part, ast.Constant):
            assert isinstance(part.value, (int, float))  # parse_expression admits number constants only
            return part.value
        if isinstance(part, ast.Name):
            if part.id in variables:
                return variables[part.id]
            if part.id in language.constants:
                return language.constants[part.id]
            raise ExpressionError(expression, f"{part.id!r} is used but not connected", column)
        if isinstance(part, ast.UnaryOp):
            return _UNARY[type(part.op)](operand(part.operand))
        if isinstance(part, ast.BinOp):
            return _BINARY[type(part.op)](operand(part.left), operand(part.right))
        assert isinstance(part, ast.Call) and isinstance(part.func, ast.Name)
        return language.functions[part.func.id](*(value(argument) for argument in part.args))

    try:
        return value(tree)
    except ExpressionError:
        raise
    except (ArithmeticError, ValueError, TypeError) as error:
        raise ExpressionError(expression, str(error)) from None


def validate_expression(expression: str | None = None) -> bool | str:
    """Report a malformed expression when the prompt is queued rather than when it runs."""
    if expression is None:
        return True
    try:
        parse_expression(expression)
    except ExpressionError as error:
        return str(error)
    return True


@node(
    category="utils/math",
    display_name="Math Expression",
    outputs=[Output("INT"), Output("FLOAT")],
    validate=validate_expression,
)
def MathExpression(
    expression=String("a + b", multiline=True),
    a=Socket("INT,FLOAT", optional=True),
    b=Socket("INT,FLOAT", optional=True),
    c=Socket("INT,FLOAT", optional=True),
):
    """Arithmetic on up to three numbers: + - * / // % **, parentheses, pi, e, and
    abs min max round floor ceil trunc sqrt exp log log2 log10 sin cos tan atan2.
    The INT output drops the fraction (towards zero)."""
    # Unconnected optional sockets may arrive as None or not at all; only numbers are bound.
    variables = {
        name: operand for name, operand in zip(EXPRESSION_VARIABLES, (a, b, c)) if isinstance(operand, (int, float))
    }
    result = evaluate_expression(expression, variables)
    try:
        as_float = float(result)
    except OverflowError:
        raise ExpressionError(expression, "the result is too large for a FLOAT") from None
    if not math.isfinite(as_float):
        raise ExpressionError(expression, f"the result {as_float} is not a finite number")
    return int(result), as_float
