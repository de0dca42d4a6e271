"""The server with plugins: it starts beside broken ones, reports them, serves plugin browser code safely.

The plugin folder holds the ComfyUI-style pack and the broken plugins of ``tests/graph/test_plugins.py``
(one is a syntax error, one misses a dependency, one calls ``sys.exit``...) next to the repository's
own ``custom_nodes/example_pack``, and is handed to the server as an extra plugin folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from server.serve import add_serve_arguments, config_from_args
from tests.graph.test_plugins import COMFY_STYLE_PACK, FAILING_PLUGINS, words_prompt, write_tree
from tests.server.conftest import wait_for_history

PluginClient = Callable[..., Awaitable[TestClient]]

EXTRA_PLUGINS = {
    "replaces_builtin.py": """
        class FakeSave:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ()
            FUNCTION = "run"
            OUTPUT_NODE = True
            def run(self):
                return {}

        class Explode:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"text": ("STRING", {"default": "boom"})}}
            RETURN_TYPES = ("STRING",)
            FUNCTION = "run"
            OUTPUT_NODE = True
            def run(self, text):
                raise RuntimeError(text)

        NODE_CLASS_MAPPINGS = {"SaveImage": FakeSave, "Explode": Explode}
    """,
    "comfy_style_pack/js/lib/util.js": "export const shout = (word) => word.toUpperCase();\n",
    "comfy_style_pack/js/theme.css": ".words { color: red; }\n",
}


@pytest.fixture
def plugin_folder(tmp_path: Path) -> Path:
    folder = write_tree(tmp_path / "plugins", {**COMFY_STYLE_PACK, **FAILING_PLUGINS, **EXTRA_PLUGINS})
    (tmp_path / "secret.js").write_text("export const secret = 'server-side file';\n")
    os.symlink(tmp_path / "secret.js", folder / "comfy_style_pack" / "js" / "leak.js")
    return folder


@pytest.fixture
def plugin_client(make_client, plugin_folder: Path) -> PluginClient:
    async def make(**overrides: Any) -> TestClient:
        return await make_client(plugins=True, **{"extra_custom_node_dirs": (plugin_folder,), **overrides})

    return make


async def plugin_reports(client: TestClient, **headers: str) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/loom/plugins", headers=headers)
    assert response.status == 200
    return {report["name"]: report for report in await response.json()}


async def test_the_server_starts_beside_broken_plugins_and_reports_each(plugin_client) -> None:
    client = await plugin_client()
    reports = await plugin_reports(client)
    assert reports["example_pack"]["status"] == "loaded" and "ExampleColorTint" in reports["example_pack"]["nodes"]
    assert reports["comfy_style_pack"]["status"] == "loaded"
    assert reports["comfy_style_pack"]["nodes"] == ["ReadNote", "SplitWords", "Shout", "PickOne", "JoinWords"]
    for name, message in [
        ("missing_dependency", "missing Python module 'loom_test_no_such_dependency'"),
        ("exits_at_import", "SystemExit: 1"),
        ("syntax_error", "SyntaxError"),
        ("raises_at_import", "RuntimeError: no GPU driver found"),
    ]:
        assert reports[name]["status"] == "failed" and message in reports[name]["error"], name
        assert "Traceback" in reports[name]["traceback"], "this machine's own client gets the traceback"
    assert reports["old_pack"]["status"] == "disabled" and reports["not_a_package"]["status"] == "skipped"

    refused = {r["class_type"]: r["reason"] for r in reports["replaces_builtin"]["refused"]}
    assert "built-in" in refused["SaveImage"] and reports["replaces_builtin"]["nodes"] == ["Explode"]
    assert "KeyError" in {r["class_type"]: r["reason"] for r in reports["partly_broken"]["refused"]}["InputsRaise"]

    info = await (await client.get("/object_info")).json()
    assert {"ReadNote", "JoinWords", "Explode", "ExampleColorTint", "PartlyGood"} <= set(info)
    assert info["JoinWords"]["python_module"] == "custom_nodes.comfy_style_pack"
    assert not info["SaveImage"]["python_module"].startswith("custom_nodes"), "the built-in SaveImage survives"
    assert "InputsRaise" not in info


async def test_tracebacks_are_withheld_from_requests_that_come_through_a_proxy(plugin_client) -> None:
    client = await plugin_client()
    reports = await plugin_reports(client, **{"X-Forwarded-For": "203.0.113.9"})
    assert reports["missing_dependency"]["error"] and reports["missing_dependency"]["traceback"] is None
    assert all(r["traceback"] is None for r in reports["partly_broken"]["refused"])


async def test_extensions_lists_the_scripts_of_loaded_plugins_only(plugin_client, tmp_path: Path) -> None:
    (tmp_path / "web" / "extensions" / "mine").mkdir(parents=True)
    (tmp_path / "web" / "extensions" / "mine" / "a.js").write_text("export default { name: 'mine' };\n")
    client = await plugin_client()
    scripts = await (await client.get("/api/extensions")).json()
    assert scripts == [
        "/extensions/mine/a.js",
        "/extensions/example_pack/color_widget.js",
        "/extensions/comfy_style_pack/lib/util.js",
        "/extensions/comfy_style_pack/words.js",
    ], "no stylesheet, nothing behind a symlink out of the pack, nothing of a pack whose web folder was refused"


async def test_plugin_web_files_are_served_as_scripts_and_confined_to_their_folder(
    plugin_client, plugin_folder, tmp_path
) -> None:
    (tmp_path / "web" / "extensions" / "mine").mkdir(parents=True)
    (tmp_path / "web" / "extensions" / "mine" / "a.js").write_text("export default { name: 'mine' };\n")
    client = await plugin_client()

    script = await client.get("/extensions/comfy_style_pack/words.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert await script.text() == (plugin_folder / "comfy_style_pack" / "js" / "words.js").read_text()
    nested = await client.get("/extensions/comfy_style_pack/lib/util.js")
    assert nested.status == 200 and nested.headers["Content-Type"].startswith("text/javascript")
    assert (await client.get("/extensions/comfy_style_pack/theme.css")).headers["Content-Type"].startswith("text/css")
    assert (await client.get("/extensions/example_pack/color_widget.js")).status == 200
    frontend_own = await client.get("/extensions/mine/a.js")
    assert frontend_own.status == 200 and "mine" in await frontend_own.text()

    assert (await client.get("/extensions/comfy_style_pack/leak.js")).status == 403, "a symlink out of the folder"
    for raw in (
        "/extensions/comfy_style_pack/..%2Fnodes.py",
        "/extensions/comfy_style_pack/%2e%2e/%2e%2e/secret.js",
        "/extensions/comfy_style_pack/%2Fetc%2Fpasswd",
        "/extensions/mine/..%2F..%2F..%2Fplugins%2Fcomfy_style_pack%2Fnodes.py",
    ):
        response = await client.get(URL(raw, encoded=True))
        assert response.status in (403, 404), raw
        assert "server-side file" not in await response.text() and "class ReadNote" not in await response.text(), raw
    assert (await client.get("/extensions/comfy_style_pack/nope.js")).status == 404
    assert (await client.get("/extensions/missing_dependency/words.js")).status == 404, "a failed pack serves nothing"


async def test_disable_flag_loads_no_plugin_and_the_whitelist_brings_one_back(plugin_client) -> None:
    disabled = await plugin_client(disable_custom_nodes=True)
    reports = await plugin_reports(disabled)
    assert {r["status"] for r in reports.values()} == {"disabled"} and "example_pack" in reports
    info = await (await disabled.get("/object_info")).json()
    assert "ReadNote" not in info and "ExampleColorTint" not in info and "SaveImage" in info
    assert await (await disabled.get("/extensions")).json() == []

    whitelisted = await plugin_client(disable_custom_nodes=True, custom_node_whitelist=("comfy_style_pack",))
    reports = await plugin_reports(whitelisted)
    assert [name for name, r in reports.items() if r["status"] != "disabled"] == ["comfy_style_pack"]
    assert await (await whitelisted.get("/extensions")).json() == [
        "/extensions/comfy_style_pack/lib/util.js",
        "/extensions/comfy_style_pack/words.js",
    ]


def test_the_plugin_flags_build_the_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    plain = config_from_args(parser.parse_args([]))
    assert (plain.disable_custom_nodes, plain.custom_node_whitelist, plain.extra_custom_node_dirs) == (False, (), ())
    config = config_from_args(
        parser.parse_args(
            [
                "--disable-all-custom-nodes",
                "--whitelist-custom-nodes",
                "example_pack",
                "tools.py",
                "--extra-custom-nodes-dir",
                str(tmp_path / "a"),
                "--extra-custom-nodes-dir",
                str(tmp_path / "b"),
            ]
        )
    )
    assert config.disable_custom_nodes is True and config.custom_node_whitelist == ("example_pack", "tools.py")
    assert config.extra_custom_node_dirs == (tmp_path / "a", tmp_path / "b")
    assert config_from_args(parser.parse_args(["--disable-custom-nodes"])).disable_custom_nodes is True


async def test_a_comfyui_style_plugin_runs_through_post_prompt(plugin_client, tmp_path: Path) -> None:
    client = await plugin_client()
    note = tmp_path / "note.txt"
    note.write_text("hello plugin world")

    reply = await (await client.post("/prompt", json={"prompt": words_prompt(note)})).json()
    entry = await wait_for_history(client, reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    # The ui output carries the hidden UNIQUE_ID and PROMPT the node was given.
    assert entry["outputs"]["6"] == {"text": ["HELLO!-PLUGIN!-WORLD!"], "node": ["6"], "class": ["JoinWords"]}
    calls = sys.modules["comfy_style_pack.helpers"].CALLS
    assert ("SplitWords", "never needed") not in calls, "the lazy input that was not asked for never ran"

    calls.clear()
    again = await (await client.post("/prompt", json={"prompt": words_prompt(note)})).json()
    await wait_for_history(client, again["prompt_id"])
    assert calls == [], "IS_CHANGED gave the same hash, so everything came from the cache"
    note.write_text("changed")
    changed = await (await client.post("/prompt", json={"prompt": words_prompt(note)})).json()
    assert (await wait_for_history(client, changed["prompt_id"]))["outputs"]["6"]["text"] == ["CHANGED!"]

    rejected = await client.post("/prompt", json={"prompt": words_prompt(note, separator="-----")})
    assert rejected.status == 400
    [error] = (await rejected.json())["node_errors"]["6"]["errors"]
    assert "separator must be at most 3 characters" in error["details"]


async def test_a_plugin_node_that_raises_fails_its_prompt_and_the_server_runs_the_next(plugin_client) -> None:
    client = await plugin_client()
    failed = await (
        await client.post("/prompt", json={"prompt": {"1": {"class_type": "Explode", "inputs": {"text": "kaboom"}}}})
    ).json()
    entry = await wait_for_history(client, failed["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    [(_, error)] = [message for message in entry["status"]["messages"] if message[0] == "execution_error"]
    assert error["node_type"] == "Explode" and "kaboom" in error["exception_message"]

    fine = await (
        await client.post(
            "/prompt",
            json={
                "prompt": {
                    "1": {
                        "class_type": "ExamplePromptTemplate",
                        "inputs": {"template": "{subject}", "subject": "ok", "style": ""},
                    }
                }
            },
        )
    ).json()
    assert (await wait_for_history(client, fine["prompt_id"]))["outputs"]["1"] == {"text": ["ok"]}
