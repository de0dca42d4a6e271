"""Server throughput and WebSocket fan-out, against a real ``python -m server`` process.

1. Submit latency: 200 prompts from 20 concurrent HTTP clients (10 each), timed from request to
   reply. Each prompt is ``PrimitiveString -> PreviewAny`` with a unique string, so nothing is cached
   and the worker really runs every one; the number is the cost of parsing, validating and the
   durable SQLite insert (``synchronous=FULL``), under contention.
2. Event delivery lag: 100 WebSocket clients stay connected while prompts are submitted one at a
   time. Every submission makes the server broadcast a ``status`` frame; the lag is the time from
   just before the POST is sent to that frame's arrival at each of the 100 clients (request handling
   + fsync + fan-out). All clients share this process's clock and event loop, so the numbers also
   include this process reading 100 sockets: an upper bound on what the server adds.

Run: ``.venv/bin/python bench/server_load.py`` (about 30 s on a 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent


def _prompt(text: str) -> dict:
    return {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(600):
        try:
            async with session.get(f"{base}/prompt") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def _wait_idle(session: aiohttp.ClientSession, base: str) -> None:
    while True:
        async with session.get(f"{base}/prompt") as response:
            if (await response.json())["exec_info"]["queue_remaining"] == 0:
                return
        await asyncio.sleep(0.05)


async def submit_latency(session: aiohttp.ClientSession, base: str, prompts: int, clients: int) -> list[float]:
    latencies: list[float] = []

    async def client(index: int) -> None:
        for n in range(prompts // clients):
            body = json.dumps({"prompt": _prompt(f"c{index}-{n}")})
            started = time.perf_counter()
            async with session.post(f"{base}/prompt", data=body) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


async def delivery_lag(
    session: aiohttp.ClientSession, base: str, sockets: int, rounds: int
) -> tuple[list[float], list[float]]:
    arrivals: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in range(sockets)]
    connections = [await session.ws_connect(f"{base}/ws?clientId=bench{i}") for i in range(sockets)]

    async def reader(index: int) -> None:
        async for message in connections[index]:
            if message.type is aiohttp.WSMsgType.TEXT and json.loads(message.data)["type"] == "status":
                arrivals[index].put_nowait(time.perf_counter())

    readers = [asyncio.create_task(reader(i)) for i in range(sockets)]
    for queue in arrivals:  # the status frame every socket gets on connect
        await queue.get()
    lags: list[float] = []
    spreads: list[float] = []
    for n in range(rounds):
        await _wait_idle(session, base)
        await asyncio.sleep(0.05)
        for queue in arrivals:
            while not queue.empty():
                queue.get_nowait()
        sent = time.perf_counter()
        async with session.post(f"{base}/prompt", data=json.dumps({"prompt": _prompt(f"lag{n}")})) as response:
            await response.read()
        received = [await queue.get() for queue in arrivals]
        lags.extend(t - sent for t in received)
        spreads.append(max(received) - min(received))
    for task in readers:
        task.cancel()
    for ws in connections:
        await ws.close()
    return lags, spreads


async def main(args: argparse.Namespace) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--base-dir", folder, "--frontend-root", folder],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, skip_auto_headers={"Content-Type"}) as session:
                await _wait_ready(session, base)
                started = time.perf_counter()
                latencies = await submit_latency(session, base, args.prompts, args.clients)
                await _wait_idle(session, base)
                drained = time.perf_counter() - started
                lags, spreads = await delivery_lag(session, base, args.sockets, args.rounds)
        finally:
            server.terminate()
            server.wait(10)
    ms = 1000.0
    print(
        f"submit: {len(latencies)} prompts from {args.clients} clients: p50 {_percentile(latencies, 0.5) * ms:.1f} ms, "
        f"p99 {_percentile(latencies, 0.99) * ms:.1f} ms, max {max(latencies) * ms:.1f} ms; "
        f"all {args.prompts} submitted and run in {drained:.2f} s"
    )
    print(
        f"status fan-out to {args.sockets} sockets over {args.rounds} submissions: "
        f"lag p50 {_percentile(lags, 0.5) * ms:.1f} ms, "
        f"p99 {_percentile(lags, 0.99) * ms:.1f} ms, max {max(lags) * ms:.1f} ms; "
        f"first-to-last spread median {statistics.median(spreads) * ms:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
