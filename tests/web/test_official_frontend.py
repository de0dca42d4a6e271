"""ComfyUI's official editor (the pinned ``comfyui-frontend-package``) served by Loom and run like a person runs it.

The page is driven with real clicks and typing: its default graph (Z-Image-Turbo in this release) gets
the tiny stand-in model files picked in its loaders' combo menus, a 64 px size and two steps typed
into its number prompts, and its Run button pressed; the picture must then show on its Save Image
node and in Loom's ``/history``, and its Logs panel must show the line Loom logged when the prompt
finished, and, while open, the next prompt's line as it is logged. The editor's own model (``window.app``) is read only to find where
a widget is drawn on the canvas and to check the outcome.

Every console error, page error and failed loopback request fails the test unless listed in
``ALLOWED`` with the reason. Requests to other hosts are refused in the browser (tests stay on
loopback); the ones this release is known to make are listed in ``EXTERNAL_HOSTS``.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.web.conftest import ARTIFACTS, RunningServer, free_port, serve_in_thread

pytestmark = pytest.mark.browser

FRONTEND_VERSION = "1.58.1"
#: Loopback answers that are right as they are, with why the frontend asks.
ALLOWED = {
    # The frontend probes for a legacy per-user templates file; a user who never wrote one has none,
    # and it reads the 404 as "no custom templates" (ComfyUI answers the same).
    "GET /api/userdata/comfy.templates.json 404",
}
#: Hosts this frontend release calls by itself; refused here, harmless to Loom.
EXTERNAL_HOSTS = {
    "api.comfy.org",  # ComfyUI's release notes, for the "update available" toast
    "huggingface.co",  # the download sizes of its default graph's model files, while they look missing
}
#: The stand-in files, named unlike the default graph's, so that the loaders must be pointed at them.
TINY_FILES = {
    ("diffusion_models", "tiny-zimage.safetensors"): "diffusion_model",
    ("text_encoders", "tiny-qwen3.safetensors"): "qwen3_4b",
    ("vae", "tiny-ae.safetensors"): "vae",
}
#: The text of the Logs panel's terminal; a line wider than the terminal continues on the next row.
LOGS_TEXT = "() => [...document.querySelectorAll('[data-testid=\"terminal-host\"] .xterm-rows > div')]"
LOGS_TEXT += ".map((row) => row.textContent).join('')"
#: Where a widget is drawn, in page pixels: the middle of its row on the canvas.
WIDGET_AT = """([id, name]) => {
  const node = app.graph.getNodeById(id), widget = node.widgets.find((w) => w.name === name);
  const box = app.canvas.canvas.getBoundingClientRect(), height = widget.computedHeight || widget.height || 20;
  const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + widget.y + height / 2]);
  return [box.left + x, box.top + y];
}"""


def official_frontend_root() -> Path:
    from server.static import comfyui_frontend_root

    try:
        installed = metadata.version("comfyui-frontend-package")
    except metadata.PackageNotFoundError:
        pytest.skip("comfyui-frontend-package is not installed (it is in the test extra)")
    assert installed == FRONTEND_VERSION, (
        f"this test drives comfyui-frontend-package {FRONTEND_VERSION}, not {installed}"
    )
    return comfyui_frontend_root()


@pytest.fixture(scope="module")
def official_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from diffusion.tiny_parts import write_tiny_file
    from server.config import ServerConfig

    base = tmp_path_factory.mktemp("loom-official-frontend")
    for (folder, name), part in TINY_FILES.items():
        write_tiny_file(base / "models" / folder / name, "zimage", part)
    config = ServerConfig(
        base_dir=base,
        auth_token=None,
        preview_method="latent2rgb",
        port=free_port(),
        frontend_root=official_frontend_root(),
        starter_files=False,
    )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as `loom serve` configures logging: INFO lines reach the server log
    try:
        with serve_in_thread(config) as server:
            yield server
    finally:
        root.setLevel(level)


def write_settings(server: RunningServer, settings: dict[str, Any]) -> None:
    """The editor's settings file as a person's earlier visits would have left it."""
    path = server.base_dir / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings))


@dataclass
class OfficialPage:
    page: Any
    server: RunningServer
    name: str
    problems: list[str] = field(default_factory=list)
    external: set[str] = field(default_factory=set)

    def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"official-frontend-{self.name}-{label}.png"
        self.page.wait_for_timeout(150)
        self.page.screenshot(path=str(path))
        return path

    def loopback(self, url: str) -> bool:
        return url.startswith(self.server.url)

    def pick(self, node_id: int, widget: str, value: str) -> None:
        """Click a combo widget, then the entry in the menu it opens."""
        self.page.mouse.click(*self.page.evaluate(WIDGET_AT, [node_id, widget]))
        self.page.locator(".litecontextmenu .litemenu-entry", has_text=value).click()

    def type_number(self, node_id: int, widget: str, value: int) -> None:
        """Click a number widget's value, type into the prompt it opens, press Enter."""
        self.page.mouse.click(*self.page.evaluate(WIDGET_AT, [node_id, widget]))
        self.page.locator(".graphdialog input").fill(str(value))
        self.page.keyboard.press("Enter")

    def widget_values(self, node_id: int) -> list[Any]:
        return list(self.page.evaluate("(id) => app.graph.getNodeById(id).widgets.map((w) => w.value)", node_id))


