"""Memory of a whole text-to-image run: `loom run` against diffusers, and Loom's memory by owner.

Issue 22 measured Loom's server peaking at 1.36x the RSS of a diffusers process doing the same work.
This bench measures that from inside each process, and attributes it by owner. Each side runs in a
fresh subprocess on the same random full-size SD1.5 fp16 single-file checkpoint that
``bench/models.py`` writes (``write_checkpoint``, under /tmp, once), text-to-image at 512²
(``--size``), 4 Euler steps (``--steps``), CFG 7, fp32 compute on the CPU, and prints one JSON object
that this parent collects:

- **Loom**: ``server.headless.run_workflow_file``, the code behind ``loom run``, on the shipped
  ``examples/sd15_txt2img.api.json`` (checkpoint, size, steps and seed replaced; previews off, as
  diffusers has none). One substitution: ``loom run`` builds an executor with a fresh output cache
  per file, which dies with the run; here it gets the one cache a server keeps between prompts
  (``OutputCache(default_cache_budget())``), so the models stay loaded after the run as in
  ``loom serve``, and a second file with another seed is the warm run (loader and text encodes
  cached, sampling, decode and save run again).
- **diffusers**: ``StableDiffusionPipeline.from_single_file`` offline with the local config folder,
  ``EulerDiscreteScheduler``, the same prompts, size, steps and guidance; the second call with
  another seed is the warm run.

Per side: peak RSS (``VmHWM``), steady RSS (``VmRSS`` after the warm runs and a ``gc.collect()``,
models still loaded), the working set of a warm run (its highest RSS less the RSS before it), the
cold time (load + first run) and the warm time (min of ``--warm-runs``). Loom then switches to a
second checkpoint with the cache budget lowered to 1.5 loaded checkpoints (``measure_switch``): the
issue's promise that such a budget never holds both checkpoints at once, measured as that run's
peak above the RSS before it.

Memory by owner, measured, not inferred (for both sides; packed copies and the cache are Loom's):
- model weights: parameters and buffers of the loaded modules, distinct storages, by dtype; Loom's
  are the modules its output cache holds, found through the cache's own ``graph.sizeof.footprint``.
  Storages inside the checkpoint's mapping (``/proc/self/maps``) are views of the file: their pages
  count as the file's, not twice;
- oneDNN packed copies: every ``diffusion.onednn.DerivedWeight`` value found by walking the modules
  (``PackedConv2d``, ``NearestUpsampleConv2d``), by logical size (numel x itemsize; packing a
  [1280, 2560, 3, 3] fp32 weight four times grew RssAnon by exactly that, 450 MB);
- checkpoint pages: file-backed ``Rss`` of the file's mappings in ``/proc/self/smaps``;
- Loom's output cache: ``OutputCache.stats().bytes``, split into the models it charges and the rest;
- the rest (activations, allocator free lists, Python objects): ``RssAnon`` less what it was after
  imports, the anonymous weights and the packed copies.

The peak is split by a thread that polls ``/proc/self/status`` every 10 ms and, at each new maximum
of the cold run, walks the modules (the warm runs are polled only for their working set, which costs
them nothing measurable). Reading smaps takes ~70 ms
with a loaded model (the kernel walks the page tables), too slow for a peak that lasts ~100 ms, so
at a polled sample the checkpoint's pages are the file-backed pages added since imports less the
other files' pages measured exactly at the steady point (~30 MB of library code). ``VmHWM`` minus
the highest sample is what fell between polls. At the steady point the bench also reads glibc's
``mallinfo2`` and the RSS after ``malloc_trim(0)``: what the allocator kept but could give back.

Run from the repository root: ``.venv/bin/python bench/memory.py`` (512², 4 steps, 2 warm runs: about
4 minutes on the 2-core project machine, up to ~9 GB of RAM in one child at a time), or ``--quick``
(256², 2 steps, 1 warm run: under a minute). Linux with glibc only (``/proc``, ``mallinfo2``).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
EXAMPLE_WORKFLOW = REPO_ROOT / "examples" / "sd15_txt2img.api.json"
CHECKPOINT_NAME = "sd15-random-fp16.safetensors"
COLD_SEED = 42
GOALS = {"peak": 0.9, "steady": 0.8, "warm": 0.85}  # issue 22: Loom / diffusers
STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
POLL_SECONDS = 0.01
MB = 1 << 20


@dataclass(frozen=True)
class Job:
    """The text-to-image run both sides make."""

    checkpoint: Path
    config_dir: Path
    size: int
    steps: int
    warm_runs: int
    positive: str
    negative: str
    cfg: float


def read_status() -> dict[str, int]:
    """``STATUS_FIELDS`` of ``/proc/self/status`` in bytes: kernel counters, cheap enough to poll."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in STATUS_FIELDS:
            found[name] = int(value.split()[0]) * 1024
    return found


