"""``loom serve --frontend``: Loom's editor by default, ComfyUI's official frontend from the installed
``comfyui-frontend-package`` (a fake one laid out like the real wheel here) on request, and a clear
refusal that says how to install it when it is missing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from server.config import REPO_ROOT
from server.serve import add_serve_arguments, config_from_args, serve_from_args
from server.static import COMFYUI_FRONTEND_PACKAGE, FrontendNotInstalledError

FAKE_INDEX = "<!doctype html><title>ComfyUI frontend (fake)</title><div id=vue-app></div>"


def serve_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(flags))


def install_fake_frontend(site: Path, monkeypatch: pytest.MonkeyPatch, index: bool = True) -> Path:
    """``comfyui_frontend_package`` as its wheel lays it out: the built editor in ``static/``."""
    static = site / COMFYUI_FRONTEND_PACKAGE / "static"
    (static / "assets").mkdir(parents=True)
    (site / COMFYUI_FRONTEND_PACKAGE / "__init__.py").write_text("")
    (static / "assets" / "index-abc.js").write_text("console.log('fake frontend')\n")
    if index:
        (static / "index.html").write_text(FAKE_INDEX)
    monkeypatch.syspath_prepend(str(site))
    # Recorded with setitem, so the fake module imported here leaves sys.modules with the test (a later
    # test must find the real package, not this one); delitem records nothing when the name was absent.
    monkeypatch.setitem(sys.modules, COMFYUI_FRONTEND_PACKAGE, None)
    del sys.modules[COMFYUI_FRONTEND_PACKAGE]
    return static


async def test_frontend_comfyui_serves_the_installed_package_at_root(tmp_path, monkeypatch, make_client):
    static = install_fake_frontend(tmp_path / "site", monkeypatch)
    config = config_from_args(serve_args("--frontend", "comfyui", "--base-dir", str(tmp_path)))
    assert config.frontend_root == static
    client = await make_client(frontend_root=config.frontend_root)
    home = await client.get("/")
    assert home.status == 200 and await home.text() == FAKE_INDEX
    assert (await client.get("/assets/index-abc.js")).status == 200
    assert (await client.get("/api/object_info/KSampler")).status == 200, "the same API behind it"


async def test_the_default_frontend_is_looms_editor(tmp_path, make_client):
    for flags in ((), ("--frontend", "loom")):
        config = config_from_args(serve_args(*flags, "--base-dir", str(tmp_path)))
        assert config.frontend_root == REPO_ROOT / "web"
    client = await make_client(frontend_root=config.frontend_root)
    home = await (await client.get("/")).text()
    assert home == (REPO_ROOT / "web" / "index.html").read_text()


def test_frontend_root_still_names_any_folder_but_not_together_with_frontend(tmp_path):
    assert config_from_args(serve_args("--frontend-root", str(tmp_path))).frontend_root == tmp_path
    with pytest.raises(ValueError, match="not both"):
        config_from_args(serve_args("--frontend", "comfyui", "--frontend-root", str(tmp_path)))


def test_a_missing_package_stops_serve_with_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, COMFYUI_FRONTEND_PACKAGE, None)  # not installed, even where it is
    with pytest.raises(FrontendNotInstalledError, match="not installed"):
        config_from_args(serve_args("--frontend", "comfyui"))
    assert serve_from_args(serve_args("--frontend", "comfyui", "--base-dir", str(tmp_path))) == 2
    message = capsys.readouterr().err
    assert message.startswith("loom serve: --frontend comfyui:")
    assert "pip install 'loom[comfyui-frontend]'" in message


def test_a_package_without_its_built_page_is_refused_too(tmp_path, monkeypatch):
    install_fake_frontend(tmp_path / "site", monkeypatch, index=False)
    with pytest.raises(FrontendNotInstalledError, match="index.html"):
        config_from_args(serve_args("--frontend", "comfyui"))


def test_an_unknown_frontend_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        serve_args("--frontend", "other")
    assert "invalid choice" in capsys.readouterr().err