@contextmanager
def open_official(browser: Any, server: RunningServer, name: str) -> Iterator[OfficialPage]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    driver = OfficialPage(page=page, server=server, name=name)

    def refuse_outside(route: Any) -> None:
        driver.external.add(urlsplit(route.request.url).hostname or route.request.url)
        route.abort()

    def console(message: Any) -> None:
        source = message.location.get("url", "")
        if message.type != "error":
            return
        if source and not driver.loopback(source):
            return  # a refused outside request ("net::ERR_FAILED" at its URL): counted in `external`
        if "the server responded with a status of" in message.text:
            return  # a failed loopback request: `response` records it with its method and path
        driver.problems.append(f"console: {message.text} ({source})")

    def response(reply: Any) -> None:
        if driver.loopback(reply.url) and reply.status >= 400:
            path = reply.url[len(server.url) :].split("?")[0]
            driver.problems.append(f"{reply.request.method} {path} {reply.status}")

    context.route(lambda url: not driver.loopback(url), refuse_outside)
    page.on("console", console)
    page.on("pageerror", lambda error: driver.problems.append(f"page error: {error}"))
    page.on("response", response)
    try:
        page.goto(server.url + "/")
        yield driver
    finally:
        context.close()
    unexpected = [problem for problem in driver.problems if problem not in ALLOWED]
    assert unexpected == [], f"the official frontend hit problems: {unexpected}"
    assert driver.external <= EXTERNAL_HOSTS, f"unexpected outside requests: {driver.external - EXTERNAL_HOSTS}"


def test_first_visit_opens_the_template_browser_served_by_loom(browser: Any, official_server: RunningServer) -> None:
    write_settings(official_server, {})
    with open_official(browser, official_server, "first-visit") as editor:
        with editor.page.expect_response(lambda r: urlsplit(r.url).path == "/templates/index.json") as index:
            editor.page.get_by_role("dialog").get_by_text("Templates").first.wait_for(timeout=30000)
        assert index.value.status == 200 and isinstance(index.value.json(), list)
        editor.page.wait_for_timeout(500)
        editor.shot("templates")


