"""``GraphBuilder`` makes the subgraphs Loom's executor expands, and ``ExecutionBlocker`` is the executor's own."""

from __future__ import annotations

from typing import Any

from graph.execution_state import PromptStatus
from graph.executor import Executor
from graph.progress import InterruptFlag, node_context
from graph.registry import NodeRegistry
from graph.spec import ExecutionBlocker as LoomBlocker
from graph.v1 import spec_from_v1_class
from nodes.runtime import Runtime


class Const:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


class Add:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    def run(self, a: int, b: int) -> tuple[int]:
        return (a + b,)


class SumUpTo:
    """Expands into a chain of Add nodes: 1 + 2 + ... + n."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "expand"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"n": ("INT", {"default": 3})}}

    def expand(self, n: int) -> dict[str, Any]:
        from comfy_execution.graph_utils import GraphBuilder

        graph = GraphBuilder()
        total = graph.node("Const", value=0)
        for number in range(1, n + 1):
            total = graph.node("Add", a=total.out(0), b=number)
        return {"result": (total.out(0),), "expand": graph.finalize()}


class BlockUnless:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",), "allow": ("BOOLEAN", {"default": False})}}

    def run(self, value: int, allow: bool) -> Any:
        from comfy_execution.graph import ExecutionBlocker

        return (value,) if allow else ExecutionBlocker(None)


class Show:
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def show(self, value: int) -> dict[str, Any]:
        return {"ui": {"text": [str(value)]}}


def executor(runtime: Runtime) -> Executor:
    registry = NodeRegistry()
    for cls in (Const, Add, SumUpTo, BlockUnless, Show):
        registry.register(spec_from_v1_class(cls.__name__, cls))
    return Executor(registry, services=runtime)


def test_a_node_expands_into_the_graph_it_built(runtime: Runtime) -> None:
    prompt = {
        "5": {"class_type": "SumUpTo", "inputs": {"n": 4}},
        "9": {"class_type": "Show", "inputs": {"value": ["5", 0]}},
    }
    record = executor(runtime).execute(prompt, ["9"], prompt_id="p")
    assert record.status is PromptStatus.SUCCESS, record.error
    assert record.outputs == {"9": {"text": ["10"]}}
    expanded = [node_id for node_id in record.executed if node_id.startswith("5.")]
    assert expanded == ["5.0.0.1", "5.0.0.2", "5.0.0.3", "5.0.0.4", "5.0.0.5"], "ids carry the expanding node's prefix"


def test_an_execution_blocker_skips_its_consumers(runtime: Runtime) -> None:
    def prompt(allow: bool) -> dict[str, Any]:
        return {
            "1": {"class_type": "Const", "inputs": {"value": 7}},
            "2": {"class_type": "BlockUnless", "inputs": {"value": ["1", 0], "allow": allow}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
        }

    run = executor(runtime)
    assert run.execute(prompt(True), ["3"], prompt_id="a").outputs == {"3": {"text": ["7"]}}
    blocked = run.execute(prompt(False), ["3"], prompt_id="b")
    assert blocked.status is PromptStatus.SUCCESS and blocked.outputs == {}


def test_the_blocker_classes_are_loom_s() -> None:
    from comfy_execution import graph, graph_utils

    assert graph.ExecutionBlocker is graph_utils.ExecutionBlocker is LoomBlocker


def test_builder_nodes_serialise_to_the_api_format() -> None:
    from comfy_execution.graph_utils import GraphBuilder, is_link

    graph = GraphBuilder(prefix="x.")
    source = graph.node("Const", "src", value=1)
    assert graph.node("Const", "src") is source, "an id already used gives the existing node"
    sink = graph.node("Add", a=source.out(0), b=[source.id, 0.0])
    sink.set_override_display_id("42")
    sink.set_input("b", None)
    assert sink.get_input("b") is None and is_link(sink.get_input("a")) and not is_link(["x", True])
    assert graph.lookup_node("src") is source
    assert graph.finalize() == {
        "x.src": {"class_type": "Const", "inputs": {"value": 1}},
        "x.1": {"class_type": "Add", "inputs": {"a": ["x.src", 0]}, "override_display_id": "42"},
    }
    graph.replace_node_output("src", 0, 5)
    assert graph.finalize()["x.1"]["inputs"] == {"a": 5}


def test_default_prefixes_never_repeat_within_a_node() -> None:
    from comfy_execution.graph_utils import GraphBuilder

    with node_context("12", InterruptFlag(), None):
        first, second = GraphBuilder().prefix, GraphBuilder().prefix
    with node_context("12.0.0.1", InterruptFlag(), None):
        nested = GraphBuilder().prefix
    assert (first, second, nested) == ("12.0.0.", "12.0.1.", "12.0.0.1.0.0.")
