"""Fetching the model files a workflow names into the models folders (``loom serve --enable-model-downloads``).

Workflows from ComfyUI's templates say where their model files come from: a ``models`` list on the
workflow, on each node's ``properties``, or both, with entries ``{name, url, directory, hash?,
hash_type?}`` (the official frontend's ``ModelFile``). ``model_sources`` reads them; the editor's
missing-models dialog asks the server to fetch the ones that are not there.

A download makes the server open an outbound connection and write a file it will later load as
weights, so each rule below closes one way for a workflow file to misuse that:

- Off unless the machine's owner turned it on: ``403`` naming the flag.
- HTTPS only, so the bytes are the ones the named host serves. Plain HTTP is accepted only from a
  loopback host (a local mirror; the tests), and every redirect is checked by the same rule, since
  a redirect to ``http://`` would otherwise undo it.
- ``directory`` must be a folder key of the models layout (``nodes.model_folders``), the file's
  extension one that folder lists, and ``name`` must stay inside it after resolving symlinks, with
  no hidden part: nothing lands outside the models folders or where no loader would look.
- Bytes go to ``.<name>.partial`` beside the target and are renamed into place only once the size
  and the sha256 (when the workflow gives one) check out, so a model list never offers a truncated
  file. A failed download keeps its partial file and the next attempt resumes it with an HTTP
  ``Range`` request; a source that ignores ``Range`` (``200``) is read again from the start.
- One download per target file at a time (``409`` for a second one).

Progress reaches every editor as ``model_download`` WebSocket events, at most a few per second.
Proxies from the environment are not used (``trust_env=False``): which host is contacted should
follow from the URL alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import aiohttp
from aiohttp import web
from yarl import URL

from nodes.folders import UnsafePathError, resolve_inside
from nodes.model_folders import FOLDER_LAYOUT, MODEL_DIRECTORIES, ModelPaths, canonical_key
from server.config import is_loopback_host
from server.keys import CONFIG, HUB, RUNTIME
from server.request_body import BadRequestBody, read_json
from server.responses import error_response

__all__ = [
    "DOWNLOAD_EVENT",
    "MODEL_DOWNLOADER",
    "DownloadRefused",
    "DownloadState",
    "ModelDownloader",
    "ModelSource",
    "check_source",
    "download_target",
    "model_downloader_context",
    "model_sources",
    "routes",
    "source_report",
    "workflow_graphs",
    "workflow_nodes",
]

routes = web.RouteTableDef()

#: The WebSocket event type that carries a ``DownloadState``.
DOWNLOAD_EVENT = "model_download"
ENABLE_FLAG = "--enable-model-downloads"
MAX_REDIRECTS = 8
CHUNK_BYTES = 1 << 20
#: Seconds between two progress events of one download (the first and last are always sent).
PROGRESS_INTERVAL = 0.25
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadRefused(Exception):
    """A download request that is not acceptable, with the HTTP status and error type it is answered with."""

    def __init__(self, status: int, type_: str, message: str, details: str = "") -> None:
        super().__init__(f"{message}: {details}" if details else message)
        self.status, self.type, self.message, self.details = status, type_, message, details

    def response(self) -> web.Response:
        return error_response(self.status, self.type, self.message, self.details)


@dataclass(frozen=True)
class ModelSource:
    """One model file a workflow names, and where to fetch it from."""

    name: str
    directory: str
    url: str
    hash: str | None = None
    hash_type: str | None = None

    @classmethod
    def from_entry(cls, entry: object) -> ModelSource | None:
        """An entry of a ``models`` list, or None when it lacks a text name, directory or url."""
        if not isinstance(entry, Mapping):
            return None
        name, directory, url = entry.get("name"), entry.get("directory"), entry.get("url")
        if not (isinstance(name, str) and isinstance(directory, str) and isinstance(url, str)):
            return None
        digest, kind = entry.get("hash"), entry.get("hash_type")
        return cls(
            name, directory, url, digest if isinstance(digest, str) else None, kind if isinstance(kind, str) else None
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "directory": self.directory,
            "url": self.url,
            "hash": self.hash,
            "hash_type": self.hash_type,
        }


def workflow_graphs(workflow: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The workflow and its subgraph definitions: inner nodes (loaders among them) live in the latter."""
    graphs = [workflow]
    definitions = workflow.get("definitions")
    if isinstance(definitions, Mapping) and isinstance(definitions.get("subgraphs"), list):
        graphs += [graph for graph in definitions["subgraphs"] if isinstance(graph, Mapping)]
    return graphs