def mapping_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (``/proc/self/maps``)."""
    target = str(path.resolve())
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def checkpoint_pages(path: Path) -> int:
    """File-backed resident bytes in this process's mappings of ``path``, from ``/proc/self/smaps``.
    Slow (~70 ms with a loaded SD1.5: the kernel walks every page table), so not for polling."""
    target = str(path.resolve())
    pages, inside, rss = 0, False, 0
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header: "start-end perms ... path"
                inside = len(head) == 6 and head[5].rstrip("\n") == target
            elif inside and head[0] == "Rss:":
                rss = int(head[1]) * 1024
            elif inside and head[0] == "Anonymous:":  # pages copied on write are not the file's
                pages += rss - int(head[1]) * 1024
    return pages


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def malloc_info() -> dict[str, int]:
    """glibc's ``mallinfo2``: heap bytes in use and free (all arenas), and bytes in mmapped chunks."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {
        "heap_in_use": info.uordblks,
        "heap_free": info.fordblks,
        "mmapped_chunks": info.hblkhd,
    }


def malloc_trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Owners:
    """Who holds memory in a process: the given modules' weights and packed copies, the file's pages.

    ``derived`` is the class of cached derived weights to look for (Loom's ``DerivedWeight``), None
    for diffusers.
    """

    checkpoint: Path
    derived: type[Any] | None = None
    modules: list[Any] = field(default_factory=list)

    def snapshot(self, exact_pages: bool = True) -> dict[str, Any]:
        """Weights by module and dtype, packed copies by module and the status counters now; with
        ``exact_pages``, the checkpoint's resident pages too (``checkpoint_pages``, too slow to poll)."""
        status, ranges = read_status(), mapping_ranges(self.checkpoint)
        weights: dict[str, dict[str, int]] = {}
        packed: dict[str, int] = {}
        seen: set[int] = set()
        for module in self.modules:
            name = type(module).__name__
            for tensor in [*module.parameters(), *module.buffers()]:
                storage = tensor.untyped_storage()
                if storage.data_ptr() in seen:
                    continue
                seen.add(storage.data_ptr())
                where = "mapped" if any(a <= storage.data_ptr() < b for a, b in ranges) else str(tensor.dtype)
                by_dtype = weights.setdefault(name, {})
                by_dtype[where] = by_dtype.get(where, 0) + storage.nbytes()
            if self.derived is not None:
                packed[name] = sum(
                    value.value.numel() * value.value.element_size()
                    for sub in module.modules()
                    for value in vars(sub).values()
                    if isinstance(value, self.derived) and value.value is not None
                )
        snapshot = {"status": status, "weights": weights, "packed": packed}
        if exact_pages:
            snapshot["checkpoint_pages"] = checkpoint_pages(self.checkpoint)
        return snapshot


class PeakWatcher:
    """Polls ``/proc/self/status`` from a thread: the highest VmRSS seen per phase (what ``phase()``
    says is running) and, with ``owners``, at each new maximum (16 MB above the last one taken, to
    bound the cost of walking the modules, ~7 ms) ``Owners.snapshot(exact_pages=False)`` and the
    phase then."""

    def __init__(self, phase: Callable[[], str], owners: Owners | None = None) -> None:
        self.phase = phase
        self.owners = owners
        self.highest: dict[str, int] = {}
        self.peak: dict[str, Any] = {"status": {"VmRSS": 0}}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            rss, phase = read_status()["VmRSS"], self.phase()
            self.highest[phase] = max(rss, self.highest.get(phase, 0))
            if self.owners is not None and rss > self.peak["status"]["VmRSS"] + 16 * MB:
                self.peak = {**self.owners.snapshot(exact_pages=False), "phase": phase}


