"""The ``/ws`` hub: every socket gets its own bounded send queue and sender task.

ComfyUI sends every event from one publisher coroutine that awaits each socket write in turn, so one
stalled socket delays everybody (docs/compatibility.md §7.6). Here publishing only enqueues; each socket's
own task writes, with a per-frame timeout, and a socket whose queue overflows or whose write times
out is aborted. A slow client can lose its own connection, never delay another one.

Previews are binary frames that naive API clients mistake for output images (docs/compatibility.md §C.6), so a
socket receives them only when it asked: it must be the socket that submitted the prompt *and* have
declared a preview capability in its ``feature_flags`` message — ``supports_preview_metadata``
(the official frontend; type-4 frames with metadata) or ``loom_previews`` (legacy type-1 frames).
Likewise ``logs`` frames (the server log, ``server.log_buffer``) reach only sockets that subscribed
through ``PATCH /internal/logs/subscribe``; the subscription belongs to the socket, so it ends when
the socket closes, and a reconnecting client subscribes again, as ComfyUI's frontend does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import WSMsgType, web

from graph.formats.strict_json import JsonDocumentError, parse_json
from server.log_buffer import LogEntry, console_size

__all__ = [
    "SocketHub",
    "ClientSocket",
    "ThreadSafePublisher",
    "PREVIEW_IMAGE",
    "PREVIEW_IMAGE_WITH_METADATA",
    "encode_preview_frame",
]

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMAT_CODES = {"image/jpeg": 1, "image/png": 2}

Frame = str | bytes


def encode_preview_frame(image: bytes, mime: str, metadata: Mapping[str, Any] | None) -> bytes:
    """Binary preview framing (docs/compatibility.md §1.4): type 4 carries JSON metadata, type 1 a format code."""
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, _IMAGE_FORMAT_CODES.get(mime, 1)) + image
    meta = json.dumps({**metadata, "image_type": mime}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image


class ClientSocket:
    """One connected client: its declared features and the frames waiting to reach it."""

    def __init__(
        self,
        sid: str,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        queue_size: int,
        send_timeout: float,
    ) -> None:
        self.sid = sid
        self.ws = ws
        self._transport = transport
        self.features: dict[str, Any] = {}
        self.wants_logs = False
        self.closed_reason: str | None = None
        self._frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self._timeout = send_timeout
        self._task = asyncio.get_running_loop().create_task(self._pump(), name=f"ws-send-{sid}")

    @property
    def wants_previews(self) -> bool:
        return bool(self.features.get("supports_preview_metadata") or self.features.get("loom_previews"))

    def offer(self, frame: Frame) -> None:
        if self.closed_reason is not None:
            return
        try:
            self._frames.put_nowait(frame)
        except asyncio.QueueFull:
            self.abort(f"send queue full ({self._frames.maxsize} frames)")

    async def _pump(self) -> None:
        while True:
            frame = await self._frames.get()
            send = self.ws.send_bytes(frame) if isinstance(frame, bytes) else self.ws.send_str(frame)
            try:
                await asyncio.wait_for(send, self._timeout)
            except asyncio.TimeoutError:
                self.abort(f"a frame took longer than {self._timeout} s to send")
                return
            except (ConnectionError, RuntimeError) as error:
                self.abort(f"send failed: {error}")
                return

    def abort(self, reason: str) -> None:
        """Drop the connection without a closing handshake: a stalled peer would not answer one."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        log.warning("closing websocket %s: %s", self.sid, reason)
        if asyncio.current_task() is not self._task:
            self._task.cancel()
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()

    async def close(self) -> None:
        self._task.cancel()
        if not self.ws.closed:
            await self.ws.close()


