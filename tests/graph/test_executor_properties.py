"""Scheduling and caching invariants over random DAGs of trivial nodes (hypothesis).

Every node carries a unique ``salt`` constant, so the call log tells exactly which nodes ran, and
returns a ``Payload`` of a known byte size, so the cache budget can be checked to the byte.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.cache import OutputCache
from graph.declare import Int, NodeOutput, Output, Socket, node, spec_of
from graph.executor import Executor
from graph.registry import NodeRegistry

RUNS: Counter[int] = Counter()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Payload:
    def __init__(self, value: int, size: int) -> None:
        self.value, self.size = value, size

    def loom_nbytes(self) -> int:
        return self.size


@node(outputs=[Output("P")])
def Leaf(value=Int(0), salt=Int(0), size=Int(1)):
    RUNS[salt] += 1
    return Payload(value, size)


@node(outputs=[Output("P")])
def Unary(x=Socket("P"), value=Int(0), salt=Int(0), size=Int(1)):
    RUNS[salt] += 1
    return Payload(x.value + value, size)


@node(outputs=[Output("P")])
def Binary(a=Socket("P"), b=Socket("P"), value=Int(0), salt=Int(0), size=Int(1)):
    RUNS[salt] += 1
    return Payload(a.value * 2 + b.value + value, size)


@node(output_node=True)
def Out(x=Socket("P"), salt=Int(0)):
    RUNS[salt] += 1
    return NodeOutput(ui={"value": [x.value]})


def make_executor(cache: OutputCache | None = None) -> Executor:
    registry = NodeRegistry()
    for function in (Leaf, Unary, Binary, Out):
        registry.register(spec_of(function))
    return Executor(registry, cache)


@st.composite
def dags(draw) -> tuple[dict, list[str]]:
    count = draw(st.integers(1, 9))
    prompt: dict = {}
    for index in range(count):
        kind = "Leaf" if index == 0 else draw(st.sampled_from(["Leaf", "Unary", "Binary"]))
        inputs: dict = {"value": draw(st.integers(0, 3)), "salt": index, "size": draw(st.integers(1, 40))}
        if kind == "Unary":
            inputs["x"] = [str(draw(st.integers(0, index - 1))), 0]
        elif kind == "Binary":
            inputs["a"] = [str(draw(st.integers(0, index - 1))), 0]
            inputs["b"] = [str(draw(st.integers(0, index - 1))), 0]
        prompt[str(index)] = {"class_type": kind, "inputs": inputs}
    sources = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3, unique=True))
    outputs = []
    for number, source in enumerate(sources):
        prompt[f"o{number}"] = {"class_type": "Out", "inputs": {"x": [str(source), 0], "salt": 1000 + number}}
        outputs.append(f"o{number}")
    return prompt, outputs


def links(prompt: dict, node_id: str) -> list[str]:
    return [value[0] for value in prompt[node_id]["inputs"].values() if isinstance(value, list)]


def ancestors(prompt: dict, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        node_id = stack.pop()
        if node_id not in seen:
            seen.add(node_id)
            stack.extend(links(prompt, node_id))
    return seen


def reference_value(prompt: dict, node_id: str) -> int:
    inputs = prompt[node_id]["inputs"]
    kind = prompt[node_id]["class_type"]
    if kind == "Leaf":
        return inputs["value"]
    if kind == "Unary":
        return reference_value(prompt, inputs["x"][0]) + inputs["value"]
    if kind == "Binary":
        return reference_value(prompt, inputs["a"][0]) * 2 + reference_value(prompt, inputs["b"][0]) + inputs["value"]
    return reference_value(prompt, inputs["x"][0])


def salts(prompt: dict, node_ids) -> Counter[int]:
    return Counter(prompt[node_id]["inputs"]["salt"] for node_id in node_ids)


def expected_ui(prompt: dict, outputs: list[str]) -> dict:
    return {output: {"value": [reference_value(prompt, output)]} for output in outputs}


@SETTINGS
@given(dags())
def test_needed_nodes_run_once_and_an_unchanged_rerun_runs_nothing(case) -> None:
    prompt, outputs = case
    executor = make_executor()
    RUNS.clear()
    record = executor.execute(prompt, outputs, prompt_id="cold")
    assert record.status == "success", record.error
    assert RUNS == salts(prompt, ancestors(prompt, outputs))
    assert record.outputs == expected_ui(prompt, outputs)
    RUNS.clear()
    record = executor.execute(prompt, outputs, prompt_id="warm")
    assert not RUNS and record.executed == []
    assert record.outputs == expected_ui(prompt, outputs)


@SETTINGS
@given(dags(), st.data())
def test_a_changed_constant_reruns_exactly_that_node_and_its_needed_descendants(case, data) -> None:
    prompt, outputs = case
    executor = make_executor()
    executor.execute(prompt, outputs, prompt_id="cold")
    changed = data.draw(st.sampled_from([node_id for node_id in prompt if not node_id.startswith("o")]))
    prompt[changed]["inputs"]["value"] += 10
    needed = ancestors(prompt, outputs)
    affected = {node_id for node_id in needed if changed in ancestors(prompt, [node_id])}
    RUNS.clear()
    record = executor.execute(prompt, outputs, prompt_id="changed")
    assert RUNS == salts(prompt, affected)
    assert set(record.executed) == affected
    assert record.outputs == expected_ui(prompt, outputs)


@SETTINGS
@given(dags(), st.randoms(use_true_random=False))
def test_renumbering_node_ids_hits_the_cache_for_every_node(case, random) -> None:
    prompt, outputs = case
    executor = make_executor()
    executor.execute(prompt, outputs, prompt_id="cold")
    new_ids = [f"n{number}" for number in range(len(prompt))]
    random.shuffle(new_ids)
    rename = dict(zip(prompt, new_ids, strict=True))
    renumbered = {
        rename[node_id]: {
            "class_type": entry["class_type"],
            "inputs": {
                name: [rename[value[0]], value[1]] if isinstance(value, list) else value
                for name, value in entry["inputs"].items()
            },
        }
        for node_id, entry in prompt.items()
    }
    RUNS.clear()
    record = executor.execute(renumbered, [rename[output] for output in outputs], prompt_id="renumbered")
    assert not RUNS and record.executed == []
    assert set(record.cached) == {rename[node_id] for node_id in ancestors(prompt, outputs)}


@SETTINGS
@given(dags(), st.integers(0, 150), st.data())
def test_the_byte_budget_holds_after_every_prompt_and_results_stay_right(case, budget, data) -> None:
    prompt, outputs = case
    cache = OutputCache(budget_bytes=budget)
    executor = make_executor(cache)
    for attempt in range(3):
        record = executor.execute(prompt, outputs, prompt_id=f"p{attempt}")
        assert record.status == "success", record.error
        assert record.outputs == expected_ui(prompt, outputs)
        assert cache.stats().bytes <= budget
        changed = data.draw(st.sampled_from(sorted(prompt)))
        if "value" in prompt[changed]["inputs"]:
            prompt[changed]["inputs"]["value"] += 1
