"""Node code reports progress and honours interrupts without knowing which prompt or node it serves."""

from __future__ import annotations

import threading

import pytest

from graph.progress import Interrupted, InterruptFlag, check_interrupted, current_node_id, node_context, report_progress


class Sink:
    def __init__(self) -> None:
        self.reports: list[tuple] = []

    def on_progress(self, node_id, value, total, preview) -> None:
        self.reports.append((node_id, value, total, preview))


def test_outside_any_node_reports_and_checks_do_nothing() -> None:
    report_progress(1, 2)
    check_interrupted()
    assert current_node_id() is None


def test_reports_reach_the_sink_of_the_running_node() -> None:
    sink = Sink()
    with node_context("7", InterruptFlag(), sink):
        assert current_node_id() == "7"
        report_progress(1, 4)
        report_progress(4, 4, preview=("JPEG", "img", 512))
    assert sink.reports == [("7", 1, 4, None), ("7", 4, 4, ("JPEG", "img", 512))]
    assert current_node_id() is None


def test_nested_contexts_restore_the_outer_node() -> None:
    outer, inner = Sink(), Sink()
    with node_context("outer", InterruptFlag(), outer):
        with node_context("inner", InterruptFlag(), inner):
            report_progress(1, 1)
        report_progress(2, 2)
    assert inner.reports == [("inner", 1, 1, None)] and outer.reports == [("outer", 2, 2, None)]


def test_a_set_flag_interrupts_at_the_next_report_or_check() -> None:
    flag, sink = InterruptFlag(), Sink()
    with node_context("3", flag, sink):
        report_progress(1, 3)
        flag.set()
        with pytest.raises(Interrupted) as caught:
            report_progress(2, 3)
        assert caught.value.node_id == "3"
        with pytest.raises(Interrupted):
            check_interrupted()
    assert sink.reports == [("3", 1, 3, None)]
    flag.clear()
    assert not flag.is_set()


def test_an_interrupt_is_not_swallowed_by_except_exception() -> None:
    flag = InterruptFlag()
    flag.set()

    def careless_node_code() -> None:
        try:
            check_interrupted()
        except Exception:  # what plugins often write around their work
            pass

    with node_context("1", flag, None), pytest.raises(Interrupted):
        careless_node_code()


def test_the_flag_can_be_set_from_another_thread() -> None:
    flag = InterruptFlag()
    worker = threading.Thread(target=flag.set)
    worker.start()
    worker.join()
    assert flag.is_set()


def test_each_thread_sees_its_own_node() -> None:
    seen: list = []
    with node_context("main", InterruptFlag(), None):
        worker = threading.Thread(target=lambda: seen.append(current_node_id()))
        worker.start()
        worker.join()
    assert seen == [None]
