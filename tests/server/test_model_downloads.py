"""Model downloads (``server.model_downloads``): off unless enabled, HTTPS only, inside the models
folders, resumable, checked against the workflow's sha256, one at a time per file, with progress on
the WebSocket. The source is a small HTTP server on loopback; nothing here leaves the machine."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.keys import RUNTIME
from server.model_downloads import ModelSource, model_sources
from tests.server.conftest import MakeClient

DATA = os.urandom(3 * 2**20 + 12345)
SHA256 = hashlib.sha256(DATA).hexdigest()


class Source:
    """A model host: serves ``DATA`` at ``/model.safetensors``, honouring ``Range`` unless told not to."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.honour_range = True
        #: Bytes sent before the connection is dropped, for the next request only.
        self.cut_after: int | None = None
        #: When set, the body waits for it (a download that stays in flight).
        self.gate: asyncio.Event | None = None
        self.redirect_to: str | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Range")
        self.ranges.append(header)
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header and self.honour_range else 0
        if start >= len(DATA) and start:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(DATA)}"})
        body = DATA[start:]
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(body)
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"
        await response.prepare(request)
        if self.gate is not None:
            await self.gate.wait()
        if self.cut_after is not None:
            await response.write(body[: self.cut_after])
            self.cut_after = None
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response


