"""The Templates panel and the missing-models dialog, driven like a person would: open a template whose
upscaler is missing, download it from a model host on loopback while the dialog shows the progress,
then run the workflow with it. On a server where downloads are off, the dialog says how to turn them on.
And an example that names its checkpoint only in its loader is marked as missing it, its dialog says which
folder to put it in by hand, and once the file is there it is Ready."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from tests.web.conftest import EditorPage, RunningServer, free_port, open_editor, serve_in_thread

pytestmark = pytest.mark.browser

MODEL_NAME = "tiny-srvgg-x2.safetensors"
#: The host sends the file in this many pieces, one every ``PIECE_DELAY`` seconds, so progress shows.
PIECES, PIECE_DELAY = 16, 0.12


def tiny_upscaler_bytes() -> bytes:
    from safetensors.torch import save

    from tests.diffusion.upscalers.tiny_upscalers import tiny_srvgg

    return save({key: value.contiguous() for key, value in tiny_srvgg(upscale=2).state_dict().items()})


@pytest.fixture(scope="module")
def model_host() -> Iterator[tuple[str, bytes]]:
    """A slow model host on loopback serving one tiny Real-ESRGAN-compact (x2) file."""
    data = tiny_upscaler_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            step = -(-len(data) // PIECES)
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                time.sleep(PIECE_DELAY)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/models/{MODEL_NAME}", data
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def downloads_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from server.config import ServerConfig

    base = tmp_path_factory.mktemp("loom-downloads")
    config = ServerConfig(base_dir=base, auth_token=None, port=free_port(), enable_model_downloads=True)
    with serve_in_thread(config) as server:
        yield server


def upscale_template(editor: EditorPage, model_entry: dict[str, Any]) -> dict[str, Any]:
    """The editor's own upscale workflow, its loader naming the tiny model with a source, as templates do."""
    workflow = editor.js(
        "async (name) => (await import('/js/default_workflow.js')).upscaleWorkflow(name)", model_entry["name"]
    )
    (loader,) = [node for node in workflow["nodes"] if node["type"] == "UpscaleModelLoader"]
    loader["properties"]["models"] = [model_entry]
    return workflow


def test_open_a_template_download_its_missing_model_and_run_it(browser: Any, downloads_server, model_host) -> None:
    url, data = model_host
    entry = {"name": MODEL_NAME, "directory": "upscale_models", "url": url, "hash": hashlib.sha256(data).hexdigest()}
    with open_editor(browser, downloads_server, "test_template_download") as editor:
        template = downloads_server.base_dir / "user" / "default" / "workflows" / "tiny_upscale.json"
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(json.dumps(upscale_template(editor, entry)))

        editor.page.click(".tab[data-panel=templates]")
        item = editor.page.wait_for_selector('.template-item[data-source=user][data-path="tiny_upscale.json"]')
        assert f"Missing models: {MODEL_NAME}" in item.inner_text()
        assert editor.page.query_selector(".template-source[data-source=examples] .template-item") is not None
        editor.shot("templates-panel")

        item.click()
        row = editor.page.wait_for_selector(f'.missing-models tr[data-key="upscale_models/{MODEL_NAME}"]')
        assert editor.nodes_of("UpscaleModelLoader"), "the template is open in the editor"
        assert editor.js("() => document.title") == "tiny_upscale.json - Loom"
        cells = [cell.inner_text() for cell in row.query_selector_all("td")][:3]
        assert cells == [MODEL_NAME, "upscale_models", url]
        editor.shot("missing-models")

        editor.js(
            "() => { window.seen = []; loom.api.addEventListener('model_download', (e) => seen.push(e.detail)); }"
        )
        row.query_selector("button").click()
        editor.page.wait_for_function(
            "() => seen.some((s) => s.status === 'downloading' && s.downloaded > 0 && s.downloaded < s.total)",
            timeout=10000,
        )
        editor.page.wait_for_selector(".missing-models progress:not([hidden])")
        assert " of " in row.query_selector(".missing-models-status").inner_text()
        editor.shot("downloading")
        editor.page.wait_for_selector(f'.missing-models tr[data-key="upscale_models/{MODEL_NAME}"][data-status=done]')
        assert f"Downloaded ({len(data) / 1024:.1f} KB)" in row.inner_text()
        editor.shot("downloaded")
        assert (downloads_server.base_dir / "models" / "upscale_models" / MODEL_NAME).read_bytes() == data

        editor.page.click(".missing-models button:text('Close')")
        editor.page.click("#btn-queue")
        editor.page.wait_for_function("() => loom.execution.outputs.has('4')", timeout=60000)
        (image,) = editor.js("() => loom.execution.outputs.get('4')")
        with urllib.request.urlopen(editor.server.url + editor.js("(img) => loom.api.viewUrl(img)", image)) as reply:
            upscaled = Image.open(io.BytesIO(reply.read()))
        sample = Image.open(downloads_server.base_dir / "input" / "loom_sample_coffee.png")
        assert upscaled.size == (sample.width * 2, sample.height * 2), "the downloaded x2 model ran"
        editor.shot("ran")

        ready = editor.page.wait_for_selector('.template-item[data-path="tiny_upscale.json"] .badge.ok')
        assert ready.inner_text() == "Ready: all models present", "the open list was read again after the download"