# ---- Loom ----------------------------------------------------------------------------------------------


def _workflow(job: Job, seed: int, checkpoint_name: str = CHECKPOINT_NAME) -> dict[str, Any]:
    prompt = json.loads(EXAMPLE_WORKFLOW.read_text(encoding="utf-8"))
    nodes = {node["class_type"]: node["inputs"] for node in prompt.values() if node["class_type"] != "CLIPTextEncode"}
    nodes["CheckpointLoaderSimple"]["ckpt_name"] = checkpoint_name
    nodes["EmptyLatentImage"].update(width=job.size, height=job.size)
    nodes["KSampler"].update(seed=seed, steps=job.steps, cfg=job.cfg, sampler_name="euler")
    return prompt


def _example_prompts() -> tuple[str, str, float]:
    """(positive, negative, cfg) of the shipped text-to-image example, which both sides use."""
    prompt = json.loads(EXAMPLE_WORKFLOW.read_text(encoding="utf-8"))
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]
    texts = {key: prompt[sampler[key][0]]["inputs"]["text"] for key in ("positive", "negative")}
    return texts["positive"], texts["negative"], float(sampler["cfg"])


def held_by_cache(executor: Any, prompt: dict[str, Any], outputs: list[str]) -> dict[int, Any]:
    """The distinct objects (``graph.sizeof.Held``) the cache's entries for ``prompt`` hold, by the
    cache's own walk: the models behind the handles, tensors, numbers."""
    from graph.sizeof import footprint

    held = {}
    for entry in executor.cache.get_many(dict(executor.keys_for(prompt, outputs))).values():
        held.update(footprint(entry.outputs)[1])
    return held


