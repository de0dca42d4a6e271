"""SDXL-size text-to-image at 1024² within 8 GiB: `loom run` in a memory cgroup, diffusers' peak beside it.

Issue 22 asks that SDXL text-to-image at 1024² complete through ``loom run`` on a machine with 8 GB, and that
diffusers' peak on the same job be reported beside it. No SDXL weights can be downloaded here, so this bench
writes (once, under /tmp/loom-bench) a random full-size SDXL base single file in fp16 and the real key layout:
the UNet (2.567 B parameters, LDM layout) under ``model.diffusion_model.``, the VAE under
``first_stage_model.``, CLIP-L under ``conditioner.embedders.0.transformer.`` (transformers layout) and
OpenCLIP bigG under ``conditioner.embedders.1.model.`` (open_clip layout): 6.9 GB, the size of the real file.
The modules are built on the ``meta`` device for the names and shapes only, and each tensor is drawn straight
in fp16 (weights normal(0, 1/sqrt(fan_in)), biases normal(0, 0.02), norm weights normal(1, 0.02), so
activations stay finite through sampling and decoding) and streamed to the file, so the whole model never
sits in memory. The file is checked to load through Loom's loader as SDXL; a diffusers config folder beside
it (published SDXL base configs; tokenizers derived from Loom's shipped vocabulary) lets
``StableDiffusionXLPipeline.from_single_file`` read the same file offline.

Each side runs in a fresh subprocess, the checkpoint's page cache dropped before it (``posix_fadvise``), so
both read the file cold and their memory group is charged for the pages they bring in:

- **Loom**: ``server.headless.run_workflow_file``, the code behind ``loom run``, on the shipped
  ``examples/sdxl_txt2img.api.json`` with the checkpoint, size, steps (``--steps``), seed, sampler (Euler,
  normal) and CFG 7 replaced; fp32 compute on the CPU, previews off. Its executor is ``loom run``'s own, with
  a listener added that marks each node's start and each sampler step. The child runs in a memory cgroup
  limited to ``--limit`` (8 GiB): v1 (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` where
  present) or v2 (``memory.max``). A cgroup counts page cache as well as anonymous memory, the mapped
  checkpoint's pages included, and reclaims clean file pages when the group reaches its limit: that is an
  8 GB machine. ``RLIMIT_AS`` would not be, since Loom maps the 6.9 GB file (address space, not memory). Plain
  ``VAEDecode`` runs first; if the child is killed for memory inside it, the run is repeated with
  ``VAEDecodeTiled`` (512-pixel tiles, 64 of overlap), and the report says which one completed.
- **diffusers**: ``StableDiffusionXLPipeline.from_single_file`` (offline, the local config folder, fp32),
  ``EulerDiscreteScheduler``, the example's prompts, same size, steps and guidance. It runs in a group with no
  limit (it would not fit), only to read its peak the same way.

Per side: completed or not (exit code, OOM kills counted by the group), peak RSS (``VmHWM``), the group's peak
(``memory.max_usage_in_bytes`` / ``memory.peak``: anonymous memory plus page cache), the highest anonymous RSS
(polled every 10 ms in the child; without swap, anonymous memory over the limit cannot fit), wall time and
the saved image's pixel statistics (a random model's picture is noise, but a NaN would make it flat). Per
phase (Loom: each node and sampler step; diffusers: loading, steps, decode): seconds, highest RSS and
anonymous RSS, and the group's usage (polled every 0.25 s by the parent) split into anonymous memory and page
cache. A killed child's last phase mark says where it died.

Run from the repository root as root on Linux: ``.venv/bin/python bench/memory_sdxl.py`` (1024², 2 steps:
about 6 minutes on the 2-core project machine; the first run also writes the 6.9 GB file, 20 s), or
``--size 512 --steps 1`` to try it out; ``--skip-diffusers`` measures Loom only. diffusers needs about 20 GB
of free RAM (18 GB anonymous at its peak). Without a writable memory cgroup, Loom runs unconfined and its
peak is compared with the limit instead. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
BENCH_DIR = Path("/tmp/loom-bench")
CHECKPOINT = BENCH_DIR / "sdxl-random-fp16.safetensors"
CONFIG_DIR = BENCH_DIR / "sdxl-diffusers-config"
EXAMPLE_WORKFLOW = REPO_ROOT / "examples" / "sdxl_txt2img.api.json"
VOCAB_FILE = REPO_ROOT / "diffusion" / "data" / "bpe_simple_vocab_16e6.txt.gz"
SEED = 42
CFG = 7.0
UNET_PARAMETERS = 2_567_463_684
TILES = {"tile_size": 512, "overlap": 64}
POLL_SECONDS = 0.01
GROUP_POLL_SECONDS = 0.25
MB = 1 << 20

# The published stabilityai/stable-diffusion-xl-base-1.0 component configs (values that differ from the defaults).
SDXL_UNET = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
CLIP_L: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
}
CLIP_G: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
}
SAFETENSORS_DTYPES = {
    "torch.float16": "F16",
    "torch.int64": "I64",
    "torch.bfloat16": "BF16",
    "torch.float8_e4m3fn": "F8_E4M3",
}
#: Dtypes numpy has no type for: their bytes are written through a uint8 view.
_RAW_DTYPES = ("torch.bfloat16", "torch.float8_e4m3fn")


def _load_bench_memory() -> Any:
    """bench/memory.py (not a package), for its ``read_status``."""
    spec = importlib.util.spec_from_file_location("bench_memory", Path(__file__).with_name("memory.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


read_status: Callable[[], dict[str, int]] = _load_bench_memory().read_status


@dataclass(frozen=True)
class Job:
    """The text-to-image run both sides make."""

    size: int
    steps: int
    positive: str
    negative: str
    cfg: float = CFG


# ---- the checkpoint and the diffusers config folder -------------------------------------------------------


def sdxl_layout() -> dict[str, Any]:
    """Every tensor of an SDXL base single file under its key, as fp16 ``meta`` tensors (names, shapes and
    dtypes, no data); ``position_ids`` is the one real tensor (int64, as real files store it)."""
    import torch

    from diffusion.text_encoders import ClipTextConfig, ClipTextModel
    from diffusion.text_encoders.clip_model import Activation
    from diffusion.tiny import _hf_keys, _openclip_keys, _prefixed
    from diffusion.tokenizer import VOCAB_SIZE
    from diffusion.unet import UNetModel
    from diffusion.unet_config import UNetConfig
    from diffusion.vae import AutoencoderKL, VAEConfig

    def clip(hf_config: dict[str, Any], activation: Activation, projection: int | None) -> ClipTextModel:
        return ClipTextModel(
            ClipTextConfig(
                width=hf_config["hidden_size"],
                layers=hf_config["num_hidden_layers"],
                heads=hf_config["num_attention_heads"],
                intermediate=hf_config["intermediate_size"],
                vocab_size=VOCAB_SIZE,
                positions=77,
                activation=activation,
                projection_dim=projection,
            )
        )

    with torch.device("meta"):
        unet = UNetModel(
            UNetConfig(
                in_channels=4,
                out_channels=4,
                model_channels=320,
                channel_mult=(1, 2, 4),
                num_res_blocks=(2, 2, 2),
                transformer_depth=(0, 0, 2, 2, 10, 10),
                transformer_depth_middle=10,
                transformer_depth_output=(10, 10, 10, 2, 2, 2, 0, 0, 0),
                context_dim=2048,
                use_linear_in_transformer=True,
                adm_in_channels=2816,
                num_head_channels=64,
            )
        )
        vae = AutoencoderKL(
            VAEConfig(base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4)
        )
        clip_l = clip(CLIP_L, "quick_gelu", None)
        clip_g = clip(CLIP_G, "gelu", 1280)
    tensors = {
        **_prefixed("model.diffusion_model.", unet.state_dict()),
        **_prefixed("first_stage_model.", vae.state_dict()),
        **_prefixed("conditioner.embedders.0.transformer.", _hf_keys(clip_l)),  # position_ids made here, on the CPU
        **_prefixed("conditioner.embedders.1.model.", _openclip_keys(clip_g)),
    }
    return {key: t.to(torch.float16) if t.is_floating_point() else t for key, t in tensors.items()}


def random_tensor(key: str, like: Any, generator: Any) -> Any:
    """``like``'s data when it has some, else random fp16 data of its shape at a scale that keeps
    activations finite: matrices and kernels normal(0, 1/sqrt(fan_in)), biases normal(0, 0.02), the
    1-D weights (every one is a norm's) normal(1, 0.02)."""
    import torch

    if like.device.type != "meta":
        return like
    tensor = torch.empty(like.shape, dtype=like.dtype)
    if like.ndim >= 2:
        return tensor.normal_(0.0, like[0].numel() ** -0.5, generator=generator)
    return tensor.normal_(0.0 if key.endswith("bias") else 1.0, 0.02, generator=generator)


def write_safetensors(
    path: Path, layout: dict[str, Any], make: Callable[[str, Any], Any], description: str = "random SDXL base"
) -> None:
    """A safetensors file of ``layout``'s tensors, each made by ``make(key, meta)`` just before it is written,
    so one tensor at a time is in memory; widest dtypes first, so every tensor is aligned to its item size.
    Written beside ``path`` and renamed, so an interrupted write never passes for the cached file."""
    import torch

    keys = sorted(layout, key=lambda k: (-layout[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": {"loom.bench": description}}
    offset = 0
    for key in keys:
        t = layout[key]
        nbytes = t.numel() * t.element_size()
        dtype = SAFETENSORS_DTYPES[str(t.dtype)]
        header[key] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for key in keys:
            tensor = make(key, layout[key]).contiguous()
            if str(tensor.dtype) in _RAW_DTYPES:
                tensor = tensor.view(torch.uint8)
            f.write(memoryview(tensor.numpy()).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    partial.rename(path)


def verify_checkpoint(path: Path) -> str:
    """Open ``path`` through Loom's loader (lazily: nothing is read but the header) and check it is SDXL."""
    from diffusion.checkpoint import load_checkpoint
    from diffusion.checkpoint.detect import ModelFamily

    loaded = load_checkpoint(path)
    unet_parameters = sum(p.numel() for p in loaded.unet.parameters()) if loaded.unet else 0
    if loaded.info.family is not ModelFamily.SDXL or unet_parameters != UNET_PARAMETERS:
        raise RuntimeError(f"{path}: detected {loaded.info.family}, UNet of {unet_parameters:,} parameters")
    encoders = sorted(loaded.text_encoders.encoders) if loaded.text_encoders else []
    return f"detected {loaded.info.family.value}, UNet {unet_parameters:,} parameters, text encoders {encoders}"


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    """transformers' CLIPTokenizer files, derived from the shipped BPE vocabulary as diffusion/tokenizer.py does."""
    from diffusion.tokenizer import load_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(load_clip_tokenizer().token_ids), encoding="utf-8")
    with gzip.open(VOCAB_FILE, "rt", encoding="utf-8") as vocab:
        merges = vocab.read().split("\n")[1:48895]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def write_config_folder(folder: Path) -> None:
    """The diffusers folder ``from_single_file(config=...)`` reads: SDXL base's component configs, tokenizers
    (CLIP-L pads with the end token, bigG with "!", id 0, as the published ones do), the Euler scheduler."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    with torch.device("meta"):  # complete configs, defaults included (the converters read keys unchecked)
        UNet2DConditionModel(**SDXL_UNET).save_config(folder / "unet")  # type: ignore[attr-defined]
        AutoencoderKL(**SDXL_VAE).save_config(folder / "vae")  # type: ignore[attr-defined]
    common: dict[str, Any] = {"max_position_embeddings": 77, "vocab_size": 49408}
    CLIPTextConfig(**CLIP_L, **common, hidden_act="quick_gelu", projection_dim=768).save_pretrained(
        folder / "text_encoder"
    )
    CLIPTextConfig(**CLIP_G, **common, hidden_act="gelu", projection_dim=1280).save_pretrained(
        folder / "text_encoder_2"
    )
    _write_tokenizer(folder / "tokenizer", "<|endoftext|>")
    _write_tokenizer(folder / "tokenizer_2", "!")
    EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    ).save_config(folder / "scheduler")  # type: ignore[attr-defined]  # ConfigMixin's save_config, hidden from mypy
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")


def ensure_checkpoint() -> None:
    """The random SDXL file and its diffusers config folder, written once."""
    import torch

    if not CHECKPOINT.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        print(f"writing {CHECKPOINT} (once, a few minutes)", flush=True)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        write_safetensors(CHECKPOINT, sdxl_layout(), lambda key, like: random_tensor(key, like, generator))
        print(f"  {CHECKPOINT.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s", flush=True)
        print(f"  {verify_checkpoint(CHECKPOINT)}", flush=True)
    if not (CONFIG_DIR / "model_index.json").exists():
        write_config_folder(CONFIG_DIR)


def drop_page_cache(path: Path) -> None:
    """Evict ``path``'s clean pages from the page cache, so the next reader loads them (and is charged)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---- the children -----------------------------------------------------------------------------------------


class Timeline:
    """Phase marks on stdout, flushed at once so that the parent has them even if the child is killed: each
    with the status counters as its phase begins and the highest VmRSS and RssAnon of the phase that ended
    (``ended``), which a thread polls from ``/proc/self/status`` every 10 ms."""

    def __init__(self) -> None:
        self.highest = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, phase: str) -> None:
        status = read_status()
        ended = {name: max(value, status[name]) for name, value in self.highest.items()}
        self.highest = {name: status[name] for name in ended}
        print(json.dumps({"mark": phase, "t": time.time(), **status, "ended": ended}), flush=True)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            status, highest = read_status(), self.highest  # a mark may replace the dict meanwhile: harmless
            for name in highest:
                highest[name] = max(highest[name], status[name])


def image_stats(image: Any) -> dict[str, float]:
    """Mean and standard deviation of a picture's 8-bit values: NaNs would have made it flat."""
    import numpy as np

    pixels = np.asarray(image, dtype=np.float64)
    return {"mean": float(pixels.mean()), "std": float(pixels.std())}


def example_prompts() -> tuple[str, str]:
    """(positive, negative) of the shipped SDXL text-to-image example, which both sides use."""
    prompt = json.loads(EXAMPLE_WORKFLOW.read_text(encoding="utf-8"))
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]
    return prompt[sampler["positive"][0]]["inputs"]["text"], prompt[sampler["negative"][0]]["inputs"]["text"]


def workflow(job: Job, decode: str) -> dict[str, Any]:
    """The shipped SDXL example with this job's checkpoint, size, steps, seed, sampler, CFG and decode node."""
    prompt = json.loads(EXAMPLE_WORKFLOW.read_text(encoding="utf-8"))
    nodes = {node["class_type"]: node for node in prompt.values() if node["class_type"] != "CLIPTextEncode"}
    nodes["CheckpointLoaderSimple"]["inputs"]["ckpt_name"] = CHECKPOINT.name
    nodes["EmptyLatentImage"]["inputs"].update(width=job.size, height=job.size)
    sampler = {"seed": SEED, "steps": job.steps, "cfg": job.cfg, "sampler_name": "euler", "scheduler": "normal"}
    nodes["KSampler"]["inputs"].update(sampler)
    if decode == "VAEDecodeTiled":
        nodes["VAEDecode"]["class_type"] = decode
        nodes["VAEDecode"]["inputs"].update(TILES)
    return prompt


def measure_loom(job: Job, decode: str, timeline: Timeline) -> dict[str, Any]:
    from PIL import Image

    from graph import events
    from graph.executor import Executor
    from graph.registry import NodeRegistry
    from nodes import register_builtin_nodes
    from nodes.runtime import RuntimeOptions
    from server import headless
    from server.plugins import REPO_CUSTOM_NODES

    register_builtin_nodes(NodeRegistry())  # imports every node module before the first mark, as the run would

    class MarkingExecutor(Executor):
        """``loom run``'s executor, its listener also marking each node's start and each sampler step."""

        def execute(self, prompt: dict[str, Any], outputs: list[str], **kwargs: Any) -> Any:
            forward = kwargs.pop("listener")

            def listener(event: str, data: dict[str, Any]) -> None:
                node = data.get("node")
                step = f" (after step {data['value']}/{data['max']})" if event == events.PROGRESS else ""
                if node is not None and (event == events.EXECUTING or step):
                    timeline.mark(f"{node} {prompt[node]['class_type']}{step}")
                forward(event, data)

            return super().execute(prompt, outputs, listener=listener, **kwargs)

    headless.Executor = MarkingExecutor  # type: ignore[attr-defined]  # the listener is all it adds

    with tempfile.TemporaryDirectory() as base:
        checkpoints = Path(base) / "models" / "checkpoints"
        checkpoints.mkdir(parents=True)
        (checkpoints / CHECKPOINT.name).symlink_to(CHECKPOINT)
        options = RuntimeOptions(base_dir=Path(base), device="cpu", dtype="fp32", preview_method="none")
        path = Path(base) / "sdxl_txt2img.api.json"
        path.write_text(json.dumps(workflow(job, decode)), encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        code = headless.run_workflow_file(
            str(path), options, show_progress=False, plugin_folders=[REPO_CUSTOM_NODES], out=out, err=err
        )
        seconds = time.perf_counter() - started
        saved = re.findall(r"^node \S+: (.+\.png)$", out.getvalue(), flags=re.MULTILINE)
        stats = image_stats(Image.open(saved[0])) if saved else {}
    return {"exit": code, "error": err.getvalue()[-3000:], "seconds": seconds, "image": stats}


def measure_diffusers(job: Job, timeline: Timeline) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionXLPipeline

    timeline.mark("from_single_file")
    started = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(CHECKPOINT), config=str(CONFIG_DIR), local_files_only=True, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    decode = pipe.vae.decode

    def marked_decode(*args: Any, **kwargs: Any) -> Any:
        timeline.mark("vae.decode")
        return decode(*args, **kwargs)

    def after_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        timeline.mark(f"after step {step + 1}/{job.steps}")
        return tensors

    pipe.vae.decode = marked_decode
    timeline.mark("encode prompts, step 1")
    image = pipe(
        job.positive,
        negative_prompt=job.negative,
        height=job.size,
        width=job.size,
        num_inference_steps=job.steps,
        guidance_scale=job.cfg,
        generator=torch.Generator().manual_seed(SEED),
        callback_on_step_end=after_step,
    ).images[0]
    seconds = time.perf_counter() - started
    return {"exit": 0, "error": "", "seconds": seconds, "image": image_stats(image)}


def run_child(side: str, job: Job, decode: str) -> None:
    with Timeline() as timeline:
        result = measure_loom(job, decode, timeline) if side == "loom" else measure_diffusers(job, timeline)
        timeline.mark("end")
    print(json.dumps({"result": {**result, "final": read_status()}}), flush=True)


# ---- memory groups ----------------------------------------------------------------------------------------

V1_ROOT, V2_ROOT = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")


@dataclass
class MemoryGroup:
    """A memory cgroup made for one child, beside this process's own: v1 or v2, by what the machine has."""

    path: Path
    version: int

    @classmethod
    def create(cls, name: str, limit: int | None) -> MemoryGroup | None:
        """A new group limited to ``limit`` bytes (None: unlimited, to measure); None, said why, when no
        memory controller can be written here (not root, or none mounted)."""
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            own["unified" if hierarchy == "0" else controllers] = path.lstrip("/")
        v1 = next((own[c] for c in own if "memory" in c.split(",")), None)
        v2_controllers = V2_ROOT / "cgroup.controllers"
        if v1 is not None and V1_ROOT.is_dir():
            group = cls(V1_ROOT / v1 / name, 1)
        elif v2_controllers.is_file() and "memory" in v2_controllers.read_text().split() and "unified" in own:
            group = cls(V2_ROOT / own["unified"] / name, 2)
        else:
            print("no memory cgroup controller is mounted", flush=True)
            return None
        try:
            if group.version == 2:  # a v2 group gets a memory controller only if its parent hands it down
                subtree = group.path.parent / "cgroup.subtree_control"
                if "memory" not in subtree.read_text().split():
                    subtree.write_text("+memory")
            group.path.mkdir()
            if limit is not None and group.version == 1:
                group._write("memory.limit_in_bytes", str(limit))
                if (group.path / "memory.memsw.limit_in_bytes").exists():  # memory + swap, where swap is counted
                    group._write("memory.memsw.limit_in_bytes", str(limit))
            elif limit is not None:
                group._write("memory.max", str(limit))
        except OSError as error:
            print(f"no memory cgroup at {group.path}: {error}", flush=True)
            group.remove()
            return None
        return group

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def _counters(self, name: str) -> dict[str, int]:
        return {key: int(value) for key, value in (line.split() for line in self._read(name).splitlines())}

    def join(self) -> None:
        """Move the calling process into the group: a ``preexec_fn``, so the child starts there."""
        self._write("cgroup.procs", str(os.getpid()))

    def sample(self) -> dict[str, float]:
        """Usage now, split into anonymous memory and page cache (and the part of it mapped by the child)."""
        stat = self._counters("memory.stat")
        if self.version == 1:
            usage, anon, cache, mapped = self._read("memory.usage_in_bytes"), "rss", "cache", "mapped_file"
        else:
            usage, anon, cache, mapped = self._read("memory.current"), "anon", "file", "file_mapped"
        return {"t": time.time(), "usage": int(usage), "anon": stat[anon], "cache": stat[cache], "mapped": stat[mapped]}

    def outcome(self) -> dict[str, int]:
        """The group's peak usage and its OOM kills. (v1's ``memory.failcnt`` is not used: with the memsw limit
        set it stays 0 however often usage meets the limit, on the 6.18 kernel this was written on.)"""
        if self.version == 1:
            oom_kills = self._counters("memory.oom_control").get("oom_kill", 0)
            return {"peak": int(self._read("memory.max_usage_in_bytes")), "oom_kills": oom_kills}
        return {"peak": int(self._read("memory.peak")), "oom_kills": self._counters("memory.events")["oom_kill"]}

    def remove(self) -> None:
        for _ in range(50):  # a group stays busy for a moment after its last process is reaped
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove {self.path}", flush=True)


# ---- the parent: run each side in a fresh process, print the tables -----------------------------------------


@dataclass
class SideRun:
    """What the parent saw of one child: its phase marks, its result (None if it died), its group's samples."""

    side: str
    decode: str
    limit: int | None
    group_version: int | None
    returncode: int = 0
    wall: float = 0.0
    marks: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    samples: list[dict[str, float]] = field(default_factory=list)
    outcome: dict[str, int] = field(default_factory=dict)
    stderr: str = ""

    @property
    def confined_to(self) -> str:
        if self.group_version is None:
            return "none (no writable memory cgroup)"
        if self.limit is None:
            return f"none (cgroup v{self.group_version}, to measure)"
        return f"{_mb(self.limit)} MB (cgroup v{self.group_version})"

    @property
    def completed(self) -> bool:
        return self.returncode == 0 and self.result is not None and self.result["exit"] == 0

    @property
    def oom_killed(self) -> bool:
        return self.outcome.get("oom_kills", 0) > 0 or self.returncode == -9

    @property
    def last_phase(self) -> str:
        return self.marks[-1]["mark"] if self.marks else "start-up"

    @property
    def vmhwm(self) -> int:
        """The child's peak RSS; for a killed child, the last one it reported (a lower bound)."""
        return self.result["final"]["VmHWM"] if self.result else max((m["VmHWM"] for m in self.marks), default=0)

    @property
    def highest_anon(self) -> int:
        polled = [m["ended"]["RssAnon"] for m in self.marks if "ended" in m]
        return max([*polled, *(int(s["anon"]) for s in self.samples)], default=0)

    def phases(self) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, float]]]]:
        """Per phase: its start mark, the next mark (None for the phase the child died in) and the group's
        samples in between."""
        ended = bool(self.marks) and self.marks[-1]["mark"] == "end"
        for index, start in enumerate(self.marks[:-1] if ended else self.marks):
            end = self.marks[index + 1] if index + 1 < len(self.marks) else None
            stop = end["t"] if end else float("inf")
            yield start, end, [s for s in self.samples if start["t"] <= s["t"] < stop]


