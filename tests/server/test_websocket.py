"""/ws: status on connect, feature flags, preview routing, and isolation from a stalled client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

from aiohttp import WSMsgType

from server.keys import HUB
from tests.server.conftest import wait_for_history, wait_until

PREVIEW_PROMPT = {
    "1": {"class_type": "Previewing", "inputs": {"steps": 2, "text": "p"}},
    "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
}


async def frames_until_done(ws, prompt_id):
    frames = []
    while True:
        message = await ws.receive(timeout=10)
        frames.append(message)
        if message.type is WSMsgType.TEXT:
            data = json.loads(message.data)
            if data["type"] == "executing" and data["data"]["node"] is None and data["data"]["prompt_id"] == prompt_id:
                return frames


async def test_status_on_connect_carries_the_real_queue_length_and_flags_are_exchanged(client):
    await client.post(
        "/prompt",
        json={
            "prompt": {
                "1": {"class_type": "Wait", "inputs": {"seconds": 0.5, "text": "a"}},
                "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
            }
        },
    )
    ws = await client.ws_connect("/ws")
    hello = await ws.receive_json()
    assert hello["data"]["status"]["exec_info"]["queue_remaining"] == 1 and len(hello["data"]["sid"]) == 32
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    while (reply := await ws.receive_json(timeout=5))["type"] != "feature_flags":
        pass
    assert reply["data"]["supports_preview_metadata"] is True and reply["data"]["max_upload_size"] > 0
    await ws.close()


async def test_a_first_frame_nested_past_the_cap_is_ignored_and_the_socket_keeps_working(client):
    ws = await client.ws_connect("/ws?clientId=deep")
    await ws.receive_json()
    await ws.send_str("[" * 50_000 + "]" * 50_000)
    reply = await (await client.post("/prompt", json={"prompt": PREVIEW_PROMPT, "client_id": "deep"})).json()
    while True:
        message = await ws.receive(timeout=10)
        assert message.type is WSMsgType.TEXT, f"got {message.type!r}: no previews (no flags were taken), no close"
        data = json.loads(message.data)
        if data["type"] == "executing" and data["data"] == {"node": None, "prompt_id": reply["prompt_id"]}:
            break
    await ws.close()


async def test_previews_go_only_to_the_submitting_socket_that_asked(client):
    metadata_ws = await client.ws_connect("/ws?clientId=editor")
    await metadata_ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    bystander = await client.ws_connect("/ws?clientId=other")
    await bystander.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await wait_until(lambda: _has_features(client, "editor"))
    await wait_until(lambda: _has_features(client, "other"))

    reply = await (await client.post("/prompt", json={"prompt": PREVIEW_PROMPT, "client_id": "editor"})).json()
    frames = await frames_until_done(metadata_ws, reply["prompt_id"])
    previews = [f.data for f in frames if f.type is WSMsgType.BINARY]
    assert len(previews) == 2
    kind, length = struct.unpack(">II", previews[0][:8])
    meta = json.loads(previews[0][8 : 8 + length])
    assert (
        kind == 4
        and meta["node_id"] == "1"
        and meta["prompt_id"] == reply["prompt_id"]
        and meta["image_type"] == "image/jpeg"
    )
    assert previews[0][8 + length :][:2] == b"\xff\xd8"  # a JPEG follows the metadata

    # A plain API client (no feature_flags) submitting the same work gets no binary frame at all.
    api_ws = await client.ws_connect("/ws?clientId=api")
    await api_ws.receive_json()
    prompt = {**PREVIEW_PROMPT, "1": {"class_type": "Previewing", "inputs": {"steps": 2, "text": "q"}}}
    reply = await (await client.post("/prompt", json={"prompt": prompt, "client_id": "api"})).json()
    assert all(f.type is WSMsgType.TEXT for f in await frames_until_done(api_ws, reply["prompt_id"]))
    # The bystander asked for previews but submitted nothing: it never receives one.
    await asyncio.sleep(0.1)
    while True:
        try:
            message = await bystander.receive(timeout=0.05)
        except asyncio.TimeoutError:
            break
        assert message.type is WSMsgType.TEXT
    for ws in (metadata_ws, bystander, api_ws):
        await ws.close()


async def test_legacy_preview_flag_gets_type_1_frames(client):
    ws = await client.ws_connect("/ws?clientId=legacy")
    await ws.send_json({"type": "feature_flags", "data": {"loom_previews": True}})
    await wait_until(lambda: _has_features(client, "legacy"))
    reply = await (await client.post("/prompt", json={"prompt": PREVIEW_PROMPT, "client_id": "legacy"})).json()
    previews = [f.data for f in await frames_until_done(ws, reply["prompt_id"]) if f.type is WSMsgType.BINARY]
    assert previews and struct.unpack(">II", previews[0][:8]) == (1, 1)
    await ws.close()


async def _has_features(client, sid):
    socket_ = client.app[HUB].client(sid)
    return socket_ is not None and bool(socket_.features)


def stalled_socket(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads a byte."""
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        (
            f"GET /ws?clientId=stalled HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in raw.recv(1024)
    return raw


async def test_a_stalled_client_never_delays_another(make_client):
    client = await make_client(ws_send_queue=64, ws_send_timeout=1.0)
    stalled = await asyncio.to_thread(stalled_socket, client.port)
    fast = await client.ws_connect("/ws?clientId=fast")
    await fast.receive_json()
    hub = client.app[HUB]
    await wait_until(lambda: _connected(hub, "stalled"))

    async def read_all() -> int:
        received = 0
        while received < 300:
            message = await fast.receive_json(timeout=5)
            received += message["type"] == "notification"
        return received

    reader = asyncio.create_task(read_all())
    payload = "x" * 64_000
    started = time.monotonic()
    for index in range(300):  # ~19 MB at ~1 frame/ms: far beyond what the stalled socket's buffers hold
        hub.send("notification", {"value": payload, "id": index})
        await asyncio.sleep(0.001)
    assert await reader == 300
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    await wait_until(lambda: _gone(hub, "stalled"), timeout=5)
    stalled.close()
    await fast.close()


async def _connected(hub, sid):
    return hub.client(sid) is not None


async def _gone(hub, sid):
    return hub.client(sid) is None


async def test_reconnecting_client_sees_the_node_that_is_running(client):
    reply = await (
        await client.post(
            "/prompt",
            json={
                "client_id": "re",
                "prompt": {
                    "1": {"class_type": "Wait", "inputs": {"seconds": 1.0, "text": "r"}},
                    "2": {"class_type": "Record", "inputs": {"value": ["1", 0]}},
                },
            },
        )
    ).json()
    await wait_until(lambda: _executing(client, "re"))
    ws = await client.ws_connect("/ws?clientId=re")
    assert (await ws.receive_json())["type"] == "status"
    replay = await ws.receive_json(timeout=5)
    assert replay["type"] == "executing" and replay["data"]["node"] == "1"
    await wait_for_history(client, reply["prompt_id"])
    await ws.close()


async def _executing(client, sid):
    return sid in client.app[HUB]._executing
