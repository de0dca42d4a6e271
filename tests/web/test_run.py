"""Running a graph from the editor: queue, progress events, the output image on the node, the gallery,
the queue panel, and validation errors drawn on the node that caused them."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.web.conftest import EditorPage

pytestmark = pytest.mark.browser


def build_invert_chain(editor: EditorPage) -> tuple[int, int, int]:
    editor.clear_graph()
    source = editor.add_node("emptyimg", (180, 250))
    invert = editor.add_node("invert", (540, 250))
    save = editor.add_node("save image", (880, 250), pick="SaveImage")
    editor.connect(source, 0, invert, 0)
    editor.connect(invert, 0, save, 0)
    for name, value in (("width", "64"), ("height", "48")):
        editor.page.mouse.click(*editor.widget(source, name))
        editor.page.keyboard.press("Control+A")
        editor.page.keyboard.type(value)
        editor.page.keyboard.press("Enter")
    return source, invert, save


def test_queue_shows_progress_and_the_final_image(editor: EditorPage) -> None:
    source, invert, save = build_invert_chain(editor)
    editor.js(
        "() => { window.seen = []; for (const t of ['execution_start', 'executing', 'executed', 'execution_success'])"
        " loom.api.addEventListener(t, (e) => seen.push([t, e.detail.node ?? null])); }"
    )
    editor.page.mouse.click(640, 600)
    editor.page.keyboard.press("Control+Enter")
    editor.page.wait_for_function("(id) => loom.execution.outputs.has(String(id))", arg=save, timeout=20000)
    # As in ComfyUI, executing(node=null) follows execution_success: wait for both.
    editor.page.wait_for_function(
        "() => seen.some(([t]) => t === 'execution_success') && seen.some(([t, n]) => t === 'executing' && n === null)",
        timeout=10000,
    )
    seen = editor.js("() => seen")
    executing = [node for kind, node in seen if kind == "executing"]
    assert executing[-1] is None, "the prompt ends with executing(node=null)"
    assert {str(source), str(invert), str(save)} <= set(executing)
    (image,) = editor.js("(id) => loom.execution.outputs.get(String(id))", save)
    with urllib.request.urlopen(editor.server.url + editor.js("(img) => loom.api.viewUrl(img)", image)) as reply:
        picture = Image.open(io.BytesIO(reply.read())).convert("RGB")
    assert picture.size == (64, 48)
    assert picture.getpixel((10, 10)) == (255, 255, 255), "black inverted is white"
    editor.page.wait_for_timeout(300)
    editor.shot("finished")

    editor.page.click(".tab[data-panel=gallery]")
    editor.page.wait_for_selector(".gallery-image")
    editor.page.click(".gallery-image")
    editor.page.wait_for_selector(".lightbox img")
    editor.shot("lightbox")
    editor.page.keyboard.press("Escape")
    editor.page.click(".tab[data-panel=queue]")
    editor.page.wait_for_selector(".queue-item.success .thumb")
    editor.shot("queue-panel")


def test_batch_count_queues_several_prompts(editor: EditorPage) -> None:
    build_invert_chain(editor)
    editor.page.fill("#batch-count", "2")
    editor.page.click("#btn-queue")
    editor.page.wait_for_selector(".toast:text('Queued 2 prompts')")


def test_validation_errors_are_shown_on_the_node(editor: EditorPage) -> None:
    editor.allow_error("status of 400 (Bad Request)")
    editor.clear_graph()
    save = editor.add_node("save image", (500, 300), pick="SaveImage")
    editor.page.click("#btn-queue")
    editor.page.wait_for_selector(".toast.error")
    error = editor.js(
        "(id) => { const e = loom.execution.errors.get(String(id)); return e && [e.message, [...e.inputs.keys()]]; }",
        save,
    )
    assert error is not None, "the node that failed validation is marked"
    message, inputs = error
    assert "images" in inputs and message
    editor.shot("validation-error")


def test_first_open_without_a_checkpoint_upscales_the_sample_photo_for_real(editor: EditorPage) -> None:
    banner = editor.page.text_content("#banner")
    assert "models/checkpoints" in banner and "loom tiny-checkpoint" in banner
    nodes = {n["id"]: n for n in editor.workflow()["nodes"]}
    assert [nodes[i]["type"] for i in sorted(nodes)] == [
        "LoadImage",
        "UpscaleModelLoader",
        "ImageUpscaleWithModel",
        "SaveImage",
    ]
    assert nodes[2]["widgets_values"] == ["RealESRGAN_x4plus.param"], "the bundled photo model, placed by the server"
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => loom.execution.outputs.has('4')", timeout=180000)
    (image,) = editor.js("() => loom.execution.outputs.get('4')")
    with urllib.request.urlopen(editor.server.url + editor.js("(img) => loom.api.viewUrl(img)", image)) as reply:
        upscaled = Image.open(io.BytesIO(reply.read())).convert("RGB")
    assert upscaled.size == (512, 512), "the 128 px sample, four times larger"
    sample = Image.open(editor.server.base_dir / "input" / "loom_sample_coffee.png").convert("RGB")
    error = np.abs(
        np.asarray(upscaled.resize(sample.size, Image.Resampling.BOX), dtype=float) - np.asarray(sample, dtype=float)
    )
    assert error.mean() < 12, "a real upscale: shrunk back, it matches the photo it came from"
    editor.page.wait_for_timeout(300)
    editor.shot("first-open-upscale")


@pytest.fixture
def tiny_checkpoint(loom_server):  # type: ignore[no-untyped-def]
    """A tiny random SD1.5 checkpoint in the server's models folder, for this test only."""
    from diffusion.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(loom_server.base_dir / "models" / "checkpoints" / "tiny-sd15.safetensors", "sd15")
    yield path
    path.unlink()


