"""The server log: the bounded buffer, ``/internal/logs``, ``/internal/logs/raw`` and live ``logs`` messages."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import WSMsgType

from server.keys import HUB, LOGS
from server.log_buffer import LogBuffer, LogEntry
from tests.server.conftest import wait_for_history, wait_prompt, wait_until
from tests.server.test_openapi import check
from tests.server.test_websocket import stalled_socket


@pytest.fixture
def private_logger() -> Iterator[logging.Logger]:
    """A logger of its own, so the buffer under test sees only this test's lines."""
    logger = logging.getLogger("tests.log_buffer.private")
    logger.propagate, logger.level = False, logging.DEBUG
    yield logger
    logger.handlers.clear()
    logger.propagate = True


def log_from_a_thread(message: str, level: int = logging.WARNING) -> None:
    """Log the way a node does: from a thread that is not the event loop's."""
    thread = threading.Thread(target=logging.getLogger("tests.node").log, args=(level, message))
    thread.start()
    thread.join()


async def next_logs(ws, timeout: float = 5.0) -> dict:
    """The data of the next ``logs`` message, skipping every other event."""
    while True:
        message = await ws.receive(timeout=timeout)
        assert message.type is WSMsgType.TEXT, f"got {message.type!r}"
        frame = json.loads(message.data)
        if frame["type"] == "logs":
            return frame["data"]


async def logs_until(ws, text: str) -> list[dict]:
    """Every entry of the ``logs`` messages up to the one whose line holds ``text``."""
    entries: list[dict] = []
    while not any(text in entry["m"] for entry in entries):
        entries += (await next_logs(ws))["entries"]
    return entries


async def subscribe(client, client_id: str, enabled: bool = True):
    return await client.patch("/internal/logs/subscribe", json={"enabled": enabled, "clientId": client_id})


# --- the buffer ---------------------------------------------------------------------------------------


def test_the_buffer_keeps_the_newest_lines_within_its_entry_cap(private_logger):
    buffer = LogBuffer(max_entries=3, max_bytes=1 << 20)
    buffer.attach(logger=private_logger)
    for number in range(5):
        private_logger.info("line %d", number)
    lines = [entry.m for entry in buffer.entries()]
    assert len(lines) == 3 and lines[0].endswith("line 2\n") and lines[-1].endswith("line 4\n")
    assert all(line.count("INFO tests.log_buffer.private: line") == 1 for line in lines)


def test_the_buffer_keeps_the_newest_lines_within_its_byte_cap(private_logger):
    buffer = LogBuffer(max_entries=1000, max_bytes=2000)
    buffer.attach(logger=private_logger)
    for number in range(100):
        private_logger.info("%03d %s", number, "x" * 100)
    entries = buffer.entries()
    assert sum(entry.size for entry in entries) <= 2000
    assert 10 <= len(entries) < 20, "as many of the newest lines as fit"
    assert entries[-1].m.split(": ", 1)[1].startswith("099 ")


def test_one_huge_line_is_cut_instead_of_emptying_the_buffer(private_logger):
    buffer = LogBuffer(max_entries=100, max_bytes=4000)
    buffer.attach(logger=private_logger)
    private_logger.info("before")
    private_logger.error("huge %s", "é" * 10_000)
    before, huge = buffer.entries()
    assert before.m.endswith("before\n")
    assert huge.size <= buffer.max_entry_bytes and huge.m.endswith("[... cut]\n")


def test_terminal_control_characters_are_written_out_not_passed_on(private_logger):
    buffer = LogBuffer()
    buffer.attach(logger=private_logger)
    private_logger.warning("name: \x1b[2J\x1b]0;owned\x07 <b>bold</b>\r\nnext\tline \x9b31m")
    (entry,) = buffer.entries()
    assert "\x1b" not in entry.m and "\x07" not in entry.m and "\x9b" not in entry.m and "\r" not in entry.m
    assert "\\x1b[2J\\x1b]0;owned\\x07 <b>bold</b>\nnext\tline \\x9b31m\n" in entry.m


