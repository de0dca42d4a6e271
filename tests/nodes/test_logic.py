"""ComfyUI's logic and value nodes (nodes/logic.py): their interfaces as ComfyUI declares them, and their values.

The spec table below was checked against ComfyUI's current V3 schemas (comfy_extras/nodes_logic.py,
nodes_math.py, nodes_number_convert.py, nodes_resolution.py). Where a V3 input kind has no Loom
counterpart the entry is what ComfyUI's prompts carry (see nodes/logic.py): ``MatchType`` is ``*``,
the ``values`` autogrow is ``values.a`` .. ``values.z``, ``CustomCombo``'s editor widgets are not served.
"""

from __future__ import annotations

import math
import string
from typing import Any

import pytest

from graph.declare import Int, NodeOutput, Output, Socket, node, spec_of
from graph.execution_state import NodeState
from graph.executor import Executor
from graph.formats.editor import editor_to_api
from graph.registry import NodeRegistry
from graph.validation import validate_prompt
from nodes import logic, primitives
from nodes.logic import (
    ComfyMathExpression,
    ComfyNumberConvert,
    ComfySwitchNode,
    CustomCombo,
    ResolutionSelector,
    comfy_math,
)
from nodes.primitives import ExpressionError

ASPECT_RATIOS = [
    "1:1 (Square)",
    "3:2 (Photo)",
    "4:3 (Standard)",
    "16:9 (Widescreen)",
    "21:9 (Ultrawide)",
    "2:3 (Portrait Photo)",
    "3:4 (Portrait Standard)",
    "9:16 (Portrait Widescreen)",
]
_VALUES = {f"values.{name}": ["FLOAT,INT"] for name in string.ascii_lowercase}

#: class -> (display name, category, {section: {input: /object_info entry}}, outputs, output names, experimental).
#: Tooltips are Loom's own wording and left out of the comparison.
SPEC_TABLE: dict[str, tuple[str, str, dict[str, dict[str, Any]], list[str], list[str], bool]] = {
    "ComfySwitchNode": (
        "Switch",
        "logic",
        {
            "required": {
                "switch": ["BOOLEAN", {"default": False}],
                "on_false": ["*", {"lazy": True}],
                "on_true": ["*", {"lazy": True}],
            }
        },
        ["*"],
        ["output"],
        True,
    ),
    "ComfyMathExpression": (
        "Math Expression",
        "logic",
        {
            "required": {"expression": ["STRING", {"default": "a + b", "multiline": True}], "values.a": ["FLOAT,INT"]},
            "optional": {name: entry for name, entry in _VALUES.items() if name != "values.a"},
        },
        ["FLOAT", "INT"],
        ["FLOAT", "INT"],
        False,
    ),
    "ComfyNumberConvert": (
        "Number Convert",
        "math",
        {"required": {"value": ["INT,FLOAT,STRING,BOOLEAN"]}},
        ["FLOAT", "INT"],
        ["FLOAT", "INT"],
        False,
    ),
    "ResolutionSelector": (
        "Resolution Selector",
        "utilities",
        {
            "required": {
                "aspect_ratio": [ASPECT_RATIOS, {"default": "1:1 (Square)"}],
                "megapixels": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 16.0, "step": 0.1}],
                "multiple": ["INT", {"default": 8, "min": 8, "max": 128, "step": 4, "advanced": True}],
            }
        },
        ["INT", "INT"],
        ["width", "height"],
        False,
    ),
    "CustomCombo": (
        "Custom Combo",
        "utils",
        {"required": {"choice": [[]]}},
        ["STRING", "INT"],
        ["STRING", "INDEX"],
        True,
    ),
}


def _without_tooltips(entry: list[Any]) -> list[Any]:
    if len(entry) == 2 and isinstance(entry[1], dict):
        options = {key: value for key, value in entry[1].items() if key != "tooltip"}
        return [entry[0], options] if options else [entry[0]]
    return entry


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    registry.register_module(primitives)
    registry.register_module(logic)
    for test_node in (Recorder, Boom, Constant):
        registry.register(spec_of(test_node))
    return registry