def test_default_workflow_runs_with_a_tiny_checkpoint(editor: EditorPage, tiny_checkpoint) -> None:  # type: ignore[no-untyped-def]
    editor.page.reload()
    editor.page.wait_for_function("window.loom && window.loom.ready")
    assert editor.page.query_selector("#banner") is None, "no missing-checkpoint message once a checkpoint exists"
    editor.page.click("#btn-default")
    assert editor.widget_value(4, 0) == "tiny-sd15.safetensors"
    for node, name, value in ((5, "width", "64"), (5, "height", "64"), (3, "steps", "2")):
        editor.page.mouse.click(*editor.widget(node, name))
        editor.page.keyboard.press("Control+A")
        editor.page.keyboard.type(value)
        editor.page.keyboard.press("Enter")
    editor.js("""() => { window.steps = []; window.previews = [];
        loom.api.addEventListener('progress', (e) => steps.push([String(e.detail.node), e.detail.value, e.detail.max]));
        loom.api.addEventListener('b_preview', (e) => previews.push(String(e.detail.meta.node_id ?? loom.execution.running))); }""")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("() => loom.execution.outputs.has('9')", timeout=120000)
    assert editor.js("() => steps").count(["3", 2, 2]) == 1, "the sampler reports its steps"
    assert set(editor.js("() => previews")) == {"3"}, "live previews arrive for the sampler"
    assert editor.widget_value(3, 0) != 42, "seed control 'randomize' applied after queueing"
    (image,) = editor.js("() => loom.execution.outputs.get('9')")
    with urllib.request.urlopen(editor.server.url + editor.js("(img) => loom.api.viewUrl(img)", image)) as reply:
        picture = Image.open(io.BytesIO(reply.read()))
        assert picture.size == (64, 64), "the size typed into EmptyLatentImage: the tiny VAE has the real 8x factor"
        assert json.loads(picture.text["workflow"])["nodes"], "the PNG carries the editor graph"
    editor.page.wait_for_timeout(300)
    editor.shot("txt2img")
