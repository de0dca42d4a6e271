"""/view and /upload/*: dedupe and renaming, size limit, and every traversal trick refused."""

from __future__ import annotations

import io
import json
import struct

import aiohttp
import pytest
from PIL import Image
from yarl import URL


def png(color=(255, 0, 0, 255), size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def form(data: bytes, name: str = "a.png", **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


def raw_form(data: bytes, name: str, **fields: str) -> tuple[bytes, dict[str, str]]:
    """Multipart written by hand: aiohttp's client would percent-encode a ``/`` in the file name."""
    parts = [
        f'--B\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--B\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n\r\n'.encode()
        + data
        + b"\r\n--B--\r\n"
    )
    return b"".join(parts), {"Content-Type": "multipart/form-data; boundary=B"}


@pytest.fixture
def folders(tmp_path):
    for name in ("input", "output", "temp", "user"):
        (tmp_path / name).mkdir(exist_ok=True)
    return tmp_path


async def test_upload_dedupes_by_content_and_renames_on_conflict(client, folders):
    first = await (await client.post("/upload/image", data=form(png()))).json()
    assert first == {"name": "a.png", "subfolder": "", "type": "input"}
    same = await (await client.post("/upload/image", data=form(png()))).json()
    assert same["name"] == "a.png"
    other = await (await client.post("/upload/image", data=form(png((0, 255, 0, 255))))).json()
    assert other["name"] == "a (1).png"
    third = await (await client.post("/api/upload/image", data=form(png((0, 0, 255, 255))))).json()
    assert third["name"] == "a (2).png"
    replaced = await (await client.post("/upload/image", data=form(png((1, 1, 1, 255)), overwrite="true"))).json()
    assert replaced["name"] == "a.png" and (folders / "input" / "a.png").read_bytes() == png((1, 1, 1, 255))
    nested = await (await client.post("/upload/image", data=form(png(), subfolder="pets/cats", type="temp"))).json()
    assert nested == {"name": "a.png", "subfolder": "pets/cats", "type": "temp"}
    assert (folders / "temp" / "pets" / "cats" / "a.png").is_file()


async def test_a_renamed_upload_of_a_longest_possible_name_still_fits(client, folders):
    name = "é" * 125 + ".png"  # 254 bytes: " (1)" would take it past the file system's 255
    for color in ((255, 0, 0, 255), (0, 255, 0, 255)):
        body, headers = raw_form(png(color), name)  # as a browser sends it: UTF-8, not percent-encoded
        reply = await client.post("/upload/image", data=body, headers=headers)
    assert reply.status == 200
    renamed = (await reply.json())["name"]
    assert renamed.endswith(" (1).png") and len(renamed.encode()) <= 255
    assert (folders / "input" / renamed).read_bytes() == png((0, 255, 0, 255))


async def test_upload_size_limit(make_client, folders):
    client = await make_client(max_upload_bytes=2048)
    response = await client.post("/upload/image", data=form(b"x" * 4096))
    assert response.status == 413


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"subfolder": "../.."}, "a.png"),
        ({"subfolder": "/etc"}, "a.png"),
        ({}, "../../escape.png"),
        ({}, "/tmp/escape.png"),
        ({"subfolder": "ok/../../.."}, "a.png"),
        ({"type": "user"}, "a.png"),
    ],
)
async def test_upload_traversal_is_refused(client, folders, fields, name):
    body, headers = raw_form(png(), name, **fields)
    response = await client.post("/upload/image", data=body, headers=headers)
    assert response.status in (400, 403)
    assert not (folders.parent / "escape.png").exists() and not (folders / "a.png").exists()


async def test_mask_upload_combines_original_rgb_with_uploaded_alpha(client, folders):
    Image.new("RGB", (4, 4), (10, 20, 30)).save(folders / "input" / "photo.png")
    mask = png((0, 0, 0, 77))
    ref = json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"})
    reply = await (await client.post("/upload/mask", data=form(mask, name="photo_mask.png", original_ref=ref))).json()
    result = Image.open(folders / "input" / reply["name"])
    assert result.mode == "RGBA" and result.getpixel((1, 1)) == (10, 20, 30, 77)
    escape = json.dumps({"filename": "../../secret.png", "type": "input"})
    assert (await client.post("/upload/mask", data=form(mask, original_ref=escape))).status == 403


async def test_a_masked_picture_keeps_the_workflow_its_original_carried(client, folders):
    from PIL.PngImagePlugin import PngInfo

    chunks = PngInfo()
    chunks.add_text("workflow", '{"nodes": []}')
    chunks.add_text("prompt", '{"1": {}}')
    Image.new("RGB", (4, 4), (10, 20, 30)).save(folders / "output" / "made.png", pnginfo=chunks)
    ref = json.dumps({"filename": "made.png", "subfolder": "", "type": "output"})
    reply = await (
        await client.post("/upload/mask", data=form(png((0, 0, 0, 9)), name="m.png", original_ref=ref))
    ).json()
    with Image.open(folders / "input" / reply["name"]) as result:
        assert result.text == {"workflow": '{"nodes": []}', "prompt": '{"1": {}}'}