def workflow_nodes(graph: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    nodes = graph.get("nodes")
    for node in nodes if isinstance(nodes, list) else []:
        if isinstance(node, Mapping):
            yield node


def model_sources(workflow: object) -> list[ModelSource]:
    """Every model file the workflow's metadata names, once per folder and name, in file order."""
    if not isinstance(workflow, Mapping):
        return []
    lists = [workflow.get("models")]
    for graph in workflow_graphs(workflow):
        for node in workflow_nodes(graph):
            properties = node.get("properties")
            if isinstance(properties, Mapping):
                lists.append(properties.get("models"))
    found: dict[tuple[str, str], ModelSource] = {}
    for entries in lists:
        for entry in entries if isinstance(entries, list) else []:
            source = ModelSource.from_entry(entry)
            if source is not None:
                found.setdefault((canonical_key(source.directory), source.name), source)
    return list(found.values())


def _check_url(url: URL) -> URL:
    if url.scheme == "https" and url.host:
        return url
    if url.scheme == "http" and url.host and is_loopback_host(url.host):
        return url
    raise DownloadRefused(
        400, "url_refused", "Only HTTPS sources are allowed", f"{str(url)!r} (plain HTTP only from this machine)"
    )


def download_target(models: Path, directory: str, name: str) -> Path:
    """Where ``name`` of folder key ``directory`` is written: inside ``models/<folder>``, or refused.

    A legacy key (``clip``, ``unet``) writes to its own folder, which is searched with the new one.
    """
    spec = FOLDER_LAYOUT.get(canonical_key(directory))
    if spec is None or spec.extensions is MODEL_DIRECTORIES:
        files = (key for key, layout in FOLDER_LAYOUT.items() if layout.extensions is not MODEL_DIRECTORIES)
        known = ", ".join(sorted(files))
        raise DownloadRefused(400, "unknown_folder", f"No model folder {directory!r}", f"known: {known}")
    parts = PurePosixPath(name).parts
    if not parts or "\\" in name or any(part.startswith(".") for part in parts):
        raise DownloadRefused(400, "path_refused", "Path refused", f"{name!r}: not a plain file name")
    suffix = PurePosixPath(name).suffix.lower()
    if spec.extensions is not None and suffix not in spec.extensions:
        allowed = ", ".join(sorted(spec.extensions))
        raise DownloadRefused(400, "path_refused", "Path refused", f"{name!r}: {directory} holds {allowed} files")
    folder = models / (directory if directory in spec.directories else spec.directories[0])
    try:
        return resolve_inside(folder, name)
    except UnsafePathError as error:
        raise DownloadRefused(400, "path_refused", "Path refused", f"{name!r}: {error.reason}") from None


def _expected_sha256(source: ModelSource) -> str | None:
    if not source.hash:
        return None
    if (source.hash_type or "sha256").lower() != "sha256":
        raise DownloadRefused(400, "hash_refused", "Unsupported hash type", f"{source.hash_type!r}: only sha256")
    if not _SHA256.match(source.hash):
        raise DownloadRefused(400, "hash_refused", "Not a sha256 digest", repr(source.hash))
    return source.hash.lower()


def check_source(source: ModelSource, models: Path) -> tuple[URL, Path, str | None]:
    """The checked URL, target path and expected sha256 of a download, or ``DownloadRefused``."""
    try:
        url = URL(source.url)
    except (ValueError, TypeError):
        raise DownloadRefused(400, "url_refused", "Not a URL", repr(source.url)) from None
    return _check_url(url), download_target(models, source.directory, source.name), _expected_sha256(source)


@dataclass
class DownloadState:
    """What the editor shows for one download; sent as the payload of each ``model_download`` event."""

    directory: str
    name: str
    url: str
    status: Literal["downloading", "done", "failed"] = "downloading"
    downloaded: int = 0
    total: int | None = None
    error: str | None = None
    #: Bytes that were already on disk from an interrupted attempt when this one started.
    resumed_from: int = 0
    _sent_at: float = field(default=0.0, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "name": self.name,
            "url": self.url,
            "status": self.status,
            "downloaded": self.downloaded,
            "total": self.total,
            "error": self.error,
            "resumed_from": self.resumed_from,
        }


class DownloadFailed(Exception):
    """The source, the connection or the bytes let the download down; the message is shown as it is."""


def _content_range_start(response: aiohttp.ClientResponse) -> tuple[int, int | None] | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None:
        return None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _hash_file(path: Path, hasher: Any) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)


def _append(handle: IO[bytes], hasher: Any, chunk: bytes) -> None:
    handle.write(chunk)
    hasher.update(chunk)