def test_the_module_registers_exactly_the_table(registry: NodeRegistry) -> None:
    fresh = NodeRegistry()
    assert sorted(fresh.register_module(logic)) == sorted(SPEC_TABLE)


@pytest.mark.parametrize("class_type", sorted(SPEC_TABLE))
def test_object_info_matches_comfyui(registry: NodeRegistry, class_type: str) -> None:
    display, category, inputs, outputs, names, experimental = SPEC_TABLE[class_type]
    info = registry.object_info()[class_type]
    served = {
        section: {name: _without_tooltips(entry) for name, entry in entries.items()}
        for section, entries in info["input"].items()
    }
    assert served == inputs
    assert info["input_order"] == {section: list(entries) for section, entries in inputs.items()}
    assert (info["display_name"], info["category"], info["output"], info["output_name"]) == (
        display,
        category,
        outputs,
        names,
    )
    assert info["output_is_list"] == [False] * len(outputs) and info["output_node"] is False
    assert info.get("experimental", False) is experimental


# -- the switch ------------------------------------------------------------------------------------

RAN: list[str] = []


@node(outputs=[Output("INT")])
def Recorder(value=Int(0)):
    RAN.append(f"Recorder {value}")
    return value


@node(outputs=[Output("INT")])
def Boom(value=Int(0)):
    RAN.append("Boom")
    raise RuntimeError("the branch the switch did not select must never run")


@node(output_node=True)
def Constant(value=Socket("*")):
    RAN.append(f"Constant {value}")
    return NodeOutput(ui={"value": [value]})


def _switch_prompt(switch: Any, on_true: str, on_false: str) -> dict[str, Any]:
    return {
        "t": {"class_type": on_true, "inputs": {"value": 1}},
        "f": {"class_type": on_false, "inputs": {"value": 2}},
        "s": {"class_type": "ComfySwitchNode", "inputs": {"switch": switch, "on_true": ["t", 0], "on_false": ["f", 0]}},
        "out": {"class_type": "Constant", "inputs": {"value": ["s", 0]}},
    }


def _run(registry: NodeRegistry, prompt: dict[str, Any]) -> Any:
    RAN.clear()
    checked = validate_prompt(prompt, registry)
    assert checked.ok, (checked.error, checked.node_errors)
    return Executor(registry).execute(checked.prompt, checked.outputs, prompt_id="p")


@pytest.mark.parametrize(
    ("switch", "on_true", "on_false", "shown"), [(True, "Recorder", "Boom", 1), (False, "Boom", "Recorder", 2)]
)
def test_the_switch_never_runs_the_branch_it_does_not_select(
    registry: NodeRegistry, switch: bool, on_true: str, on_false: str, shown: int
) -> None:
    record = _run(registry, _switch_prompt(switch, on_true, on_false))
    assert record.error is None, record.error
    assert "Boom" not in RAN and RAN == [f"Recorder {shown}", f"Constant {shown}"]
    skipped = "f" if switch else "t"
    assert record.node_states[skipped] is NodeState.SKIPPED and skipped not in record.executed
    assert record.outputs["out"] == {"value": [shown]}


def test_a_linked_switch_is_computed_first_and_selects_lazily(registry: NodeRegistry) -> None:
    prompt = _switch_prompt(["b", 0], "Boom", "Recorder")
    prompt["b"] = {"class_type": "PrimitiveBoolean", "inputs": {"value": False}}
    record = _run(registry, prompt)
    assert record.error is None and "Boom" not in RAN and record.outputs["out"] == {"value": [2]}