async def test_view_variants(client, folders):
    Image.new("RGBA", (4, 4), (200, 100, 50, 128)).save(folders / "output" / "pic.png")
    Image.new("RGBA", (2, 2), (1, 2, 3, 4)).save(folders / "input" / "in.png")
    plain = await client.get("/view", params={"filename": "pic.png"})
    assert plain.status == 200 and plain.headers["X-Content-Type-Options"] == "nosniff"
    annotated = await client.get("/view", params={"filename": "in.png [input]", "type": "output"})
    assert Image.open(io.BytesIO(await annotated.read())).size == (2, 2)
    webp = await client.get("/view", params={"filename": "pic.png", "preview": "webp;50"})
    assert webp.headers["Content-Type"] == "image/webp"
    rgb = Image.open(
        io.BytesIO(await (await client.get("/view", params={"filename": "pic.png", "channel": "rgb"})).read())
    )
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 100, 50)
    alpha = Image.open(
        io.BytesIO(await (await client.get("/view", params={"filename": "pic.png", "channel": "a"})).read())
    )
    assert alpha.getpixel((0, 0))[:3] == (128, 128, 128)
    assert (await client.get("/view", params={"filename": "missing.png"})).status == 404


@pytest.mark.parametrize(
    "query",
    [
        "filename=..%2F..%2Fsecret.txt",
        "filename=secret.txt&subfolder=..%2F..",
        "filename=secret.txt&subfolder=%2F",
        "filename=%2Fetc%2Fpasswd",
        "filename=secret.txt&subfolder=..",
        "filename=passwd&subfolder=%2Fetc",
        "filename=secret.txt&type=user",
    ],
)
async def test_view_traversal_is_refused(client, folders, query):
    (folders.parent / "secret.txt").write_text("TOPSECRET")
    response = await client.get(f"/view?{query}")
    assert response.status in (400, 403)
    assert b"TOPSECRET" not in await response.read()


@pytest.mark.parametrize("kind", ["input", "output", "temp"])
async def test_view_refuses_a_symlink_that_leaves_the_folder(client, folders, tmp_path_factory, kind):
    """Unlike model folders, the folders requests read and write never follow a link out of them."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(png())
    (folders / kind).mkdir(exist_ok=True)
    (folders / kind / "link.png").symlink_to(outside / "secret.png")
    (folders / kind / "linkdir").symlink_to(outside, target_is_directory=True)
    assert (await client.get("/view", params={"filename": "link.png", "type": kind})).status == 403
    assert (
        await client.get("/view", params={"filename": "secret.png", "subfolder": "linkdir", "type": kind})
    ).status == 403
    upload = await client.post("/upload/image", data=form(png(), name="new.png", subfolder="linkdir", type=kind))
    assert upload.status == 403 and not (outside / "new.png").exists()


async def test_view_metadata_follows_a_symlinked_model_file(client, folders, tmp_path_factory):
    outside = tmp_path_factory.mktemp("other_disk")
    header = json.dumps({"__metadata__": {"ss_network_dim": "4"}}).encode()
    (outside / "style.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (folders / "models" / "loras").mkdir(parents=True)
    (folders / "models" / "loras" / "style.safetensors").symlink_to(outside / "style.safetensors")
    response = await client.get("/view_metadata/loras", params={"filename": "style.safetensors"})
    assert response.status == 200 and await response.json() == {"ss_network_dim": "4"}


async def test_active_content_is_never_served_as_a_page(client, folders):
    (folders / "output" / "page.html").write_text("<script>alert(1)</script>")
    (folders / "output" / "code.js").write_text("alert(1)")
    for name in ("page.html", "code.js"):
        response = await client.get("/view", params={"filename": name})
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_view_metadata_reads_the_safetensors_header(client, folders):
    checkpoints = folders / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    header = json.dumps(
        {"__metadata__": {"modelspec.title": "tiny"}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    ).encode()
    (checkpoints / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    response = await client.get("/view_metadata/checkpoints", params={"filename": "m.safetensors"})
    assert await response.json() == {"modelspec.title": "tiny"}
    assert (await client.get("/view_metadata/checkpoints", params={"filename": "none.safetensors"})).status == 404
    (folders / "m.safetensors").write_bytes((checkpoints / "m.safetensors").read_bytes())
    escape = URL("/view_metadata/checkpoints?filename=..%2F..%2Fm.safetensors", encoded=True)
    assert (await client.get(escape)).status == 403
    not_a_folder_key = URL("/view_metadata/..%2F..?filename=m.safetensors", encoded=True)
    assert (await client.get(not_a_folder_key)).status == 404
