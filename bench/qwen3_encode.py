"""Encoding a prompt with a full-size Qwen3-4B (Z-Image's text encoder) on the CPU: seconds and peak RSS.

Issue 16's bench goal for the encoder at real size. This bench writes a random Qwen3-4B once, as
``qwen_3_4b.safetensors`` is laid out (``model.embed_tokens.weight``, ``model.layers.N.*``, ``model.norm.weight``,
every tensor bf16: 4.02 B weights, 8.04 GB), one tensor in memory at a time, to
/tmp/loom_bench_qwen3_4b_bf16.safetensors (reused when present; the disk must have 12 GB free to write it). Then,
in a fresh subprocess per compute dtype, it loads the file as ``CLIPLoader`` does (``open_state_dict`` memory-maps
it, ``load_qwen3_encoder`` adopts the mapped tensors), places the encoder as ``ClipHandle`` places encoders on the
CPU (``place(module, cpu, float32)``: the bf16 linear weights stay mapped and each layer casts its weight per
call; with ``--dtype bf16`` nothing is cast at all) and encodes a real prompt through ``encode_prompt``
(Z-Image's template, hidden state -2, so 35 of the 36 layers run):

- a cold call, the file's pages first dropped from the page cache (``posix_fadvise(DONTNEED)`` on this file
  only), so the weights are read from disk as on the first prompt after a start;
- a warm call, the same prompt again, the pages now resident.

For each it prints the seconds and the process's VmRSS / VmHWM, split into file-backed pages (the mapped
weights, which the kernel can reclaim) and anonymous memory (what the process allocated), against the file size.
In fp32 each layer's cast weight is a fresh 40-100 MB buffer, which glibc maps from the kernel on every call
unless told to keep freed memory (README: ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296``,
inherited by the measuring subprocess); the header line says which.

The weights are random (normal, std 0.02, as transformers initialises Qwen3; norm scales 1), so the states are
meaningless; the arithmetic and memory traffic are the real model's.

Run from the repository root: ``.venv/bin/python bench/qwen3_encode.py`` (``--dtype fp32,bf16``; default fp32,
the compute dtype of text encoders on the CPU). Writing the file takes 1-3 minutes once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CHECKPOINT = Path("/tmp/loom_bench_qwen3_4b_bf16.safetensors")
FREE_BYTES_NEEDED = 12 * 10**9
MB = 1 << 20
# Qwen/Qwen3-4B's config.json.
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB = 2560, 36, 32, 8, 128, 9728, 151936
INIT_STD = 0.02
# A prompt of the length Z-Image users write: 91 tokens of its own, 99 in the template.
PROMPT = (
    "A cinematic photograph of an elderly fisherman mending a bright orange net on a weathered wooden pier at "
    "dawn, soft golden light breaking through low fog over a calm harbour, small boats with peeling blue paint "
    "moored behind him, gulls on the posts, his hands deeply lined, a wool cap and a faded green raincoat, "
    "shallow depth of field, 85mm lens, fine film grain, muted teal and amber palette, highly detailed"
)


def tensor_shapes() -> Iterator[tuple[str, tuple[int, ...]]]:
    """The file's tensors in the order they are written: the embedding, each layer, the final norm."""
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for index in range(LAYERS):
        layer = f"model.layers.{index}."
        yield layer + "input_layernorm.weight", (HIDDEN,)
        yield layer + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)
        yield layer + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield layer + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield layer + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)
        yield layer + "self_attn.q_norm.weight", (HEAD_DIM,)
        yield layer + "self_attn.k_norm.weight", (HEAD_DIM,)
        yield layer + "post_attention_layernorm.weight", (HIDDEN,)
        yield layer + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)
        yield layer + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)
        yield layer + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)
    yield "model.norm.weight", (HIDDEN,)


def weight_count() -> int:
    total = 0
    for _, shape in tensor_shapes():
        count = 1
        for size in shape:
            count *= size
        total += count
    return total