def test_with_downloads_off_the_dialog_says_how_to_turn_them_on(editor: EditorPage) -> None:
    entry = {"name": "absent.safetensors", "directory": "checkpoints", "url": "https://example.com/absent.safetensors"}
    workflow = upscale_template(editor, {**entry, "directory": "upscale_models"})
    workflow["models"] = [entry]
    editor.open_file("needs_models.json", json.dumps(workflow).encode())
    editor.page.wait_for_selector(".missing-models")
    rows = editor.page.query_selector_all(".missing-models tbody tr")
    assert [row.get_attribute("data-key") for row in rows] == [
        "checkpoints/absent.safetensors",
        "upscale_models/absent.safetensors",
    ]
    assert all(row.query_selector("button").is_disabled() for row in rows)
    assert "loom serve --enable-model-downloads" in editor.page.inner_text(".missing-models-off")
    link = rows[0].query_selector("a")
    assert link.get_attribute("href") == entry["url"], "the source stays reachable by hand"
    editor.shot("downloads-off")
    editor.page.click(".missing-models button:text('Close')")
    assert editor.page.query_selector(".missing-models") is None


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of this module's own: the test puts a checkpoint in its models folder, and other tests open
    the shared server as a first visit without one."""
    from server.config import ServerConfig

    base = tmp_path_factory.mktemp("loom-loader-files")
    with serve_in_thread(ServerConfig(base_dir=base, auth_token=None, port=free_port())) as server:
        yield server


EXAMPLE = "sd15_txt2img.workflow.json"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"


def open_templates(editor: EditorPage) -> None:
    """The tab reads the list again each time it is opened."""
    if editor.page.query_selector(".tab[data-panel=templates].active"):
        editor.page.click(".tab[data-panel=templates]")
    editor.page.click(".tab[data-panel=templates]")


def test_an_example_whose_checkpoint_is_absent_says_so_and_is_ready_once_it_is_there(browser, own_server) -> None:
    with open_editor(browser, own_server, "test_template_loader_files") as editor:
        open_templates(editor)
        item = editor.page.wait_for_selector(f'.template-item[data-source=examples][data-path="{EXAMPLE}"]')
        text = item.inner_text()
        assert f"Missing models: {CHECKPOINT} (checkpoints)" in text, "the loader's widget names it; no metadata does"
        assert "put by hand into models/checkpoints/" in text
        item.scroll_into_view_if_needed()
        editor.shot("example-missing-checkpoint")

        item.click()
        row = editor.page.wait_for_selector(f'.missing-models tr[data-key="checkpoints/{CHECKPOINT}"]')
        assert editor.js("() => document.title") == f"{EXAMPLE} - Loom", "the example is open behind the dialog"
        assert [cell.inner_text() for cell in row.query_selector_all("td")][:3] == [
            CHECKPOINT,
            "checkpoints",
            "unknown",
        ]
        assert row.query_selector("button") is None, "no source is known, so there is nothing to download"
        assert "put the file into models/checkpoints/ by hand" in row.inner_text()
        assert editor.page.query_selector(".missing-models-off") is None, "no Download button to turn on"
        assert len(editor.page.query_selector_all(".missing-models tbody tr")) == 1
        editor.shot("missing-checkpoint-dialog")
        editor.page.click(".missing-models button:text('Close')")

        checkpoint = own_server.base_dir / "models" / "checkpoints" / CHECKPOINT
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"stand-in weights: only its presence is checked")
        open_templates(editor)
        ready = editor.page.wait_for_selector(f'.template-item[data-path="{EXAMPLE}"] .badge.ok')
        assert ready.inner_text() == "Ready: all models present"
        ready.scroll_into_view_if_needed()
        editor.shot("example-ready")

        with editor.page.expect_response("**/loom/workflow_requirements") as checked:
            editor.page.click(f'.template-item[data-path="{EXAMPLE}"]')
        assert all(model["present"] for model in checked.value.json()["models"])
        editor.page.wait_for_timeout(300)
        assert editor.page.query_selector(".missing-models") is None, "nothing is missing any more"