def test_the_access_log_is_left_to_the_console():
    buffer = LogBuffer()
    buffer.attach(logger=logging.getLogger("aiohttp.access"))
    try:
        logging.getLogger("aiohttp.access").warning('127.0.0.1 "GET /api/jobs HTTP/1.1" 200')
    finally:
        buffer.detach(logger=logging.getLogger("aiohttp.access"))
    assert buffer.entries() == []


def test_a_traceback_is_part_of_its_line(private_logger):
    buffer = LogBuffer()
    buffer.attach(logger=private_logger)
    try:
        raise KeyError("missing")
    except KeyError:
        private_logger.exception("a node failed")
    (entry,) = buffer.entries()
    assert "a node failed\nTraceback (most recent call last):" in entry.m and "KeyError: 'missing'" in entry.m


def test_detached_the_buffer_keeps_its_lines_and_takes_no_more(private_logger):
    buffer = LogBuffer()
    buffer.attach(logger=private_logger)
    private_logger.info("kept")
    buffer.detach(logger=private_logger)
    private_logger.info("not kept")
    assert [entry.m.rsplit(": ", 1)[1] for entry in buffer.entries()] == ["kept\n"]
    assert buffer not in private_logger.handlers


def test_lines_from_many_threads_are_all_kept(private_logger):
    buffer = LogBuffer(max_entries=10_000, max_bytes=1 << 22)
    buffer.attach(logger=private_logger)

    def write(thread: int) -> None:
        for number in range(200):
            private_logger.info("thread %d line %d", thread, number)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(buffer.entries()) == 1600


async def test_new_lines_reach_the_sink_in_batches_on_the_loop(private_logger):
    batches: list[list[LogEntry]] = []
    loop_thread: list[int] = []

    def sink(batch):
        loop_thread.append(threading.get_ident())
        batches.append(list(batch))

    buffer = LogBuffer(batch_delay=0.05)
    buffer.attach(asyncio.get_running_loop(), sink, logger=private_logger)
    writer = threading.Thread(target=lambda: [private_logger.info("burst %d", n) for n in range(300)])
    writer.start()
    writer.join()
    await asyncio.sleep(0.3)
    lines = [entry.m for batch in batches for entry in batch]
    assert len(lines) == 300 and lines[0].endswith("burst 0\n") and lines[-1].endswith("burst 299\n")
    assert len(batches) <= 3, f"300 lines from one burst arrive in a few batches, not {len(batches)}"
    assert set(loop_thread) == {threading.get_ident()}, "the sink runs on the event loop's thread"


async def test_a_batch_never_holds_more_than_the_buffer_does(private_logger):
    batches: list[list[LogEntry]] = []
    buffer = LogBuffer(max_entries=1000, max_bytes=8000, batch_delay=0.05)
    buffer.attach(asyncio.get_running_loop(), lambda batch: batches.append(list(batch)), logger=private_logger)
    for number in range(500):  # all logged before the loop runs: one batch, cut to the newest lines
        private_logger.info("%03d %s", number, "y" * 200)
    await asyncio.sleep(0.2)
    (batch,) = batches
    assert sum(entry.size for entry in batch) <= 8000 and batch == buffer.entries()
    assert batch[-1].m.split(": ", 1)[1].startswith("499 ")


def test_a_buffer_without_room_is_refused():
    with pytest.raises(ValueError):
        LogBuffer(max_entries=0)


# --- the routes ---------------------------------------------------------------------------------------


async def test_raw_logs_answer_entries_and_a_console_size(client):
    log_from_a_thread("raw <script>alert(1)</script> line")
    for path in ("/internal/logs/raw", "/api/internal/logs/raw"):
        reply = await client.get(path)
        assert reply.status == 200 and reply.content_type == "application/json", "log text is data, never HTML"
        body = await reply.json()
        assert set(body) == {"entries", "size"}
        assert isinstance(body["size"]["cols"], int) and isinstance(body["size"]["rows"], int)
        assert all(set(entry) == {"t", "m"} and entry["m"].endswith("\n") for entry in body["entries"])
        check(body, "/internal/logs/raw")
        (line,) = [entry for entry in body["entries"] if "raw <script>" in entry["m"]]
        assert line["m"].endswith("WARNING tests.node: raw <script>alert(1)</script> line\n")
        assert line["t"][:4].isdigit() and "T" in line["t"]


