"""Priority order (docs/compatibility.md §1.3 step 2) and what the store keeps across a reopen."""

from __future__ import annotations

from server.queue import PromptQueue
from server.store import HistoryRecord, PromptStore, QueueItem


def item(queue: PromptQueue, prompt_id: str, number: float | None = None, front: bool = False) -> QueueItem:
    return QueueItem(
        number=queue.assign_number(number, front), prompt_id=prompt_id, prompt={}, extra_data={}, outputs=["1"]
    )


def test_counter_front_and_explicit_numbers_order_the_queue(tmp_path):
    queue = PromptQueue(PromptStore(tmp_path / "db.sqlite3"))
    for entry in (
        item(queue, "a"),
        item(queue, "b"),
        item(queue, "front1", front=True),
        item(queue, "front2", front=True),
        item(queue, "explicit", number=1.5),
    ):
        queue.put(entry)
    assert [i.prompt_id for i in queue.pending()] == ["front2", "front1", "a", "explicit", "b"]
    assert queue.take(0).prompt_id == "front2"
    assert queue.remaining() == 5 and [i.prompt_id for i in queue.running()] == ["front2"]


def test_pending_survive_reopen_and_finished_ones_move_to_history(tmp_path):
    store = PromptStore(tmp_path / "db.sqlite3")
    queue = PromptQueue(store)
    for name in "abc":
        queue.put(item(queue, name))
    running = queue.take(0)
    store.finish(HistoryRecord(running.prompt_id, running.number, "success", 0.0, 1.0, 2.0, {"prompt": running.wire()}))
    queue.done(running.prompt_id)
    queue.delete(["c"])
    store.close()

    reopened_store = PromptStore(tmp_path / "db.sqlite3")
    reopened = PromptQueue(reopened_store)
    assert [i.prompt_id for i in reopened.pending()] == ["b"]
    assert [r.prompt_id for r in reopened_store.history()] == ["a"]
    assert item(reopened, "d").number == 3  # past every number on record ("c" was deleted, so 3 is free)


def test_history_is_capped_oldest_first(tmp_path):
    store = PromptStore(tmp_path / "db.sqlite3", max_history=3)
    for n in range(5):
        store.finish(HistoryRecord(f"p{n}", n, "success", 0.0, None, None, {}))
    assert [r.prompt_id for r in store.history()] == ["p2", "p3", "p4"]
    assert [r.prompt_id for r in store.history(max_items=2)] == ["p3", "p4"]
