"""Primitive, string, preview and arithmetic nodes."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph.declare import spec_of
from nodes.primitives import (
    ExpressionError,
    MathExpression,
    PreviewAny,
    PrimitiveBoolean,
    PrimitiveFloat,
    PrimitiveInt,
    PrimitiveString,
    PrimitiveStringMultiline,
    StringConcatenate,
    StringReplace,
    evaluate_expression,
    validate_expression,
)


def test_primitive_interfaces_match_comfyui() -> None:
    expected = {
        PrimitiveInt: (
            "Int",
            ["INT", {"default": 0, "min": -sys.maxsize, "max": sys.maxsize, "control_after_generate": True}],
            "INT",
        ),
        PrimitiveFloat: ("Float", ["FLOAT", {"default": 0.0, "min": -sys.maxsize, "max": sys.maxsize}], "FLOAT"),
        PrimitiveString: ("String", ["STRING", {"default": ""}], "STRING"),
        PrimitiveStringMultiline: ("String (Multiline)", ["STRING", {"default": "", "multiline": True}], "STRING"),
        PrimitiveBoolean: ("Boolean", ["BOOLEAN", {"default": False}], "BOOLEAN"),
    }
    for function, (display_name, entry, output) in expected.items():
        info = spec_of(function).object_info()
        assert info["input"] == {"required": {"value": entry}}, function.__name__
        assert (info["display_name"], info["category"], info["output"]) == (display_name, "utils/primitive", [output])


def test_primitives_pass_their_value_through() -> None:
    assert PrimitiveInt(value=-3) == -3
    assert PrimitiveFloat(value=0.25) == 0.25
    assert PrimitiveString(value="a cat") == "a cat"
    assert PrimitiveStringMultiline(value="a\ncat") == "a\ncat"
    assert PrimitiveBoolean(value=True) is True


def test_string_nodes() -> None:
    assert spec_of(StringConcatenate).object_info()["input_order"] == {
        "required": ["string_a", "string_b", "delimiter"]
    }
    assert spec_of(StringReplace).object_info()["input_order"] == {"required": ["string", "find", "replace"]}
    assert StringConcatenate(string_a="a cat", string_b="a hat", delimiter=", ") == "a cat, a hat"
    assert StringConcatenate(string_a="x", string_b="y", delimiter="") == "xy"
    assert StringReplace(string="red, red car", find="red", replace="blue") == "blue, blue car"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (3, "3"),
        (2.5, "2.5"),
        (True, "True"),
        (None, "None"),
        ({"a": [1, 2]}, '{\n    "a": [\n        1,\n        2\n    ]\n}'),
        (torch.zeros(1, 4, 8, 8), "Tensor(shape=[1, 4, 8, 8], dtype=torch.float32, device=cpu)"),
    ],
)
def test_preview_any_shows_values_as_text(value: object, text: str) -> None:
    result = spec_of(PreviewAny).run(None, {"source": value})
    assert result.ui == {"text": [text]} and result.values == ()
    assert spec_of(PreviewAny).output_node


def test_preview_any_summarises_tensors_inside_structures() -> None:
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    assert "Tensor(shape=[2, 4, 8, 8]" in PreviewAny(source=latent).ui["text"][0]


def test_math_expression_interface() -> None:
    info = spec_of(MathExpression).object_info()
    assert info["input"] == {
        "required": {"expression": ["STRING", {"default": "a + b", "multiline": True}]},
        "optional": {"a": ["INT,FLOAT"], "b": ["INT,FLOAT"], "c": ["INT,FLOAT"]},
    }
    assert info["output"] == ["INT", "FLOAT"]


@pytest.mark.parametrize(
    ("expression", "a", "b", "c", "expected"),
    [
        ("a + b", 2, 3, None, (5, 5.0)),
        ("a / b", 5, 2, None, (2, 2.5)),
        ("-7 / 2", None, None, None, (-3, -3.5)),
        ("a // b + a % b", 7, 3, None, (3, 3.0)),
        ("2 ** 10 - c", None, None, 24, (1000, 1000.0)),
        ("(a + b) * c", 1, 2, 1.5, (4, 4.5)),
        ("max(a, b, 3) + min(1, 2)", 1, 2, None, (4, 4.0)),
        ("round(pi, 2) * 100", None, None, None, (314, 314.0)),
        ("sqrt(a) + floor(2.7) + ceil(0.1) + abs(-1)", 16, None, None, (8, 8.0)),
        ("  a * 8  ", 64, None, None, (512, 512.0)),
        ("a *\n  (b + 1)\n", 2, 3, None, (8, 8.0)),
    ],
)
def test_math_expression_evaluates(
    expression: str, a: object, b: object, c: object, expected: tuple[int, float]
) -> None:
    assert MathExpression(expression=expression, a=a, b=b, c=c) == expected


def test_unconnected_operands_may_arrive_as_their_declarations() -> None:
    # A front door that leaves unconnected optional inputs out hands the function its declared default.
    assert MathExpression(expression="a * 2", a=4) == (8, 8.0)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("a.__class__", "Attribute is not allowed"),
        ("__import__('os')", "not a function"),
        ("open('x')", "not a function"),
        ("'text' * 3", "'text' is not a number"),
        ("lambda: 1", "Lambda is not allowed"),
        ("a < b", "Compare is not allowed"),
        ("[1, 2][0]", "not allowed"),
        ("d + 1", "unknown name 'd'"),
        ("abs + 1", "'abs' is a function"),
        ("max(*a)", "Starred is not allowed"),
        ("round(x=1)", "round\\(\\) takes plain arguments"),
        ("True + 1", "True is not a number"),
        ("a +", "column"),
        ("1" * 1001, "longer than 1000"),
    ],
)
def test_anything_but_arithmetic_is_refused(expression: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        evaluate_expression(expression, {"a": 1, "b": 2})
    assert reason in str(validate_expression(expression)) or "column" in str(validate_expression(expression))


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("a + b", "'b' is used but not connected"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "math domain error"),
        ("9 ** 9 ** 9", "more than 4096 bits"),
        ("10.0 ** 400", "Numerical result out of range"),
        ("2 ** 2000", "too large for a FLOAT"),
        ("exp(1000) - exp(1000)", "range"),
    ],
)
def test_evaluation_failures_name_the_expression_and_reason(expression: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason) as caught:
        MathExpression(expression=expression, a=1, b=None, c=None)
    assert caught.value.expression == expression


def test_validation_accepts_good_and_linked_expressions() -> None:
    assert validate_expression("a * (b + 1)") is True
    assert validate_expression(None) is True
    assert spec_of(MathExpression).validate_takes == frozenset({"expression"})


_NUMBERS = st.integers(min_value=-50, max_value=50).map(str)
_EXPRESSIONS = st.recursive(
    _NUMBERS | st.sampled_from(["a", "b", "c"]),
    lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(_EXPRESSIONS, st.integers(-9, 9), st.integers(-9, 9), st.integers(-9, 9))
def test_integer_arithmetic_agrees_with_python(expression: str, a: int, b: int, c: int) -> None:
    # The test's own generated strings are safe to hand to Python, which defines the expected value.
    expected = eval(expression, {"__builtins__": {}}, {"a": a, "b": b, "c": c})
    assert evaluate_expression(expression, {"a": a, "b": b, "c": c}) == expected