class ModelDownloader:
    """Runs downloads as tasks on the server's loop and keeps the last state of each target file."""

    def __init__(self, models: Path, session: aiohttp.ClientSession, send: Callable[[str, dict[str, Any]], None]):
        self._models = models
        self._session = session
        self._send = send
        self._states: dict[Path, DownloadState] = {}
        self._tasks: dict[Path, asyncio.Task[None]] = {}

    def states(self) -> list[DownloadState]:
        return list(self._states.values())

    def start(self, source: ModelSource) -> DownloadState:
        """Check and begin one download; ``DownloadRefused`` if it may not run."""
        url, target, sha256 = check_source(source, self._models)
        if target in self._tasks:
            raise DownloadRefused(409, "download_running", "This file is already being downloaded", source.name)
        if target.exists():
            raise DownloadRefused(409, "file_exists", "This model file is already there", source.name)
        state = DownloadState(source.directory, source.name, str(url))
        self._states[target] = state
        task = asyncio.get_running_loop().create_task(self._run(state, url, target, sha256))
        self._tasks[target] = task
        task.add_done_callback(lambda _: self._tasks.pop(target, None))
        return state

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _publish(self, state: DownloadState, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - state._sent_at >= PROGRESS_INTERVAL:
            state._sent_at = now
            self._send(DOWNLOAD_EVENT, state.to_json())

    async def _run(self, state: DownloadState, url: URL, target: Path, sha256: str | None) -> None:
        partial = target.with_name(f".{target.name}.partial")
        try:
            await asyncio.to_thread(partial.parent.mkdir, parents=True, exist_ok=True)
            digest = await self._fetch(state, url, partial)
            if sha256 is not None and digest != sha256:
                partial.unlink(missing_ok=True)
                raise DownloadFailed(f"sha256 mismatch: the workflow names {sha256}, the file has {digest}")
            os.replace(partial, target)
            state.status = "done"
        except (DownloadFailed, DownloadRefused) as error:  # refused: a redirect to a source not allowed
            state.status, state.error = "failed", str(error)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            state.status, state.error = "failed", f"{type(error).__name__}: {error}".rstrip(": ")
        self._publish(state, force=True)

    async def _fetch(self, state: DownloadState, url: URL, partial: Path) -> str:
        """Stream ``url`` into ``partial``, resuming what is there; returns the whole file's sha256."""
        offset = partial.stat().st_size if partial.exists() else 0
        hasher = hashlib.sha256()
        response = await self._open(url, offset)
        if offset and response.status == 416:  # the partial file is longer than this source's file
            response.release()
            offset = 0
            response = await self._open(url, 0)
        async with response:
            if response.status == 206 and offset:
                span = _content_range_start(response)
                if span is None or span[0] != offset:
                    answer = response.headers.get("Content-Range")
                    raise DownloadFailed(f"the source answered a range request with Content-Range {answer!r}")
                state.total = span[1]
                await asyncio.to_thread(_hash_file, partial, hasher)
            elif response.status == 200:
                offset = 0
                state.total = response.content_length
            else:
                raise DownloadFailed(f"the source answered HTTP {response.status} {response.reason or ''}".rstrip())
            state.downloaded = state.resumed_from = offset
            self._publish(state, force=True)
            with partial.open("ab" if offset else "wb") as handle:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    await asyncio.to_thread(_append, handle, hasher, chunk)
                    state.downloaded += len(chunk)
                    self._publish(state)
        if state.total is not None and state.downloaded != state.total:
            raise DownloadFailed(f"the connection ended after {state.downloaded} of {state.total} bytes; retry resumes")
        return hasher.hexdigest()

    async def _open(self, url: URL, offset: int) -> aiohttp.ClientResponse:
        """GET with ``Range`` from ``offset``, following redirects by hand so each one is checked."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._session.get(url, headers=headers, allow_redirects=False)
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location", "")
            response.release()
            url = _check_url(url.join(URL(location, encoded=True)))
        raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects")


MODEL_DOWNLOADER = web.AppKey("loom_model_downloader", ModelDownloader)


async def model_downloader_context(app: web.Application) -> AsyncIterator[None]:
    """The downloader and its HTTP client live as long as the app; running downloads stop with it."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    # Bytes are counted and hashed as they arrive, so they must arrive as stored: no content coding.
    headers = {"Accept-Encoding": "identity"}
    session = aiohttp.ClientSession(timeout=timeout, headers=headers, trust_env=False, auto_decompress=False)
    async with session:
        downloader = ModelDownloader(app[RUNTIME].model_paths.models, session, app[HUB].send)
        app[MODEL_DOWNLOADER] = downloader
        yield
        await downloader.close()


def downloads_disabled() -> web.Response:
    return error_response(
        403,
        "downloads_disabled",
        "Model downloads are turned off on this server",
        f"the machine's owner can allow them by starting it with `loom serve {ENABLE_FLAG}`; "
        "or put the files into the models folders by hand",
    )


@routes.post("/loom/model_downloads")
async def start_download(request: web.Request) -> web.Response:
    if not request.app[CONFIG].enable_model_downloads:
        return downloads_disabled()
    try:
        body = await read_json(request, "ModelDownloadRequest")
    except BadRequestBody as error:
        return error.response()
    source = ModelSource.from_entry(body)
    assert source is not None  # the schema requires the three strings
    try:
        state = request.app[MODEL_DOWNLOADER].start(source)
    except DownloadRefused as refusal:
        return refusal.response()
    return web.json_response(state.to_json())


@routes.get("/loom/model_downloads")
async def list_downloads(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "enabled": request.app[CONFIG].enable_model_downloads,
            "downloads": [state.to_json() for state in request.app[MODEL_DOWNLOADER].states()],
        }
    )


def source_report(source: ModelSource, model_paths: ModelPaths) -> dict[str, Any]:
    """A named model as the editor lists it: whether it is there, and why it could not be fetched if so."""
    try:
        present = source.name in model_paths.names(source.directory)
    except (KeyError, UnsafePathError):
        present = False
    try:
        check_source(source, model_paths.models)
        refused = None
    except DownloadRefused as refusal:
        refused = f"{refusal.message}: {refusal.details}" if refusal.details else refusal.message
    return {**source.to_json(), "present": present, "refused": refused}
