"""ComfyUI's ``server.PromptServer`` for packs: ``from server import PromptServer`` resolves here.

Packs written for ComfyUI talk to the server through ``PromptServer.instance``: they add HTTP routes
at import time (``@PromptServer.instance.routes.get("/my_pack/status")``), push messages to the
editor from a node (``send_sync("my_pack.progress", {...})``), and edit every submitted prompt
(``add_on_prompt_handler``). Loom's application is not that class, so this is a facade over it:

- ``create_app`` makes a fresh instance the current one *before* it loads the plugins (ComfyUI
  creates its server before importing packs too), so ``routes`` and ``app`` exist at import time;
  ``mount_routes`` then adds what the packs declared to the app, bare and under ``/api`` as ComfyUI
  does, after Loom's own API routes and before the catch-alls. ``loop`` is set when the app starts.
- ``send_sync`` goes through the app's ``ThreadSafePublisher``, the path the worker's own events
  take, so it is safe from the worker thread, keeps order with the prompt's events, and reaches a
  session (``sid``) or, with ``sid=None``, every socket. Binary previews
  (``BinaryEventTypes.PREVIEW_IMAGE`` / ``UNENCODED_PREVIEW_IMAGE``) go to one session, and only
  if it asked for previews, like Loom's own.
- ``client_id`` is the session of the prompt that is running, ``last_node_id`` the node whose code
  calls it (``graph.progress.current_node_id``).

Outside a server (``loom run``, a Ray worker, a test loading packs directly) the instance is a
detached one: routes are collected and never served, messages are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from aiohttp import web

from graph.progress import current_node_id
from server.previews import PreviewEncodingError, encode_preview
from server.queue import PromptQueue
from server.websocket import ThreadSafePublisher

__all__ = ["PROMPT_SERVER", "BinaryEventTypes", "PromptServer"]

log = logging.getLogger(__name__)

OnPromptHandler = Callable[[dict[str, Any]], Any]
_PREVIEW_MIMES = {1: "image/jpeg", 2: "image/png"}


class BinaryEventTypes:
    """The first word of a binary WebSocket frame, as ComfyUI numbers them."""

    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class PromptServer:
    """What ComfyUI packs reach as ``PromptServer.instance``, over one Loom application."""

    #: The current instance: the latest app's, or a detached one before any app exists.
    instance: ClassVar[PromptServer]

    def __init__(self, app: web.Application | None = None) -> None:
        self.app = app
        self.routes = web.RouteTableDef()
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Feature names packs read or add to (ComfyUI's list).
        self.supports: list[str] = ["custom_nodes_from_web"]
        self.on_prompt_handlers: list[OnPromptHandler] = []
        self._publisher: ThreadSafePublisher | None = None
        self._queue: PromptQueue | None = None

    @classmethod
    def open(cls, app: web.Application) -> PromptServer:
        """A fresh instance over ``app``, made the current one; call it before the plugins are imported."""
        server = cls(app)
        app[PROMPT_SERVER] = server
        cls.instance = server
        return server

    def connect(self, publisher: ThreadSafePublisher, queue: PromptQueue) -> None:
        """Where messages go and where the running prompt is read from, once the app has them."""
        self._publisher, self._queue = publisher, queue

    def mount_routes(self) -> None:
        """Add the routes the packs declared to the app, each bare and under ``/api``; static ones bare only.

        A route that clashes with one already there (a pack re-declaring ``/prompt``) is skipped
        with a warning: the server still starts, Loom's route stays.
        """
        if self.app is None:
            return
        router = self.app.router
        for route in self.routes:
            try:
                if isinstance(route, web.RouteDef):
                    web.RouteDef(route.method, "/api" + route.path, route.handler, route.kwargs).register(router)
                route.register(router)
            except (RuntimeError, TypeError, ValueError) as error:
                log.warning("plugin route %s not served: %s", route, error)

    # --- the running prompt -------------------------------------------------------------------

    @property
    def client_id(self) -> str | None:
        """The session (``client_id``) of the prompt that is running; ``None`` when none is, or it has none."""
        running = self._queue.running() if self._queue is not None else []
        return running[0].extra_data.get("client_id") if len(running) == 1 else None

    @property
    def last_prompt_id(self) -> str | None:
        running = self._queue.running() if self._queue is not None else []
        return running[0].prompt_id if len(running) == 1 else None

    @property
    def last_node_id(self) -> str | None:
        """The node whose code is running in the caller's context (a node calling ``send_sync``)."""
        return current_node_id()

    # --- messages to the editor ---------------------------------------------------------------

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Send ``{"type": event, "data": data}`` to session ``sid``, or to every socket; any thread.

        An integer ``event`` is a binary frame (``BinaryEventTypes``); previews are delivered to
        ``sid`` (default: the running prompt's session) if that socket asked for previews.
        """
        if self._publisher is None:
            log.debug("message %r not sent: no server is running", event)
            return
        if isinstance(event, int):
            self._send_binary(event, data, sid)
        else:
            self._publisher.event(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def _send_binary(self, event: int, data: Any, sid: str | None) -> None:
        assert self._publisher is not None
        target = sid or self.client_id
        if target is None:
            log.debug("binary event %d not sent: no session to send it to", event)
            return
        try:
            if event == BinaryEventTypes.UNENCODED_PREVIEW_IMAGE:
                image, mime = encode_preview(data)
            elif event == BinaryEventTypes.PREVIEW_IMAGE and isinstance(data, (bytes, bytearray)) and len(data) > 4:
                # ComfyUI's PREVIEW_IMAGE payload: a 4-byte format code (1 JPEG, 2 PNG), then the file.
                (code,) = struct.unpack(">I", data[:4])
                image, mime = bytes(data[4:]), _PREVIEW_MIMES.get(code, "image/jpeg")
            else:
                log.debug("binary event %d not sent: Loom forwards previews only", event)
                return
        except PreviewEncodingError as error:
            log.warning("preview from a plugin not sent: %s", error)
            return
        if self._publisher.wants_previews(target):
            self._publisher.preview(target, image, mime, self._preview_metadata())

    def _preview_metadata(self) -> Mapping[str, Any]:
        node = self.last_node_id
        return {"node_id": node, "display_node_id": node, "real_node_id": node, "prompt_id": self.last_prompt_id}

    # --- prompts ------------------------------------------------------------------------------

    def add_on_prompt_handler(self, handler: OnPromptHandler) -> None:
        """Call ``handler(json)`` with the body of every ``POST /prompt`` before it is validated and queued."""
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run the handlers in turn, each on what the last returned; one that raises or returns no dict is skipped."""
        for handler in self.on_prompt_handlers:
            try:
                edited = handler(body)
            except Exception:  # plugin code: log it and go on with the body as it was
                log.warning("on-prompt handler %r failed", handler, exc_info=True)
                continue
            if isinstance(edited, dict):
                body = edited
            else:
                log.warning("on-prompt handler %r returned %s, not the prompt; ignored", handler, type(edited).__name__)
        return body


PROMPT_SERVER = web.AppKey("loom_prompt_server", PromptServer)
PromptServer.instance = PromptServer()
