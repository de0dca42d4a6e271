"""The server's recent log lines, kept in memory for the official frontend's Logs panel (docs/compatibility.md §C.2).

ComfyUI captures its own stdout; Loom keeps ``logging`` records instead. A ``LogBuffer`` is a handler
on the root logger while the app runs (its ``cleanup_ctx`` adds it and removes it), so it keeps every
line the process's logging configuration lets through, Loom's, plugins' and libraries' alike: INFO
and up under ``loom serve``. It holds at most ``max_entries`` lines and ``max_bytes`` of text, oldest
dropped first. aiohttp's access log is left to the console: one visit of the editor loads a hundred
files, and the panel would fill with its own requests, pushing out the lines a person opened it for.

Nodes log from the worker thread, so ``emit`` only formats the line and appends it under a lock: it
never waits on the event loop or a socket. Lines for live subscribers are collected and handed to the
loop in batches, at most one hand-over every ``batch_delay`` seconds, however fast lines arrive.

Each line is sent as text in JSON, and the panel writes it into a terminal emulator, where escape
sequences would move the cursor, recolour or rewrite what is shown. A log line can carry text from
outside (a prompt's strings, a file name), so control characters other than newline and tab are
written out as ``\\x1b``-style escapes: the panel shows what was logged, never what it would do to a
terminal.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["LOG_FORMAT", "LogBuffer", "LogEntry", "console_size"]

#: One line as ``loom serve`` prints it on the console and the Logs panel shows it.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Loggers whose lines the buffer does not keep (see above).
_NOT_KEPT = frozenset({"aiohttp.access"})
#: Control characters a terminal would act on, written out instead; newline and tab stay.
_CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" for code in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(code) not in "\n\t"
}
_CUT_MARK = " [... cut]"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log line: ``t`` when it was logged (ISO 8601, local time), ``m`` the line, ending in a newline."""

    t: str
    m: str

    @property
    def size(self) -> int:
        """What the line counts against the buffer's byte cap."""
        return len(self.t) + len(self.m.encode())

    def wire(self) -> dict[str, str]:
        return {"t": self.t, "m": self.m}


def console_size() -> dict[str, int]:
    """The server console's size as ComfyUI reports it (``cols``, ``rows``); 80x24 without a terminal."""
    size = shutil.get_terminal_size((80, 24))
    return {"cols": size.columns, "rows": size.lines}


def _cut(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    keep = max(0, max_bytes - len(_CUT_MARK))
    return encoded[:keep].decode(errors="ignore") + _CUT_MARK


class LogBuffer(logging.Handler):
    """Keeps the newest lines within both caps, and hands new lines to a sink on the event loop."""

    def __init__(
        self,
        max_entries: int = 2000,
        max_bytes: int = 1 << 20,
        *,
        level: int = logging.INFO,
        batch_delay: float = 0.1,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a log buffer needs room for at least one line")
        super().__init__(level)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.addFilter(lambda record: record.name not in _NOT_KEPT)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: One line alone may fill at most a quarter of the buffer: a huge traceback must not evict everything.
        self.max_entry_bytes = max(64, max_bytes // 4)
        self._batch_delay = batch_delay
        self._guard = threading.Lock()
        self._entries: deque[LogEntry] = deque()
        self._bytes = 0
        #: Lines not yet handed to the sink: the newest kept ones, so under the same caps.
        self._unsent: deque[LogEntry] = deque()
        self._unsent_bytes = 0
        self._sink: Callable[[Sequence[LogEntry]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_due = False

    def entries(self) -> list[LogEntry]:
        """The kept lines, oldest first."""
        with self._guard:
            return list(self._entries)

    def attach(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        sink: Callable[[Sequence[LogEntry]], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Start keeping ``logger``'s (default: the root logger's) lines; with a ``sink``, new ones also
        go to it, in batches, on ``loop``."""
        with self._guard:
            self._loop, self._sink = (loop, sink) if sink is not None else (None, None)
        (logger or logging.getLogger()).addHandler(self)

    def detach(self, logger: logging.Logger | None = None) -> None:
        """Stop keeping lines; the kept ones stay, the ones not yet handed to the sink are dropped."""
        (logger or logging.getLogger()).removeHandler(self)
        with self._guard:
            self._loop, self._sink = None, None
            self._unsent.clear()
            self._unsent_bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = self._entry(record)
        except Exception:  # a record that cannot be formatted is reported the logging way, never raised
            self.handleError(record)
            return
        with self._guard:
            self._keep(entry)
            loop = self._loop
            if loop is None:
                return
            self._unsent.append(entry)
            self._unsent_bytes += entry.size
            while len(self._unsent) > self.max_entries or self._unsent_bytes > self.max_bytes:
                self._unsent_bytes -= self._unsent.popleft().size
            if self._flush_due:
                return
            self._flush_due = True
        try:
            loop.call_soon_threadsafe(self._flush_later)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            with self._guard:
                self._flush_due = False

    def _entry(self, record: logging.LogRecord) -> LogEntry:
        text = self.format(record).replace("\r\n", "\n").translate(_CONTROL_ESCAPES)
        moment = datetime.fromtimestamp(record.created).isoformat()
        return LogEntry(moment, _cut(text, self.max_entry_bytes - len(moment) - 1) + "\n")

    def _keep(self, entry: LogEntry) -> None:
        self._entries.append(entry)
        self._bytes += entry.size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._bytes -= self._entries.popleft().size

    def _flush_later(self) -> None:
        if self._loop is not None:
            self._loop.call_later(self._batch_delay, self._flush)

    def _flush(self) -> None:
        with self._guard:
            batch, sink = list(self._unsent), self._sink
            self._unsent.clear()
            self._unsent_bytes = 0
            self._flush_due = False
        if batch and sink is not None:
            sink(batch)
