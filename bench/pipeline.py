"""SDXL text-to-image end to end: Loom's server against diffusers' ``StableDiffusionXLPipeline``, same weights.

Issue 20 asks for SDXL text-to-image, 20 steps at 1024², through Loom's server against diffusers on a GPU, with
the card's peak memory beside the time. Both sides read the same random full-size SDXL base single file in
fp16 and the real key layout (6.9 GB), written once under /tmp/loom-bench by bench/memory_sdxl.py's helpers
(imported from there, with its diffusers config folder, which lets ``from_single_file`` read the file offline).

Each side runs in a fresh subprocess, the checkpoint's page cache dropped before it, so each reads the file
cold and each peak is its own:

- **Loom**: the real server, ``server.app.create_app`` served by aiohttp on a loopback port from a thread of the
  child, with ``--device``/``--dtype`` as ``loom serve`` takes them, previews off, no plugins. The child is the
  client too: it opens the WebSocket, POSTs the shipped ``examples/sdxl_txt2img.api.json`` (checkpoint, size,
  steps, seed, sampler Euler/normal and CFG 7 replaced) to ``/prompt`` and waits for the end marker (``executing``
  with no node), then reads ``/history``. Cold is the first prompt (the checkpoint loads), warm the second with
  another seed: the server keeps the loaded models and the text encodes in its output cache, as it would for a
  user who changes only the seed. The time runs from the POST to the end marker, the PNG written by SaveImage.
- **diffusers**: ``StableDiffusionXLPipeline.from_single_file`` offline with the local config folder, in the
  same dtype, moved to the device, its scheduler the config folder's ``EulerDiscreteScheduler``, the example's
  prompts, size, steps and CFG; the image saved as a PNG at SaveImage's compression level, so both sides'
  timed work ends the same way. Cold is loading plus the first call, warm the second call with another seed.

Memory: on cuda, ``torch.cuda.reset_peak_memory_stats()`` before each run and ``max_memory_allocated()`` after it
(the server runs in the child's own process, so its allocations are the child's), and the memory still
allocated after the warm run (the models kept resident); on the CPU, peak RSS (``VmHWM``), reset between the
runs through ``/proc/self/clear_refs``.

Run from the repository root: ``.venv/bin/python bench/pipeline.py --device cuda`` (1024², 20 steps, bf16, as
issue 20 asks; ``--dtype fp16`` for the other mode). On the CPU the default is ``--size 256 --steps 2`` in bf16
where the CPU computes it natively (else fp32): a smoke run of a few minutes on the project's 2-core machine,
not a measurement; 1024² and 20 steps there would take hours. The first run writes the 6.9 GB file (a minute or
two). diffusers holds all of SDXL in the compute dtype (7 GB in bf16, 14 GB in fp32) plus the file's pages.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SIDES = ("loom", "diffusers")
CLIENT_ID = "bench-pipeline"
MB = 1 << 20


def _bench_module(name: str) -> Any:
    """A sibling bench script (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sdxl = _bench_module("memory_sdxl")  # the checkpoint, its config folder, the workflow and the prompts


def default_dtype(device: str) -> str:
    """bf16 on a GPU (Loom's ``--dtype auto`` there); on a CPU bf16 where it is native, else fp32."""
    if device.startswith("cuda"):
        return "bf16"
    from diffusion.devices import cpu_computes_bf16_fast

    return "bf16" if cpu_computes_bf16_fast() else "fp32"


# ---- memory, per child ------------------------------------------------------------------------------------


class MemoryMeter:
    """Peak memory of one run: the GPU's allocations on cuda, the process's RSS on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak(self) -> int:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        return int(sdxl.read_status()["VmHWM"])

    def now(self) -> int:
        import torch

        return int(torch.cuda.memory_allocated()) if self.cuda else int(sdxl.read_status()["VmRSS"])


def timed_run(meter: MemoryMeter, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    meter.reset()
    started = time.perf_counter()
    result = run()
    return {**result, "seconds": time.perf_counter() - started, "peak": meter.peak()}


# ---- Loom: the server in a thread of this process, this process its client ---------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerThread:
    """``create_app(config)`` served by aiohttp on its own event loop in a daemon thread, until ``close``."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: Any = None
        self._thread = threading.Thread(target=self._serve, name="loom-server", daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        from server.app import create_app

        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(create_app(self.config))
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.config.host, self.config.port)
            self._loop.run_until_complete(site.start())
        except BaseException as error:  # handed to the waiting thread, which raises it
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(300)
        if self._error is not None:
            raise RuntimeError("the server did not start") from self._error
        if not self._ready.is_set():
            raise RuntimeError("the server did not start within 300 s")
        return f"http://{self.config.host}:{self.config.port}"

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


async def run_prompt(base: str, prompt: dict[str, Any]) -> dict[str, Any]:
    """POST ``prompt``, wait for its end marker on the WebSocket, return its history entry, with the node ids
    that ran (``executing``) and those served from the output cache (``execution_cached``) added."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws?clientId={CLIENT_ID}", max_msg_size=0) as ws:
            async with session.post(f"{base}/prompt", json={"prompt": prompt, "client_id": CLIENT_ID}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"POST /prompt: {response.status} {json.dumps(body)[:2000]}")
            prompt_id = body["prompt_id"]
            errors = []
            ran: list[str] = []
            cached: list[str] = []
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue  # binary frames: previews, which are off
                event = json.loads(message.data)
                data = event.get("data", {})
                if event["type"] == "execution_error" and data.get("prompt_id") == prompt_id:
                    errors.append(f"{data.get('exception_type')}: {data.get('exception_message')}")
                if event["type"] == "execution_cached" and data.get("prompt_id") == prompt_id:
                    cached.extend(data.get("nodes", []))
                if event["type"] == "executing" and data.get("node") is not None and data.get("prompt_id") == prompt_id:
                    ran.append(data["node"])
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        async with session.get(f"{base}/history/{prompt_id}") as response:
            entry = (await response.json())[prompt_id]
    if errors or not entry["status"].get("completed", False):
        raise RuntimeError(f"prompt {prompt_id} failed: {errors or entry['status']}")
    return {**entry, "ran": ran, "cached": cached}


def submit(base: str, prompt: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(run_prompt(base, prompt))


def loom_prompt(job: Any, seed: int) -> dict[str, Any]:
    prompt: dict[str, Any] = sdxl.workflow(job, "VAEDecode")
    next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]["seed"] = seed
    return prompt


def saved_image(entry: dict[str, Any], output_dir: Path) -> Path:
    images = [image for node in entry["outputs"].values() for image in node.get("images", [])]
    return output_dir / images[0].get("subfolder", "") / images[0]["filename"]


def measure_loom(job: Any, device: str, dtype: str) -> dict[str, Any]:
    from PIL import Image

    from server.config import ServerConfig

    meter = MemoryMeter(device)
    with tempfile.TemporaryDirectory(prefix="loom-bench-pipeline-") as folder:
        base_dir = Path(folder)
        checkpoints = base_dir / "models" / "checkpoints"
        checkpoints.mkdir(parents=True)
        (checkpoints / sdxl.CHECKPOINT.name).symlink_to(sdxl.CHECKPOINT)
        config = ServerConfig(
            host="127.0.0.1",
            port=_free_port(),
            base_dir=base_dir,
            device=device,
            dtype=dtype,
            preview_method="none",
            starter_files=False,
            disable_custom_nodes=True,
        )
        server = ServerThread(config)
        started = time.perf_counter()
        base = server.start()
        result: dict[str, Any] = {"server_start_s": time.perf_counter() - started}
        try:
            for run, seed in (("cold", sdxl.SEED), ("warm", sdxl.SEED + 1)):
                prompt = loom_prompt(job, seed)
                entry = timed_run(meter, functools.partial(submit, base, prompt))
                image = sdxl.image_stats(Image.open(saved_image(entry, base_dir / "output")))
                kinds = {key: [prompt[node]["class_type"] for node in entry[key]] for key in ("ran", "cached")}
                result[run] = {"seconds": entry["seconds"], "peak": entry["peak"], "image": image, **kinds}
            result["resident"] = meter.now()
        finally:
            server.close()
    return result


# ---- diffusers --------------------------------------------------------------------------------------------


def measure_diffusers(job: Any, device: str, dtype: str) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from nodes.io import SAVE_COMPRESS_LEVEL

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    meter = MemoryMeter(device)
    holder: dict[str, Any] = {}

    def generate(seed: int, path: Path) -> dict[str, Any]:
        pipe = holder.get("pipe")
        if pipe is None:  # the cold run loads
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(sdxl.CHECKPOINT), config=str(sdxl.CONFIG_DIR), local_files_only=True, torch_dtype=torch_dtype
            ).to(device)
            pipe.set_progress_bar_config(disable=True)
            holder["pipe"] = pipe
        image = pipe(
            job.positive,
            negative_prompt=job.negative,
            height=job.size,
            width=job.size,
            num_inference_steps=job.steps,
            guidance_scale=job.cfg,
            generator=torch.Generator(device).manual_seed(seed),
        ).images[0]
        image.save(path, compress_level=SAVE_COMPRESS_LEVEL)
        return {}

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loom-bench-pipeline-") as folder:
        for run, seed in (("cold", sdxl.SEED), ("warm", sdxl.SEED + 1)):
            path = Path(folder) / f"{run}.png"
            measured = timed_run(meter, functools.partial(generate, seed, path))
            result[run] = {**measured, "image": sdxl.image_stats(Image.open(path))}
        result["resident"] = meter.now()
        result["scheduler"] = type(holder["pipe"].scheduler).__name__
    return result


def run_child(side: str, job: Any, device: str, dtype: str) -> None:
    measure = measure_loom if side == "loom" else measure_diffusers
    print(json.dumps({"result": measure(job, device, dtype)}), flush=True)


# ---- the parent -------------------------------------------------------------------------------------------


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """One side in a fresh child, the checkpoint's page cache dropped first; its result, or None if it failed."""
    sdxl.drop_page_cache(sdxl.CHECKPOINT)
    argv = [sys.executable, __file__, "--child", side, "--size", str(args.size), "--steps", str(args.steps)]
    argv += ["--device", args.device, "--dtype", args.dtype]
    print(f"{side} ...", flush=True)
    started = time.perf_counter()
    try:  # the child's stderr (logs, warnings) passes through; its stdout ends with the result
        child = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        print(f"{side}: no result within {args.child_timeout} s", flush=True)
        return None
    results = [json.loads(line)["result"] for line in child.stdout.splitlines() if line.startswith('{"result"')]
    if child.returncode != 0 or not results:
        print(f"{side}: FAILED (exit {child.returncode}; its stderr is above)", flush=True)
        return None
    print(f"  {side} done in {time.perf_counter() - started:.0f} s", flush=True)
    return dict(results[-1])


def wait_for_writer(partial: Path) -> None:
    """While another process writes the checkpoint (bench/gpu_all.sh starts one early), wait for it; a partial
    file left by a writer that died (not grown for a minute) is written anew by ``ensure_checkpoint``."""
    while True:
        try:
            if time.time() - partial.stat().st_mtime > 60:
                return
        except FileNotFoundError:
            return
        time.sleep(2)


def describe_machine(device: str) -> str:
    import torch

    line = f"torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        line += f" (CUDA {torch.version.cuda}), {props.name}, {props.total_memory / 2**30:.1f} GiB"
    else:
        line += f", {torch.get_num_threads()} CPU threads, {torch.backends.cpu.get_cpu_capability()}"
    return line


def _s(run: dict[str, Any] | None) -> str:
    return f"{run['seconds']:.2f}" if run else ""


def report(results: dict[str, dict[str, Any] | None], args: argparse.Namespace) -> None:
    memory = "peak VRAM (max_memory_allocated)" if args.device.startswith("cuda") else "peak RSS (VmHWM)"
    held = "allocated after" if args.device.startswith("cuda") else "RSS after"
    print(
        f"\nSDXL base (random, fp16 file, {sdxl.CHECKPOINT.stat().st_size / 1e9:.2f} GB), {args.size}², "
        f"{args.steps} Euler steps, CFG {sdxl.CFG}, {args.dtype} on {args.device}; {describe_machine(args.device)}\n"
    )
    print(
        f"| side | cold s (load + run) | warm s | cold {memory} MB | warm {memory} MB | {held} MB "
        "| warm image mean/std |"
    )
    print("|---|---|---|---|---|---|---|")
    for side in SIDES:
        r = results.get(side)
        if r is None:
            print(f"| {side} | failed or not run | | | | | |")
            continue
        image = r["warm"]["image"]
        print(
            f"| {side} | {_s(r['cold'])} | {_s(r['warm'])} | {r['cold']['peak'] / MB:,.0f} | "
            f"{r['warm']['peak'] / MB:,.0f} | {r['resident'] / MB:,.0f} | {image['mean']:.1f} / {image['std']:.1f} |"
        )
    loom, diffusers = results.get("loom"), results.get("diffusers")
    if loom and diffusers:
        print(
            f"| Loom / diffusers | {loom['cold']['seconds'] / diffusers['cold']['seconds']:.2f} | "
            f"**{loom['warm']['seconds'] / diffusers['warm']['seconds']:.2f}** | "
            f"{loom['cold']['peak'] / diffusers['cold']['peak']:.2f} | "
            f"**{loom['warm']['peak'] / diffusers['warm']['peak']:.2f}** | "
            f"{loom['resident'] / diffusers['resident']:.2f} | |"
        )
        print("\nissue 20's goals: time ratio <= 0.9, peak VRAM <= diffusers' (ratio <= 1.00)")
    if diffusers:
        print(f"diffusers' scheduler: {diffusers['scheduler']}")
    if loom:
        print(f"Loom's server started in {loom['server_start_s']:.1f} s (not in the times above)")
        warm = loom["warm"]
        ran, cached = ", ".join(warm["ran"]), ", ".join(warm["cached"])
        print(f"Loom's warm run (a new seed only) ran {ran}; from the cache: {cached}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--size", type=int, help="image side in pixels (default 1024 on cuda, 256 on the CPU)")
    parser.add_argument("--steps", type=int, help="Euler steps (default 20 on cuda, 2 on the CPU)")
    parser.add_argument(
        "--dtype", choices=("fp32", "fp16", "bf16"), help="both sides' compute dtype (default bf16 on cuda)"
    )
    parser.add_argument("--sides", default=",".join(SIDES), help="loom,diffusers (default both)")
    parser.add_argument("--child-timeout", type=float, default=1800.0, help="seconds each side may take (1800)")
    parser.add_argument("--write-checkpoint", action="store_true", help="only write the checkpoint (once), then stop")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_checkpoint:
        sdxl.ensure_checkpoint()
        print(f"{sdxl.CHECKPOINT} ({sdxl.CHECKPOINT.stat().st_size / 1e9:.2f} GB) and {sdxl.CONFIG_DIR} are in place")
        return
    on_gpu = args.device.startswith("cuda")
    args.size = args.size or (1024 if on_gpu else 256)
    args.steps = args.steps or (20 if on_gpu else 2)
    args.dtype = args.dtype or default_dtype(args.device)
    job = sdxl.Job(args.size, args.steps, *sdxl.example_prompts())
    if args.child:
        run_child(args.child, job, args.device, args.dtype)
        return
    if on_gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    else:
        print("on the CPU this is a smoke run of the code paths, not a measurement (module docstring)", flush=True)
    wait_for_writer(sdxl.CHECKPOINT.with_suffix(".partial"))
    sdxl.ensure_checkpoint()
    results = {side: run_side(side, args) for side in args.sides.split(",") if side}
    report(results, args)
    if not all(results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; a missing local file is an error
    main()
