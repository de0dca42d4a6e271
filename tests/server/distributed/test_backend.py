"""The worker over a backend with several lanes, and the in-process path staying free of Ray."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from typing import Any

from graph.executor import Executor
from server.config import REPO_ROOT
from server.distributed.backend import LocalBackend
from server.queue import PromptQueue
from server.store import PromptStore, QueueItem
from server.worker import PromptWorker
from tests.server.conftest import wait_prompt
from tests.server.standin_nodes import standin_registry


class TwoExecutors:
    """A two-lane backend in this process: each prompt borrows whichever executor is idle."""

    lanes = 2

    def __init__(self) -> None:
        self.idle: queue.SimpleQueue[Executor] = queue.SimpleQueue()
        for _ in range(self.lanes):
            self.idle.put(Executor(standin_registry()))
        self.freed: list[tuple[bool, bool]] = []

    def execute(self, prompt: dict[str, Any], outputs: list[str], **options: Any) -> Any:
        executor = self.idle.get()
        try:
            return executor.execute(prompt, outputs, **options)
        finally:
            self.idle.put(executor)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self.freed.append((unload_models, free_memory))

    def close(self) -> None:
        return None


class Silent:
    def event(self, name, data, sid) -> None: ...

    def preview(self, sid, image, mime, metadata) -> None: ...

    def wants_previews(self, sid) -> bool:
        return False


def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_each_lane_runs_a_prompt_at_once_and_a_targeted_interrupt_stops_only_its_prompt(tmp_path):
    store = PromptStore(tmp_path / "db.sqlite3")
    prompts = PromptQueue(store)
    backend = TwoExecutors()
    worker = PromptWorker(prompts, store, backend, Silent())
    worker.start()
    try:
        for index, text in enumerate(("long", "cut")):
            prompts.put(QueueItem(float(index), text, wait_prompt(1.5, text), {}, ["2"]))
        until(lambda: sorted(worker.running_prompt_ids) == ["cut", "long"])
        assert worker.interrupt("cut") and not worker.interrupt("unknown")
        until(lambda: store.history_entry("cut") is not None)
        assert store.history_entry("cut").status == "interrupted" and worker.running_prompt_ids == ["long"]
        worker.request_free(True, False)
        until(lambda: store.history_entry("long") is not None)
        assert store.history_entry("long").entry["outputs"]["2"]["text"] == ["long"]
        until(lambda: backend.freed == [(True, False)])
    finally:
        worker.stop()
        store.close()


def test_the_local_backend_has_one_lane_and_free_drops_its_cache():
    executor = Executor(standin_registry())
    backend = LocalBackend(executor, executor.cache)
    record = backend.execute(wait_prompt(0.0, "x"), ["2"], prompt_id="p")
    assert backend.lanes == 1 and record.outputs["2"]["text"] == ["x"] and len(executor.cache) > 0
    backend.free(False, True)
    assert len(executor.cache) == 0


def test_the_server_imports_and_builds_its_app_without_touching_ray(tmp_path):
    code = (
        "import sys; from server.app import create_app; from server.config import ServerConfig; "
        f"create_app(ServerConfig(base_dir={str(tmp_path)!r}, auth_token=None)); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
