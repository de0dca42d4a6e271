"""The executor runs what the outputs need, once, in order, and reports it the way ComfyUI clients expect."""

from __future__ import annotations

import asyncio

import pytest

from graph.cache import OutputCache
from graph.declare import Hidden, Int, NodeOutput, Output, Socket, String, node, spec_of
from graph.execution_state import NodeState, PromptStatus
from graph.executor import Executor
from graph.progress import InterruptFlag, report_progress
from graph.registry import NodeRegistry
from graph.spec import ExecutionBlocker
from graph.v1 import spec_from_v1_class
from graph.validation import validate_prompt

CALLS: list[tuple[str, object]] = []


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    CALLS.clear()


@node(outputs=[Output("INT")])
def Const(value=Int(0)):
    CALLS.append(("Const", value))
    return value


@node(outputs=[Output("INT")])
def Add(a=Socket("INT"), b=Socket("INT")):
    CALLS.append(("Add", (a, b)))
    return a + b


@node(output_node=True)
def Show(value=Socket("*")):
    CALLS.append(("Show", value))
    return NodeOutput(ui={"text": [str(value)]})


@node(outputs=[Output("INT", is_list=True)])
def Range(count=Int(3)):
    CALLS.append(("Range", count))
    return list(range(count))


@node(outputs=[Output("INT")])
def Double(x=Socket("INT")):
    CALLS.append(("Double", x))
    return 2 * x


@node(outputs=[Output("INT")], input_is_list=True)
def Sum(values=Socket("INT")):
    CALLS.append(("Sum", list(values)))
    return sum(values)


@node(outputs=[Output("INT")])
def Fail(x=Socket("INT"), message=String("boom")):
    CALLS.append(("Fail", x))
    raise ValueError(message)


@node(
    outputs=[Output("INT")],
    lazy_status=lambda choose, on_true, on_false: ["on_true" if choose else "on_false"],
)
def Switch(choose=Int(1), on_true=Socket("INT", lazy=True), on_false=Socket("INT", lazy=True)):
    CALLS.append(("Switch", (choose, on_true, on_false)))
    return on_true if choose else on_false


@node(outputs=[Output("INT")])
def Block(x=Socket("INT"), message=String("")):
    CALLS.append(("Block", x))
    return ExecutionBlocker(message or None)


@node(outputs=[Output("INT")])
def Steps(x=Socket("INT"), steps=Int(3)):
    for step in range(1, steps + 1):
        report_progress(step, steps, preview=("JPEG", f"image{step}", 512) if step == steps else None)
    CALLS.append(("Steps", x))
    return x


@node(outputs=[Output("INT")])
def WhoAmI(
    x=Socket("INT"),
    prompt=Hidden("PROMPT"),
    dynprompt=Hidden("DYNPROMPT"),
    extra_pnginfo=Hidden("EXTRA_PNGINFO"),
    unique_id=Hidden("UNIQUE_ID"),
):
    CALLS.append(("WhoAmI", (sorted(prompt), dynprompt == prompt, extra_pnginfo, unique_id)))
    return x


@node(outputs=[Output("INT")])
def Tick(x=Socket("INT")):
    CALLS.append(("Tick", x))
    return x + 1


async def _later(value):
    await asyncio.sleep(0)
    return (value + 100,)


class AsyncAdd:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, x):
        CALLS.append(("AsyncAdd", x))
        return _later(x)


class Stateful:
    """A V1 node that counts how often its instance was used: instances must survive across prompts."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",), "salt": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def __init__(self) -> None:
        self.uses = 0

    def run(self, x, salt):
        self.uses += 1
        CALLS.append(("Stateful", self.uses))
        return (self.uses,)


class LazyPick:
    """A V1 switch: ``check_lazy_status`` runs on the kept instance, with unevaluated inputs as ``None``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "first": ("BOOLEAN", {"default": True}),
                "a": ("INT", {"lazy": True}),
                "b": ("INT", {"lazy": True}),
            }
        }

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def check_lazy_status(self, first, a, b):
        CALLS.append(("check_lazy_status", (a, b)))
        return ["a"] if first else ["b"]

    def run(self, first, a, b):
        return (a if first else b,)


