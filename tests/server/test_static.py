"""What the official frontend loads beside its page: ``/user.css`` and the ``/templates/...`` files."""

from __future__ import annotations

import json

from server import static


async def test_user_css_is_the_frontend_roots_or_an_empty_sheet(make_client, tmp_path):
    client = await make_client(frontend_root=tmp_path / "web")
    empty = await client.get("/user.css")
    assert empty.status == 200 and empty.content_type == "text/css" and await empty.text() == ""
    (tmp_path / "web").mkdir(exist_ok=True)
    (tmp_path / "web" / "user.css").write_text("body { color: red }")
    assert await (await client.get("/user.css")).text() == "body { color: red }"


async def test_without_template_packages_the_indexes_are_empty(client, monkeypatch):
    monkeypatch.setattr(static, "template_package_folders", lambda: ())
    assert await (await client.get("/templates/index.json")).json() == []
    assert await (await client.get("/templates/index.fr.json")).json() == []
    assert await (await client.get("/templates/index_logo.json")).json() == {}
    missing = await client.get("/templates/default.json")
    assert missing.status == 404 and "comfyui-workflow-templates" in (await missing.json())["error"]["details"]


async def test_template_files_come_from_the_installed_packages_in_order(client, monkeypatch, tmp_path):
    first, second = tmp_path / "json" / "templates", tmp_path / "media" / "templates"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "default.json").write_text(json.dumps({"nodes": []}))
    (second / "index.json").write_text(json.dumps([{"moduleName": "default", "templates": []}]))
    (second / "default-1.webp").write_bytes(b"RIFF....WEBP")
    monkeypatch.setattr(static, "template_package_folders", lambda: (first, second))
    assert await (await client.get("/templates/default.json")).json() == {"nodes": []}
    assert (await (await client.get("/templates/index.json")).json())[0]["moduleName"] == "default"
    assert await (await client.get("/templates/default-1.webp")).read() == b"RIFF....WEBP"
    assert await (await client.get("/templates/index_logo.json")).json() == {}, "a package without it: empty"


async def test_template_paths_cannot_leave_the_package_folder(client, monkeypatch, tmp_path):
    folder = tmp_path / "pkg" / "templates"
    folder.mkdir(parents=True)
    (tmp_path / "pkg" / "secret.txt").write_text("TOPSECRET")
    monkeypatch.setattr(static, "template_package_folders", lambda: (folder,))
    for path in ("/templates/..%2Fsecret.txt", "/templates/%2E%2E/secret.txt"):
        reply = await client.get(path)
        assert reply.status in (403, 404), path
        assert b"TOPSECRET" not in await reply.read()
