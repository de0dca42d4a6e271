"""What the host lends node code while it runs: one object, opaque to the engine.

Nodes need their installation's folders, model paths and compute settings, and one process may host
several installations (two servers in a test, a server beside ``loom run``), so none of that can be a
module global. The host (server, CLI, Ray worker) hands its object to the ``Executor``, which puts it
in a ``ContextVar`` around every prompt; the server also puts it there around each request, since
validation and ``/object_info`` ask nodes for their combo choices. The engine never looks inside:
``nodes.runtime.Runtime`` is what Loom's hosts lend, and ``nodes.runtime.current_runtime()`` reads it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["current_services", "services_context"]

_current: ContextVar[Any] = ContextVar("loom_services", default=None)


class services_context:
    """Make ``services`` what ``current_services()`` returns inside the block (this thread or task)."""

    __slots__ = ("_services", "_token")

    def __init__(self, services: Any) -> None:
        self._services = services

    def __enter__(self) -> Any:
        self._token = _current.set(self._services)
        return self._services

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


def current_services() -> Any:
    """The object the innermost ``services_context`` lent, or None outside every one."""
    return _current.get()
