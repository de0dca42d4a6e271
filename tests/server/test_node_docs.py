"""Node docs for the help panel: the comfyui-embedded-docs page in the closest language when that
package is installed (a fake one laid out like the real wheel here), the node's own description and
tooltips otherwise, and the package's files at /docs/ as ComfyUI serves them, sent safely."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server.node_docs import DOCS_PACKAGE, locale_order

#: The smallest valid PNG: one transparent pixel.
PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


@pytest.fixture
def docs_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``comfyui_embedded_docs`` as its wheel lays it out: ``docs/<NodeType>/<locale>.md`` with the
    pictures beside them, and a single ``docs/<NodeType>.md`` for a type without a folder."""
    site = tmp_path / "site"
    docs = site / DOCS_PACKAGE / "docs"
    (docs / "KSampler" / "asset").mkdir(parents=True)
    (site / DOCS_PACKAGE / "__init__.py").write_text("# comfyui_embedded_docs package\n")
    (docs / "KSampler" / "en.md").write_text("# KSampler\n\nEnglish page.\n\n![steps](./asset/steps.png)\n")
    (docs / "KSampler" / "de.md").write_text("# KSampler\n\nDeutsche Seite.\n")
    (docs / "KSampler" / "pt-BR.md").write_text("# KSampler\n\nPágina em português.\n")
    (docs / "KSampler" / "asset" / "steps.png").write_bytes(PIXEL_PNG)
    (docs / "KSampler" / "page.html").write_text("<script>alert(1)</script>")
    (docs / "EmptyLatentImage.md").write_text("# Empty Latent Image\n\nA single-file page.\n")
    (tmp_path / "secret.txt").write_text("outside the package")
    (docs / "KSampler" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, DOCS_PACKAGE, raising=False)
    return docs


@pytest.fixture
def no_docs_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package counts as not installed even on a machine that has it (``find_spec`` sees ``None``)."""
    monkeypatch.setitem(sys.modules, DOCS_PACKAGE, None)


def test_locales_are_tried_from_the_most_specific_to_english():
    assert locale_order("pt-BR") == ["pt-BR", "pt", "en"]
    assert locale_order("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh", "en"]
    assert locale_order("en-US") == ["en-US", "en"]
    assert locale_order("en") == ["en"]


async def test_the_package_page_comes_in_the_closest_language(docs_package, make_client):
    client = await make_client()
    expected = {
        "de-DE": ("de", "Deutsche Seite."),
        "pt-BR": ("pt-BR", "Página em português."),
        "ja": ("en", "English page."),
    }
    for asked, (locale, text) in expected.items():
        response = await client.get("/api/loom/node_docs/KSampler", params={"locale": asked})
        assert response.status == 200, asked
        page = await response.json()
        assert (page["source"], page["locale"], page["assets"]) == ("comfyui-embedded-docs", locale, "/docs/KSampler/")
        assert text in page["markdown"]
    bare = await (await client.get("/loom/node_docs/KSampler")).json()
    assert bare["locale"] == "en" and "English page." in bare["markdown"]


async def test_a_single_file_page_and_a_type_the_package_lacks(docs_package, make_client):
    client = await make_client()
    single = await (await client.get("/api/loom/node_docs/EmptyLatentImage", params={"locale": "en"})).json()
    assert (single["source"], single["locale"], single["assets"]) == ("comfyui-embedded-docs", None, "/docs/")
    assert "A single-file page." in single["markdown"]
    declared = await (await client.get("/api/loom/node_docs/Wait")).json()
    assert declared["source"] == "loom" and "Sleep in 20 ms slices" in declared["markdown"]


async def test_package_files_are_served_at_docs_safely(docs_package, make_client):
    client = await make_client()
    picture = await client.get("/docs/KSampler/asset/steps.png")
    assert picture.status == 200 and await picture.read() == PIXEL_PNG
    assert picture.headers["Content-Type"] == "image/png" and picture.headers["X-Content-Type-Options"] == "nosniff"
    page = await client.get("/docs/KSampler/en.md")
    assert page.status == 200 and (await page.text()).startswith("# KSampler")
    html = await client.get("/docs/KSampler/page.html")
    assert html.headers["Content-Type"] == "application/octet-stream"
    assert html.headers["Content-Disposition"].startswith("attachment")
    assert (await client.get("/docs/KSampler/leak.txt")).status == 403
    assert (await client.get("/docs/KSampler/missing.md")).status == 404


async def test_without_the_package_the_page_is_the_nodes_own_description(no_docs_package, make_client):
    client = await make_client()
    page = await (await client.get("/api/loom/node_docs/KSampler", params={"locale": "de"})).json()
    assert (page["source"], page["locale"], page["assets"]) == ("loom", None, None)
    markdown = page["markdown"]
    assert markdown.startswith("# KSampler\n")
    assert "## Inputs" in markdown and "## Outputs" in markdown
    assert "- `seed` (INT): The random seed of the noise." in markdown
    assert "- `sampler_name` (choice)" in markdown
    missing = await client.get("/docs/KSampler/en.md")
    assert missing.status == 404
    assert "pip install 'loom[docs]'" in (await missing.json())["error"]["details"]


async def test_unknown_types_and_malformed_locales_are_refused(no_docs_package, make_client):
    client = await make_client()
    unknown = await client.get("/api/loom/node_docs/NoSuchNode")
    assert unknown.status == 404 and (await unknown.json())["error"]["type"] == "unknown_node_type"
    for bad in ("../../etc", "en/../../x", "e"):
        response = await client.get("/api/loom/node_docs/KSampler", params={"locale": bad})
        assert response.status == 400, bad