def measure_loom(job: Job) -> dict[str, Any]:
    import torch

    import diffusion.onednn
    from graph import events
    from graph.cache import OutputCache
    from graph.executor import Executor
    from graph.registry import NodeRegistry
    from graph.sizeof import measure
    from nodes import register_builtin_nodes
    from nodes.runtime import RuntimeOptions
    from server import headless
    from server.config import default_cache_budget
    from server.plugins import REPO_CUSTOM_NODES

    register_builtin_nodes(NodeRegistry())  # imports every node module, as the first run would
    imports = read_status()
    cache = OutputCache(default_cache_budget())
    owners = Owners(job.checkpoint, diffusion.onednn.DerivedWeight)
    timelines: list[list[dict[str, Any]]] = []  # per run: when each node started, RSS and VmHWM then
    phase = ["start"]
    prompts_run: list[tuple[Executor, dict[str, Any], list[str]]] = []

    class ServerCacheExecutor(Executor):
        """``loom run``'s executor with a server's long-lived cache, noting when each node starts."""

        def execute(self, prompt: dict[str, Any], outputs: list[str], **kwargs: Any) -> Any:
            prompts_run.append((self, prompt, outputs))
            timeline: list[dict[str, Any]] = []
            timelines.append(timeline)
            forward = kwargs.pop("listener")

            def listener(event: str, data: dict[str, Any]) -> None:
                if event in (events.EXECUTING, events.EXECUTION_SUCCESS):
                    node = data.get("node")
                    phase[0] = label = f"{node} {prompt[node]['class_type']}" if node is not None else "end"
                    timeline.append({"node": label, "t": time.perf_counter(), **read_status()})
                    if not owners.modules:
                        held = held_by_cache(self, prompt, outputs).values()
                        owners.modules = [h.value for h in held if isinstance(h.value, torch.nn.Module)]
                forward(event, data)

            return super().execute(prompt, outputs, listener=listener, **kwargs)

    def server_executor(registry: NodeRegistry) -> Executor:
        return ServerCacheExecutor(registry, cache)

    headless.Executor = server_executor  # type: ignore[attr-defined,assignment]  # the one substitution

    with tempfile.TemporaryDirectory() as base:
        checkpoints = Path(base) / "models" / "checkpoints"
        checkpoints.mkdir(parents=True)
        (checkpoints / CHECKPOINT_NAME).symlink_to(job.checkpoint)
        options = RuntimeOptions(base_dir=Path(base), device="cpu", dtype="fp32", preview_method="none")

        def run(seed: int, checkpoint_name: str = CHECKPOINT_NAME) -> float:
            path = Path(base) / f"txt2img_{seed}.api.json"
            path.write_text(json.dumps(_workflow(job, seed, checkpoint_name)), encoding="utf-8")
            out, err = io.StringIO(), io.StringIO()
            started = time.perf_counter()
            code = headless.run_workflow_file(
                str(path), options, show_progress=False, plugin_folders=[REPO_CUSTOM_NODES], out=out, err=err
            )
            seconds = time.perf_counter() - started
            if code != headless.EXIT_OK:
                raise RuntimeError(f"loom run exited {code}:\n{err.getvalue()}")
            return seconds

        with PeakWatcher(lambda: phase[0], owners) as watcher:
            cold = run(COLD_SEED)
        before_warm = read_status()["VmRSS"]
        with PeakWatcher(lambda: phase[0]) as warm_watcher:
            warm = [run(COLD_SEED + 1 + index) for index in range(job.warm_runs)]

        gc.collect()
        steady = owners.snapshot()
        module_bytes = sum(measure(module).nbytes for module in owners.modules)
        stats = cache.stats()
        cached_values = {}
        for executor, prompt, outputs in prompts_run:
            cached_values.update(held_by_cache(executor, prompt, outputs))
        others = [
            (f"{type(h.value).__name__} {list(getattr(h.value, 'shape', []))}", h.nbytes)
            for h in cached_values.values()
            if not isinstance(h.value, torch.nn.Module)
        ]
        largest = sorted(others, key=lambda item: -item[1])[:4]
        steady["cache"] = {
            "bytes": stats.bytes,
            "entries": stats.entries,
            "module_bytes": module_bytes,
            "largest_other": largest,
        }
        steady["malloc"] = malloc_info()
        malloc_trim()
        steady["rss_after_trim"] = read_status()["VmRSS"]
        del cached_values, others
        final = read_status()  # before the switch, which resets VmHWM
        measured_timelines = list(timelines)  # the switch's run is not a warm run of the node table
        switch = measure_switch(job, cache, owners, module_bytes, checkpoints, run)
    return {
        "side": "loom",
        "imports": imports,
        "cold_s": cold,
        "warm_s": warm,
        "peak": watcher.peak,
        "steady": steady,
        "timelines": measured_timelines,
        "warm_working_set": max(warm_watcher.highest.values()) - before_warm,
        "warm_highest": warm_watcher.highest,
        "switch": switch,
        "final": final,
    }


def measure_switch(
    job: Job, cache: Any, owners: Owners, module_bytes: int, checkpoints: Path, run: Callable[..., float]
) -> dict[str, Any]:
    """Switch to a second checkpoint under a cache budget of 1.5 loaded checkpoints: the peak of that run
    above the RSS before it, and whether the first checkpoint's modules were freed.

    The second file is a hard link of the first (a copy where links fail): another path, so another load
    and another mapping, with the same bytes. Holding both checkpoints would put the peak a whole
    checkpoint (``module_bytes``) above the steady RSS; freeing the first when the second's loader
    output enters the cache keeps it at about a warm run's working set.
    """
    second = checkpoints / f"second-{CHECKPOINT_NAME}"
    try:
        os.link(job.checkpoint, second)
    except OSError:
        shutil.copyfile(job.checkpoint, second)
    first = [weakref.ref(module) for module in owners.modules]
    owners.modules = []
    cache.budget_bytes = module_bytes * 3 // 2
    gc.collect()
    before = read_status()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    seconds = run(COLD_SEED, second.name)
    gc.collect()
    return {
        "budget": cache.budget_bytes,
        "module_bytes": module_bytes,
        "before": before,
        "peak": read_status()["VmHWM"],
        "after": read_status()["VmRSS"],
        "first_freed": all(ref() is None for ref in first),
        "seconds": seconds,
    }


# ---- diffusers -----------------------------------------------------------------------------------------


