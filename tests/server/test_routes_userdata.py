"""Settings, users and user files, including the traversal attempts the issue lists."""

from __future__ import annotations

import pytest
from yarl import URL


async def test_settings_roundtrip(client):
    assert await (await client.get("/api/settings")).json() == {}
    assert (await client.post("/api/settings/Comfy.InstalledVersion", json="1.58.1")).status == 200
    assert (await client.post("/api/settings", json={"Comfy.TutorialCompleted": True})).status == 200
    assert await (await client.get("/api/settings")).json() == {
        "Comfy.InstalledVersion": "1.58.1",
        "Comfy.TutorialCompleted": True,
    }
    assert await (await client.get("/api/settings/Comfy.TutorialCompleted")).json() is True
    assert await (await client.get("/api/settings/unknown")).json() is None
    assert (await client.post("/api/settings", json=[1])).status == 400


async def test_users_is_single_user_storage(client):
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}


async def test_userdata_write_list_read_move_delete(client, tmp_path):
    url = URL("/api/userdata/workflows%2Fa.json", encoded=True)
    written = await client.post(url, data=b'{"nodes": []}')
    assert await written.json() == "workflows/a.json"
    assert (tmp_path / "user" / "default" / "workflows" / "a.json").read_bytes() == b'{"nodes": []}'
    refused = await client.post(URL("/api/userdata/workflows%2Fa.json?overwrite=false", encoded=True), data=b"{}")
    assert refused.status == 409

    listing = await (
        await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true"})
    ).json()
    assert [entry["path"] for entry in listing] == ["a.json"] and listing[0]["size"] == 13
    assert await (await client.get("/api/userdata", params={"dir": "workflows"})).json() == ["a.json"]
    assert (await client.get("/api/userdata", params={"dir": "nothing"})).status == 404
    v2 = await (await client.get("/api/v2/userdata", params={"path": "workflows"})).json()
    assert v2[0]["name"] == "a.json" and v2[0]["path"] == "workflows/a.json" and v2[0]["type"] == "file"

    got = await client.get(url)
    assert await got.read() == b'{"nodes": []}' and got.headers["Content-Disposition"].startswith("inline")

    moved = await client.post(URL("/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json", encoded=True))
    assert await moved.json() == "workflows/b.json"
    assert (await client.get(url)).status == 404
    assert (await client.delete(URL("/api/userdata/workflows%2Fb.json", encoded=True))).status == 204


async def test_user_html_is_a_download(client, tmp_path):
    await client.post(URL("/api/userdata/x.html", encoded=True), data=b"<script>alert(1)</script>")
    response = await client.get(URL("/api/userdata/x.html", encoded=True))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment")


@pytest.mark.parametrize(
    "path",
    [
        "/api/userdata/..%2F..%2Fsecret.txt",
        "/api/userdata/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/api/userdata/%2Fetc%2Fpasswd",
        "/api/userdata/link%2Fsecret.txt",
    ],
)
async def test_userdata_traversal_is_refused(client, tmp_path, tmp_path_factory, path):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("TOPSECRET")
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    root = tmp_path / "user" / "default"
    root.mkdir(parents=True, exist_ok=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    for method in ("get", "post", "delete"):
        response = await getattr(client, method)(URL(path, encoded=True))
        assert response.status == 403, (method, path)
        assert b"TOPSECRET" not in await response.read()
    moved = await client.post(URL(f"/api/userdata/ok.json/move/{path.rsplit('/', 1)[1]}", encoded=True))
    assert moved.status == 403
    listing = await client.get("/api/userdata", params={"dir": "../.."})
    assert listing.status == 403
    assert (await client.get("/api/v2/userdata", params={"path": "link"})).status == 403


async def test_a_new_user_has_empty_workflow_and_subgraph_folders(client):
    """What the official editor lists as it starts: empty lists, not the 404 of a missing folder."""
    for folder in ("workflows", "subgraphs"):
        listing = await client.get("/api/userdata", params={"dir": folder, "recurse": "true", "full_info": "true"})
        assert listing.status == 200 and await listing.json() == [], folder


async def test_user_css_is_an_empty_sheet_until_one_is_written(client):
    empty = await client.get("/api/userdata/user.css")
    assert empty.status == 200 and empty.content_type == "text/css" and await empty.text() == ""
    await client.post("/api/userdata/user.css", data=b"body { color: red }")
    written = await client.get("/api/userdata/user.css")
    assert written.content_type == "text/css" and await written.text() == "body { color: red }"
    assert (await client.get(URL("/api/userdata/workflows%2Fuser.css", encoded=True))).status == 404
