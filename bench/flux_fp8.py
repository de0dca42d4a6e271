"""Loading and running a full-size fp8 FLUX.1 dev transformer: peak RSS against the file's size.

Issue 15 sets the goal: loading a full-size random fp8 FLUX-dev transformer (an 11.9 GB file, as
`flux1-dev-fp8` diffusion models are) peaks at most 1.15x the file size. This bench writes such a file once
under /tmp/loom-bench (every 2-D weight in float8_e4m3fn, the rest in bf16, random at scales that keep
activations finite; one tensor in memory at a time) and, in a fresh subprocess, loads it as ``UNETLoader``
does (``diffusion.checkpoint.load_checkpoint``: memory-mapped, nothing read), places it for the CPU's compute
dtype (bf16 where the CPU has it, else fp32; the fp8 weights stay fp8 and are cast per layer,
``diffusion.stored_weights``) and runs one transformer call at 256² (256 image and 256 T5 tokens), which
reads every weight once. It prints VmHWM and VmRSS after loading and after the call, each against the file.

diffusers cannot be measured beside it here: ``from_single_file`` converts the weights to bf16 or fp32
(23.8 or 47.6 GB), more than this machine's 23 GB of RAM.

Run from the repository root: ``.venv/bin/python bench/flux_fp8.py`` (the first run writes the 11.9 GB file,
about 2 minutes; each run then takes about 1 to 2 minutes on the 2-core project machine).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
CHECKPOINT = Path("/tmp/loom-bench/flux1-dev-random-fp8.safetensors")
GOAL = 1.15
MB = 1 << 20


def _bench_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_checkpoint() -> None:
    """The random fp8 FLUX.1 dev transformer in Black Forest Labs' layout, written once."""
    if CHECKPOINT.exists():
        return
    import torch

    from diffusion.flux import FluxConfig, FluxTransformer

    sdxl = _bench_module("memory_sdxl")
    with torch.device("meta"):
        model = FluxTransformer(FluxConfig())
    layout = {
        key: tensor.to(torch.float8_e4m3fn if tensor.ndim == 2 else torch.bfloat16)
        for key, tensor in model.state_dict().items()
    }
    generator = torch.Generator().manual_seed(0)

    def make(key: str, meta: Any) -> Any:
        return sdxl.random_tensor(key, torch.empty(meta.shape, device="meta"), generator).to(meta.dtype)

    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {CHECKPOINT} (once, about 2 minutes)", flush=True)
    sdxl.write_safetensors(CHECKPOINT, layout, make, "random FLUX.1 dev, fp8 weights, bench/flux_fp8.py")


def measure() -> dict[str, Any]:
    """In the child: load, place, one call; VmRSS / VmHWM at each point."""
    import torch

    from diffusion.checkpoint import load_checkpoint
    from diffusion.devices import cpu_computes_bf16_fast
    from diffusion.model_memory import place

    read_status = _bench_module("memory").read_status
    result: dict[str, Any] = {"imports": read_status()}
    started = time.perf_counter()
    model = load_checkpoint(CHECKPOINT).unet
    result["loaded"], result["load_s"] = read_status(), time.perf_counter() - started
    dtype = torch.bfloat16 if cpu_computes_bf16_fast() else torch.float32
    place(model, torch.device("cpu"), dtype)
    generator = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 16, 32, 32, generator=generator), torch.randn(1, 256, 4096, generator=generator)
    pooled, sigma, guidance = torch.randn(1, 768, generator=generator), torch.tensor([0.8]), torch.tensor([3.5])
    started = time.perf_counter()
    with torch.inference_mode():
        out = model(x, sigma, context, pooled, guidance)
    result["call_s"], result["called"] = time.perf_counter() - started, read_status()
    result["dtype"], result["finite"] = str(dtype), bool(torch.isfinite(out).all())
    result["fp8_weights"] = sum(p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
    return result


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(measure()))
        return
    ensure_checkpoint()
    child = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, cwd=REPO_ROOT)
    if child.returncode != 0:
        raise SystemExit(f"child failed:\n{child.stderr[-4000:]}")
    r = json.loads(child.stdout.strip().splitlines()[-1])
    size = CHECKPOINT.stat().st_size
    print(f"\nfile {size / MB:,.0f} MB, {r['fp8_weights'] / 1e9:.2f} B fp8 weights kept fp8; compute {r['dtype']}")
    print("\n| point | VmRSS MB | VmHWM MB | VmHWM / file | s |\n|---|---|---|---|---|")
    for label, key, seconds in (("after imports", "imports", ""), ("after loading", "loaded", f"{r['load_s']:.1f}"),
                                ("after one 256² call", "called", f"{r['call_s']:.1f}")):  # fmt: skip
        status = r[key]
        print(f"| {label} | {status['VmRSS'] / MB:,.0f} | {status['VmHWM'] / MB:,.0f} | "
              f"{status['VmHWM'] / size:.2f} | {seconds} |")  # fmt: skip
    peak = r["called"]["VmHWM"] / size
    verdict = "met" if peak <= GOAL else "NOT met"
    print(f"\npeak / file {peak:.2f} (goal <= {GOAL}: {verdict}); output finite: {r['finite']}")


if __name__ == "__main__":
    main()
