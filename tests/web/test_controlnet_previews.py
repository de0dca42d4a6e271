"""The SD1.5 ControlNet example as a person uses it: opened from disk, shrunk to a quick run, queued, and
read off the canvas: the Load Image node shows the control photo, the Preview Image node shows the Canny
edges the server computed from it, and the Save Image node gets the sampled picture."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from diffusion.canny import canny
from diffusion.tiny import write_tiny_checkpoint
from diffusion.tiny_parts import write_tiny_file
from tests.web.conftest import EditorPage, RunningServer

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sd15_controlnet.workflow.json"
LOAD_IMAGE, SAMPLER, LATENT, SAVE, CANNY, PREVIEW = 8, 5, 4, 7, 12, 13
PHOTO_SIZE = (128, 96)


def lighthouse_photo() -> Image.Image:
    """A dusk sky over a sea with a white tower and a lit lamp: flat shapes, so its edges are unmistakable,
    and not square, so a preview drawn with the wrong aspect ratio would not match."""
    width, height = PHOTO_SIZE
    sky = np.linspace([40, 50, 110], [230, 140, 90], height // 2).astype(np.uint8)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[: height // 2] = sky[:, None, :]
    pixels[height // 2 :] = (20, 40, 70)
    photo = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(photo)
    draw.rectangle((56, 28, 72, 80), fill=(245, 245, 240))
    draw.ellipse((54, 14, 74, 34), fill=(255, 220, 60))
    draw.polygon([(0, 80), (40, 64), (100, 70), (127, 86), (127, 95), (0, 95)], fill=(150, 125, 95))
    return photo


@pytest.fixture
def controlnet_files(loom_server: RunningServer) -> Iterator[Image.Image]:
    """The files the example names, in the server's folders for this test only (the server is shared, and other
    tests open the editor as a first visit without a checkpoint): a tiny SD1.5 checkpoint, a tiny SD1.5
    ControlNet and the control photo, which is returned."""
    models = loom_server.base_dir / "models"
    checkpoint = write_tiny_checkpoint(models / "checkpoints" / "v1-5-pruned-emaonly.safetensors", "sd15")
    control_net = write_tiny_file(models / "controlnet" / "control_v11p_sd15_canny.safetensors", "sd15", "controlnet")
    photo_path = loom_server.base_dir / "input" / "lighthouse.png"
    photo = lighthouse_photo()
    photo.save(photo_path)
    yield photo
    for path in (checkpoint, control_net, photo_path):
        path.unlink()


def type_into(editor: EditorPage, node: int, widget: str, value: str) -> None:
    editor.page.mouse.click(*editor.widget(node, widget))
    editor.page.keyboard.press("Control+A")
    editor.page.keyboard.type(value)
    editor.page.keyboard.press("Enter")


def fetch(editor: EditorPage, image: dict[str, Any]) -> Image.Image:
    with urllib.request.urlopen(editor.server.url + editor.js("(img) => loom.api.viewUrl(img)", image)) as reply:
        return Image.open(io.BytesIO(reply.read())).convert("RGB")


def shown_on_canvas(editor: EditorPage, node: int) -> np.ndarray:
    """The pixels of the picture the node draws, cut from a screenshot of the page: where the image area
    of the node's box puts it, scaled to fit and centred as the canvas draws it."""
    left, top, right, bottom = editor.js(
        """(id) => {
             const r = loom.controller.currentBoxes().get(id).image;
             const img = loom.editor.imageCache.get(loom.editor.nodeImage(loom.graph.nodes.get(id)).url);
             const s = Math.min(r.w / img.naturalWidth, r.h / img.naturalHeight);
             const [w, h] = [img.naturalWidth * s, img.naturalHeight * s];
             const x = r.x + (r.w - w) / 2, y = r.y + (r.h - h) / 2;
             return [...loom.controller.pageOf(x, y), ...loom.controller.pageOf(x + w, y + h)];
           }""",
        node,
    )
    # One pixel in from each side: the border pixels are blended with the node's background.
    clip = {"x": left + 1, "y": top + 1, "width": right - left - 2, "height": bottom - top - 2}
    screenshot = Image.open(io.BytesIO(editor.page.screenshot(clip=clip))).convert("RGB")
    return np.asarray(screenshot, dtype=float)


