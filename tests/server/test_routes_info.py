"""Node definitions, models and the small endpoints the frontend needs to start (docs/compatibility.md §C.2)."""

from __future__ import annotations


async def test_object_info_serves_every_node_with_the_fields_clients_require(client):
    info = await (await client.get("/api/object_info")).json()
    assert {"Wait", "SaveImage", "EmptyImage"} <= set(info)
    wait = info["Wait"]
    assert wait["input"]["required"]["seconds"] == ["FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0}]
    assert wait["input_order"] == {"required": ["seconds", "text"]} and wait["output"] == ["STRING"]
    assert await (await client.get("/object_info/Wait")).json() == {"Wait": wait}
    assert await (await client.get("/object_info/Missing")).json() == {}


async def test_model_listing(client, tmp_path):
    (tmp_path / "models" / "checkpoints" / "sd").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "sd" / "tiny.safetensors").write_bytes(b"")
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_text("")
    (tmp_path / "models" / "embeddings").mkdir()
    (tmp_path / "models" / "embeddings" / "style.pt").write_bytes(b"")
    assert "checkpoints" in await (await client.get("/models")).json()
    assert await (await client.get("/models/checkpoints")).json() == ["sd/tiny.safetensors"]
    assert (await client.get("/models/nope")).status == 404
    assert await (await client.get("/embeddings")).json() == ["style"]


async def test_startup_endpoints_answer(client, tmp_path):
    (tmp_path / "web" / "extensions" / "mine").mkdir(parents=True)
    (tmp_path / "web" / "extensions" / "mine" / "a.js").write_text("")
    assert await (await client.get("/api/extensions")).json() == ["/extensions/mine/a.js"]
    stats = await (await client.get("/api/system_stats")).json()
    assert stats["system"]["python_version"] and stats["devices"][0]["type"] in ("cpu", "cuda")
    features = await (await client.get("/api/features")).json()
    assert features["supports_preview_metadata"] is True
    for path in ("/api/i18n", "/api/global_subgraphs", "/api/workflow_templates", "/api/node_replacements"):
        assert await (await client.get(path)).json() == {}
    home = await client.get("/")
    assert home.status == 200 and "Loom" in await home.text()