def parse_size(text: str) -> int:
    """Bytes in ``8G``, ``8GiB``, ``8192M``, ``8589934592`` (units are binary)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), flags=re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 8G)")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def run_side(side: str, job: Job, decode: str, limit: int | None) -> SideRun:
    """One side in a fresh child, in a new memory group limited to ``limit`` (None: unlimited), the
    checkpoint's page cache dropped first; its phase marks are echoed as they come."""
    drop_page_cache(CHECKPOINT)
    group = MemoryGroup.create(f"loom-bench-{os.getpid()}-{side}", limit)
    run = SideRun(side, decode, limit, group.version if group else None)
    argv = [sys.executable, __file__, "--child", side, "--size", str(job.size), "--steps", str(job.steps)]
    argv += ["--decode", decode] if side == "loom" else []
    stop = threading.Event()

    def poll() -> None:
        while group is not None and not stop.wait(GROUP_POLL_SECONDS):
            run.samples.append(group.sample())

    poller = threading.Thread(target=poll, daemon=True)
    started = time.perf_counter()
    print(f"{side} ({decode}), confined to {run.confined_to} ...", flush=True)
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO_ROOT,
            preexec_fn=group.join if group else None,
        )
        poller.start()
        try:
            _read_child(child.stdout, run, started)
            run.returncode = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            run.wall = time.perf_counter() - started
            stop.set()
            poller.join()
            if group is not None:
                run.outcome = group.outcome()
                group.remove()
        stderr.seek(0)
        run.stderr = stderr.read()[-3000:]
    return run