def test_the_switch_passes_any_value_through_and_asks_for_one_branch() -> None:
    picture = object()
    assert ComfySwitchNode(switch=True, on_true=picture, on_false=None) is picture
    assert ComfySwitchNode(switch=False, on_true=None, on_false="text") == "text"
    ask = spec_of(ComfySwitchNode).lazy_status
    assert ask is not None
    assert ask(None, {"switch": True, "on_true": None, "on_false": None}) == ["on_true"]
    assert ask(None, {"switch": False, "on_true": None, "on_false": None}) == ["on_false"]
    assert ask(None, {"switch": True, "on_true": 3, "on_false": None}) == []


# -- ComfyMathExpression -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "values", "expected"),
    [
        ("a + b", {"a": 2, "b": 3}, (5.0, 5)),
        ("a / 2", {"a": 1024}, (512.0, 512)),
        ("-7 / 2", {}, (-3.5, -3)),
        (
            "max(5, round(a * 24)) + (5 - (max(5, round(a * 24)) % 17)) % 17",
            {"a": 5.0},
            (124.0, 124),
        ),  # 120 + (5 - 120 % 17) % 17
        ("sum(values) / 3", {"a": 1, "b": 2, "c": 6}, (3.0, 3)),
        ("sum(a, b)", {"a": 1.5, "b": 2}, (3.5, 3)),
        ("min(values) * max(values)", {"a": 4, "c": -2}, (-8.0, -8)),
        ("e * z", {"e": 2, "z": 3.5}, (7.0, 7)),  # e is the fifth value, not Euler's number
        ("pow(2, 10) + int(2.9) + float(1)", {}, (1027.0, 1027)),
        ("round(pi * 100)", {}, (314.0, 314)),
        ("a *\n (b + 1)", {"a": 2, "b": 3}, (8.0, 8)),
    ],
)
def test_math_expression_values(expression: str, values: dict[str, Any], expected: tuple[float, int]) -> None:
    result = ComfyMathExpression(expression, values)
    assert result == expected
    assert type(result[0]) is float and type(result[1]) is int


def test_math_expression_reads_the_inputs_comfyui_prompts_carry() -> None:
    run = spec_of(ComfyMathExpression).run
    result = run(None, {"expression": "a * b - c", "values.a": 3, "values.b": 4.0, "values.c": 2})
    assert result.values == (10.0, 10)
    # ComfyUI's own method takes the autogrow values as one dict: execute(expression, values).
    assert run(None, {"expression": "a * b", "values": {"a": 3, "b": 4}}).values == (12.0, 12)


def test_math_expression_runs_as_comfyui_writes_it(registry: NodeRegistry) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveFloat", "inputs": {"value": 5.0}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 24}},
        "3": {
            "class_type": "ComfyMathExpression",
            "inputs": {"expression": "a * b", "values.a": ["1", 0], "values.b": ["2", 0]},
        },
        "4": {"class_type": "Constant", "inputs": {"value": ["3", 1]}},
        "5": {"class_type": "Constant", "inputs": {"value": ["3", 0]}},
    }
    record = _run(registry, prompt)
    assert record.error is None, record.error
    assert record.outputs["4"] == {"value": [120]} and record.outputs["5"] == {"value": [120.0]}


@pytest.mark.parametrize(
    ("expression", "values", "reason"),
    [
        ("", {}, "the expression is empty"),
        ("   ", {"a": 1}, "the expression is empty"),
        ("values", {"a": 1}, "not a number but tuple"),
        ("values * 3", {"a": 1}, "'values' is not a number"),
        ("a + c", {"a": 1}, "'c' is used but not connected"),
        ("a < b", {"a": 1, "b": 2}, "Compare is not allowed"),
        ("aa + 1", {}, "unknown name 'aa'"),
        ("1 / 0", {}, "division by zero"),
        ("2.0 ** 2000", {}, "out of range"),
        ("pow(9, 99999)", {}, "more than 4096 bits"),
        ("__import__('os')", {}, "not a function"),
    ],
)
def test_math_expression_errors_name_the_expression(expression: str, values: dict[str, Any], reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason) as caught:
        comfy_math(expression, values)
    assert isinstance(caught.value, ValueError) and str(caught.value).startswith("expression ")