async def test_the_log_as_text_is_one_string_of_time_and_line(client):
    log_from_a_thread("as text")
    for path in ("/internal/logs", "/api/internal/logs"):
        reply = await client.get(path)
        assert reply.status == 200 and reply.content_type == "application/json"
        text = await reply.json()
        check(text, "/internal/logs")
        (line,) = [line for line in text.splitlines() if line.endswith("as text")]
        moment, rest = line.split(" - ", 1)
        assert moment[:4].isdigit() and rest.endswith("WARNING tests.node: as text")


async def test_a_prompts_start_and_end_are_logged_at_info(client, caplog):
    caplog.set_level(logging.INFO)
    reply = await (await client.post("/prompt", json={"prompt": wait_prompt(0, "logged")})).json()
    await wait_for_history(client, reply["prompt_id"])
    await wait_until(lambda: _logged(client, f"prompt {reply['prompt_id']} finished: success in "))
    lines = [entry.m for entry in client.app[LOGS].entries() if reply["prompt_id"] in entry.m]
    assert "INFO server.worker: prompt" in lines[0] and f"{reply['prompt_id']} started (2 nodes)" in lines[0]


async def _logged(client, text: str) -> bool:
    return any(text in entry.m for entry in client.app[LOGS].entries())


async def test_a_subscribed_socket_receives_lines_logged_by_the_worker_thread(client, caplog):
    caplog.set_level(logging.INFO)
    ws = await client.ws_connect("/ws?clientId=watcher")
    await ws.receive_json()
    reply = await subscribe(client, "watcher")
    assert reply.status == 200
    reply = await (await client.post("/prompt", json={"prompt": wait_prompt(0, "live")})).json()
    entries = await logs_until(ws, f"prompt {reply['prompt_id']} finished: success")
    assert any(f"prompt {reply['prompt_id']} started" in entry["m"] for entry in entries)
    assert all(set(entry) == {"t", "m"} for entry in entries)
    log_from_a_thread("from a node's thread")
    data = await next_logs(ws)
    assert data["entries"][-1]["m"].endswith("WARNING tests.node: from a node's thread\n")
    check(data, "/internal/logs/raw")  # a logs message carries what the route answers
    await ws.close()


async def test_only_subscribed_sockets_receive_logs_and_unsubscribing_stops_them(client):
    watcher = await client.ws_connect("/ws?clientId=watcher")
    bystander = await client.ws_connect("/ws?clientId=bystander")
    await watcher.receive_json()
    await bystander.receive_json()
    assert (await subscribe(client, "watcher")).status == 200
    log_from_a_thread("while subscribed")
    await logs_until(watcher, "while subscribed")

    assert (
        await client.patch("/api/internal/logs/subscribe", json={"enabled": False, "clientId": "watcher"})
    ).status == 200
    log_from_a_thread("after unsubscribing")
    # A prompt's status frames show the sockets are live; no logs frame may come before them.
    await client.post("/prompt", json={"prompt": wait_prompt(0, "marker", record=False)})
    await asyncio.sleep(0.4)
    for ws in (watcher, bystander):
        while True:
            try:
                message = await ws.receive(timeout=0.2)
            except asyncio.TimeoutError:
                break
            assert json.loads(message.data)["type"] != "logs"
        await ws.close()


async def test_a_closed_socket_is_forgotten_and_a_new_one_must_subscribe_again(client):
    ws = await client.ws_connect("/ws?clientId=returning")
    await ws.receive_json()
    assert (await subscribe(client, "returning")).status == 200
    await ws.close()
    await wait_until(lambda: _gone(client, "returning"))
    log_from_a_thread("while away")
    await asyncio.sleep(0.3)  # its batch is handed to the hub, which has no subscriber to send it to

    again = await client.ws_connect("/ws?clientId=returning")
    await again.receive_json()
    assert client.app[HUB].client("returning").wants_logs is False
    assert (await subscribe(client, "returning")).status == 200
    log_from_a_thread("back again")
    assert not any("while away" in entry["m"] for entry in await logs_until(again, "back again"))
    await again.close()