def _read_child(stdout: IO[str] | None, run: SideRun, started: float) -> None:
    assert stdout is not None
    for line in stdout:
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        if "mark" in message:
            run.marks.append(message)
            print(f"  {time.perf_counter() - started:6.0f} s  {message['mark']}", flush=True)
        elif "result" in message:
            run.result = message["result"]


def _mb(n: float) -> str:
    return f"{n / MB:,.0f}"


def _verdict(run: SideRun) -> str:
    if run.completed:
        return "yes"
    if run.oom_killed:
        return f"no: killed for memory in {run.last_phase}"
    error = run.result["error"].strip().splitlines()[-1:] if run.result else [f"exit {run.returncode}"]
    return f"no: {error[0] if error else 'failed'}"


def print_phase_table(run: SideRun) -> None:
    polled = f"; the group's usage polled every {GROUP_POLL_SECONDS} s" if run.samples else ""
    print(f"\n{run.side} ({run.decode}) phase by phase{polled}:\n")
    print(
        "| phase | s | RSS at start MB | highest RSS MB | highest anonymous MB "
        "| group peak MB (anonymous + page cache, of it mapped) |\n|---|---|---|---|---|---|"
    )
    for start, end, samples in run.phases():
        seconds = f"{end['t'] - start['t']:.1f}" if end else "died"
        ended = end["ended"] if end else {"VmRSS": 0, "RssAnon": 0}
        peak = max(samples, key=lambda s: s["usage"], default=None)
        group = (
            f"{_mb(peak['usage'])} ({_mb(peak['anon'])} + {_mb(peak['cache'])}, {_mb(peak['mapped'])})" if peak else ""
        )
        print(
            f"| {start['mark']} | {seconds} | {_mb(start['VmRSS'])} | {_mb(ended['VmRSS']) if end else ''} "
            f"| {_mb(ended['RssAnon']) if end else ''} | {group} |"
        )