def test_a_malformed_expression_is_refused_when_queued(registry: NodeRegistry) -> None:
    prompt = {
        "1": {"class_type": "ComfyMathExpression", "inputs": {"expression": "a +", "values.a": ["2", 0]}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": 1}},
        "3": {"class_type": "Constant", "inputs": {"value": ["1", 0]}},
    }
    checked = validate_prompt(prompt, registry)
    assert not checked.ok
    (error,) = checked.node_errors["1"]["errors"]
    assert error["type"] == "custom_validation_failed" and "expression 'a +'" in error["details"]


def test_the_first_value_is_required_as_in_comfyui(registry: NodeRegistry) -> None:
    prompt = {
        "1": {"class_type": "ComfyMathExpression", "inputs": {"expression": "2 * 3"}},
        "2": {"class_type": "Constant", "inputs": {"value": ["1", 0]}},
    }
    checked = validate_prompt(prompt, registry)
    assert [error["type"] for error in checked.node_errors["1"]["errors"]] == ["required_input_missing"]


def test_math_expression_shares_math_expressions_evaluator() -> None:
    # One evaluator: Loom's MathExpression and ComfyUI's node agree on what both accept.
    assert primitives.MathExpression(expression="(a + b) * c", a=1, b=2, c=1.5) == (4, 4.5)
    assert ComfyMathExpression("(a + b) * c", {"a": 1, "b": 2, "c": 1.5}) == (4.5, 4)
    assert logic.COMFY_MATH.functions["sqrt"] is primitives.MATH_EXPRESSION.functions["sqrt"]


# -- ComfyNumberConvert --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, (1.0, 1)),
        (False, (0.0, 0)),
        (7, (7.0, 7)),
        (-2.75, (-2.75, -2)),
        ("42", (42.0, 42)),
        ("  3.9 ", (3.9, 3)),
        ("-1e3", (-1000.0, -1000)),
        ("12345678901234567890", (1.2345678901234567e19, 12345678901234567890)),
    ],
)
def test_number_convert(value: Any, expected: tuple[float, int]) -> None:
    result = ComfyNumberConvert(value=value)
    assert result == expected and type(result[0]) is float and type(result[1]) is int


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty string"),
        ("twelve", "'twelve' is not a number"),
        ("inf", "not a finite number"),
        ("nan", "not a finite number"),
        (math.inf, "not a finite number"),
        (10**400, "too large for a FLOAT"),
        ([1], "must be an INT, FLOAT, STRING or BOOLEAN"),
    ],
)
def test_number_convert_errors_name_the_value(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        ComfyNumberConvert(value=value)
    assert str(caught.value).startswith("value")


# -- ResolutionSelector --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect_ratio", "megapixels", "multiple", "expected"),
    [
        # sqrt(1024*1024 / (w*h)) per ratio unit, each side rounded (half to even) to the multiple.
        ("1:1 (Square)", 1.0, 8, (1024, 1024)),
        ("16:9 (Widescreen)", 1.0, 8, (1368, 768)),  # 1365.3 -> 1368, 768 -> 768
        ("16:9 (Widescreen)", 1.0, 32, (1376, 768)),  # 1365.3/32 = 42.7 -> 43
        ("9:16 (Portrait Widescreen)", 1.0, 8, (768, 1368)),
        ("3:2 (Photo)", 2.0, 64, (1792, 1152)),  # 1773.6/64 = 27.7 -> 28, 1182.4/64 = 18.5 -> 18
        ("21:9 (Ultrawide)", 0.5, 8, (1104, 472)),  # 1106.0/8 = 138.3 -> 138, 474.0/8 = 59.3 -> 59
        ("1:1 (Square)", 0.1, 128, (384, 384)),  # 323.8/128 = 2.53 -> 3
    ],
)
def test_resolution_selector(aspect_ratio: str, megapixels: float, multiple: int, expected: tuple[int, int]) -> None:
    assert ResolutionSelector(aspect_ratio=aspect_ratio, megapixels=megapixels, multiple=multiple) == expected


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"aspect_ratio": "5:4", "megapixels": 1.0, "multiple": 8}, "aspect_ratio"),
        ({"aspect_ratio": "1:1 (Square)", "megapixels": 0.0, "multiple": 8}, "megapixels"),
        ({"aspect_ratio": "1:1 (Square)", "megapixels": 1.0, "multiple": 0}, "multiple"),
    ],
)
def test_resolution_selector_errors_name_the_input(arguments: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        ResolutionSelector(**arguments)


# -- CustomCombo ---------------------------------------------------------------------------------------


def test_custom_combo_outputs_the_choice_and_the_editors_index() -> None:
    run = spec_of(CustomCombo).run
    # ComfyUI's editor sends its own widgets along (accept_all_inputs): the index and the options.
    inputs = {"choice": "Turbo", "index": 2, "option0": "Quality", "option1": "Default", "option2": "Turbo"}
    assert run(None, inputs).values == ("Turbo", 2)
    assert run(None, {"choice": "Quality"}).values == ("Quality", 0)
    with pytest.raises(ValueError, match="^index must be a whole number"):
        run(None, {"choice": "x", "index": "2"})


def test_any_choice_is_valid_since_the_options_are_the_users(registry: NodeRegistry) -> None:
    prompt = {
        "1": {"class_type": "CustomCombo", "inputs": {"choice": "my own option", "index": 1, "option0": "a"}},
        "2": {"class_type": "Constant", "inputs": {"value": ["1", 1]}},
        "3": {"class_type": "Constant", "inputs": {"value": ["1", 0]}},
    }
    record = _run(registry, prompt)
    assert record.error is None, record.error
    assert record.outputs["2"] == {"value": [1]} and record.outputs["3"] == {"value": ["my own option"]}


def test_a_comfyui_editor_workflow_with_these_nodes_converts_and_runs(registry: NodeRegistry) -> None:
    # As ComfyUI's editor saves them: widgets in widgets_values, the autogrow socket named values.a.
    workflow = {
        "nodes": [
            {"id": 1, "type": "ResolutionSelector", "inputs": [], "widgets_values": ["16:9 (Widescreen)", 1.0, 32]},
            {
                "id": 2,
                "type": "ComfyMathExpression",
                "inputs": [{"name": "values.a", "type": "FLOAT,INT", "link": 1}],
                "widgets_values": ["a / 2"],
            },
            {"id": 3, "type": "PrimitiveBoolean", "inputs": [], "widgets_values": [True]},
            {
                "id": 4,
                "type": "ComfySwitchNode",
                "inputs": [
                    {"name": "switch", "type": "BOOLEAN", "widget": {"name": "switch"}, "link": 2},
                    {"name": "on_false", "type": "*", "link": 3},
                    {"name": "on_true", "type": "*", "link": 4},
                ],
                "widgets_values": [False],
            },
            {"id": 5, "type": "Constant", "inputs": [{"name": "value", "type": "*", "link": 5}], "widgets_values": []},
        ],
        "links": [
            [1, 1, 0, 2, 0, "INT"],
            [2, 3, 0, 4, 0, "BOOLEAN"],
            [3, 1, 1, 4, 1, "INT"],
            [4, 2, 1, 4, 2, "INT"],
            [5, 4, 0, 5, 0, "*"],
        ],
    }
    prompt = editor_to_api(workflow, registry).prompt
    assert prompt["2"]["inputs"] == {"expression": "a / 2", "values.a": ["1", 0]}
    assert prompt["1"]["inputs"] == {"aspect_ratio": "16:9 (Widescreen)", "megapixels": 1.0, "multiple": 32}
    record = _run(registry, prompt)
    assert record.error is None, record.error
    assert record.outputs["5"] == {"value": [688]}  # 1376 / 2, from the branch the switch selected
    assert record.node_states["1"] is NodeState.SUCCEEDED