class Repeat:
    """Expands into a chain of ``times`` Tick nodes after ``x`` (docs/compatibility.md §3.8), ids prefixed
    by its own."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",), "times": ("INT", {"default": 2})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, x, times, unique_id, clash=None):
        CALLS.append(("Repeat", x))
        graph = {f"{unique_id}.0": {"class_type": "Const", "inputs": {"value": x}}}
        for index in range(1, times + 1):
            graph[f"{unique_id}.{index}"] = {"class_type": "Tick", "inputs": {"x": [f"{unique_id}.{index - 1}", 0]}}
        if x < 0:
            graph["1"] = {"class_type": "Const", "inputs": {"value": 0}}
        return {"result": ([f"{unique_id}.{times}", 0],), "expand": graph}


class WrongCount:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    def run(self):
        return (1,)


DECLARED = (Const, Add, Show, Range, Double, Sum, Fail, Switch, Block, Steps, WhoAmI, Tick)


def make_registry() -> NodeRegistry:
    registry = NodeRegistry()
    for function in DECLARED:
        registry.register(spec_of(function))
    from graph.v1 import spec_from_v1_class

    for cls in (AsyncAdd, Stateful, LazyPick, Repeat, WrongCount):
        registry.register(spec_from_v1_class(cls.__name__, cls))
    return registry


@pytest.fixture
def executor() -> Executor:
    return Executor(make_registry())


def const(value):
    return {"class_type": "Const", "inputs": {"value": value}}


def add(a, b):
    return {"class_type": "Add", "inputs": {"a": [a, 0], "b": [b, 0]}}


def show(source):
    return {"class_type": "Show", "inputs": {"value": [source, 0]}}


def adder_prompt() -> dict:
    return {"1": const(2), "2": const(3), "3": add("1", "2"), "4": show("3"), "5": const(99)}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, data: dict) -> None:
        self.events.append((event, data))

    def named(self, name: str) -> list[dict]:
        return [data for event, data in self.events if event == name]

    def names(self) -> list[str]:
        return [event for event, _ in self.events]


# --- scheduling -------------------------------------------------------------------------------


def test_runs_only_what_the_outputs_need_in_dependency_order(executor: Executor) -> None:
    record = executor.execute(adder_prompt(), ["4"], prompt_id="p1")
    assert record.status is PromptStatus.SUCCESS
    assert record.status == "success"
    assert sorted(record.executed[:2]) == ["1", "2"] and record.executed[2:] == ["3", "4"]
    assert ("Const", 99) not in CALLS
    assert record.outputs == {"4": {"text": ["5"]}}
    assert record.meta == {"4": {"node_id": "4", "display_node": "4", "parent_node": None, "real_node_id": "4"}}
    assert record.node_states == {
        "1": NodeState.SUCCEEDED,
        "2": NodeState.SUCCEEDED,
        "3": NodeState.SUCCEEDED,
        "4": NodeState.SUCCEEDED,
        "5": NodeState.SKIPPED,
    }


def test_an_unchanged_rerun_runs_nothing_and_resends_cached_ui(executor: Executor) -> None:
    executor.execute(adder_prompt(), ["4"], prompt_id="p1")
    CALLS.clear()
    recorder = Recorder()
    record = executor.execute(adder_prompt(), ["4"], prompt_id="p2", listener=recorder)
    assert CALLS == []
    assert record.executed == []
    assert record.cached == ["1", "2", "3", "4"]
    assert record.outputs == {"4": {"text": ["5"]}}
    assert recorder.named("execution_cached")[0]["nodes"] == ["1", "2", "3", "4"]
    assert recorder.named("executed") == [
        {"node": "4", "display_node": "4", "output": {"text": ["5"]}, "prompt_id": "p2"}
    ]
    assert recorder.named("executing") == []
    assert all(state is NodeState.CACHED for node_id, state in record.node_states.items() if node_id != "5")


def test_a_changed_constant_reruns_that_node_and_its_descendants_only(executor: Executor) -> None:
    executor.execute(adder_prompt(), ["4"], prompt_id="p1")
    CALLS.clear()
    prompt = adder_prompt()
    prompt["2"]["inputs"]["value"] = 4
    record = executor.execute(prompt, ["4"], prompt_id="p2")
    assert record.executed == ["2", "3", "4"]
    assert record.cached == ["1"]
    assert record.outputs["4"] == {"text": ["6"]}


def test_renumbered_nodes_and_duplicated_branches_hit_the_cache(executor: Executor) -> None:
    executor.execute(adder_prompt(), ["4"], prompt_id="p1")
    CALLS.clear()
    renumbered = {
        "a": const(2),
        "b": const(3),
        "c": add("a", "b"),
        "d": show("c"),
        "c2": add("a", "b"),
        "d2": show("c2"),
    }
    record = executor.execute(renumbered, ["d", "d2"], prompt_id="p2")
    assert record.executed == []
    assert record.outputs == {"d": {"text": ["5"]}, "d2": {"text": ["5"]}}


def test_a_cached_node_hides_its_whole_upstream(executor: Executor) -> None:
    executor.execute({"1": const(2), "2": const(3), "3": add("1", "2")}, ["3"], prompt_id="p1")
    CALLS.clear()
    record = executor.execute(adder_prompt(), ["4"], prompt_id="p2")
    assert record.executed == ["4"]
    assert CALLS == [("Show", 5)]


def test_a_10000_node_chain_runs_without_recursion(executor: Executor) -> None:
    prompt = {"0": const(0)}
    for index in range(1, 10_000):
        prompt[str(index)] = {"class_type": "Tick", "inputs": {"x": [str(index - 1), 0]}}
    record = executor.execute(prompt, ["9999"], prompt_id="deep")
    assert record.status == "success", record.error
    assert len(record.executed) == 10_000
    assert CALLS[-1] == ("Tick", 9998)


def test_hidden_inputs_are_filled(executor: Executor) -> None:
    prompt = {"1": const(1), "2": {"class_type": "WhoAmI", "inputs": {"x": ["1", 0]}}}
    executor.execute(prompt, ["2"], prompt_id="p", extra_data={"extra_pnginfo": {"workflow": {"id": "w"}}})
    assert CALLS[-1] == ("WhoAmI", (["1", "2"], True, {"workflow": {"id": "w"}}, "2"))


def test_unique_id_nodes_are_keyed_by_their_id(executor: Executor) -> None:
    prompt = {"1": const(1), "2": {"class_type": "WhoAmI", "inputs": {"x": ["1", 0]}}}
    executor.execute(prompt, ["2"], prompt_id="p1")
    prompt["3"] = {"class_type": "WhoAmI", "inputs": {"x": ["1", 0]}}
    record = executor.execute(prompt, ["2", "3"], prompt_id="p2")
    assert record.executed == ["3"]


def test_node_instances_persist_per_node_id_and_class(executor: Executor) -> None:
    prompt = {"1": const(1), "2": {"class_type": "Stateful", "inputs": {"x": ["1", 0], "salt": 0}}}
    executor.execute(prompt, ["2"], prompt_id="p1")
    prompt["2"]["inputs"]["salt"] = 1
    executor.execute(prompt, ["2"], prompt_id="p2")
    assert [uses for name, uses in CALLS if name == "Stateful"] == [1, 2]
    executor.execute({"9": const(1)}, ["9"], prompt_id="p3")
    prompt["2"]["inputs"]["salt"] = 2
    executor.execute(prompt, ["2"], prompt_id="p4")
    assert [uses for name, uses in CALLS if name == "Stateful"] == [1, 2, 1]


def test_async_node_functions_are_awaited(executor: Executor) -> None:
    record = executor.execute(
        {"1": const(1), "2": {"class_type": "AsyncAdd", "inputs": {"x": ["1", 0]}}, "3": show("2")},
        ["3"],
        prompt_id="p",
    )
    assert record.outputs["3"] == {"text": ["101"]}


# --- lists --------------------------------------------------------------------------------------


def test_list_outputs_map_consumers_per_item_and_concatenate_ui(executor: Executor) -> None:
    prompt = {
        "1": {"class_type": "Range", "inputs": {"count": 3}},
        "2": {"class_type": "Double", "inputs": {"x": ["1", 0]}},
        "3": show("2"),
    }
    record = executor.execute(prompt, ["3"], prompt_id="p")
    assert [c for c in CALLS if c[0] == "Double"] == [("Double", 0), ("Double", 1), ("Double", 2)]
    assert record.outputs["3"] == {"text": ["0", "2", "4"]}


def test_shorter_lists_repeat_their_last_item(executor: Executor) -> None:
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 3}}, "2": const(10), "3": add("1", "2")}
    executor.execute(prompt, ["3"], prompt_id="p")
    assert [c for c in CALLS if c[0] == "Add"] == [("Add", (0, 10)), ("Add", (1, 10)), ("Add", (2, 10))]


def test_input_is_list_nodes_get_whole_lists_once(executor: Executor) -> None:
    prompt = {
        "1": {"class_type": "Range", "inputs": {"count": 4}},
        "2": {"class_type": "Sum", "inputs": {"values": ["1", 0]}},
        "3": show("2"),
    }
    record = executor.execute(prompt, ["3"], prompt_id="p")
    assert [c for c in CALLS if c[0] == "Sum"] == [("Sum", [0, 1, 2, 3])]
    assert record.outputs["3"] == {"text": ["6"]}


def test_an_empty_list_calls_nothing_downstream(executor: Executor) -> None:
    prompt = {
        "1": {"class_type": "Range", "inputs": {"count": 0}},
        "2": {"class_type": "Double", "inputs": {"x": ["1", 0]}},
        "3": show("2"),
    }
    record = executor.execute(prompt, ["3"], prompt_id="p")
    assert record.status == "success"
    assert [c for c in CALLS if c[0] in ("Double", "Show")] == []
    assert record.outputs == {}


# --- lazy inputs and blockers ---------------------------------------------------------------------


def switch_prompt(choose: int) -> dict:
    return {
        "1": const(1),
        "2": const(2),
        "3": {"class_type": "Switch", "inputs": {"choose": choose, "on_true": ["1", 0], "on_false": ["2", 0]}},
        "4": show("3"),
    }


@pytest.mark.parametrize(("choose", "runs", "skipped", "shown"), [(1, "1", "2", "1"), (0, "2", "1", "2")])
def test_lazy_inputs_run_only_the_requested_branch(
    executor: Executor, choose: int, runs: str, skipped: str, shown: str
) -> None:
    record = executor.execute(switch_prompt(choose), ["4"], prompt_id="p")
    assert record.status == "success", record.error
    assert runs in record.executed and skipped not in record.executed
    assert record.node_states[skipped] is NodeState.SKIPPED
    assert record.outputs["4"] == {"text": [shown]}
    assert [c for c in CALLS if c[0] == "Switch"] == [
        ("Switch", (choose, int(runs) if choose else None, None if choose else int(runs)))
    ]


def test_v1_lazy_status_is_asked_until_it_needs_nothing_new(executor: Executor) -> None:
    prompt = {
        "1": const(1),
        "2": const(2),
        "3": {"class_type": "LazyPick", "inputs": {"first": False, "a": ["1", 0], "b": ["2", 0]}},
        "4": show("3"),
    }
    record = executor.execute(prompt, ["4"], prompt_id="p")
    assert record.outputs["4"] == {"text": ["2"]}
    asked = [args for name, args in CALLS if name == "check_lazy_status"]
    assert asked == [(None, None), (None, 2)], "asked again once b exists; it wants nothing new, so it runs"
    assert "1" not in record.executed


def test_a_cached_lazy_source_is_delivered_without_being_requested(executor: Executor) -> None:
    executor.execute({"2": const(2)}, ["2"], prompt_id="warm")
    CALLS.clear()
    executor.execute(switch_prompt(1), ["4"], prompt_id="p")
    assert ("Switch", (1, 1, 2)) in CALLS


def test_a_silent_blocker_skips_consumers_and_their_ui(executor: Executor) -> None:
    prompt = {
        "1": const(1),
        "2": {"class_type": "Block", "inputs": {"x": ["1", 0], "message": ""}},
        "3": show("2"),
        "4": show("1"),
    }
    record = executor.execute(prompt, ["3", "4"], prompt_id="p")
    assert record.status == "success"
    assert record.outputs == {"4": {"text": ["1"]}}
    assert record.node_states["3"] is NodeState.SKIPPED
    assert ("Show", 1) in CALLS and len([c for c in CALLS if c[0] == "Show"]) == 1


def test_a_blocker_with_a_message_ends_the_prompt_with_that_message(executor: Executor) -> None:
    prompt = {
        "1": const(1),
        "2": {"class_type": "Block", "inputs": {"x": ["1", 0], "message": "no image"}},
        "3": show("2"),
    }
    record = executor.execute(prompt, ["3"], prompt_id="p")
    assert record.status == "error"
    assert record.error["node_id"] == "3"
    assert record.error["exception_message"] == "Execution Blocked: no image"
    assert record.error["exception_type"] == "ExecutionBlocked"


# --- failures -------------------------------------------------------------------------------------


def test_a_failing_node_ends_the_prompt_with_a_complete_error(executor: Executor) -> None:
    prompt = {
        "1": const(7),
        "2": {"class_type": "Fail", "inputs": {"x": ["1", 0], "message": "bad seed"}},
        "3": show("2"),
    }
    recorder = Recorder()
    record = executor.execute(prompt, ["3"], prompt_id="p", listener=recorder)
    assert record.status is PromptStatus.ERROR
    error = record.error
    assert set(error) == {
        "prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
        "traceback", "current_inputs", "current_outputs", "timestamp",
    }  # fmt: skip
    assert (error["prompt_id"], error["node_id"], error["node_type"]) == ("p", "2", "Fail")
    assert error["exception_message"] == "bad seed"
    assert error["exception_type"] == "ValueError"
    assert error["executed"] == ["1"]
    assert error["current_inputs"] == {"x": [7], "message": ["bad seed"]}
    assert error["current_outputs"] == ["1"]
    assert any("raise ValueError(message)" in line for line in error["traceback"])
    assert record.messages[-1] == ["execution_error", error]
    assert recorder.names()[-1] == "execution_error"
    assert record.node_states["2"] is NodeState.FAILED and record.node_states["3"] is NodeState.PENDING
    assert record.history_status() == {"status_str": "error", "completed": False, "messages": record.messages}
    progress = recorder.named("progress_state")[-1]["nodes"]["2"]
    assert progress["state"] == "error"


def test_after_a_failure_the_cache_keeps_earlier_results_and_the_executor_runs_again(executor: Executor) -> None:
    prompt = {"1": const(7), "2": {"class_type": "Fail", "inputs": {"x": ["1", 0], "message": "x"}}, "3": show("2")}
    executor.execute(prompt, ["3"], prompt_id="p1")
    CALLS.clear()
    prompt["2"] = {"class_type": "Double", "inputs": {"x": ["1", 0]}}
    record = executor.execute(prompt, ["3"], prompt_id="p2")
    assert record.status == "success"
    assert record.executed == ["2", "3"]
    assert record.cached == ["1"]


@pytest.mark.parametrize(
    ("prompt", "outputs", "node_id", "reason"),
    [
        ({"1": add("8", "9")}, ["1"], "1", "links to node"),
        ({"1": {"class_type": "Nope", "inputs": {}}}, ["1"], "1", "unknown node type 'Nope'"),
        ({"1": const(1)}, ["7"], "7", "not in the prompt"),
        ({"1": {"class_type": "Const"}, "2": {"inputs": {}}}, ["2"], "2", "unknown node type None"),
        ({"1": const(1), "2": {"class_type": "Double", "inputs": {"x": ["1", 5]}}}, ["2"], "2", "links to output 5"),
        ({"1": {"class_type": "Const", "inputs": [1]}}, ["1"], "1", "'inputs' is a list"),
    ],
)
def test_malformed_prompts_become_error_records(
    executor: Executor, prompt: dict, outputs: list, node_id: str, reason: str
) -> None:
    record = executor.execute(prompt, outputs, prompt_id="bad")
    assert record.status == "error"
    assert record.error["node_id"] == node_id
    assert reason in record.error["exception_message"]


def test_the_validated_prompt_runs_a_float_slot_as_a_link_and_caches_it_as_the_int_slot(executor: Executor) -> None:
    """``["1", 0.0]`` and ``["1", 0]`` are the same link once validated: same value delivered, same cache key."""
    written_as_float = {"1": const(2), "2": {"class_type": "Double", "inputs": {"x": ["1", 0.0]}}, "3": show("2")}
    result = validate_prompt(written_as_float, executor.registry)
    record = executor.execute(result.prompt, result.outputs, prompt_id="float")
    assert ("Double", 2) in CALLS and record.outputs["3"] == {"text": ["4"]}

    CALLS.clear()
    written_as_int = {"1": const(2), "2": {"class_type": "Double", "inputs": {"x": ["1", 0]}}, "3": show("2")}
    result = validate_prompt(written_as_int, executor.registry)
    record = executor.execute(result.prompt, result.outputs, prompt_id="int")
    assert CALLS == [] and record.cached == ["1", "2", "3"]


def test_a_list_constant_shaped_like_a_link_stays_a_constant_after_validation(executor: Executor) -> None:
    """The validated prompt (what runs, and what SaveImage writes into a PNG) keeps list constants
    wrapped: unwrapped, ``["1", 0]`` would be read back as a link to node 1."""
    written = {"1": const(7), "2": {"class_type": "Show", "inputs": {"value": {"__value__": ["1", 0]}}}}
    result = validate_prompt(written, executor.registry)
    assert result.prompt["2"]["inputs"]["value"] == {"__value__": ["1", 0]}
    record = executor.execute(result.prompt, result.outputs, prompt_id="wrapped")
    assert ("Show", ["1", 0]) in CALLS and record.outputs["2"] == {"text": ["['1', 0]"]}


def test_a_prompt_that_is_not_an_object_is_an_error_record(executor: Executor) -> None:
    record = executor.execute(["not", "a", "prompt"], ["1"], prompt_id="bad")  # type: ignore[arg-type]
    assert record.status == "error" and "not an object" in record.error["exception_message"]


def test_a_cycle_is_an_error_naming_its_nodes(executor: Executor) -> None:
    prompt = {"1": const(1), "2": add("1", "3"), "3": add("2", "1"), "4": show("3")}
    record = executor.execute(prompt, ["4"], prompt_id="cyc")
    assert record.status == "error"
    assert record.error["exception_type"].endswith("DependencyCycleError")
    assert "2" in record.error["exception_message"] and "3" in record.error["exception_message"]
    assert CALLS == []


def test_a_wrong_number_of_results_fails_the_node(executor: Executor) -> None:
    record = executor.execute({"1": {"class_type": "WrongCount", "inputs": {}}}, ["1"], prompt_id="p")
    assert record.status == "error" and record.error["node_id"] == "1"
    assert "1 values for 2 outputs" in record.error["exception_message"]


# --- node expansion -------------------------------------------------------------------------------


def repeat_prompt(x: int = 5, times: int = 3) -> dict:
    return {"1": const(x), "r": {"class_type": "Repeat", "inputs": {"x": ["1", 0], "times": times}}, "s": show("r")}


def test_an_expansion_runs_its_subgraph_and_resolves_the_linked_results(executor: Executor) -> None:
    recorder = Recorder()
    record = executor.execute(repeat_prompt(), ["s"], prompt_id="p", listener=recorder)
    assert record.status == "success", record.error
    assert record.outputs == {"s": {"text": ["8"]}}
    # r.0 is Const(5), the same content as node 1, so it is served from the cache.
    assert record.executed == ["1", "r.1", "r.2", "r.3", "r", "s"]
    assert record.node_states["r.3"] is NodeState.SUCCEEDED and record.node_states["r"] is NodeState.SUCCEEDED
    shown_on = {data["node"]: data["display_node"] for data in recorder.named("executing")}
    assert shown_on["r.2"] == "r" and shown_on["s"] == "s"
    entry = recorder.named("progress_state")[-1]["nodes"]["r.2"]
    assert (entry["display_node_id"], entry["parent_node_id"], entry["real_node_id"]) == ("r", "r", "r")


def test_an_expanded_node_is_cached_as_a_whole(executor: Executor) -> None:
    executor.execute(repeat_prompt(), ["s"], prompt_id="p1")
    CALLS.clear()
    record = executor.execute(repeat_prompt(), ["s"], prompt_id="p2")
    assert CALLS == [] and record.executed == []
    record = executor.execute(repeat_prompt(times=4), ["s"], prompt_id="p3")
    assert record.outputs == {"s": {"text": ["9"]}}
    assert record.executed == ["r.4", "r", "s"], "the subgraph nodes it shares with the last run are cached"


def test_an_expansion_may_not_reuse_an_existing_id(executor: Executor) -> None:
    record = executor.execute(repeat_prompt(x=-1), ["s"], prompt_id="p")
    assert record.status == "error" and record.error["node_id"] == "r"
    assert record.error["exception_type"] == "graph.executor.DuplicateNodeError"
    assert "'1'" in record.error["exception_message"]


# --- interruption and progress -------------------------------------------------------------------


def test_an_interrupt_from_a_progress_report_stops_the_prompt(executor: Executor) -> None:
    flag = InterruptFlag()

    def listener(event: str, data: dict) -> None:
        if event == "progress" and data["value"] == 1:
            flag.set()

    prompt = {"1": const(1), "2": {"class_type": "Steps", "inputs": {"x": ["1", 0], "steps": 3}}, "3": show("2")}
    record = executor.execute(prompt, ["3"], prompt_id="p", listener=listener, interrupt=flag)
    assert record.status is PromptStatus.INTERRUPTED
    assert record.messages[-1][0] == "execution_interrupted"
    data = record.messages[-1][1]
    assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert (data["node_id"], data["node_type"], data["executed"]) == ("2", "Steps", ["1"])
    assert ("Steps", 1) not in CALLS
    assert record.history_status()["status_str"] == "error"
    flag.clear()  # the caller owns the flag
    record = executor.execute(prompt, ["3"], prompt_id="again", interrupt=flag)
    assert record.status == "success"
    assert record.cached == ["1"]


def test_an_interrupt_set_before_the_prompt_starts_stops_it_before_its_first_node(executor: Executor) -> None:
    flag = InterruptFlag()
    flag.set()
    record = executor.execute(adder_prompt(), ["4"], prompt_id="p", interrupt=flag)
    assert record.status == "interrupted" and record.executed == []
    assert CALLS == []


def test_an_interrupt_is_checked_before_each_node(executor: Executor) -> None:
    flag = InterruptFlag()

    def listener(event: str, data: dict) -> None:
        if event == "progress_state" and data["nodes"].get("3", {}).get("state") == "finished":
            flag.set()

    recorder = Recorder()
    record = executor.execute(
        adder_prompt(), ["4"], prompt_id="p", listener=lambda e, d: (listener(e, d), recorder(e, d)), interrupt=flag
    )
    assert record.status == "interrupted"
    assert record.messages[-1][1]["node_id"] == "4"
    assert record.messages[-1][1]["executed"] == record.executed and record.executed[-1] == "3"
    assert "Show" not in [name for name, _ in CALLS]
    assert "4" not in [data["node"] for data in recorder.named("executing")]


def test_progress_reports_reach_the_listener_with_previews(executor: Executor) -> None:
    recorder = Recorder()
    prompt = {"1": const(1), "2": {"class_type": "Steps", "inputs": {"x": ["1", 0], "steps": 2}}}
    executor.execute(prompt, ["2"], prompt_id="p", listener=recorder)
    assert recorder.named("progress") == [
        {"value": 1, "max": 2, "prompt_id": "p", "node": "2"},
        {"value": 2, "max": 2, "prompt_id": "p", "node": "2"},
    ]
    assert recorder.named("preview") == [
        {
            "prompt_id": "p",
            "node_id": "2",
            "display_node_id": "2",
            "parent_node_id": None,
            "real_node_id": "2",
            "image": ("JPEG", "image2", 512),
        }
    ]
    last_state = recorder.named("progress_state")[-1]
    assert last_state["nodes"]["2"] == {
        "value": 2, "max": 2, "state": "finished", "node_id": "2", "prompt_id": "p",
        "display_node_id": "2", "parent_node_id": None, "real_node_id": "2",
    }  # fmt: skip


# --- events and the record ----------------------------------------------------------------------


def test_the_event_stream_and_history_messages_follow_compat(executor: Executor) -> None:
    recorder = Recorder()
    record = executor.execute(adder_prompt(), ["4"], prompt_id="p", listener=recorder)
    names = recorder.names()
    assert names[:2] == ["execution_start", "execution_cached"]
    assert names[-1] == "execution_success"
    assert "executing" in names and ("executing", {"node": None, "prompt_id": "p"}) not in recorder.events
    executing = recorder.named("executing")
    assert [e["node"] for e in executing][2:] == ["3", "4"]
    assert all(set(e) == {"node", "display_node", "prompt_id"} and e["display_node"] == e["node"] for e in executing)
    assert recorder.named("executed") == [
        {"node": "4", "display_node": "4", "output": {"text": ["5"]}, "prompt_id": "p"}
    ]
    assert names.index("executed") < names.index("execution_success")
    assert [event for event, _ in record.messages] == ["execution_start", "execution_cached", "execution_success"]
    start, cached, success = (data for _, data in record.messages)
    assert set(start) == {"prompt_id", "timestamp"} and start["prompt_id"] == "p"
    assert cached == {"nodes": [], "prompt_id": "p", "timestamp": cached["timestamp"]}
    assert set(success) == {"prompt_id", "timestamp"}
    assert start["timestamp"] <= success["timestamp"] and start["timestamp"] > 1_600_000_000_000
    assert record.history_status() == {"status_str": "success", "completed": True, "messages": record.messages}
    states = [data["nodes"] for data in recorder.named("progress_state")]
    assert states[0] == {executing[0]["node"]: states[0][executing[0]["node"]]}, "pending nodes are not listed"
    assert {entry["state"] for entry in states[-1].values()} == {"finished"}


def test_a_failing_listener_does_not_fail_the_prompt(executor: Executor, caplog: pytest.LogCaptureFixture) -> None:
    def listener(event: str, data: dict) -> None:
        raise ConnectionResetError("client went away")

    record = executor.execute(adder_prompt(), ["4"], prompt_id="p", listener=listener)
    assert record.status == "success" and record.outputs == {"4": {"text": ["5"]}}
    assert "listener failed on execution_start" in caplog.text


def test_executor_shares_a_budgeted_cache_across_prompts() -> None:
    cache = OutputCache(budget_bytes=3 * 64)
    executor = Executor(make_registry(), cache)
    for value in range(10):
        record = executor.execute(
            {"1": const(value), "2": {"class_type": "Double", "inputs": {"x": ["1", 0]}}}, ["2"], prompt_id=f"p{value}"
        )
        assert record.status == "success"
        assert cache.stats().bytes <= 3 * 64
    assert cache.stats().evictions > 0


def test_results_under_never_matching_keys_rerun_and_are_not_stored(executor: Executor) -> None:
    prompt = {"1": const(float("nan")), "2": show("1")}
    executor.execute(prompt, ["2"], prompt_id="p1")
    record = executor.execute(prompt, ["2"], prompt_id="p2")
    assert record.executed == ["1", "2"]
    assert executor.cache.stats().entries == 0


def test_a_constant_the_node_does_not_declare_is_dropped_as_comfyui_drops_it(executor: Executor) -> None:
    # A file from a newer ComfyUI may carry an input this version's node lacks: it must still run.
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 4, "added_in_a_later_version": 1}}, "2": show("1")}
    record = executor.execute(prompt, ["2"], prompt_id="extra")
    assert record.error is None and record.outputs["2"] == {"text": ["4"]}


class CountInputs:
    """A V1 node that takes whatever it is given (ComfyUI V3's accept_all_inputs)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, **others):
        return (len(others),)


def test_a_node_that_accepts_all_inputs_receives_undeclared_constants() -> None:
    registry = make_registry()
    spec = spec_from_v1_class("CountInputs", CountInputs)
    spec.accepts_all_inputs = True
    registry.register(spec)
    prompt = {"1": {"class_type": "CountInputs", "inputs": {"value": 1, "a": 2, "b": 3}}, "2": show("1")}
    record = Executor(registry).execute(prompt, ["2"], prompt_id="all")
    assert record.error is None and record.outputs["2"] == {"text": ["2"]}
