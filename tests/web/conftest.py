"""Browser fixtures: the real Loom server on a free loopback port, and headless Debian chromium.

Tests drive the editor with real mouse and keyboard events; `window.loom` only tells them where
things are on screen (slot and widget centres) and lets them read the model to check the outcome.
Every page collects console errors and page errors, and a test fails if any appeared.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class RunningServer:
    url: str
    base_dir: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_in_thread(config: Any) -> Iterator[RunningServer]:
    """The real app on its own event loop in a thread, so sync Playwright can drive it from the test."""
    from aiohttp import web

    from server.app import create_app

    app = create_app(config)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", config.port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30), "the Loom server did not start"
    try:
        yield RunningServer(url=f"http://127.0.0.1:{config.port}", base_dir=config.base_dir)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="session")
def loom_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from server.config import ServerConfig

    base = tmp_path_factory.mktemp("loom-web")
    with serve_in_thread(
        ServerConfig(base_dir=base, auth_token=None, preview_method="latent2rgb", port=free_port())
    ) as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One chromium for the session: Playwright's sync driver owns this thread's event loop while it
    runs, so browser tests stay in this package, which runs last."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class EditorPage:
    """One browser tab on the editor, with helpers that act like a person would."""

    page: Any
    server: RunningServer
    name: str
    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def allow_error(self, text: str) -> None:
        """A console error this test provokes on purpose (the browser logs every HTTP 4xx)."""
        self.allowed.append(text)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]

    def open(self) -> EditorPage:
        self.page.goto(self.server.url + "/")
        self.page.wait_for_function("window.loom && window.loom.ready", timeout=15000)
        return self

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{label}.png"
        self.page.wait_for_timeout(120)
        self.page.screenshot(path=str(path))
        return path

    def close_missing_models(self) -> None:
        """Close the dialog that lists an opened workflow's absent model files, as a person would."""
        self.page.click(".missing-models button:text-is('Close')")
        self.page.wait_for_selector(".missing-models", state="detached")

    def clear_graph(self) -> None:
        self.page.click("#btn-clear")

    def nodes_of(self, node_type: str) -> list[int]:
        return self.js("(t) => [...loom.graph.nodes.values()].filter(n => n.type === t).map(n => n.id)", node_type)

    def add_node(self, query: str, at: tuple[int, int], pick: str | None = None) -> int:
        """Double-click the canvas at `at`, type `query`, press Enter (or click `pick`); returns the new node id."""
        before = set(self.js("() => [...loom.graph.nodes.keys()]"))
        self.page.mouse.dblclick(*at)
        self.page.wait_for_selector(".search-dialog input")
        self.page.keyboard.type(query)
        if pick:
            self.page.click(f'.search-results li[data-type="{pick}"]')
        else:
            self.page.keyboard.press("Enter")
        self.page.wait_for_function("(n) => loom.graph.nodes.size > n", arg=len(before))
        (new_id,) = set(self.js("() => [...loom.graph.nodes.keys()]")) - before
        return int(new_id)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        self.page.mouse.move(*start)
        self.page.mouse.down()
        self.page.mouse.move(*end, steps=steps)
        self.page.mouse.up()

    def slot(self, node_id: int, kind: str, index: int) -> tuple[float, float]:
        x, y = self.js("([n, k, i]) => loom.slot(n, k, i)", [node_id, kind, index])
        return x, y

    def widget(self, node_id: int, name: str, where: str = "center") -> tuple[float, float]:
        x, y = self.js("([n, w, p]) => loom.widget(n, w, p)", [node_id, name, where])
        return x, y

    def title(self, node_id: int) -> tuple[float, float]:
        x, y = self.js("(n) => loom.title(n)", node_id)
        return x, y

    def connect(self, origin: int, origin_slot: int, target: int, target_slot: int) -> None:
        self.drag(self.slot(origin, "output", origin_slot), self.slot(target, "input", target_slot))

    def widget_value(self, node_id: int, index: int) -> Any:
        return self.js("([n, i]) => loom.graph.nodes.get(n).widgets_values[i]", [node_id, index])

    def workflow(self) -> dict[str, Any]:
        return self.js("() => loom.graph.toJSON()")

    def open_file(self, name: str, data: bytes, mime: str = "application/json") -> None:
        """Open a file the way a person does: the toolbar's Open button, then the file chooser."""
        with self.page.expect_file_chooser() as chooser:
            self.page.click("#btn-open")
        chooser.value.set_files(files=[{"name": name, "mimeType": mime, "buffer": data}])

    def drop_file(self, name: str, data: bytes, mime: str) -> None:
        """Drop a file on the canvas the way a file manager does: a drop event carrying a DataTransfer."""
        transfer = self.page.evaluate_handle(
            """([name, bytes, mime]) => { const dt = new DataTransfer();
                 dt.items.add(new File([new Uint8Array(bytes)], name, { type: mime })); return dt; }""",
            [name, list(data), mime],
        )
        self.page.dispatch_event("#canvas", "dragover", {"dataTransfer": transfer})
        self.page.dispatch_event("#canvas", "drop", {"dataTransfer": transfer})


@contextmanager
def open_editor(browser: Any, server: RunningServer, name: str) -> Iterator[EditorPage]:
    """A fresh browser context on the editor; any console or page error it collects fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    driver = EditorPage(page=page, server=server, name=name)
    page.on("console", lambda m: driver.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: driver.errors.append(f"page error: {e}"))
    try:
        yield driver.open()
    finally:
        context.close()
    assert driver.unexpected_errors() == [], f"browser errors: {driver.unexpected_errors()}"


@pytest.fixture
def editor(browser: Any, loom_server: RunningServer, request: pytest.FixtureRequest) -> Iterator[EditorPage]:
    with open_editor(browser, loom_server, request.node.name) as driver:
        yield driver


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())
