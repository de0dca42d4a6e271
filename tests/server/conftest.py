"""Fixtures: a real app on a real loopback port per test, in a temporary base folder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import ServerConfig
from tests.server.standin_nodes import standin_registry

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[TestClient] = []

    async def make(*, plugins: bool = False, **overrides: Any) -> TestClient:
        """A server on the stand-in nodes, or with ``plugins`` on the built-ins plus the configured plugins."""
        settings: dict[str, Any] = {"base_dir": tmp_path, "frontend_root": tmp_path / "web", "auth_token": None}
        settings.update(overrides)
        registry = None if plugins else standin_registry()
        client = TestClient(TestServer(create_app(ServerConfig(**settings), registry=registry), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    return await make_client()


async def wait_for_history(client: TestClient, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``/history/{id}`` until the entry exists; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/history/{prompt_id}")
        body = await response.json()
        if prompt_id in body:
            return body[prompt_id]
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} not in history after {timeout} s")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def wait_prompt(seconds: float, text: str = "", record: bool = True) -> dict[str, Any]:
    """A prompt that waits ``seconds`` (interruptible) and records ``text``."""
    prompt: dict[str, Any] = {"1": {"class_type": "Wait", "inputs": {"seconds": seconds, "text": text}}}
    if record:
        prompt["2"] = {"class_type": "Record", "inputs": {"value": ["1", 0]}}
    return prompt
