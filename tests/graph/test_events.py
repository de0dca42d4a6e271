"""Event payloads carry exactly the fields of docs/compatibility.md §1.4, so ComfyUI clients read them unchanged."""

from __future__ import annotations

import time

import pytest

from graph import events


def test_event_names_are_the_wire_names() -> None:
    assert (events.EXECUTION_START, events.EXECUTION_CACHED, events.EXECUTING, events.PROGRESS) == (
        "execution_start", "execution_cached", "executing", "progress",
    )  # fmt: skip
    assert (events.PROGRESS_STATE, events.EXECUTED, events.EXECUTION_SUCCESS) == (
        "progress_state",
        "executed",
        "execution_success",
    )
    assert (events.EXECUTION_ERROR, events.EXECUTION_INTERRUPTED, events.PREVIEW) == (
        "execution_error",
        "execution_interrupted",
        "preview",
    )


def test_timestamps_are_integer_milliseconds_now() -> None:
    stamp = events.execution_start("p")["timestamp"]
    assert isinstance(stamp, int) and abs(stamp - time.time() * 1000) < 5_000


def test_prompt_level_payloads() -> None:
    assert set(events.execution_start("p")) == {"prompt_id", "timestamp"}
    cached = events.execution_cached("p", iter(["1", "2"]))
    assert cached["nodes"] == ["1", "2"] and set(cached) == {"nodes", "prompt_id", "timestamp"}
    assert set(events.execution_success("p")) == {"prompt_id", "timestamp"}


def test_node_level_payloads() -> None:
    assert events.executing("p", "3", "3") == {"node": "3", "display_node": "3", "prompt_id": "p"}
    assert events.progress("p", "3", 2, 20) == {"value": 2, "max": 20, "prompt_id": "p", "node": "3"}
    assert events.executed("p", "9", "9", {"images": []}) == {
        "node": "9",
        "display_node": "9",
        "output": {"images": []},
        "prompt_id": "p",
    }


def test_progress_state_is_a_snapshot_of_started_nodes() -> None:
    entry = events.node_progress("p", "3", 1, 4, "running", events.node_meta("3"))
    assert entry == {
        "value": 1, "max": 4, "state": "running", "node_id": "3", "prompt_id": "p",
        "display_node_id": "3", "parent_node_id": None, "real_node_id": "3",
    }  # fmt: skip
    nodes = {"3": entry}
    payload = events.progress_state("p", nodes)
    nodes["3"] = events.node_progress("p", "3", 4, 4, "finished", events.node_meta("3"))
    nodes["4"] = events.node_progress("p", "4", 0, 1, "running", events.node_meta("4"))
    assert payload == {"prompt_id": "p", "nodes": {"3": entry}}


def test_error_and_interrupt_payloads() -> None:
    error = events.execution_error("p", "2", "Fail", ["1"], "boom", "ValueError", ["  File x"], {"x": [1]}, ["1"])
    assert error == {
        "prompt_id": "p", "node_id": "2", "node_type": "Fail", "executed": ["1"], "exception_message": "boom",
        "exception_type": "ValueError", "traceback": ["  File x"], "current_inputs": {"x": [1]},
        "current_outputs": ["1"], "timestamp": error["timestamp"],
    }  # fmt: skip
    interrupted = events.execution_interrupted("p", "2", "KSampler", ["1"])
    assert set(interrupted) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}


def test_preview_carries_the_binary_frame_ids_and_the_unencoded_image() -> None:
    image = object()
    assert events.preview("p", "5", events.node_meta("5"), image) == {
        "prompt_id": "p", "node_id": "5", "display_node_id": "5", "parent_node_id": None, "real_node_id": "5",
        "image": image,
    }  # fmt: skip


def test_history_meta_of_a_node() -> None:
    assert events.node_meta("9") == {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}


@pytest.mark.parametrize(("value", "shown"), [(None, None), (3, 3), (0.5, 0.5), (True, True), ("seed", "seed")])
def test_plain_input_values_are_shown_as_they_are(value, shown) -> None:
    assert events.format_value(value) == shown


def test_tensors_are_shown_by_shape_dtype_and_device() -> None:
    torch = pytest.importorskip("torch")
    assert events.format_value(torch.zeros(1, 4, 8, 8)) == "Tensor(shape=[1, 4, 8, 8], dtype=torch.float32, device=cpu)"


def test_big_values_are_cut_short() -> None:
    assert len(events.format_value("x" * 10_000)) <= events.MAX_VALUE_CHARS + 3
    shown = events.format_value({"samples": list(range(10_000))})
    assert isinstance(shown, str) and len(shown) <= events.MAX_VALUE_CHARS + 3


def test_current_inputs_format_every_item_of_every_list() -> None:
    assert events.format_inputs({"a": [1, "x"], "b": [object.__new__(object)]})["a"] == [1, "x"]
