"""ComfyUI packs that use ``server.PromptServer`` and ``nodes`` run in Loom's server unchanged.

The packs are written to a temporary folder the way their authors write them for ComfyUI and handed
to the server as an extra plugin folder: routes added at import answer over loopback under ``/``
and ``/api``, ``send_sync`` from a node reaches the WebSocket client, an on-prompt handler edits
the prompt before it is validated, a node drives the core nodes itself (``nodes.CLIPTextEncode``,
``KSampler``, ``VAEDecode``, a ``SaveImage`` subclass), sub-packages and other packs are imported as
in ComfyUI, and packs named ``nodes`` or ``json`` load under an alias without shadowing either.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from PIL import Image

from diffusion.tiny import write_tiny_checkpoint
from server import PromptServer
from tests.graph.test_plugin_module_names import PACKS_THAT_IMPORT_EACH_OTHER, SUB_PACKAGE_PACK
from tests.graph.test_plugins import write_tree
from tests.server.conftest import wait_for_history
from tests.server.test_websocket import frames_until_done

API_PACK = {
    "comfy_api_pack/__init__.py": """
        from aiohttp import web
        from server import PromptServer

        from .notify import NODE_CLASS_MAPPINGS

        routes = PromptServer.instance.routes
        STATE = {"greeting": "hello"}


        @routes.get("/comfy_api_pack/hello")
        async def hello(request):
            return web.json_response({"greeting": STATE["greeting"]})


        @routes.post("/comfy_api_pack/greeting")
        async def set_greeting(request):
            body = await request.json()
            STATE["greeting"] = body["greeting"]
            return web.json_response({"stored": body["greeting"]})


        @routes.get("/prompt")
        async def steal_prompt(request):
            return web.json_response({"stolen": True})


        def broken_handler(json_data):
            raise RuntimeError("a bug in another pack's handler")


        def tag_notes(json_data):
            for node in json_data.get("prompt", {}).values():
                if node.get("class_type") == "PackNotify":
                    node["inputs"]["text"] += " (edited)"
            return json_data


        PromptServer.instance.add_on_prompt_handler(broken_handler)
        PromptServer.instance.add_on_prompt_handler(tag_notes)
    """,
    "comfy_api_pack/notify.py": """
        from server import PromptServer


        class PackNotify:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"text": ("STRING", {"default": "hi"})}, "hidden": {"unique_id": "UNIQUE_ID"}}

            RETURN_TYPES = ("STRING",)
            OUTPUT_NODE = True
            FUNCTION = "notify"
            CATEGORY = "comfy_api_pack"

            def notify(self, text, unique_id):
                server = PromptServer.instance
                note = {"text": text, "node": unique_id, "running": server.last_node_id}
                server.send_sync("comfy_api_pack.note", note, server.client_id)
                server.send_sync("comfy_api_pack.everyone", {"text": text})
                return {"ui": {"text": [text]}, "result": (text,)}


        class PackPreview:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}

            RETURN_TYPES = ()
            OUTPUT_NODE = True
            FUNCTION = "preview"

            def preview(self):
                from PIL import Image
                from server import BinaryEventTypes

                picture = Image.new("RGB", (16, 8), "red")
                server = PromptServer.instance
                server.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, ["PNG", picture, 512], server.client_id)
                return {}


        NODE_CLASS_MAPPINGS = {"PackNotify": PackNotify, "PackPreview": PackPreview}
    """,
}

#: A pack node that drives the core nodes itself, as many ComfyUI packs do.
CORE_CALLING_PACK = {
    "core_calling_pack/__init__.py": """
        import nodes
        from nodes import MAX_RESOLUTION


        class TempSave(nodes.SaveImage):
            def __init__(self):
                self.type = "temp"
                self.prefix_append = "_pack"
                self.compress_level = 1


        class PackTextToImage:
            @classmethod
            def INPUT_TYPES(cls):
                return {
                    "required": {
                        "model": ("MODEL",),
                        "clip": ("CLIP",),
                        "vae": ("VAE",),
                        "text": ("STRING", {"default": "a cat"}),
                        "size": ("INT", {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}),
                    },
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
                }

            RETURN_TYPES = ("IMAGE",)
            OUTPUT_NODE = True
            FUNCTION = "run"
            CATEGORY = "core_calling_pack"

            def run(self, model, clip, vae, text, size, prompt=None, extra_pnginfo=None):
                (positive,) = nodes.CLIPTextEncode().encode(clip, text)
                (negative,) = nodes.CLIPTextEncode().encode(clip, "")
                (empty,) = nodes.EmptyLatentImage().generate(size, size, 1)
                (samples,) = nodes.KSampler().sample(model, 1, 2, 5.0, "euler", "normal", positive, negative, empty)
                (image,) = nodes.VAEDecode().decode(vae, samples)
                saved = TempSave().save_images(image, "pack_t2i", prompt, extra_pnginfo)
                return {"ui": saved["ui"], "result": (image,)}


        NODE_CLASS_MAPPINGS = {"PackTextToImage": PackTextToImage}
    """,
}

SHOW_INT_PACK = {
    "show_int.py": """
        class ShowInt:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"forceInput": True})}}
            RETURN_TYPES = ()
            OUTPUT_NODE = True
            FUNCTION = "show"
            def show(self, value):
                return {"ui": {"value": [value]}}

        NODE_CLASS_MAPPINGS = {"ShowInt": ShowInt}
    """
}

#: Packs named like modules that exist: each must load under an alias and leave the module alone.
SHADOWING_PACKS = {
    "nodes/__init__.py": """
        from nodes import MAX_RESOLUTION  # Loom's nodes, not this pack
        from .impl import NODE_CLASS_MAPPINGS
    """,
    "nodes/impl.py": """
        from nodes import MAX_RESOLUTION

        class LoomMaxResolution:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            OUTPUT_NODE = True
            FUNCTION = "run"
            def run(self):
                return {"ui": {"value": [MAX_RESOLUTION]}, "result": (MAX_RESOLUTION,)}

        NODE_CLASS_MAPPINGS = {"LoomMaxResolution": LoomMaxResolution}
    """,
    "json.py": """
        import json

        class JsonPackDump:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("STRING",)
            OUTPUT_NODE = True
            FUNCTION = "run"
            def run(self):
                return {"ui": {"text": [json.dumps({"json": "stdlib"})]}, "result": ("",)}

        NODE_CLASS_MAPPINGS = {"JsonPackDump": JsonPackDump}
    """,
}


@pytest.fixture
def pack_folder(tmp_path: Path) -> Path:
    packs = {**API_PACK, **CORE_CALLING_PACK, **SHADOWING_PACKS, **SHOW_INT_PACK, **SUB_PACKAGE_PACK}
    return write_tree(tmp_path / "packs", {**packs, **PACKS_THAT_IMPORT_EACH_OTHER})


@pytest.fixture
async def client(make_client, pack_folder: Path) -> TestClient:
    return await make_client(plugins=True, starter_files=False, extra_custom_node_dirs=(pack_folder,))


async def run(client: TestClient, prompt: dict[str, Any], **body: Any) -> dict[str, Any]:
    reply = await client.post("/prompt", json={"prompt": prompt, **body})
    assert reply.status == 200, await reply.text()
    entry = await wait_for_history(client, (await reply.json())["prompt_id"], timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


async def test_routes_a_pack_adds_at_import_answer_under_both_prefixes(client: TestClient) -> None:
    assert PromptServer.instance.app is client.app and PromptServer.instance.loop is asyncio.get_running_loop()
    for prefix in ("", "/api"):
        response = await client.get(f"{prefix}/comfy_api_pack/hello")
        assert response.status == 200 and await response.json() == {"greeting": "hello"}
    stored = await client.post("/api/comfy_api_pack/greeting", json={"greeting": "hey"})
    assert await stored.json() == {"stored": "hey"}
    assert await (await client.get("/comfy_api_pack/hello")).json() == {"greeting": "hey"}
    assert (await client.post("/comfy_api_pack/greeting", json={"greeting": "ho"})).status == 200
    assert await (await client.get("/api/comfy_api_pack/hello")).json() == {"greeting": "ho"}
    assert (await client.get("/api/comfy_api_pack/nothing")).status == 404
    loom_own = await client.get("/prompt")
    assert "exec_info" in await loom_own.json(), "a pack's route cannot take one of Loom's"


async def test_send_sync_from_a_node_reaches_the_websocket_and_the_on_prompt_handler_edits_the_prompt(
    client: TestClient,
) -> None:
    me = await client.ws_connect("/ws?clientId=me")
    other = await client.ws_connect("/ws?clientId=other")
    reply = await client.post(
        "/prompt", json={"prompt": {"1": {"class_type": "PackNotify", "inputs": {"text": "ping"}}}, "client_id": "me"}
    )
    assert reply.status == 200, await reply.text()
    prompt_id = (await reply.json())["prompt_id"]

    frames = [json.loads(f.data) for f in await frames_until_done(me, prompt_id) if f.type is WSMsgType.TEXT]
    kinds = [frame["type"] for frame in frames]
    note = frames[kinds.index("comfy_api_pack.note")]["data"]
    assert note == {"text": "ping (edited)", "node": "1", "running": "1"}, "edited before it ran, sent by node 1"
    assert kinds.index("execution_start") < kinds.index("comfy_api_pack.note") < kinds.index("execution_success")
    assert frames[kinds.index("comfy_api_pack.everyone")]["data"] == {"text": "ping (edited)"}

    seen_by_other: list[str] = []
    while "comfy_api_pack.everyone" not in seen_by_other:
        seen_by_other.append((await other.receive_json(timeout=10))["type"])
    assert "comfy_api_pack.note" not in seen_by_other, "a message for one session goes to that session only"

    entry = await wait_for_history(client, prompt_id)
    assert entry["outputs"]["1"] == {"text": ["ping (edited)"]}
    assert entry["prompt"][2]["1"]["inputs"]["text"] == "ping (edited)"
    await me.close()
    await other.close()


async def test_a_preview_a_node_sends_reaches_the_session_that_asked_for_previews(client: TestClient) -> None:
    ws = await client.ws_connect("/ws?clientId=viewer")
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    while (await ws.receive_json(timeout=5))["type"] != "feature_flags":
        pass
    prompt = {"1": {"class_type": "PackPreview", "inputs": {}}}
    reply = await client.post("/prompt", json={"prompt": prompt, "client_id": "viewer"})
    frames = await frames_until_done(ws, (await reply.json())["prompt_id"])
    [binary] = [frame.data for frame in frames if frame.type is WSMsgType.BINARY]
    kind, length = struct.unpack(">II", binary[:8])
    metadata = json.loads(binary[8 : 8 + length])
    assert kind == 4 and metadata["node_id"] == "1" and metadata["image_type"] == "image/png"
    assert Image.open(io.BytesIO(binary[8 + length :])).size == (16, 8)
    await ws.close()


async def test_a_pack_node_drives_the_core_nodes_and_saves_through_a_save_image_subclass(
    client: TestClient, tmp_path: Path
) -> None:
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "tiny.safetensors", "sd15")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {
            "class_type": "PackTextToImage",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "text": "a lighthouse", "size": 64},
        },
    }
    entry = await run(client, prompt)
    [image] = entry["outputs"]["2"]["images"]
    assert image["type"] == "temp" and image["filename"] == "pack_t2i_pack_00001_.png" and image["subfolder"] == ""
    served = await client.get("/view", params=image)
    assert served.status == 200
    picture = Image.open(io.BytesIO(await served.read()))
    assert picture.size == (64, 64) and json.loads(picture.text["prompt"])["2"]["class_type"] == "PackTextToImage"


async def test_packs_with_sub_packages_and_packs_importing_each_other_run(client: TestClient) -> None:
    reports = {r["name"]: r for r in await (await client.get("/loom/plugins")).json()}
    for name in ("mathpack_nodes", "a_base", "b_user", "c_single", "comfy_api_pack", "core_calling_pack"):
        assert reports[name]["status"] == "loaded" and reports[name]["module"] == name, reports[name]
    prompt = {
        "1": {"class_type": "MathDouble", "inputs": {"value": 4}},
        "2": {"class_type": "Triple", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Sextuple", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "ShowInt", "inputs": {"value": ["3", 0]}},
    }
    entry = await run(client, prompt)
    assert entry["outputs"]["4"] == {"value": [144]}, "4 doubled, tripled by b_user, times six by c_single"


async def test_packs_named_nodes_and_json_load_under_an_alias_and_shadow_neither(client: TestClient) -> None:
    reports = {r["name"]: r for r in await (await client.get("/loom/plugins")).json()}
    for name in ("nodes", "json"):
        report = reports[name]
        assert report["status"] == "loaded" and report["module"] == report["key"] == f"{name}__2", report
        assert "must not" in report["alias_reason"]
    info = await (await client.get("/object_info")).json()
    assert info["LoomMaxResolution"]["python_module"] == "custom_nodes.nodes__2"
    assert "KSampler" in info and "CLIPTextEncode" in info, "Loom's own nodes are all still there"

    entry = await run(
        client,
        {
            "1": {"class_type": "LoomMaxResolution", "inputs": {}},
            "2": {"class_type": "JsonPackDump", "inputs": {}},
        },
    )
    assert entry["outputs"]["1"] == {"value": [16384]}, "the pack named nodes imported Loom's nodes"
    assert entry["outputs"]["2"] == {"text": ['{"json": "stdlib"}']}, "the pack named json imported the stdlib's"
