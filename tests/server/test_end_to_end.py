"""The whole product through its API: a tiny SD1.5 checkpoint, POST /prompt, the WebSocket events a
client sees, the history entry, and the PNG served by /view carrying the workflow that made it."""

from __future__ import annotations

import io
import json
from pathlib import Path

from aiohttp import WSMsgType
from PIL import Image

from diffusion.tiny import write_tiny_checkpoint
from tests.server.conftest import wait_for_history
from tests.server.test_websocket import frames_until_done

EDITOR_GRAPH = {"nodes": [{"id": 9, "type": "SaveImage"}], "links": [], "version": 0.4}


def txt2img(seed: int) -> dict:
    clip = ["4", 1]
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": 3,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "e2e"}},
    }


async def test_txt2img_from_post_to_view_with_events_previews_and_metadata(make_client, tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models" / "checkpoints" / "tiny.safetensors", "sd15")
    client = await make_client(plugins=True, starter_files=False, preview_method="latent2rgb")
    ws = await client.ws_connect("/ws?clientId=me")
    await ws.receive_json()  # status
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    while (await ws.receive_json(timeout=5))["type"] != "feature_flags":
        pass

    prompt = txt2img(seed=7)
    reply = await client.post(
        "/prompt",
        json={"prompt": prompt, "client_id": "me", "extra_data": {"extra_pnginfo": {"workflow": EDITOR_GRAPH}}},
    )
    assert reply.status == 200, await reply.text()
    prompt_id = (await reply.json())["prompt_id"]
    frames = await frames_until_done(ws, prompt_id)
    events = [json.loads(f.data) for f in frames if f.type is WSMsgType.TEXT]
    kinds = [event["type"] for event in events]
    assert kinds.index("execution_start") < kinds.index("execution_success")
    ran = [event["data"]["node"] for event in events if event["type"] == "executing" and event["data"]["node"]]
    assert set(ran) == set(prompt), "every node ran on a first prompt"
    steps = [(e["data"]["node"], e["data"]["value"]) for e in events if e["type"] == "progress"]
    assert [value for node, value in steps if node == "3"] == [1, 2, 3]
    assert sum(f.type is WSMsgType.BINARY for f in frames) == 3, "one sampler preview per step"

    entry = await wait_for_history(client, prompt_id)
    assert entry["status"]["status_str"] == "success"
    (image,) = entry["outputs"]["9"]["images"]
    served = await client.get("/view", params=image)
    assert served.status == 200 and served.content_type == "image/png"
    picture = Image.open(io.BytesIO(await served.read()))
    assert json.loads(picture.text["prompt"]) == prompt
    assert json.loads(picture.text["workflow"]) == EDITOR_GRAPH

    # A new seed re-runs exactly the sampler, the decoder and the save; the loader and encoders are cached.
    reply = await client.post("/prompt", json={"prompt": txt2img(seed=8), "client_id": "me"})
    second = await wait_for_history(client, (await reply.json())["prompt_id"])
    cached = next(data["nodes"] for kind, data in second["status"]["messages"] if kind == "execution_cached")
    assert sorted(cached) == ["4", "5", "6", "7"]
    await ws.close()