def report(runs: list[SideRun], job: Job, limit: int) -> None:
    print(f"\nSDXL base (random, fp16, {CHECKPOINT.stat().st_size / 1e9:.2f} GB), {job.size}², {job.steps} Euler steps")
    print("(normal), CFG 7, fp32 compute on the CPU, each side in a fresh process with the file's page cache dropped\n")
    print(
        "| side | confined to | completed | peak RSS (VmHWM) MB | group peak MB | highest anonymous RSS MB "
        "| time s | decode |\n|---|---|---|---|---|---|---|---|"
    )
    for run in runs:
        seconds = f"{run.result['seconds']:.0f}" if run.completed and run.result else f"died after {run.wall:.0f}"
        print(
            f"| {run.side} | {run.confined_to} | {_verdict(run)} | {'' if run.completed else '≥ '}{_mb(run.vmhwm)} "
            f"| {_mb(run.outcome['peak']) if run.outcome else ''} | {_mb(run.highest_anon)} | {seconds} "
            f"| {run.decode} |"
        )
    loom = next((r for r in runs if r.side == "loom" and r.completed), None)
    diffusers = next((r for r in runs if r.side == "diffusers" and r.completed), None)
    if loom and diffusers and loom.result and diffusers.result:
        seconds = loom.result["seconds"] / diffusers.result["seconds"]
        print(
            f"\nLoom / diffusers: peak RSS {loom.vmhwm / diffusers.vmhwm:.2f}, highest anonymous RSS "
            f"{loom.highest_anon / diffusers.highest_anon:.2f}, time {seconds:.2f}"
        )
    for run in runs:
        if run.completed and run.result:
            image = run.result["image"]
            at_limit = run.limit is not None and run.outcome and run.outcome["peak"] >= run.limit
            print(
                f"- {run.side}: image mean {image['mean']:.1f}, std {image['std']:.1f} (8-bit values)"
                + ("; the group reached its limit: page cache was reclaimed to make room" if at_limit else "")
            )
        elif run.marks:
            last = run.marks[-1]
            sample = run.samples[-1] if run.samples else None
            print(
                f"- {run.side} died in {last['mark']}: RSS {_mb(last['VmRSS'])} MB (anonymous {_mb(last['RssAnon'])}, "
                f"file {_mb(last['RssFile'])}) when it began"
                + (
                    f"; the group's last sample: {_mb(sample['usage'])} MB, anonymous {_mb(sample['anon'])}, "
                    f"page cache {_mb(sample['cache'])} (mapped {_mb(sample['mapped'])})"
                    if sample
                    else ""
                )
            )
        if not run.completed and run.stderr.strip():
            print(f"  stderr tail: {run.stderr.strip().splitlines()[-1]}")
        if run.side == "loom" and run.group_version is None:
            print(
                f"- loom ran unconfined: peak RSS {_mb(run.vmhwm)} MB (page cache not counted), highest anonymous "
                f"{_mb(run.highest_anon)} MB, against the limit of {_mb(limit)} MB"
            )
    if diffusers:
        anon = diffusers.highest_anon
        fits = "no" if anon > limit else "maybe (only a confined run can tell)"
        print(
            f"- diffusers within {_mb(limit)} MB: {fits}; its anonymous memory alone peaked at {_mb(anon)} MB "
            "(without swap, anonymous memory cannot be reclaimed)"
        )
    for run in runs:
        print_phase_table(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--steps", type=int, default=2, help="Euler steps (default 2)")
    parser.add_argument("--limit", type=parse_size, default=parse_size("8G"), help="Loom's memory limit (default 8G)")
    parser.add_argument("--skip-diffusers", action="store_true", help="measure Loom only")
    parser.add_argument("--child", choices=("loom", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--decode", choices=("VAEDecode", "VAEDecodeTiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    job = Job(args.size, args.steps, *example_prompts())
    if args.child:
        run_child(args.child, job, args.decode)
        return
    ensure_checkpoint()
    runs = [run_side("loom", job, "VAEDecode", args.limit)]
    if runs[0].oom_killed and "VAEDecode" in runs[0].last_phase:
        runs.append(run_side("loom", job, "VAEDecodeTiled", args.limit))
    if not args.skip_diffusers:
        runs.append(run_side("diffusers", job, "whole (vae.decode)", None))
    report(runs, job, args.limit)


if __name__ == "__main__":
    main()
