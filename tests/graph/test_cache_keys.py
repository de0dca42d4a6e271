"""Cache keys are content addresses: equal exactly when a node would compute the same thing."""

from __future__ import annotations

import pytest

from graph.cache_keys import (
    DependencyCycleError,
    DigestMemo,
    PromptStructureError,
    SpecFactsCache,
    compute_keys,
)
from graph.declare import Hidden, Int, Output, Socket, String, node, spec_of
from graph.registry import NodeRegistry

FINGERPRINT = {"token": "v1"}


@node(outputs=[Output("INT")])
def Value(value=Socket("*", optional=True)):
    return value


@node(outputs=[Output("INT"), Output("INT")])
def Pair(a=Socket("INT"), b=Socket("INT", optional=True), note=String("")):
    return a, b


@node(outputs=[Output("STRING")], fingerprint=lambda path: FINGERPRINT["token"])
def LoadFile(path=String("x.txt")):
    return path


@node(outputs=[Output("STRING")], fingerprint=lambda path: 1 / 0)
def Broken(path=String("x.txt")):
    return path


@node(outputs=[Output("STRING")], fingerprint=lambda path: float("nan"))
def Volatile(path=String("x.txt")):
    return path


@node(outputs=[Output("INT")], not_idempotent=True)
def Random(seed=Int(0)):
    return seed


@node(outputs=[Output("INT")])
def Tagged(x=Socket("INT"), unique_id=Hidden("UNIQUE_ID")):
    return x


@pytest.fixture
def keys_of():
    registry = NodeRegistry()
    for function in (Value, Pair, LoadFile, Broken, Volatile, Random, Tagged):
        registry.register(spec_of(function))
    facts = SpecFactsCache(registry)

    def compute(prompt: dict, roots: list[str] | None = None, memo: DigestMemo | None = None) -> dict:
        return compute_keys(prompt, roots if roots is not None else list(prompt), facts.get, memo)

    return compute


def value(v):
    return {"class_type": "Value", "inputs": {"value": v}}


def pair(a, b=None, note=""):
    inputs = {"a": [a, 0], "note": note}
    if b is not None:
        inputs["b"] = b
    return {"class_type": "Pair", "inputs": inputs}


def test_keys_ignore_node_ids_and_input_order(keys_of) -> None:
    first = keys_of({"1": value(1), "2": value(2), "3": pair("1", ["2", 0])})
    second = keys_of(
        {
            "z": value(2),
            "y": value(1),
            "x": {"class_type": "Pair", "inputs": {"note": "", "b": ["z", 0], "a": ["y", 0]}},
        }
    )
    assert first["3"] == second["x"] and first["1"] == second["y"]
    assert len(first["3"]) == 16


def test_a_duplicated_branch_has_the_same_keys(keys_of) -> None:
    keys = keys_of({"1": value(1), "2": pair("1"), "3": value(1), "4": pair("3")})
    assert keys["1"] == keys["3"] and keys["2"] == keys["4"]


def test_a_changed_constant_changes_that_node_and_its_descendants_only(keys_of) -> None:
    prompt = {"1": value(1), "2": value(2), "3": pair("1", ["2", 0]), "4": pair("3")}
    before = keys_of(prompt)
    prompt["1"]["inputs"]["value"] = 5
    after = keys_of(prompt)
    assert [node_id for node_id in prompt if before[node_id] != after[node_id]] == ["1", "3", "4"]


def test_the_output_slot_of_a_link_is_part_of_the_key(keys_of) -> None:
    keys = keys_of(
        {
            "1": value(1),
            "2": pair("1"),
            "3": {"class_type": "Value", "inputs": {"value": ["2", 0]}},
            "4": {"class_type": "Value", "inputs": {"value": ["2", 1]}},
        }
    )
    assert keys["3"] != keys["4"]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0),
        (1, True),
        (0, False),
        (0.0, -0.0),
        ("1", 1),
        ([1, 2], [2, 1]),
        ([1], (1,)),
        ({"a": 1}, {"a": 1.0}),
        (None, "None"),
        ([1], ["1", 0][:1]),
    ],
)
def test_constants_that_python_calls_equal_but_differ_in_type_have_different_keys(keys_of, a, b) -> None:
    memo = DigestMemo()
    assert keys_of({"1": value(a)}, memo=memo)["1"] != keys_of({"1": value(b)}, memo=memo)["1"]


def test_dict_constants_are_keyed_independently_of_key_order(keys_of) -> None:
    assert keys_of({"1": value({"a": 1, "b": [2]})})["1"] == keys_of({"1": value({"b": [2], "a": 1})})["1"]


@pytest.mark.parametrize("odd", [float("nan"), object(), {1: "int key"}, [object()]])
def test_constants_without_a_canonical_form_never_match(keys_of, odd) -> None:
    assert keys_of({"1": value(odd)})["1"] != keys_of({"1": value(odd)})["1"]