@pytest.fixture
async def source() -> AsyncIterator[tuple[Source, str]]:
    host = Source()
    app = web.Application()
    app.router.add_get("/model.safetensors", host.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield host, str(server.make_url("/model.safetensors"))
    await server.close()


@pytest.fixture
async def downloads(make_client: MakeClient) -> TestClient:
    return await make_client(enable_model_downloads=True)


def entry(url: str, name: str = "tiny.safetensors", directory: str = "checkpoints", **extra: Any) -> dict[str, Any]:
    return {"name": name, "directory": directory, "url": url, **extra}


async def download(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Start a download and return its ``model_download`` events up to the last one."""
    async with client.ws_connect("/ws") as socket:
        response = await client.post("/loom/model_downloads", json=body)
        assert response.status == 200, await response.text()
        started = await response.json()
        assert started["status"] == "downloading"
        events = []
        while True:
            message = await asyncio.wait_for(socket.receive_json(), 20)
            if message["type"] == "model_download" and message["data"]["name"] == body["name"]:
                events.append(message["data"])
                if message["data"]["status"] != "downloading":
                    return events


def _models(client: TestClient) -> Path:
    return client.app[RUNTIME].model_paths.models


async def test_downloads_are_refused_unless_the_owner_enabled_them(make_client: MakeClient, source) -> None:
    host, url = source
    client = await make_client()
    response = await client.post("/loom/model_downloads", json=entry(url))
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["type"] == "downloads_disabled"
    assert "--enable-model-downloads" in error["details"]
    assert host.ranges == [], "the source was never contacted"
    listing = await (await client.get("/api/loom/model_downloads")).json()
    assert listing == {"enabled": False, "downloads": []}


async def test_a_download_lands_in_its_folder_with_progress_on_the_websocket(downloads: TestClient, source) -> None:
    _, url = source
    events = await download(downloads, entry(url, hash=SHA256.upper(), hash_type="SHA256"))
    assert events[0]["status"] == "downloading" and events[0]["total"] == len(DATA)
    assert events[-1] == {
        "directory": "checkpoints",
        "name": "tiny.safetensors",
        "url": url,
        "status": "done",
        "downloaded": len(DATA),
        "total": len(DATA),
        "error": None,
        "resumed_from": 0,
    }
    folder = _models(downloads) / "checkpoints"
    assert (folder / "tiny.safetensors").read_bytes() == DATA
    assert [p.name for p in folder.iterdir()] == ["tiny.safetensors"], "no partial file is left behind"
    assert "tiny.safetensors" in await (await downloads.get("/models/checkpoints")).json()
    listing = await (await downloads.get("/loom/model_downloads")).json()
    assert listing["enabled"] is True and listing["downloads"] == [events[-1]]


async def test_a_legacy_folder_key_and_a_subfolder_are_kept(downloads: TestClient, source) -> None:
    _, url = source
    events = await download(downloads, entry(url, name="flux/t5.safetensors", directory="clip"))
    assert events[-1]["status"] == "done"
    assert (_models(downloads) / "clip" / "flux" / "t5.safetensors").read_bytes() == DATA
    assert "flux/t5.safetensors" in await (await downloads.get("/models/text_encoders")).json()


async def test_an_interrupted_download_resumes_with_a_range_request(downloads: TestClient, source) -> None:
    host, url = source
    host.cut_after = 1_000_000
    failed = await download(downloads, entry(url, hash=SHA256))
    assert failed[-1]["status"] == "failed" and failed[-1]["error"]
    partial = _models(downloads) / "checkpoints" / ".tiny.safetensors.partial"
    kept = partial.stat().st_size
    assert 0 < kept <= 1_000_000 and DATA.startswith(partial.read_bytes())
    assert not (_models(downloads) / "checkpoints" / "tiny.safetensors").exists()

    done = await download(downloads, entry(url, hash=SHA256))
    assert host.ranges == [None, f"bytes={kept}-"]
    assert done[-1]["status"] == "done" and done[-1]["resumed_from"] == kept
    assert (_models(downloads) / "checkpoints" / "tiny.safetensors").read_bytes() == DATA
    assert not partial.exists()


async def test_a_source_that_ignores_range_is_read_again_from_the_start(downloads: TestClient, source) -> None:
    host, url = source
    host.honour_range = False
    folder = _models(downloads) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".tiny.safetensors.partial").write_bytes(b"stale bytes from elsewhere")
    events = await download(downloads, entry(url, hash=SHA256))
    assert host.ranges == ["bytes=26-"]
    assert events[-1]["status"] == "done" and events[-1]["resumed_from"] == 0
    assert (folder / "tiny.safetensors").read_bytes() == DATA


async def test_a_partial_file_longer_than_the_source_starts_over(downloads: TestClient, source) -> None:
    host, url = source
    folder = _models(downloads) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".tiny.safetensors.partial").write_bytes(b"x" * (len(DATA) + 5))
    events = await download(downloads, entry(url))
    assert host.ranges == [f"bytes={len(DATA) + 5}-", None]
    assert events[-1]["status"] == "done"
    assert (folder / "tiny.safetensors").read_bytes() == DATA


async def test_a_file_whose_sha256_differs_is_not_kept(downloads: TestClient, source) -> None:
    _, url = source
    events = await download(downloads, entry(url, hash=hashlib.sha256(b"another file").hexdigest()))
    assert events[-1]["status"] == "failed"
    assert "sha256 mismatch" in events[-1]["error"]
    assert list((_models(downloads) / "checkpoints").iterdir()) == []


@pytest.mark.parametrize(
    ("url", "details"),
    [
        ("http://example.com/model.safetensors", "plain HTTP only from this machine"),
        ("ftp://127.0.0.1/model.safetensors", "plain HTTP only from this machine"),
        ("file:///etc/passwd", "plain HTTP only from this machine"),
        ("https:///model.safetensors", ""),
    ],
)
async def test_only_https_sources_or_plain_http_from_loopback(downloads: TestClient, url: str, details: str) -> None:
    response = await downloads.post("/loom/model_downloads", json=entry(url))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "url_refused" and details in error["details"]


async def test_a_redirect_to_plain_http_elsewhere_is_refused(downloads: TestClient, source) -> None:
    host, url = source
    host.redirect_to = "http://example.com/model.safetensors"
    events = await download(downloads, entry(url))
    assert events[-1]["status"] == "failed"
    assert "Only HTTPS sources are allowed" in events[-1]["error"]
    assert list((_models(downloads) / "checkpoints").iterdir()) == []


@pytest.mark.parametrize(
    ("directory", "name", "type_"),
    [
        ("checkpoints", "../escape.safetensors", "path_refused"),
        ("checkpoints", "sub/../../escape.safetensors", "path_refused"),
        ("checkpoints", "/tmp/escape.safetensors", "path_refused"),
        ("checkpoints", "a\\..\\escape.safetensors", "path_refused"),
        ("checkpoints", ".hidden.safetensors", "path_refused"),
        ("checkpoints", "plugin.py", "path_refused"),
        ("checkpoints", "", "path_refused"),
        ("../checkpoints", "x.safetensors", "unknown_folder"),
        ("secrets", "x.safetensors", "unknown_folder"),
        ("diffusers", "x.safetensors", "unknown_folder"),
    ],
)
async def test_names_and_folders_outside_the_models_folders_are_refused(
    downloads: TestClient, source, directory: str, name: str, type_: str
) -> None:
    host, url = source
    response = await downloads.post("/loom/model_downloads", json=entry(url, name=name, directory=directory))
    assert response.status == 400
    assert (await response.json())["error"]["type"] == type_
    assert host.ranges == []


async def test_a_symlink_out_of_the_folder_is_not_followed(downloads: TestClient, source, tmp_path: Path) -> None:
    _, url = source
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _models(downloads) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "linked").symlink_to(outside)
    response = await downloads.post("/loom/model_downloads", json=entry(url, name="linked/x.safetensors"))
    assert response.status == 400
    assert "outside" in (await response.json())["error"]["details"]
    assert list(outside.iterdir()) == []


async def test_one_download_at_a_time_per_file(downloads: TestClient, source) -> None:
    host, url = source
    host.gate = asyncio.Event()
    async with downloads.ws_connect("/ws") as socket:
        assert (await downloads.post("/loom/model_downloads", json=entry(url))).status == 200
        second = await downloads.post("/loom/model_downloads", json=entry(url))
        assert second.status == 409
        assert (await second.json())["error"]["type"] == "download_running"
        other = await downloads.post("/loom/model_downloads", json=entry(url, name="other.safetensors"))
        assert other.status == 200, "another file may download meanwhile"
        host.gate.set()
        finished: set[str] = set()
        while len(finished) < 2:
            message = await asyncio.wait_for(socket.receive_json(), 20)
            if message["type"] == "model_download" and message["data"]["status"] == "done":
                finished.add(message["data"]["name"])
    again = await downloads.post("/loom/model_downloads", json=entry(url))
    assert again.status == 409
    assert (await again.json())["error"]["type"] == "file_exists"


async def test_only_sha256_digests_are_accepted(downloads: TestClient, source) -> None:
    _, url = source
    for extra in ({"hash": "abc", "hash_type": "md5"}, {"hash": "not-hex", "hash_type": "sha256"}):
        response = await downloads.post("/loom/model_downloads", json=entry(url, **extra))
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "hash_refused"


async def test_a_body_without_name_directory_and_url_is_refused(downloads: TestClient) -> None:
    response = await downloads.post("/loom/model_downloads", json={"name": "x.safetensors"})
    assert response.status == 400
    assert "ModelDownloadRequest" in (await response.json())["error"]["message"]


def test_model_sources_read_the_workflow_node_and_subgraph_metadata() -> None:
    top = {"name": "a.safetensors", "directory": "checkpoints", "url": "https://h/a.safetensors"}
    on_node = {"name": "b.safetensors", "directory": "vae", "url": "https://h/b", "hash": "ab", "hash_type": "sha256"}
    inner = {"name": "c.safetensors", "directory": "loras", "url": "https://h/c"}
    workflow = {
        "models": [top, {"name": "broken"}],
        "nodes": [
            {"id": 1, "type": "VAELoader", "properties": {"models": [on_node, top]}},
            {"id": 2, "type": "Note", "properties": {"models": "not a list"}},
        ],
        "definitions": {"subgraphs": [{"id": "sg", "nodes": [{"id": 3, "properties": {"models": [inner]}}]}]},
    }
    assert model_sources(workflow) == [
        ModelSource("a.safetensors", "checkpoints", "https://h/a.safetensors"),
        ModelSource("b.safetensors", "vae", "https://h/b", "ab", "sha256"),
        ModelSource("c.safetensors", "loras", "https://h/c"),
    ]
    assert model_sources([1, 2]) == [] and model_sources({"nodes": "x"}) == []