async def _gone(client, sid: str) -> bool:
    return client.app[HUB].client(sid) is None


async def test_a_stalled_subscriber_loses_its_own_connection_and_never_delays_another(make_client):
    client = await make_client(ws_send_queue=4, ws_send_timeout=1.0)
    stalled = await asyncio.to_thread(stalled_socket, client.port)
    await wait_until(lambda: _present(client, "stalled"))
    fast = await client.ws_connect("/ws?clientId=fast")
    await fast.receive_json()
    for client_id in ("stalled", "fast"):
        assert (await subscribe(client, client_id)).status == 200
    reader = asyncio.create_task(logs_until(fast, "burst 39 "))
    started = time.monotonic()
    for burst in range(40):  # one batch of ~200 kB per burst: far beyond what the stalled socket's buffers hold
        log_from_a_thread(f"burst {burst} " + "x" * 200_000)
        await asyncio.sleep(0.12)
    received = [entry["m"].split(": ", 1)[1].split(" x")[0] for entry in await reader if "burst" in entry["m"]]
    assert received == [f"burst {n}" for n in range(40)], "the other subscriber gets every line, in order"
    assert time.monotonic() - started < 10
    await wait_until(lambda: _gone_or_closed(client, "stalled"), timeout=5)
    stalled.close()
    await fast.close()


async def _present(client, sid: str) -> bool:
    return client.app[HUB].client(sid) is not None


async def _gone_or_closed(client, sid: str) -> bool:
    socket = client.app[HUB].client(sid)
    return socket is None or socket.closed_reason is not None


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"enabled": True}, "clientId"),
        ({"clientId": "x"}, "enabled"),
        ({"enabled": "yes", "clientId": "x"}, "enabled"),
        ({"enabled": True, "clientId": 7}, "clientId"),
        ([], "LogsSubscription"),
        (None, "LogsSubscription"),
    ],
)
async def test_a_malformed_subscription_is_refused_with_the_reason(client, body, said):
    reply = await client.patch("/internal/logs/subscribe", data=b"" if body is None else json.dumps(body))
    assert reply.status == 400
    error = (await reply.json())["error"]
    assert said in error["message"] + error["details"]


async def test_subscribing_a_client_that_is_not_connected_is_refused(client):
    reply = await subscribe(client, "nobody")
    assert reply.status == 400
    error = (await reply.json())["error"]
    assert error["type"] == "unknown_client" and "'nobody'" in error["message"] and "/ws?clientId=" in error["details"]
    bad_json = await client.patch("/internal/logs/subscribe", data=b"{not json")
    assert bad_json.status == 400 and "JSON" in (await bad_json.json())["error"]["message"]


async def test_unsubscribing_a_client_that_is_gone_succeeds(client):
    assert (await subscribe(client, "nobody", enabled=False)).status == 200


async def test_the_log_routes_need_the_token_like_every_route(make_client):
    client = await make_client(auth_token="s3cret")
    for method, path in (
        ("GET", "/internal/logs"),
        ("GET", "/api/internal/logs/raw"),
        ("PATCH", "/internal/logs/subscribe"),
    ):
        reply = await client.request(method, path, json={"enabled": False, "clientId": "x"})
        assert reply.status == 401, (method, path)
    allowed = await client.get("/internal/logs/raw", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status == 200
    cross_site = await client.get(
        "/internal/logs/raw", headers={"Authorization": "Bearer s3cret", "Origin": "https://evil.example"}
    )
    assert cross_site.status == 403, "another site's page cannot read the log"


async def test_the_handler_leaves_the_root_logger_when_the_app_stops(make_client):
    client = await make_client()
    buffer = client.app[LOGS]
    assert buffer in logging.getLogger().handlers
    await client.close()
    assert buffer not in logging.getLogger().handlers
