"""A node's documentation in the help overlay, opened the way the editor offers it (the toolbar's ?
button or the ? key, then typing the node's type or display name; or a node's menu, Help): the node's own
description and tooltips without comfyui-embedded-docs, the package's hand-written page, table and
picture included, with it (a fake package laid out like the real wheel)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from server.node_docs import DOCS_PACKAGE
from tests.web.conftest import EditorPage, RunningServer, free_port, open_editor, serve_in_thread

pytestmark = pytest.mark.browser

PAGE = ".help-overlay .node-docs-page"
SOURCE = ".help-overlay .node-docs-source"


def serve(base: Path) -> Any:
    from server.config import ServerConfig

    return serve_in_thread(ServerConfig(base_dir=base, auth_token=None, starter_files=False, port=free_port()))


@pytest.fixture
def server_without_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.setitem(sys.modules, DOCS_PACKAGE, None)  # not installed, even on a machine that has it
    with serve(tmp_path / "base") as server:
        yield server


@pytest.fixture
def server_with_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    site = tmp_path / "site"
    folder = site / DOCS_PACKAGE / "docs" / "KSampler"
    (folder / "asset").mkdir(parents=True)
    (site / DOCS_PACKAGE / "__init__.py").write_text("")
    (folder / "en.md").write_text(
        "# KSampler\n\nThe hand-written page of the **docs package**.\n\n"
        "| Parameter | Meaning |\n| --- | --- |\n| steps | How many denoising steps<br>more is slower |\n\n"
        "![Sampling picture](./asset/sampling.png)\n"
    )
    picture = BytesIO()
    Image.new("RGB", (240, 60), (70, 130, 220)).save(picture, format="PNG")
    (folder / "asset" / "sampling.png").write_bytes(picture.getvalue())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, DOCS_PACKAGE, raising=False)
    with serve(tmp_path / "base") as server:
        yield server


def ask_for(editor: EditorPage, typed: str) -> None:
    """Click the overlay's node field, type, press Enter: what a person does after opening help."""
    editor.page.click(".help-overlay .node-docs-type")
    editor.page.keyboard.type(typed)
    editor.page.keyboard.press("Enter")


def test_help_shows_a_nodes_own_description_and_tooltips(browser: Any, server_without_docs: RunningServer) -> None:
    with open_editor(browser, server_without_docs, "test_help_shows_a_nodes_own_description") as editor:
        editor.close_missing_models()  # a fresh server: the default workflow's checkpoint is absent
        editor.page.click("#btn-help")
        ask_for(editor, "KSampler")
        editor.page.wait_for_function(f"() => document.querySelector('{PAGE} h1')?.textContent === 'KSampler'")
        text = editor.page.inner_text(PAGE)
        assert "Denoise a latent with the model" in text
        assert "seed (INT): The random seed of the noise." in text
        assert "Outputs" in text
        assert editor.page.inner_text(SOURCE) == "From the node's own description and tooltips"
        assert "Keyboard and mouse" in editor.page.inner_text(".help-overlay"), "the shortcuts stay beside it"
        editor.shot("ksampler")

        editor.page.fill(".help-overlay .node-docs-type", "")
        ask_for(editor, "Load Checkpoint")  # the display name, as the node reads on the canvas
        editor.page.wait_for_function(f"() => document.querySelector('{PAGE} h1')?.textContent === 'Load Checkpoint'")
        assert "ckpt_name (choice)" in editor.page.inner_text(PAGE)

        editor.page.keyboard.press("Escape")
        assert editor.page.query_selector(".help-overlay") is None


def test_help_shows_the_docs_packages_page_with_its_picture(browser: Any, server_with_docs: RunningServer) -> None:
    with open_editor(browser, server_with_docs, "test_help_shows_the_docs_packages_page") as editor:
        editor.close_missing_models()  # a fresh server: the default workflow's checkpoint is absent
        editor.page.mouse.click(640, 400)  # the canvas has the focus, as after any edit
        editor.page.keyboard.press("?")
        ask_for(editor, "KSampler")
        editor.page.wait_for_function(f"() => document.querySelector('{PAGE} img')?.naturalWidth === 240")
        text = editor.page.inner_text(PAGE)
        assert "The hand-written page of the docs package." in text
        assert editor.page.inner_text(f"{PAGE} td >> nth=1") == "How many denoising steps\nmore is slower"
        assert editor.page.get_attribute(f"{PAGE} img", "alt") == "Sampling picture"
        assert editor.page.inner_text(SOURCE) == "From the comfyui-embedded-docs package (en)"
        editor.shot("package-page")


def test_a_nodes_menu_opens_help_on_that_node(browser: Any, server_without_docs: RunningServer) -> None:
    with open_editor(browser, server_without_docs, "test_a_nodes_menu_opens_help_on_that_node") as editor:
        editor.close_missing_models()  # a fresh server: the default workflow's checkpoint is absent
        editor.clear_graph()
        sampler = editor.add_node("ksampler", (480, 300), pick="KSampler")
        editor.page.mouse.click(*editor.title(sampler), button="right")
        editor.page.click(".context-menu .menu-entry:text-is('Help')")
        editor.page.wait_for_function(f"() => document.querySelector('{PAGE} h1')?.textContent === 'KSampler'")
        assert editor.page.input_value(".help-overlay .node-docs-type") == "KSampler"
        assert "seed (INT): The random seed of the noise." in editor.page.inner_text(PAGE)
        editor.shot("node-menu-help")