def write_checkpoint(path: Path) -> None:
    """Write the safetensors file by hand (8-byte header length, JSON header, raw little-endian data) so that
    only one tensor is ever in memory; ``safetensors.torch.save_file`` needs them all at once."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in tensor_shapes():
        size = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    generator = torch.Generator().manual_seed(0)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for _, shape in tensor_shapes():
            if len(shape) == 1:
                tensor = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensor = torch.randn(shape, generator=generator, dtype=torch.bfloat16).mul_(INIT_STD)
            f.write(tensor.view(torch.uint8).numpy().data)
    partial.rename(path)


def ensure_checkpoint() -> bool:
    """True when the file is there (written now if needed); False, with the reason printed, when the disk is short."""
    if CHECKPOINT.exists():
        return True
    free = shutil.disk_usage(CHECKPOINT.parent).free
    if free < FREE_BYTES_NEEDED:
        print(f"{CHECKPOINT.parent} has {free / 1e9:.1f} GB free, under the {FREE_BYTES_NEEDED / 1e9:.0f} GB needed")
        return False
    print(f"writing {CHECKPOINT} ({2 * weight_count() / 1e9:.2f} GB, once; {free / 1e9:.0f} GB free)", flush=True)
    started = time.perf_counter()
    write_checkpoint(CHECKPOINT)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return True


def memory() -> dict[str, int]:
    """VmRSS, VmHWM and the resident split (RssAnon, RssFile), in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def drop_file_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(dtype_name: str) -> dict[str, Any]:
    """Child-process body: load, place, encode cold then warm; seconds and memory at each point."""
    import torch

    from diffusion.checkpoint import open_state_dict
    from diffusion.model_memory import place
    from diffusion.qwen_tokenizer import load_qwen_tokenizer
    from diffusion.text_encoders.qwen3 import encode_prompt, load_qwen3_encoder

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    tokenizer = load_qwen_tokenizer()
    points: dict[str, Any] = {"imports": {**memory(), "seconds": 0.0}}
    drop_file_from_page_cache(CHECKPOINT)

    started = time.perf_counter()
    encoder = load_qwen3_encoder(open_state_dict(CHECKPOINT))
    place(encoder, torch.device("cpu"), dtype)
    points["loaded"] = {**memory(), "seconds": time.perf_counter() - started}
    stored = {p.dtype for name, p in encoder.named_parameters() if name.endswith("_proj.weight")}

    results = []
    for label in ("cold", "warm"):
        started = time.perf_counter()
        encoded = encode_prompt(encoder, PROMPT, tokenizer=tokenizer)
        points[label] = {**memory(), "seconds": time.perf_counter() - started}
        results.append(encoded.states)
    assert torch.isfinite(results[0]).all() and torch.equal(results[0], results[1])
    tokens = len(encoded.token_ids)
    # Layers 0-34 run (hidden state -2): their linears, plus attention's two T x T products per head.
    per_layer = HIDDEN * (HEADS + 2 * KV_HEADS) * HEAD_DIM + HEADS * HEAD_DIM * HIDDEN + 3 * HIDDEN * INTERMEDIATE
    gflop = (LAYERS - 1) * (2 * tokens * per_layer + 4 * tokens * tokens * HEADS * HEAD_DIM) / 1e9
    return {
        "dtype": dtype_name,
        "stored": sorted(str(d) for d in stored),
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "gflop": gflop,
        "states": list(encoded.states.shape),
        "points": points,
    }


def report(result: dict[str, Any], file_bytes: int) -> None:
    print(
        f"\ncompute {result['dtype']} (linear weights stored as {', '.join(result['stored'])}), "
        f"{result['threads']} threads, {result['tokens']} tokens -> states {result['states']}, "
        f"{result['gflop']:.0f} GFLOP per encode; file {file_bytes / 1e9:.2f} GB; "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}"
    )
    print("\n| point | seconds | GFLOP/s | VmRSS MB | RssFile MB | RssAnon MB | VmHWM MB | VmHWM / file |")
    print("|---|---|---|---|---|---|---|---|")
    for label, point in result["points"].items():
        seconds = point["seconds"]
        rate = f"{result['gflop'] / seconds:.0f}" if label in ("cold", "warm") else ""
        print(
            f"| {label} | {seconds:.2f} | {rate} | {point['VmRSS'] / MB:,.0f} | {point['RssFile'] / MB:,.0f} | "
            f"{point['RssAnon'] / MB:,.0f} | {point['VmHWM'] / MB:,.0f} | {point['VmHWM'] / file_bytes:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", help="comma-separated compute dtypes: fp32, bf16")
    parser.add_argument("--measure", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    dtypes = [d for d in args.dtype.split(",") if d]
    unknown = sorted(set(dtypes) - {"fp32", "bf16"})
    if unknown:
        parser.error(f"unknown dtype(s) {', '.join(unknown)}")
    if not ensure_checkpoint():
        return
    file_bytes = CHECKPOINT.stat().st_size
    for dtype in dtypes:
        child = subprocess.run([sys.executable, __file__, "--measure", dtype], capture_output=True, text=True)
        if child.returncode != 0:
            raise RuntimeError(f"measuring {dtype} failed:\n{child.stderr[-3000:]}")
        report(json.loads(child.stdout.strip().splitlines()[-1]), file_bytes)


if __name__ == "__main__":
    main()