def test_the_fingerprint_joins_the_key(keys_of) -> None:
    prompt = {"1": {"class_type": "LoadFile", "inputs": {"path": "a.txt"}}}
    first = keys_of(prompt)["1"]
    assert keys_of(prompt)["1"] == first
    FINGERPRINT["token"] = "v2"
    try:
        assert keys_of(prompt)["1"] != first
    finally:
        FINGERPRINT["token"] = "v1"


@pytest.mark.parametrize("class_type", ["Broken", "Volatile"])
def test_a_raising_or_nan_fingerprint_never_matches(keys_of, class_type) -> None:
    prompt = {
        "1": {"class_type": class_type, "inputs": {"path": "a.txt"}},
        "2": {"class_type": "Value", "inputs": {"value": ["1", 0]}},
    }
    first, second = keys_of(prompt), keys_of(prompt)
    assert first["1"] != second["1"] and first["2"] != second["2"]


@pytest.mark.parametrize("class_type", ["Random", "Tagged"])
def test_not_idempotent_and_unique_id_nodes_are_keyed_by_id(keys_of, class_type) -> None:
    inputs = {"seed": 1} if class_type == "Random" else {"x": ["0", 0]}
    keys = keys_of(
        {
            "0": value(1),
            "1": {"class_type": class_type, "inputs": inputs},
            "2": {"class_type": class_type, "inputs": dict(inputs)},
        }
    )
    assert keys["1"] != keys["2"]
    again = keys_of({"0": value(1), "1": {"class_type": class_type, "inputs": dict(inputs)}})
    assert again["1"] == keys["1"]


def test_only_roots_and_their_ancestors_are_keyed(keys_of) -> None:
    keys = keys_of({"1": value(1), "2": pair("1"), "3": value(3)}, roots=["2"])
    assert set(keys) == {"1", "2"}


def test_a_cycle_names_its_nodes(keys_of) -> None:
    prompt = {"1": value(1), "2": pair("1", ["4", 0]), "3": pair("2"), "4": pair("3"), "5": pair("4")}
    with pytest.raises(DependencyCycleError) as caught:
        keys_of(prompt, roots=["5"])
    assert sorted(caught.value.nodes) == ["2", "3", "4"]
    assert "2" in str(caught.value) and "4" in str(caught.value)


def test_a_self_link_is_a_cycle(keys_of) -> None:
    with pytest.raises(DependencyCycleError) as caught:
        keys_of({"1": pair("1")})
    assert caught.value.nodes == ["1"]


@pytest.mark.parametrize(
    ("prompt", "roots", "node_id", "fragment"),
    [
        ({"1": pair("9")}, ["1"], "1", "links to node '9'"),
        ({"1": value(1)}, ["2"], "2", "requested as an output"),
        ({"1": {"class_type": "Missing", "inputs": {}}}, ["1"], "1", "unknown node type 'Missing'"),
        ({"1": value(1), "2": {"class_type": "Value", "inputs": "oops"}}, ["2"], "2", "'inputs' is a str"),
        ({"1": {"class_type": ["Value"], "inputs": {}}}, ["1"], "1", "unknown node type ['Value']"),
    ],
)
def test_structural_problems_name_the_node(keys_of, prompt, roots, node_id, fragment) -> None:
    with pytest.raises(PromptStructureError) as caught:
        keys_of(prompt, roots=roots)
    assert caught.value.node_id == node_id and fragment in str(caught.value)


def test_a_deep_chain_is_keyed_iteratively(keys_of) -> None:
    prompt = {"0": value(0)}
    for index in range(1, 10_000):
        prompt[str(index)] = {"class_type": "Value", "inputs": {"value": [str(index - 1), 0]}}
    memo = DigestMemo()
    first = keys_of(prompt, roots=["9999"], memo=memo)
    keys = keys_of(prompt, roots=["9999"], memo=memo)
    assert len(set(keys.values())) == 10_000 and keys == first


def test_the_memo_gives_the_same_keys_and_stays_bounded(keys_of) -> None:
    prompt = {"1": value(1), "2": pair("1", ["1", 0], note="n"), "3": value(2.5)}
    memo = DigestMemo(max_entries=2)
    assert keys_of(prompt, memo=memo) == keys_of(prompt) == keys_of(prompt, memo=memo)
    assert len(memo._digests) <= 2


def test_never_matching_keys_are_recognisable(keys_of) -> None:
    from graph.cache_keys import can_match

    keys = keys_of(
        {"1": value(float("nan")), "2": value(1), "3": {"class_type": "Value", "inputs": {"value": ["1", 0]}}}
    )
    assert not can_match(keys["1"]) and can_match(keys["2"])
    assert not can_match(keys["3"]), "a node downstream of a never-matching one can never match either"