class SocketHub:
    """Routes events to sockets by session id (docs/compatibility.md §1.4 targets) and handles ``/ws``."""

    def __init__(
        self,
        queue_remaining: Callable[[], int],
        server_features: Callable[[], dict[str, Any]],
        queue_size: int = 1024,
        send_timeout: float = 10.0,
    ) -> None:
        self._queue_remaining = queue_remaining
        self._server_features = server_features
        self._queue_size = queue_size
        self._send_timeout = send_timeout
        self._clients: dict[str, ClientSocket] = {}
        #: The last ``executing`` frame per session, replayed when that session reconnects mid-prompt.
        self._executing: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def client(self, sid: str) -> ClientSocket | None:
        return self._clients.get(sid)

    def status_data(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return data

    def send(self, event: str, data: Mapping[str, Any], sid: str | None = None) -> None:
        """Queue a JSON event for one session (``sid``) or, with ``sid=None``, for everyone."""
        frame = json.dumps({"type": event, "data": data}, default=str)
        if event == "executing" and sid is not None:
            if data.get("node") is None:
                self._executing.pop(sid, None)
            else:
                self._executing[sid] = frame
        if sid is None:
            for client in list(self._clients.values()):
                client.offer(frame)
        elif (recipient := self._clients.get(sid)) is not None:
            recipient.offer(frame)

    def send_status(self) -> None:
        self.send("status", self.status_data())

    def send_preview(self, sid: str, image: bytes, mime: str, metadata: Mapping[str, Any]) -> bool:
        """Send a preview to ``sid`` only if that socket asked for previews; returns whether sent."""
        client = self._clients.get(sid)
        if client is None or not client.wants_previews:
            return False
        with_metadata = bool(client.features.get("supports_preview_metadata"))
        client.offer(encode_preview_frame(image, mime, metadata if with_metadata else None))
        return True

    def send_logs(self, entries: Sequence[LogEntry]) -> None:
        """One ``logs`` frame with these lines for every socket that subscribed to the server log."""
        subscribers = [client for client in self._clients.values() if client.wants_logs]
        if not subscribers or not entries:
            return
        data = {"entries": [entry.wire() for entry in entries], "size": console_size()}
        frame = json.dumps({"type": "logs", "data": data})
        for client in subscribers:
            client.offer(frame)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        previous = self._clients.get(sid)
        if previous is not None:
            await previous.close()
        client = ClientSocket(sid, ws, request.transport, self._queue_size, self._send_timeout)
        self._clients[sid] = client
        client.offer(json.dumps({"type": "status", "data": self.status_data(sid)}))
        if sid in self._executing:
            client.offer(self._executing[sid])
        try:
            first = True
            async for message in ws:
                if message.type is WSMsgType.TEXT and first:
                    self._negotiate(client, message.data)
                first = False
        finally:
            if self._clients.get(sid) is client:
                del self._clients[sid]
            await client.close()
        return ws

    def _negotiate(self, client: ClientSocket, text: str) -> None:
        """Only the first text frame may be ``feature_flags`` (docs/compatibility.md §C.3); anything else is ignored."""
        try:
            message = parse_json(text)
        except JsonDocumentError:
            return
        if (
            isinstance(message, dict)
            and message.get("type") == "feature_flags"
            and isinstance(message.get("data"), dict)
        ):
            client.features = dict(message["data"])
            client.offer(json.dumps({"type": "feature_flags", "data": self._server_features()}))

    async def close_all(self) -> None:
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()


class ThreadSafePublisher:
    """Hands events from the worker thread to the hub on the event loop, preserving their order.

    Created before the loop runs (the queue needs it to announce changes); until ``attach`` is
    called there is no socket to deliver to, so events are dropped.
    """

    def __init__(self) -> None:
        self._hub: SocketHub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, hub: SocketHub, loop: asyncio.AbstractEventLoop) -> None:
        self._hub, self._loop = hub, loop

    def _call(self, method: str, *args: Any) -> None:
        if self._hub is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(getattr(self._hub, method), *args)

    def event(self, name: str, data: Mapping[str, Any], sid: str | None) -> None:
        self._call("send", name, data, sid)

    def status(self) -> None:
        self._call("send_status")

    def preview(self, sid: str, image: bytes, mime: str, metadata: Mapping[str, Any]) -> None:
        self._call("send_preview", sid, image, mime, metadata)

    def wants_previews(self, sid: str) -> bool:
        """Read from the worker thread; a stale answer costs one encoded or one skipped preview."""
        client = self._hub.client(sid) if self._hub is not None else None
        return client is not None and client.wants_previews
