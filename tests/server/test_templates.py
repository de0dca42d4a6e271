"""The Templates panel's catalogue (``server.templates``): the comfyui-workflow-templates layouts, the
examples and the user's workflows, each with the node types and model files the server lacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import RUNTIME
from server.templates import EXAMPLES_DIR
from tests.server.conftest import MakeClient

MODEL = {"name": "tiny.safetensors", "directory": "checkpoints", "url": "https://example.com/tiny.safetensors"}


def workflow(*types: str, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    nodes = [{"id": i, "type": t, "properties": {}, "widgets_values": []} for i, t in enumerate(types, 1)]
    return {"nodes": nodes, "links": [], "models": models or [], "version": 0.4}


def models_folder(client: TestClient) -> Path:
    return client.app[RUNTIME].model_paths.models


async def catalogue(client: TestClient) -> dict[str, Any]:
    response = await client.get("/api/loom/templates")
    assert response.status == 200
    return await response.json()


def by_path(body: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    return {t["path"]: t for t in body["templates"] if t["source"] == source}


async def test_examples_are_listed_but_api_prompts_are_not(client: TestClient) -> None:
    body = await catalogue(client)
    examples = by_path(body, "examples")
    on_disk = sorted(p.name for p in EXAMPLES_DIR.glob("*.workflow.json"))
    assert sorted(examples) == on_disk
    assert examples["sd15_lora.workflow.json"]["title"] == "sd15 lora"
    assert body["downloads_enabled"] is False
    assert [s["key"] for s in body["sources"]] == ["examples", "user"], "no templates package is installed here"


async def test_user_workflows_show_missing_nodes_and_models(client: TestClient) -> None:
    folder = client.app[RUNTIME].folders.user / "default" / "workflows" / "mine"
    folder.mkdir(parents=True)
    present = {**MODEL, "name": "here.safetensors"}
    (folder / "flow.json").write_text(json.dumps(workflow("Wait", "NoSuchNode", "Note", models=[MODEL, present])))
    (folder / "broken.json").write_text("{not json")
    (models_folder(client) / "checkpoints").mkdir(parents=True, exist_ok=True)
    (models_folder(client) / "checkpoints" / "here.safetensors").write_bytes(b"weights")

    (entry,) = by_path(await catalogue(client), "user").values()
    assert entry["path"] == "mine/flow.json"
    assert entry["missing_node_types"] == ["NoSuchNode"], "Note is the editor's own; Wait is registered"
    assert [(m["name"], m["present"], m["refused"]) for m in entry["models"]] == [
        ("tiny.safetensors", False, None),
        ("here.safetensors", True, None),
    ]

    response = await client.get("/loom/templates/user/mine/flow.json")
    assert response.status == 200
    assert (await response.json())["nodes"][1]["type"] == "NoSuchNode"


async def test_template_files_cannot_be_read_outside_their_folders(client: TestClient) -> None:
    workflows = client.app[RUNTIME].folders.user / "default" / "workflows"
    workflows.mkdir(parents=True)
    (workflows.parent / "secret.json").write_text("{}")
    assert (await client.get("/loom/templates/user/..%2Fsecret.json")).status == 403
    assert (await client.get("/loom/templates/nowhere/sd15_lora.workflow.json")).status == 404
    assert (await client.get("/loom/templates/examples/missing.json")).status == 404
    assert (await client.get("/loom/templates/examples/sd15_lora.workflow.json")).status == 200


def write_package(root: Path, package: str, files: dict[str, Any], regular: bool) -> None:
    folder = root / package / "templates"
    folder.mkdir(parents=True)
    if regular:
        (root / package / "__init__.py").write_text("raise RuntimeError('a template package is never imported')\n")
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))


async def test_the_split_package_layout_with_its_index(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = tmp_path / "site"
    flux = workflow("Wait", models=[MODEL])
    write_package(packages, "comfyui_workflow_templates_json", {"flux_dev.json": flux, "plain.json": workflow()}, True)
    index = [{"title": "Image", "templates": [{"name": "flux_dev", "title": "FLUX.1 dev", "description": "t2i"}]}]
    write_package(packages, "comfyui_workflow_templates_media_other", {"index.json": index}, False)
    monkeypatch.syspath_prepend(str(packages))
    client = await make_client(enable_model_downloads=True)

    body = await catalogue(client)
    assert body["sources"][0] == {"key": "comfyui", "label": "ComfyUI templates"}
    assert body["downloads_enabled"] is True
    templates = by_path(body, "comfyui")
    assert sorted(templates) == ["flux_dev.json", "plain.json"], "index.json is not a template"
    flux_entry = templates["flux_dev.json"]
    assert (flux_entry["title"], flux_entry["description"], flux_entry["category"]) == ("FLUX.1 dev", "t2i", "Image")
    assert flux_entry["models"] == [{**MODEL, "hash": None, "hash_type": None, "present": False, "refused": None}]
    assert templates["plain.json"]["title"] == "plain"
    assert (await (await client.get("/loom/templates/comfyui/flux_dev.json")).json()) == flux


async def test_the_single_package_layout(make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    packages = tmp_path / "site"
    index = [{"title": "Basics", "templates": [{"name": "default", "title": "Image generation"}]}]
    write_package(packages, "comfyui_workflow_templates", {"default.json": workflow("Wait"), "index.json": index}, True)
    monkeypatch.syspath_prepend(str(packages))
    client = await make_client()
    (entry,) = by_path(await catalogue(client), "comfyui").values()
    assert (entry["path"], entry["title"], entry["missing_node_types"]) == ("default.json", "Image generation", [])


async def test_workflow_requirements_of_an_opened_workflow(client: TestClient) -> None:
    refused = {**MODEL, "name": "plain.safetensors", "url": "http://example.com/plain.safetensors"}
    unknown = {**MODEL, "directory": "secrets"}
    opened = workflow("Wait", "Missing", models=[MODEL])
    opened["nodes"][0]["properties"]["models"] = [refused, unknown]
    response = await client.post("/api/loom/workflow_requirements", json={"workflow": opened})
    assert response.status == 200
    body = await response.json()
    assert body["missing_node_types"] == ["Missing"]
    assert body["downloads_enabled"] is False
    reasons = {(m["directory"], m["name"]): (m["present"], m["refused"]) for m in body["models"]}
    assert reasons[("checkpoints", "tiny.safetensors")] == (False, None)
    assert reasons[("checkpoints", "plain.safetensors")][1].startswith("Only HTTPS sources are allowed")
    present, reason = reasons[("secrets", "tiny.safetensors")]
    assert not present and reason.startswith("No model folder 'secrets'")

    bad = await client.post("/loom/workflow_requirements", json={"nodes": []})
    assert bad.status == 400