def test_the_default_graph_runs_from_the_run_button(browser: Any, official_server: RunningServer) -> None:
    write_settings(official_server, {"Comfy.TutorialCompleted": True})  # a returning user: no template browser
    with open_official(browser, official_server, "txt2img") as editor:
        page = editor.page
        page.wait_for_function(
            "() => window.app?.graph?._nodes.some((n) => n.type === 'KSampler')"
            " && app.graph._nodes.some((n) => n.type === 'SaveImage')",
            timeout=30000,
        )
        nodes = {
            n["type"]: n["id"] for n in page.evaluate("() => app.graph._nodes.map((n) => ({type: n.type, id: n.id}))")
        }
        assert {"UNETLoader", "CLIPLoader", "VAELoader", "EmptySD3LatentImage", "KSampler", "SaveImage"} <= set(nodes)
        if page.locator('[data-testid="close-minimap-button"]').is_visible():
            page.click('[data-testid="close-minimap-button"]')
        editor.shot("default-graph")

        editor.pick(nodes["UNETLoader"], "unet_name", "tiny-zimage.safetensors")
        editor.pick(nodes["CLIPLoader"], "clip_name", "tiny-qwen3.safetensors")
        editor.pick(nodes["VAELoader"], "vae_name", "tiny-ae.safetensors")
        editor.type_number(nodes["EmptySD3LatentImage"], "width", 64)
        editor.type_number(nodes["EmptySD3LatentImage"], "height", 64)
        editor.type_number(nodes["KSampler"], "steps", 2)
        assert editor.widget_values(nodes["UNETLoader"])[0] == "tiny-zimage.safetensors"
        assert editor.widget_values(nodes["CLIPLoader"])[0] == "tiny-qwen3.safetensors"
        assert editor.widget_values(nodes["VAELoader"]) == ["tiny-ae.safetensors"]
        assert editor.widget_values(nodes["EmptySD3LatentImage"])[:2] == [64, 64]
        assert editor.widget_values(nodes["KSampler"])[2] == 2
        page.get_by_role("button", name="Fit View (.)").click()
        editor.shot("ready")

        with page.expect_response(
            lambda r: urlsplit(r.url).path == "/api/prompt" and r.request.method == "POST"
        ) as queued:
            page.click('[data-testid="queue-button"]')
        prompt_id = queued.value.json()["prompt_id"]
        page.wait_for_function(
            "(id) => { const images = app.graph.getNodeById(id).imgs;"
            " return images?.length > 0 && images[0].complete && images[0].naturalWidth > 0; }",
            arg=nodes["SaveImage"],
            timeout=30000,
        )
        shown = page.evaluate(
            "(id) => app.graph.getNodeById(id).imgs.map((i) => [i.naturalWidth, i.naturalHeight])", nodes["SaveImage"]
        )
        assert shown == [[64, 64]], "the Save Image node shows the 64 px picture"
        editor.shot("generated")

        with page.expect_response(lambda r: urlsplit(r.url).path == "/internal/logs/subscribe") as subscribed:
            page.get_by_role("button", name="Toggle Bottom Panel").click()
            page.get_by_role("tab", name="Logs").wait_for()
        assert subscribed.value.status == 200
        page.wait_for_function(
            f"() => ({LOGS_TEXT})().includes('INFO server.worker: prompt {prompt_id} finished: success in ')",
            timeout=10000,
        )
        with page.expect_response(
            lambda r: urlsplit(r.url).path == "/api/prompt" and r.request.method == "POST"
        ) as queued_again:
            page.click('[data-testid="queue-button"]')
        again = queued_again.value.json()["prompt_id"]
        page.wait_for_function(
            f"() => ({LOGS_TEXT})().includes('prompt {again} finished: success in ')", timeout=30000
        )  # arrives as a `logs` WebSocket message: the panel fetched the log before this prompt existed
        editor.shot("logs")

    with urllib.request.urlopen(f"{official_server.url}/history/{prompt_id}") as reply:
        record = json.load(reply)[prompt_id]
    assert record["status"]["status_str"] == "success"
    (image,) = record["outputs"][str(nodes["SaveImage"])]["images"]
    query = f"filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}"
    with urllib.request.urlopen(f"{official_server.url}/view?{query}") as reply:
        picture = Image.open(io.BytesIO(reply.read()))
    assert picture.size == (64, 64)
    workflow = json.loads(picture.text["workflow"])
    assert {n["type"] for n in workflow["nodes"]} >= {"UNETLoader", "KSampler", "SaveImage"}, (
        "the editor's graph rides along"
    )