def measure_diffusers(job: Job) -> dict[str, Any]:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    imports = read_status()
    owners = Owners(job.checkpoint)
    phase = ["from_single_file"]
    with tempfile.TemporaryDirectory() as out:

        def run(pipe: Any, seed: int) -> float:
            started = time.perf_counter()
            image = pipe(
                job.positive,
                negative_prompt=job.negative,
                height=job.size,
                width=job.size,
                num_inference_steps=job.steps,
                guidance_scale=job.cfg,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
            image.save(Path(out) / f"diffusers_{seed}.png")
            return time.perf_counter() - started

        with PeakWatcher(lambda: phase[0], owners) as watcher:
            started = time.perf_counter()
            pipe = StableDiffusionPipeline.from_single_file(
                str(job.checkpoint),
                config=str(job.config_dir),
                local_files_only=True,
                torch_dtype=torch.float32,
                safety_checker=None,
                requires_safety_checker=False,
            )
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
            # bench/models.py's tokenizer folder has no tokenizer_config.json, so the length is unbounded.
            pipe.tokenizer.model_max_length = pipe.text_encoder.config.max_position_embeddings
            pipe.set_progress_bar_config(disable=True)
            owners.modules = [pipe.unet, pipe.vae, pipe.text_encoder]
            # The state dict's mapping lives until the pipeline is built: the peak may be this instant,
            # too short for the watcher to catch.
            loaded = {**owners.snapshot(), "phase": "the return of from_single_file"}
            phase[0] = "the first call"
            cold = time.perf_counter() - started + run(pipe, COLD_SEED)
        before_warm = read_status()["VmRSS"]
        with PeakWatcher(lambda: "warm calls") as warm_watcher:
            warm = [run(pipe, COLD_SEED + 1 + index) for index in range(job.warm_runs)]

    gc.collect()
    steady = owners.snapshot()
    steady["malloc"] = malloc_info()
    malloc_trim()
    steady["rss_after_trim"] = read_status()["VmRSS"]
    return {
        "side": "diffusers",
        "imports": imports,
        "cold_s": cold,
        "warm_s": warm,
        "peak": max(watcher.peak, loaded, key=lambda snapshot: snapshot["status"]["VmRSS"]),
        "vmhwm_after_load": loaded["status"]["VmHWM"],
        "steady": steady,
        "warm_working_set": max(warm_watcher.highest.values()) - before_warm,
        "final": read_status(),
    }


# ---- the parent: run each side in a fresh process, print the tables --------------------------------------


def _mb(n: float) -> str:
    return f"{n / MB:,.0f}"


def _anonymous_weights(snapshot: dict[str, Any]) -> int:
    return sum(n for by_dtype in snapshot["weights"].values() for d, n in by_dtype.items() if d != "mapped")


def _other_file_pages(result: dict[str, Any]) -> int:
    """File-backed pages added since imports that are not the checkpoint's (library code paged in
    later), measured at the steady point, where the split is exact."""
    steady = result["steady"]
    return steady["status"]["RssFile"] - result["imports"]["RssFile"] - steady["checkpoint_pages"]


def owner_rows(result: dict[str, Any], snapshot: dict[str, Any]) -> list[tuple[str, int]]:
    """RSS at ``snapshot`` split by owner; the rows sum to its RssAnon + RssFile (VmRSS less shared memory).

    Without exact checkpoint pages (a polled sample), the checkpoint is credited with the file-backed
    pages added since imports less the other files' pages measured at the steady point.
    """
    status, imports = snapshot["status"], result["imports"]
    weights, packed = _anonymous_weights(snapshot), sum(snapshot["packed"].values())
    added_file = status["RssFile"] - imports["RssFile"]
    pages = snapshot.get("checkpoint_pages", added_file - _other_file_pages(result))
    return [
        ("after imports (interpreter, torch, libraries)", imports["RssAnon"] + imports["RssFile"]),
        ("model weights in anonymous memory", weights),
        ("oneDNN packed copies (DerivedWeight)", packed),
        ("checkpoint file pages, mapped and resident", pages),
        ("other file pages", added_file - pages),
        ("rest: activations, allocator free lists, Python", status["RssAnon"] - imports["RssAnon"] - weights - packed),
    ]


def print_owner_table(title: str, result: dict[str, Any], snapshot: dict[str, Any], notes: Iterable[str]) -> None:
    print(f"\n{title}\n\n| owner | MB |\n|---|---|")
    for name, n in owner_rows(result, snapshot):
        print(f"| {name} | {_mb(n)} |")
    print(f"| **VmRSS** | **{_mb(snapshot['status']['VmRSS'])}** |\n")
    if snapshot["weights"]:
        print(
            "- weights by module and dtype (MB; mapped: views of the file): "
            + "; ".join(
                f"{module} " + " + ".join(f"{_mb(n)} {d.removeprefix('torch.')}" for d, n in by_dtype.items())
                for module, by_dtype in snapshot["weights"].items()
            )
        )
    else:
        print("- weights: the modules were not reachable yet (inside the loader), so they fall in the rest")
    if any(snapshot["packed"].values()):
        print("- packed copies by module (MB): " + ", ".join(f"{m} {_mb(n)}" for m, n in snapshot["packed"].items()))
    if "checkpoint_pages" not in snapshot:
        print(
            "- checkpoint pages at this sample: file pages added since imports less the "
            f"{_mb(_other_file_pages(result))} MB of other files measured at the steady point"
        )
    for line in notes:
        print(f"- {line}")


def _allocator_note(steady: dict[str, Any]) -> str:
    malloc = steady["malloc"]
    return (
        f"glibc: heap in use {_mb(malloc['heap_in_use'])} MB, heap free {_mb(malloc['heap_free'])} MB, mmapped chunks "
        f"{_mb(malloc['mmapped_chunks'])} MB; malloc_trim(0) then returned "
        f"{_mb(steady['status']['VmRSS'] - steady['rss_after_trim'])} MB"
    )


def print_node_table(result: dict[str, Any]) -> None:
    """Per node: seconds in the cold run and the last warm run; RSS and VmHWM when it ended in the cold
    run; its working set in the warm runs (highest RSS while it ran less the RSS when it started)."""
    cold, last = result["timelines"][0], result["timelines"][-1]
    highest = result["warm_highest"]
    warm = {
        a["node"]: (b["t"] - a["t"], highest.get(a["node"], a["VmRSS"]) - a["VmRSS"]) for a, b in zip(last, last[1:])
    }
    print("\nLoom node by node (warm runs serve the loader and the text encodes from the cache):\n")
    print("| node | cold s | RSS after MB | VmHWM after MB | warm s | warm working set MB |\n|---|---|---|---|---|---|")
    for start, end in zip(cold, cold[1:]):
        node = start["node"]
        seconds, working = (f"{warm[node][0]:.1f}", _mb(warm[node][1])) if node in warm else ("cached", "")
        cold_s = end["t"] - start["t"]
        print(f"| {node} | {cold_s:.1f} | {_mb(end['VmRSS'])} | {_mb(end['VmHWM'])} | {seconds} | {working} |")


def print_switch(switch: dict[str, Any]) -> None:
    above = switch["peak"] - switch["before"]
    holds_both = above >= switch["module_bytes"] // 2
    print(
        f"\nLoom switching to a second checkpoint (a hard link of the first) with the cache budget at 1.5 "
        f"loaded checkpoints ({_mb(switch['budget'])} MB; one loaded checkpoint measures "
        f"{_mb(switch['module_bytes'])} MB): RSS {_mb(switch['before'])} MB before, peak {_mb(switch['peak'])} MB "
        f"(+{_mb(above)}), {_mb(switch['after'])} MB after, in {switch['seconds']:.1f} s; first checkpoint's "
        f"modules freed: {'yes' if switch['first_freed'] else 'NO'}; held both at once: "
        f"{'YES' if holds_both else 'no'} (that would be +{_mb(switch['module_bytes'])})"
    )


def report(results: dict[str, dict[str, Any]], job: Job) -> None:
    print(f"\n{job.size}², {job.steps} Euler steps, CFG {job.cfg}, fp32 on the CPU, warm = min of {job.warm_runs} runs")
    print(
        "\n| side | after imports MB | peak (VmHWM) MB | steady MB | steady after malloc_trim MB "
        "| warm-run working set MB | cold s | warm s |\n|---|---|---|---|---|---|---|---|"
    )
    for side, r in results.items():
        steady = r["steady"]
        print(
            f"| {side} | {_mb(r['imports']['VmRSS'])} | {_mb(r['final']['VmHWM'])} | "
            f"{_mb(steady['status']['VmRSS'])} | {_mb(steady['rss_after_trim'])} | {_mb(r['warm_working_set'])} | "
            f"{r['cold_s']:.1f} | {min(r['warm_s']):.1f} |"
        )
    if len(results) == 2:
        loom, diffusers = results["loom"], results["diffusers"]
        ratios = {
            "peak": loom["final"]["VmHWM"] / diffusers["final"]["VmHWM"],
            "steady": loom["steady"]["status"]["VmRSS"] / diffusers["steady"]["status"]["VmRSS"],
            "warm": min(loom["warm_s"]) / min(diffusers["warm_s"]),
        }
        print("\n| Loom / diffusers | ratio | goal | met |\n|---|---|---|---|")
        for name, ratio in ratios.items():
            print(f"| {name} | {ratio:.2f} | <= {GOALS[name]} | {'yes' if ratio <= GOALS[name] else 'no'} |")
    if "loom" in results:
        print_switch(results["loom"]["switch"])
    for side, r in results.items():
        peak, hwm = r["peak"], r["final"]["VmHWM"]
        print_owner_table(
            f"{side} at its peak, split at its highest sample, during {peak['phase']} "
            f"(VmHWM {_mb(hwm)} MB, {_mb(hwm - peak['status']['VmRSS'])} MB above the sample)",
            r,
            peak,
            [f"VmHWM when from_single_file returned: {_mb(r['vmhwm_after_load'])} MB"]
            if "vmhwm_after_load" in r
            else [],
        )
        notes = [_allocator_note(r["steady"])]
        if "cache" in r["steady"]:
            cache = r["steady"]["cache"]
            notes.insert(
                0,
                f"output cache: {_mb(cache['bytes'])} MB in {cache['entries']} entries, of which models "
                f"{_mb(cache['module_bytes'])} MB (each layer's parameters and buffers, or its packed copies "
                "in place of a stored weight); "
                "largest other values (MB): " + ", ".join(f"{name} {n / MB:.1f}" for name, n in cache["largest_other"]),
            )
        print_owner_table(f"{side} steady: after the warm runs, models loaded", r, r["steady"], notes)
        if "timelines" in r:
            print_node_table(r)


def run_child(side: str, job: Job) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", side, "--checkpoint", str(job.checkpoint)]
    argv += ["--config-dir", str(job.config_dir), "--size", str(job.size), "--steps", str(job.steps)]
    argv += ["--warm-runs", str(job.warm_runs)]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ensure_checkpoint() -> tuple[Path, Path]:
    """bench/models.py's random SD1.5 fp16 checkpoint and diffusers config folder, written once."""
    spec = importlib.util.spec_from_file_location("bench_models", Path(__file__).with_name("models.py"))
    assert spec is not None and spec.loader is not None
    models = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    if not models.CHECKPOINT.exists() or not (models.CONFIG_DIR / "model_index.json").exists():
        print(f"writing {models.CHECKPOINT} and {models.CONFIG_DIR} (once, a few minutes)", flush=True)
        models.write_checkpoint(models.Models())
    return models.CHECKPOINT, models.CONFIG_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=4, help="Euler steps (default 4)")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm runs per side; the min is reported")
    parser.add_argument("--quick", action="store_true", help="256², 2 steps, 1 warm run")
    parser.add_argument("--only", choices=("loom", "diffusers"), help="measure one side only")
    parser.add_argument("--child", choices=("loom", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.warm_runs = 256, 2, 1
    positive, negative, cfg = _example_prompts()
    if args.child:
        job = Job(args.checkpoint, args.config_dir, args.size, args.steps, args.warm_runs, positive, negative, cfg)
        measure = measure_loom if args.child == "loom" else measure_diffusers
        print(json.dumps(measure(job)))
        return
    checkpoint, config_dir = ensure_checkpoint()
    job = Job(checkpoint, config_dir, args.size, args.steps, args.warm_runs, positive, negative, cfg)
    results = {}
    for side in [args.only] if args.only else ["loom", "diffusers"]:
        print(f"{side} ...", flush=True)
        results[side] = run_child(side, job)
    report(results, job)


if __name__ == "__main__":
    main()