def difference(shown: np.ndarray, picture: Image.Image) -> float:
    """Mean absolute difference per channel (0..255) between what the canvas shows and `picture` at that size."""
    height, width = shown.shape[:2]
    expected = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), dtype=float)
    return float(np.abs(shown - expected).mean())


def test_the_controlnet_example_shows_its_photo_and_canny_edges(
    controlnet_files: Image.Image, editor: EditorPage
) -> None:
    photo = controlnet_files
    editor.open_file(EXAMPLE.name, EXAMPLE.read_bytes())
    editor.page.wait_for_function("(id) => loom.graph.nodes.has(id)", arg=PREVIEW)
    assert editor.js("(id) => loom.graph.nodes.get(id).type", CANNY) == "Canny"
    assert editor.widget_value(CANNY, 0) == 0.4 and editor.widget_value(CANNY, 1) == 0.8
    # The example opens at its saved view, wider than the window; "." fits the whole graph in it.
    editor.page.keyboard.press(".")
    for node, widget, value in ((LATENT, "width", "64"), (LATENT, "height", "64"), (SAMPLER, "steps", "2")):
        type_into(editor, node, widget, value)
    shrunk = [editor.widget_value(LATENT, 0), editor.widget_value(LATENT, 1), editor.widget_value(SAMPLER, 2)]
    assert shrunk == [64, 64, 2], "a 64 px picture in 2 steps: the tiny models need no more"
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("(id) => loom.execution.outputs.has(String(id))", arg=SAVE, timeout=120000)
    editor.page.wait_for_function("() => loom.execution.running === null", timeout=10000)

    (saved,) = editor.js("(id) => loom.execution.outputs.get(String(id))", SAVE)
    assert saved["type"] == "output" and fetch(editor, saved).size == (64, 64), "the sampled picture was saved"
    (previewed,) = editor.js("(id) => loom.execution.outputs.get(String(id))", PREVIEW)
    assert previewed["type"] == "temp", "Preview Image keeps its picture out of the output folder"
    edges = np.asarray(fetch(editor, previewed))
    assert edges.shape == (PHOTO_SIZE[1], PHOTO_SIZE[0], 3)
    assert set(np.unique(edges)) == {0, 255}, "Canny draws white lines on black and nothing in between"
    pixels = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).movedim(-1, 0)[None]
    expected = canny(pixels, 0.4, 0.8).edges[0, 0].numpy() * 255
    assert np.array_equal(edges[..., 0], expected), "the edges of the photo, at the example's thresholds"
    assert 0.01 < (edges[..., 0] == 255).mean() < 0.2, "the shapes' outlines, not an empty or a noisy picture"

    editor.page.wait_for_function(
        """(ids) => ids.every((id) => {
             const shown = loom.editor.nodeImage(loom.graph.nodes.get(id));
             const img = shown && loom.editor.imageCache.get(shown.url);
             return img && img.complete && img.naturalWidth > 0; })""",
        arg=[LOAD_IMAGE, PREVIEW],
    )
    editor.page.wait_for_timeout(300)
    edge_picture = Image.fromarray(edges)
    on_loader, on_preview = shown_on_canvas(editor, LOAD_IMAGE), shown_on_canvas(editor, PREVIEW)
    assert difference(on_loader, photo) < 12 < difference(on_loader, edge_picture), "Load Image shows the photo"
    assert difference(on_preview, edge_picture) < 12 < difference(on_preview, photo), "Preview shows the edges"
    dark, bright = (on_preview < 60).all(axis=-1).mean(), (on_preview > 120).all(axis=-1).mean()
    assert dark > 0.7 and bright > 0.01, "on the canvas too: mostly black, with light lines"
    editor.shot("previews")
