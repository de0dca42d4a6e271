"""Queue and history on disk, in one SQLite file, so a crash or a restart loses neither.

ComfyUI keeps both in memory (docs/compatibility.md §1.7, §7.8): a restart drops every pending prompt and
all history. Here a prompt is written to the ``pending`` table before ``POST /prompt`` answers and
leaves it only in the same transaction that writes its history entry, so a prompt that was running
when the process died is simply run again at the next start.

Durability settings: WAL journal plus ``synchronous=FULL``. In WAL mode ``NORMAL`` already survives a
killed process (the WAL is in the OS page cache); ``FULL`` also survives power loss by syncing at each
commit. A commit happens once per submitted or finished prompt, so the cost — one fsync, well under a
millisecond to a few milliseconds — is nothing next to a diffusion run, and an acknowledged prompt
then really is safe. One connection guarded by a lock is the single writer; every call is short.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["QueueItem", "HistoryRecord", "PromptStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    create_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    status TEXT NOT NULL,
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    entry TEXT NOT NULL
);
"""


def _dumps(value: Any) -> str:
    # A plugin's UI payload may hold a value JSON cannot express (a numpy scalar, a Path); its text
    # form is what a client could show, and refusing would lose the whole history entry.
    return json.dumps(value, default=str, separators=(",", ":"))


def wire_number(number: float) -> int | float:
    """Priorities are floats internally; clients expect the integer the counter produced."""
    return int(number) if float(number).is_integer() else number


@dataclass
class QueueItem:
    """One accepted prompt: what ``/queue`` lists and what the worker runs.

    ``sensitive`` holds the API keys ComfyUI clients put in ``extra_data`` (docs/compatibility.md §1.3 step 4); they
    are handed to the executor but never written to disk or returned by any route.
    """

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    sensitive: dict[str, Any] = field(default_factory=dict)
    create_time: float = field(default_factory=time.time)

    def wire(self) -> list[Any]:
        """The ``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` list clients index."""
        return [wire_number(self.number), self.prompt_id, self.prompt, self.extra_data, list(self.outputs)]


@dataclass
class HistoryRecord:
    """A finished prompt: the wire entry plus the columns ``/jobs`` filters and sorts on."""

    prompt_id: str
    number: float
    status: str
    create_time: float
    start_time: float | None
    end_time: float | None
    entry: dict[str, Any]


class PromptStore:
    """The SQLite file behind the queue and the history; safe to call from any thread."""

    def __init__(self, path: Path, max_history: int = 10_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_history = max_history
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # pending prompts -------------------------------------------------------------------------

    def add_pending(self, item: QueueItem) -> None:
        self._write(
            [
                (
                    "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        item.prompt_id,
                        item.number,
                        _dumps(item.prompt),
                        _dumps(item.extra_data),
                        _dumps(item.outputs),
                        item.create_time,
                    ),
                )
            ]
        )

    def load_pending(self) -> list[QueueItem]:
        rows = self._read("SELECT number, prompt_id, prompt, extra_data, outputs, create_time FROM pending")
        return [
            QueueItem(
                number=n,
                prompt_id=pid,
                prompt=json.loads(p),
                extra_data=json.loads(e),
                outputs=json.loads(o),
                create_time=t,
            )
            for n, pid, p, e, o, t in rows
        ]

    def remove_pending(self, prompt_ids: Iterable[str]) -> None:
        self._write([("DELETE FROM pending WHERE prompt_id = ?", (pid,)) for pid in prompt_ids])

    def highest_number(self) -> float:
        """The largest priority ever handed out, so the counter continues after a restart."""
        rows = self._read("SELECT MAX(number) FROM (SELECT number FROM pending UNION ALL SELECT number FROM history)")
        return rows[0][0] if rows and rows[0][0] is not None else 0.0

    # history ---------------------------------------------------------------------------------

    def finish(self, record: HistoryRecord) -> None:
        """Write the history entry and drop the prompt from ``pending`` atomically, then trim."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO history "
                    "(prompt_id, number, status, create_time, start_time, end_time, entry) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.prompt_id,
                        record.number,
                        record.status,
                        record.create_time,
                        record.start_time,
                        record.end_time,
                        _dumps(record.entry),
                    ),
                ),
                ("DELETE FROM pending WHERE prompt_id = ?", (record.prompt_id,)),
                (
                    "DELETE FROM history WHERE seq <= (SELECT seq FROM history ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (self.max_history,),
                ),
            ]
        )

    def history(self, max_items: int | None = None, offset: int = 0) -> list[HistoryRecord]:
        """Entries oldest → newest; ``max_items`` counts back from the newest, as ComfyUI does."""
        if max_items is None:
            rows = self._read(f"SELECT {_COLUMNS} FROM history ORDER BY seq LIMIT -1 OFFSET ?", (offset,))
            return [_record(row) for row in rows]
        rows = self._read(f"SELECT {_COLUMNS} FROM history ORDER BY seq DESC LIMIT ? OFFSET ?", (max_items, offset))
        return [_record(row) for row in reversed(rows)]

    def history_entry(self, prompt_id: str) -> HistoryRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM history WHERE prompt_id = ?", (prompt_id,))
        return _record(rows[0]) if rows else None

    def delete_history(self, prompt_ids: Iterable[str]) -> None:
        self._write([("DELETE FROM history WHERE prompt_id = ?", (pid,)) for pid in prompt_ids])

    def clear_history(self) -> None:
        self._write([("DELETE FROM history", ())])


_COLUMNS = "prompt_id, number, status, create_time, start_time, end_time, entry"


def _record(row: tuple[Any, ...]) -> HistoryRecord:
    prompt_id, number, status, create_time, start_time, end_time, entry = row
    return HistoryRecord(prompt_id, number, status, create_time, start_time, end_time, json.loads(entry))
