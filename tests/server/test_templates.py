"""The Templates panel's catalogue (``server.templates``): the comfyui-workflow-templates layouts, the
examples and the user's workflows, each with the node types and model files the server lacks: the files
their models metadata names and those their loader nodes name, in editor workflows (subgraphs included)
and API prompts alike."""

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


def place(client: TestClient, folder: str, name: str) -> Path:
    path = models_folder(client) / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def missing(entry: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(m["directory"], m["name"], m["url"]) for m in entry["models"] if not m["present"]]


async def test_examples_are_marked_with_the_files_their_loaders_name(client: TestClient) -> None:
    examples = by_path(await catalogue(client), "examples")
    sd15 = examples["sd15_txt2img.workflow.json"]
    assert sd15["models"] == [
        {
            "name": "v1-5-pruned-emaonly.safetensors",
            "directory": "checkpoints",
            "url": None,
            "hash": None,
            "hash_type": None,
            "present": False,
            "refused": None,
        }
    ], "the example has no models metadata: its loader's widget names the file, with no source"
    assert missing(examples["flux_dev_subgraph.workflow.json"]) == [
        ("diffusion_models", "flux1-dev.safetensors", None),
        ("text_encoders", "t5xxl_fp16.safetensors", None),
        ("text_encoders", "clip_l.safetensors", None),
        ("vae", "ae.safetensors", None),
    ], "the loaders inside the subgraph definition"
    assert examples["mask_compositing.workflow.json"]["models"] == []

    place(client, "checkpoints", "v1-5-pruned-emaonly.safetensors")
    examples = by_path(await catalogue(client), "examples")
    assert [m["present"] for m in examples["sd15_txt2img.workflow.json"]["models"]] == [True]
    assert missing(examples["sd15_lora.workflow.json"]) == [("loras", "example_lora.safetensors", None)]


def loader(node_id: int, node_type: str, *values: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "properties": {}, "widgets_values": list(values)}


async def requirements(client: TestClient, workflow: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/loom/workflow_requirements", json={"workflow": workflow})
    assert response.status == 200
    models: list[dict[str, Any]] = (await response.json())["models"]
    return models


async def test_loader_files_of_an_editor_workflow_an_api_prompt_and_a_subgraph(client: TestClient) -> None:
    place(client, "checkpoints", "sd15/base.safetensors")
    lora_source = {"name": "style.safetensors", "directory": "loras", "url": "https://example.com/style.safetensors"}
    lora_source["hash"] = "ab" * 32
    inner = loader(3, "VAELoader", "sd15\\vae.safetensors")
    subgraph = {"id": "sub-1", "nodes": [inner], "links": [], "inputs": [], "outputs": []}
    lora = {**loader(2, "LoraLoader", "style.safetensors", 1.0, 1.0), "properties": {"models": [lora_source]}}
    editor = {
        "nodes": [loader(1, "CheckpointLoaderSimple", "sd15\\base.safetensors"), lora, loader(9, "sub-1")],
        "links": [],
        "definitions": {"subgraphs": [subgraph]},
    }
    expected = [
        # The metadata's entry first, with its source; the loader naming the same file adds no second one.
        ("loras", "style.safetensors", "https://example.com/style.safetensors", "ab" * 32, False),
        # A Windows name for a file kept in a subfolder here is that file.
        ("checkpoints", "sd15\\base.safetensors", None, None, True),
        ("vae", "sd15\\vae.safetensors", None, None, False),
    ]
    as_tuples = [
        (m["directory"], m["name"], m["url"], m["hash"], m["present"]) for m in await requirements(client, editor)
    ]
    assert as_tuples == expected

    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/base.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "model": ["1", 0]}},
        "9:3": {"class_type": "VAELoader", "inputs": {"vae_name": "sd15/vae.safetensors"}},
    }
    as_tuples = [(m["directory"], m["name"], m["present"]) for m in await requirements(client, api)]
    assert as_tuples == [
        ("checkpoints", "sd15/base.safetensors", True),
        ("loras", "style.safetensors", False),
        ("vae", "sd15/vae.safetensors", False),
    ]
    body = await (
        await client.post("/loom/workflow_requirements", json={"workflow": {**api, "5": {"class_type": "Nope"}}})
    ).json()
    assert body["missing_node_types"] == ["Nope"], "an API prompt's node types are checked too"

    place(client, "vae", "sd15/vae.safetensors")
    place(client, "loras", "style.safetensors")
    assert all(m["present"] for m in await requirements(client, editor))
