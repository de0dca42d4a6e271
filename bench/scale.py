"""Throughput of 20 tiny-model prompts in process, on one Ray worker actor, and on two.

Each prompt is the default text-to-image workflow (checkpoint loader, two text encodes, KSampler,
VAE decode, save) on a tiny random SD1.5 checkpoint (``diffusion.tiny``) at ``--size`` pixels and
``--steps`` euler steps, with a seed of its own, so the sampler, decode and save run every time while
the loaded model and the text encodings stay cached, as on a warm production worker. Each
configuration is a real server (``create_app`` on a loopback port) in this process; Ray runs as one
local loopback instance that both Ray configurations join. Before timing, every worker runs one
prompt (it loads the model); then 20 prompts are submitted at once and the clock stops when the last
history entry exists. Repeated ``--runs`` times; the min is reported.

Run: ``.venv/bin/python bench/scale.py`` (about two minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from diffusion.tiny import write_tiny_checkpoint  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import ServerConfig  # noqa: E402

PROMPTS = 20
CHECKPOINT = "tiny-sd15.safetensors"


def _prompt(seed: int, size: int, steps: int) -> dict:
    clip = ["4", 1]
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": steps,
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
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": f"scale{seed:05d}"}},
    }


async def _run_all(client: TestClient, first: int, count: int, size: int, steps: int) -> None:
    ids = []
    for seed in range(first, first + count):
        response = await client.post("/prompt", json={"prompt": _prompt(seed, size, steps)})
        ids.append((await response.json())["prompt_id"])
    for prompt_id in ids:
        while True:
            body = await (await client.get(f"/history/{prompt_id}")).json()
            if prompt_id in body:
                assert body[prompt_id]["status"]["status_str"] == "success", body[prompt_id]["status"]
                break
            await asyncio.sleep(0.01)


async def _throughput(workers: str, lanes: int, size: int, steps: int, runs: int) -> list[float]:
    """Seconds for ``PROMPTS`` prompts, once per run, on a fresh server for ``workers``."""
    with tempfile.TemporaryDirectory() as base:
        write_tiny_checkpoint(Path(base) / "models" / "checkpoints" / CHECKPOINT, "sd15")
        app = create_app(ServerConfig(base_dir=Path(base), auth_token=None, workers=workers, preview_method="none"))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            await _run_all(client, 90_000, lanes, size, steps)  # every worker loads the model
            times = []
            for run in range(runs):
                started = time.perf_counter()
                await _run_all(client, run * PROMPTS, PROMPTS, size, steps)
                times.append(time.perf_counter() - started)
            return times
        finally:
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128: a 16x16 latent)")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps (default 10)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        results = {}
        for workers, lanes in (("local", 1), ("ray-local:1", 1), ("ray-local:2", 2)):
            times = asyncio.run(_throughput(workers, lanes, args.size, args.steps, args.runs))
            results[workers] = min(times)
            print(
                f"{workers:12s} {PROMPTS} prompts: min {min(times):.2f} s, runs {', '.join(f'{t:.2f}' for t in times)}"
                f" -> {PROMPTS / min(times):.2f} prompts/s",
                flush=True,
            )
        print(f"ray-local:2 / ray-local:1 throughput: {results['ray-local:1'] / results['ray-local:2']:.2f}x")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
