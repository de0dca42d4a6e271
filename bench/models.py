"""Loom's model library against diffusers/transformers, in one process, on random SD1.5-size weights.

Run from the repository root: ``.venv/bin/python bench/models.py`` (``--only unet32,clip`` for a
subset, ``--repeats N``). Cases: the UNet on a batch of 2 (one CFG call) at 64x64 and 32x32
latents (512² and 256² images), the VAE decoding a 64x64 latent to 512², CLIP-L encoding 2x77
tokens, one full-width FLUX.1 double and single block (``flux``) and two full-width SD3.5 Large joint
blocks (``mmdit``) on a 512² image, the smallest full-width Z-Image (``zimage``: one main block and one
noise and one context refiner) on a 512² image and a 100-token caption, two full-width Qwen3-4B decoder
layers (``qwen3``) on 128 tokens of hidden states, the full SDXL UNet driven by a full SDXL ControlNet
(``controlnet``: both on a batch of 2, the ControlNet's residuals fed to the UNet, as one CFG step of a
ControlNet workflow), and the peak RSS of loading a full-size single-file checkpoint. The whole Qwen3-4B
encoding a prompt from a memory-mapped file is ``bench/qwen3_encode.py``.

``controlnet`` is the heaviest case by far. Its default latent is 128x128 (a 1024² image, SDXL's size), where
one call is 19.6 TFLOP; ``--controlnet-latent 64`` (512², 4.6 TFLOP per call) took 7 minutes on the project's
2-core machine (one call: Loom 23 s, diffusers 82 s; bench/RESULTS.md), so the default, at 4.3 times the
arithmetic, takes about 40 minutes with ``--repeats 2`` and ``32`` (1.2 TFLOP) about 2. Its 3.8 billion fp32
weights (15.3 GB) exist once: Loom's modules adopt diffusers' tensors, renamed to the LDM layout, and the
process peaked at 17.9 GB at 64 with Loom's packed convolution copies. The case times fp32 only: a bf16 copy
of either side would not fit beside them in the machine's 23 GB.

Both sides get the same weights: the diffusers modules are built with their default random
initialisation and Loom's are loaded from the same tensors renamed to the LDM layout. Each case is
timed in fp32 (the UNet also as Loom runs an fp16 file in fp32: "fp32 from fp16") and in every "fast"
mode each side offers (Loom: bf16 weights + channels_last, the
path its modules are written for; diffusers: bf16 weights + channels_last, bf16 autocast), and
each side is credited with its fastest. On a CPU without native bf16 kernels (an AVX2-only one, see
``diffusion.devices.cpu_computes_bf16_fast``) the bf16 modes are skipped, with the reason printed:
there bf16 is computed in software, several times slower than fp32, for Loom and diffusers alike.
Timings on the shared 2-core machines vary 1.5-2.5x from
run to run (bench/RESULTS.md), so every contender is warmed up once and then timed in interleaved rounds,
and the minimum of the rounds is reported; ratios are meaningful only within one run. FLOPs come
from ``torch.utils.flop_counter.FlopCounterMode`` on one diffusers fp32 call (convolutions, matmuls,
and SDPA through a formula registered for the CPU attention kernel); both sides do the same arithmetic.

The load case writes a random fp16 SD1.5 checkpoint (2 GB) and a diffusers config folder under
/tmp once, then loads it in fresh subprocesses (one per loader, so each peak is its own): Loom's
``load_checkpoint`` lazily (weights left memory-mapped, as the server loads), then Loom and
diffusers' ``StableDiffusionPipeline.from_single_file`` (offline) each converting to fp32 and to bf16.

On a GPU (issue 20): ``.venv/bin/python bench/models.py --device cuda`` (bench/gpu_all.sh runs it on the lent
H100). Both sides' models and inputs go to the card in fp32 (the parity reference), fp16 and bf16 (Loom's modules
placed with ``diffusion.model_memory.place``, as its runtime places them; diffusers' with ``.to``), the last two
also in channels_last where the model is convolutional, and each side is credited with its fastest mode as on
the CPU. Each call is
bracketed by ``torch.cuda.synchronize()``; every contender is warmed up twice, then timed in interleaved rounds
(``--repeats``, 10 by default there), min reported. Peak VRAM per contender is its own weights (distinct storages
on the card) plus what its call allocated above the memory in use before it (``reset_peak_memory_stats``, then
``max_memory_allocated``), measured on a call of its own: all contenders of a case sit on the card together, so
the process-wide peak would say nothing about one of them. Rates are given against this card's measured
8192³ matmul in the mode's compute dtype. The default cases there are issue 20's: ``unet64`` (SD1.5, batch 2,
512²), ``sdxl_unet`` (the full SDXL UNet, batch 2, 1024²), ``vae1024`` (the VAE decoding a 128² latent to
1024²), ``flux`` (one full-width double and single block at 1024²: 4,096 image and 512 text tokens) and
``flux_full`` (the whole FLUX.1-dev-size transformer, 19 double and 38 single blocks, 11.9 B parameters, at
1024²: both sides in bf16, and Loom with fp8 weights computing in bf16 as it runs an fp8 file, beside diffusers'
own fp8 storage, ``enable_layerwise_casting``). ``unet32``, ``vae`` and ``clip`` run there too when named.
On the CPU the new cases are opt-in (``--only``): ``sdxl_unet`` (fp32 only: a bf16 copy of each side would not
fit beside the 10.3 GB of fp32 weights) and ``vae1024`` at ``--large-latent`` (32 there by default: a smoke run),
and ``flux_full`` is skipped with its reason (47.6 GB in fp32).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import gzip
import itertools
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.devices import cpu_computes_bf16_fast
from diffusion.diffusers_layout import unet_to_ldm, vae_to_ldm
from diffusion.model_memory import place

CPU_CASES = ("unet64", "unet32", "vae", "clip", "flux", "mmdit", "zimage", "qwen3", "controlnet", "load")
# Issue 20's cases; on the CPU they are opt-in (--only), so a plain CPU run is what it always was.
DEVICE_CASES = ("unet64", "sdxl_unet", "vae1024", "flux", "flux_full")
CASES = (*CPU_CASES, "sdxl_unet", "vae1024", "flux_full")
DEVICE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FP8_MODE = "fp8 weights, bf16"  # weights stored in float8_e4m3fn, each layer computing in bf16
LOADERS = ("loom-lazy", "loom-fp32", "diffusers-fp32", "loom-bf16", "diffusers-bf16")
CHECKPOINT = Path("/tmp/loom_bench_sd15_fp16.safetensors")
CONFIG_DIR = Path("/tmp/loom_bench_sd15_diffusers_config")
VOCAB_FILE = Path(__file__).resolve().parents[1] / "diffusion" / "data" / "bpe_simple_vocab_16e6.txt.gz"
BF16_PEAK_GFLOPS = (400.0, 470.0)  # the bf16 limit measured earlier on the project's 2-core machines

# The published runwayml/stable-diffusion-v1-5 component configs (unet/, vae/, text_encoder/config.json).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
# The published stabilityai/stable-diffusion-xl-base-1.0 unet/config.json; its ControlNets (diffusers/controlnet-
# canny-sdxl-1.0) are the same encoder with the paper's hint stack.
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_CONTROLNET_LATENT = 128
CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    vocab_size=49408,
    hidden_act="quick_gelu",
    projection_dim=768,
)


@dataclass
class Contender:
    """One way of making one call: whose (``loom``/``diffusers``), in which mode, and the call itself."""

    side: str
    mode: str
    call: Callable[[], torch.Tensor]
    #: Bytes of its weights on the GPU (distinct storages), for its peak VRAM; 0 on the CPU.
    weight_bytes: int = 0


@dataclass
class Row:
    """One contender's result: its side and mode, not its call, whose closure holds a model copy."""

    case: str
    side: str
    mode: str
    seconds: float
    gflop: float
    #: On a GPU: its weights plus its call's own allocations (``time_on_device``).
    peak_bytes: int | None = None

    @property
    def gflops(self) -> float:
        return self.gflop / self.seconds


Inputs = dict[str, torch.Tensor]


@dataclass
class Twin:
    """One case's two models, holding the same weights, and how each is called on a dict of inputs (fp32, on the
    CPU); the GPU modes make their copies from it (``device_contenders``)."""

    loom: torch.nn.Module
    reference: torch.nn.Module
    loom_call: Callable[[Any, Inputs], torch.Tensor]
    reference_call: Callable[[Any, Inputs], torch.Tensor]
    inputs: Inputs
    #: Convolutional: also timed in channels_last.
    convolutional: bool = False
    #: Inputs passed as they are, not cast to the mode's dtype: timesteps, guidance, position ids.
    fixed: tuple[str, ...] = ()


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _count_cpu_attention() -> None:
    """FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU one both sides
    call; without this the UNet's attention (~250 GFLOP at 64x64) would be missing from every rate."""
    from torch.utils import flop_counter

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_attention in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(cpu_attention)
    def _formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_gflop(call: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call()
    return counter.get_total_flops() / 1e9


def time_interleaved(contenders: list[Contender], repeats: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Min-of-``repeats`` seconds per contender, rounds interleaved so all see the same machine load.

    The warm-up call (oneDNN primitive creation, allocator growth) is not timed; its output is
    returned per contender for the parity check.
    """
    outputs = {}
    with torch.no_grad():
        for c in contenders:
            outputs[f"{c.side}/{c.mode}"] = c.call().float()
        best = [float("inf")] * len(contenders)
        for _ in range(repeats):
            for index, c in enumerate(contenders):
                gc.collect()
                start = time.perf_counter()
                c.call()
                best[index] = min(best[index], time.perf_counter() - start)
    return best, outputs


def _bf16_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).to(torch.bfloat16).to(memory_format=torch.channels_last)


def _as_bf16_input(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.bfloat16)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


class Models:
    """The random full-size models, built once per run and shared by the cases."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._cache:
            started = time.perf_counter()
            self._cache[name] = build()
            print(f"  (built {name} in {time.perf_counter() - started:.0f} s)", flush=True)
        return self._cache[name]

    def unet(self) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
        def build() -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
            from diffusers import UNet2DConditionModel

            from diffusion.unet import unet_from_state_dict

            with _seeded(0):
                reference = UNet2DConditionModel(**SD15_UNET).eval()
            weights = unet_to_ldm(reference.state_dict(), reference.config)
            return reference, unet_from_state_dict(weights).eval(), weights

        return self._get("unet", build)

    def vae(self) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
        def build() -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
            from diffusers import AutoencoderKL

            from diffusion.vae import vae_from_state_dict

            with _seeded(1):
                reference = AutoencoderKL(**SD15_VAE).eval()
            weights = vae_to_ldm(reference.state_dict())
            return reference, vae_from_state_dict(weights).eval(), weights

        return self._get("vae", build)

    def clip(self) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
        def build() -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
            from transformers import CLIPTextConfig, CLIPTextModel

            from diffusion.text_encoders.layouts import load_clip_text_model

            with _seeded(2):
                reference = CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval()
            # transformers >= 5.6 drops the `text_model.` level that SD1 files keep.
            weights = {f"text_model.{k}": v for k, v in reference.state_dict().items()}
            return reference, load_clip_text_model(weights, "quick_gelu"), weights

        return self._get("clip", build)


def unet_contenders(models: Models, latent: int) -> list[Contender]:
    reference, loom, _ = models.unet()
    with _seeded(3):
        x = torch.randn(2, 4, latent, latent)
        t = torch.tensor([500.0, 500.0])
        context = torch.randn(2, 77, 768)
    loom_fast = _bf16_channels_last(loom)
    reference_fast = _bf16_channels_last(reference)
    xb, cb = _as_bf16_input(x), _as_bf16_input(context)
    # How Loom runs an fp16 file in fp32 (diffusion.stored_weights): linear weights kept in fp16 and
    # cast per call, convolutions packed from their fp16 weights. The price of the memory it saves.
    loom_stored = copy.deepcopy(loom).half()
    place(loom_stored, torch.device("cpu"), torch.float32)

    def reference_autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return reference(x, t, context).sample

    return [
        Contender("loom", "fp32", lambda: loom(x, t, context)),
        Contender("diffusers", "fp32", lambda: reference(x, t, context).sample),
        Contender("loom", "fp32 from fp16", lambda: loom_stored(x, t, context)),
        Contender("loom", "bf16+CL", lambda: loom_fast(x, t, context)),
        Contender("diffusers", "bf16+CL", lambda: reference_fast(xb, t, cb).sample),
        Contender("diffusers", "autocast", reference_autocast),
    ]


def vae_contenders(models: Models, latent: int = 64) -> list[Contender]:
    reference, loom, _ = models.vae()
    with _seeded(4):
        z = torch.randn(1, 4, latent, latent)
    loom_fast = _bf16_channels_last(loom)
    reference_bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    reference_fast = _bf16_channels_last(reference)
    zb = z.to(torch.bfloat16)
    return [
        Contender("loom", "fp32", lambda: loom.decode(z)),
        Contender("diffusers", "fp32", lambda: reference.decode(z).sample),
        Contender("loom", "bf16+CL", lambda: loom_fast.decode(z)),
        Contender("diffusers", "bf16", lambda: reference_bf16.decode(zb).sample),
        Contender("diffusers", "bf16+CL", lambda: reference_fast.decode(_as_bf16_input(z)).sample),
    ]


def clip_contenders(models: Models) -> list[Contender]:
    reference, loom, _ = models.clip()
    with _seeded(5):
        ids = torch.randint(0, 49406, (2, 77))
    ids[:, 0], ids[:, -1] = 49406, 49407
    eos = torch.full((2,), 76)
    loom_bf16 = copy.deepcopy(loom).to(torch.bfloat16)
    reference_bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    return [
        Contender("loom", "fp32", lambda: loom(ids, eos).hidden),
        Contender("diffusers", "fp32", lambda: reference(ids).last_hidden_state),
        Contender("loom", "bf16", lambda: loom_bf16(ids, eos).hidden),
        Contender("diffusers", "bf16", lambda: reference_bf16(ids).last_hidden_state),
    ]


def flux_twin(size: int = 512, text_tokens: int = 256) -> Twin:
    """One full-width FLUX.1 double block and one single block (3072 wide, 24 heads), with their embedders, on a
    ``size``² image ((size/16)² image tokens) and ``text_tokens`` T5 tokens; diffusers' twin built by its own
    single-file converter."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from diffusion.flux import FluxConfig, FluxTransformer

    config = FluxConfig(depth=1, depth_single_blocks=1)
    with _seeded(6):
        loom = FluxTransformer(config).eval()
    reference = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True).eval()
    weights = {key: value.clone() for key, value in loom.state_dict().items()}
    reference.load_state_dict(convert_flux_transformer_checkpoint_to_diffusers(weights), strict=True)
    latent = size // 8
    with _seeded(7):
        x, context, pooled = torch.randn(1, 16, latent, latent), torch.randn(1, text_tokens, 4096), torch.randn(1, 768)
    return Twin(
        loom, reference, _flux_loom_call, _flux_reference_call, flux_inputs(x, context, pooled), fixed=FLUX_FIXED
    )


FLUX_FIXED = ("sigma", "guidance", "image_ids", "text_ids")


def flux_inputs(x: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor) -> Inputs:
    """A FLUX call's inputs for both sides: diffusers takes the latent packed into 2x2 patches with position ids."""
    side = x.shape[-1] // 2
    packed = x.reshape(1, 16, side, 2, side, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, side * side, 64)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return {
        "x": x,
        "context": context,
        "pooled": pooled,
        "packed": packed,
        "sigma": torch.tensor([0.7]),
        "guidance": torch.tensor([3.5]),
        "image_ids": image_ids,
        "text_ids": torch.zeros(context.shape[1], 3),
    }


def _flux_loom_call(model: Any, i: Inputs) -> torch.Tensor:
    return model(i["x"], i["sigma"], i["context"], i["pooled"], i["guidance"])


def _flux_reference_call(model: Any, i: Inputs) -> torch.Tensor:
    out = model(
        i["packed"], i["context"], i["pooled"], i["sigma"], i["image_ids"], i["text_ids"], guidance=i["guidance"]
    ).sample
    side = i["x"].shape[-1] // 2
    return out.reshape(1, side, side, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 2 * side, 2 * side)


def flux_contenders() -> list[Contender]:
    """``flux_twin`` at 512² with 256 T5 tokens, in fp32 and bf16 on each side."""
    twin = flux_twin()
    contenders = [
        Contender("loom", "fp32", functools.partial(twin.loom_call, twin.loom, twin.inputs)),
        Contender("diffusers", "fp32", functools.partial(twin.reference_call, twin.reference, twin.inputs)),
    ]
    loom_bf16, reference_bf16 = (
        copy.deepcopy(twin.loom).to(torch.bfloat16),
        copy.deepcopy(twin.reference).to(torch.bfloat16),
    )
    bf16 = cast_inputs(twin, torch.device("cpu"), torch.bfloat16, channels_last=False)
    return [
        *contenders,
        Contender("loom", "bf16", functools.partial(twin.loom_call, loom_bf16, bf16)),
        Contender("diffusers", "bf16", functools.partial(twin.reference_call, reference_bf16, bf16)),
    ]


def mmdit_contenders() -> list[Contender]:
    """Two full-width SD3.5 Large joint blocks (2432 wide, 38 heads, qk-norm; the second is the pre-only last
    block) on a 512² image (1,024 image tokens) and 333 text tokens (77 CLIP + 256 T5)."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from diffusion.mmdit import MMDiT, MMDiTConfig

    config = MMDiTConfig(depth=2, hidden_size=2432, num_heads=38, qk_norm=True, pos_embed_max_size=192)
    with _seeded(8):
        loom = MMDiT(config).eval()
    reference = SD3Transformer2DModel(
        num_layers=2,
        attention_head_dim=64,
        num_attention_heads=38,
        caption_projection_dim=2432,
        pos_embed_max_size=192,
        qk_norm="rms_norm",
        sample_size=128,
    ).eval()
    weights = {key: value.clone() for key, value in loom.state_dict().items()}
    reference.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(weights), strict=True)
    with _seeded(9):
        x, context, pooled = torch.randn(1, 16, 64, 64), torch.randn(1, 333, 4096), torch.randn(1, 2048)
    sigma = torch.tensor([0.7])
    loom_bf16, reference_bf16 = copy.deepcopy(loom).to(torch.bfloat16), copy.deepcopy(reference).to(torch.bfloat16)
    xb, cb, pb = (t.to(torch.bfloat16) for t in (x, context, pooled))
    return [
        Contender("loom", "fp32", lambda: loom(x, sigma, context, pooled)),
        Contender("diffusers", "fp32", lambda: reference(x, context, pooled, sigma * 1000).sample),
        Contender("loom", "bf16", lambda: loom_bf16(xb, sigma, cb, pb)),
        Contender("diffusers", "bf16", lambda: reference_bf16(xb, cb, pb, sigma * 1000).sample),
    ]


def controlnet_contenders(latent: int) -> list[Contender]:
    """The full SDXL UNet with one full SDXL ControlNet on a batch of 2 at ``latent``² latents, 77 context tokens
    and SDXL's size conditioning (1024² original and target, no crop): the ControlNet's residuals go into the
    UNet's skip connections and middle block, as in a sampling step. Loom's UNet and ControlNet adopt diffusers'
    tensors, renamed to the LDM layout (``unet_to_ldm``, ``controlnet_to_ldm``), so there is one copy of each
    weight; fp32 only (the module docstring says why)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from diffusion.controlnet import controlnet_to_ldm, load_controlnet
    from diffusion.unet import sdxl_adm_vector, unet_from_state_dict

    encoder = {k: v for k, v in SDXL_UNET.items() if k not in ("out_channels", "up_block_types", "sample_size")}
    started = time.perf_counter()
    with _seeded(14):
        reference_unet = UNet2DConditionModel(**SDXL_UNET).eval()
        reference_controlnet = ControlNetModel(**encoder).eval()
    unet = unet_from_state_dict(unet_to_ldm(reference_unet.state_dict(), reference_unet.config)).eval()
    controlnet = load_controlnet(controlnet_to_ldm(reference_controlnet.state_dict())).eval()
    print(f"  (built the SDXL UNet and ControlNet in {time.perf_counter() - started:.0f} s)", flush=True)
    with _seeded(15):
        x, hint = torch.randn(2, 4, latent, latent), torch.rand(2, 3, 8 * latent, 8 * latent)
        context, pooled = torch.randn(2, 77, 2048), torch.randn(2, 1280)
    t = torch.tensor([500.0, 500.0])
    y = sdxl_adm_vector(pooled, (1024, 1024), (0, 0), (1024, 1024))
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2)}

    def loom_call() -> torch.Tensor:
        return unet(x, t, context, y, control=controlnet(x, hint, t, context, y))

    def reference_call() -> torch.Tensor:
        down, middle = reference_controlnet(
            x, t, context, controlnet_cond=hint, added_cond_kwargs=added, return_dict=False
        )
        return reference_unet(
            x,
            t,
            context,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=middle,
        ).sample

    return [Contender("loom", "fp32", loom_call), Contender("diffusers", "fp32", reference_call)]


# Qwen3-4B's sizes (its config.json; the 4B's RoPE base is 1e6, not transformers' default 1e4).
QWEN3_4B = dict(
    hidden_size=2560,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
)
# A detailed prompt in Z-Image's chat template is about this many Qwen3 tokens; both models pad it to 128.
ZIMAGE_CAPTION_TOKENS = 100
QWEN3_TOKENS = 128


def _randomise_norms(model: torch.nn.Module) -> None:
    """Norm scales off 1 and learned padding tokens off 0 (they initialise to ones and zeros), so that parity
    would show a misplaced norm or padding token."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("pad_token"):
                parameter.normal_()
            elif parameter.ndim == 1 and name.endswith(".weight"):  # RMSNorm scales: neither model has others
                parameter.uniform_(0.5, 1.5)


def _computing_in_fp32_from_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy that runs as Loom runs a bf16 file on a CPU in fp32: linear weights kept bf16, cast per call."""
    stored = copy.deepcopy(model).to(torch.bfloat16)
    place(stored, torch.device("cpu"), torch.float32)
    return stored


def zimage_contenders() -> list[Contender]:
    """The smallest full-width Z-Image diffusers can build (3840 wide, 30 heads of 128, SwiGLU 10240): one main
    block, one noise-refiner and one context-refiner block, with the embedders and the final layer, on a 512²
    image (1,024 image tokens) and a 100-token caption of Qwen3-4B states (2560 wide; both pad it to 128).
    diffusers' twin is built by its own single-file converter and called as ZImagePipeline calls it: per-item
    lists, t = 1 - sigma, the output negated."""
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    from diffusion.zimage import ZImageConfig, ZImageTransformer

    config = ZImageConfig(depth=1, noise_refiner_depth=1, context_refiner_depth=1)
    with _seeded(10):
        loom = ZImageTransformer(config).eval()
        _randomise_norms(loom)
    reference = ZImageTransformer2DModel(n_layers=1, n_refiner_layers=1).eval()  # otherwise the release's sizes
    weights = {key: value.clone() for key, value in loom.state_dict().items()}
    reference.load_state_dict(convert_z_image_transformer_checkpoint_to_diffusers(weights), strict=True)
    del weights
    with _seeded(11):
        x, context = torch.randn(1, 16, 64, 64), torch.randn(1, ZIMAGE_CAPTION_TOKENS, config.context_dim)
    sigma = torch.tensor([0.7])

    def reference_call(model: torch.nn.Module, latent: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
        out = model([latent[0].unsqueeze(1)], 1 - sigma, [caption[0]], return_dict=False)[0]
        return -out[0].squeeze(1).unsqueeze(0)

    loom_bf16, reference_bf16 = copy.deepcopy(loom).to(torch.bfloat16), copy.deepcopy(reference).to(torch.bfloat16)
    loom_stored = _computing_in_fp32_from_bf16(loom)
    xb, cb = x.to(torch.bfloat16), context.to(torch.bfloat16)
    return [
        Contender("loom", "fp32", lambda: loom(x, sigma, context)),
        Contender("diffusers", "fp32", lambda: reference_call(reference, x, context)),
        Contender("loom", "fp32 from bf16", lambda: loom_stored(x, sigma, context)),
        Contender("loom", "bf16", lambda: loom_bf16(xb, sigma, cb)),
        Contender("diffusers", "bf16", lambda: reference_call(reference_bf16, xb, cb)),
    ]


def qwen3_contenders() -> list[Contender]:
    """Two full-width Qwen3-4B decoder layers and the final norm (2560 wide; 32 query and 8 key/value heads of
    128; SwiGLU 9728) on 128 tokens of hidden states, the embedding skipped; the reference is transformers'
    `Qwen3Model` (its default SDPA attention) holding the same weights, fed through ``inputs_embeds``."""
    from transformers import Qwen3Config as ReferenceConfig
    from transformers import Qwen3Model

    from diffusion.text_encoders.qwen3 import Qwen3Encoder, RotaryHalves, load_qwen3_encoder

    # The embedding is never called here: a 16-row table stands in for the 151,936 rows (1.6 GB in fp32).
    reference_config = ReferenceConfig(**QWEN3_4B, num_hidden_layers=2, vocab_size=16, attn_implementation="sdpa")
    with _seeded(12):
        reference = Qwen3Model(reference_config).eval()
        _randomise_norms(reference)
    loom = load_qwen3_encoder({key: value.clone() for key, value in reference.state_dict().items()}).eval()
    with _seeded(13):
        hidden = torch.randn(1, QWEN3_TOKENS, reference_config.hidden_size)

    def loom_call(model: Qwen3Encoder, states: torch.Tensor) -> torch.Tensor:
        # Qwen3Encoder.forward after its embedding, for a prompt without padding: every layer, then the final norm.
        rope = RotaryHalves.of(states.shape[1], model.config.head_dim, model.config.rope_theta, states.device)
        for layer in model.model.layers:
            states = layer(states, rope, None)
        return model.model.norm(states)

    def reference_call(model: Qwen3Model, states: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=states, use_cache=False).last_hidden_state

    loom_bf16, reference_bf16 = copy.deepcopy(loom).to(torch.bfloat16), copy.deepcopy(reference).to(torch.bfloat16)
    loom_stored = _computing_in_fp32_from_bf16(loom)
    hb = hidden.to(torch.bfloat16)
    return [
        Contender("loom", "fp32", lambda: loom_call(loom, hidden)),
        Contender("diffusers", "fp32", lambda: reference_call(reference, hidden)),
        Contender("loom", "fp32 from bf16", lambda: loom_call(loom_stored, hidden)),
        Contender("loom", "bf16", lambda: loom_call(loom_bf16, hb)),
        Contender("diffusers", "bf16", lambda: reference_call(reference_bf16, hb)),
    ]


# ---- on a GPU (--device cuda, issue 20) ----------------------------------------------------------------------


def cast_inputs(twin: Twin, device: torch.device, dtype: torch.dtype, channels_last: bool) -> Inputs:
    """``twin``'s inputs on ``device``, floating ones in ``dtype`` (except ``twin.fixed``), 4-D ones channels_last
    if asked."""
    out = {}
    for key, value in twin.inputs.items():
        value = value.to(device)
        if key not in twin.fixed and value.is_floating_point():
            value = value.to(dtype)
        if channels_last and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of ``module`` with its floating-point tensors in ``dtype``, cast one at a time, so that no whole
    second copy in the source's dtype exists (the SDXL UNet is 10.3 GB in fp32)."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point() and id(tensor) not in memo:
            cast = tensor.detach().to(dtype)
            memo[id(tensor)] = (
                torch.nn.Parameter(cast, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else cast
            )
    return copy.deepcopy(module, memo)


def device_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers on the GPU, each storage once (two sides may share one)."""
    storages = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.device.type != "cpu":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def device_contenders(twin: Twin, device: torch.device) -> list[Contender]:
    """Each side in fp32 (the parity reference; the twin's own modules where they already sit on ``device``, so
    a 10 GB UNet is not copied), then in fp16 and bf16, also channels_last for a convolutional model: Loom's
    copies placed as its runtime places a model (``place``), diffusers' moved with ``.to``."""

    def contender(side: str, mode: str, model: torch.nn.Module, inputs: Inputs) -> Contender:
        call = twin.loom_call if side == "loom" else twin.reference_call
        return Contender(side, mode, functools.partial(call, model, inputs), device_bytes(model))

    def on_device(module: torch.nn.Module) -> bool:
        return next(module.parameters()).device == device

    loom32 = twin.loom if on_device(twin.loom) else cast_copy(twin.loom, torch.float32)
    place(loom32, device, torch.float32)
    reference32 = twin.reference if on_device(twin.reference) else cast_copy(twin.reference, torch.float32).to(device)
    inputs32 = cast_inputs(twin, device, torch.float32, channels_last=False)
    contenders = [contender("loom", "fp32", loom32, inputs32), contender("diffusers", "fp32", reference32, inputs32)]
    for name, dtype in DEVICE_DTYPES.items():
        for channels_last in (False, True) if twin.convolutional else (False,):
            loom = cast_copy(twin.loom, dtype)
            place(loom, device, dtype)
            reference = cast_copy(twin.reference, dtype).to(device)
            if channels_last:
                for module in (loom, reference):
                    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from the stub
            inputs = cast_inputs(twin, device, dtype, channels_last)
            mode = name + ("+CL" if channels_last else "")
            contenders += [contender("loom", mode, loom, inputs), contender("diffusers", mode, reference, inputs)]
    return contenders


def unet_twin(models: Models, latent: int) -> Twin:
    reference, loom, _ = models.unet()
    with _seeded(3):
        inputs = {"x": torch.randn(2, 4, latent, latent), "t": torch.tensor([500.0, 500.0])}
        inputs["context"] = torch.randn(2, 77, 768)
    return Twin(
        loom,
        reference,
        lambda m, i: m(i["x"], i["t"], i["context"]),
        lambda m, i: m(i["x"], i["t"], i["context"]).sample,
        inputs,
        convolutional=True,
        fixed=("t",),
    )


def vae_twin(models: Models, latent: int) -> Twin:
    """The SD1.5 VAE, which has SDXL's architecture (only the latent scale differs), decoding a ``latent``² latent."""
    reference, loom, _ = models.vae()
    with _seeded(4):
        z = torch.randn(1, 4, latent, latent)
    return Twin(
        loom,
        reference,
        lambda m, i: m.decode(i["z"]),
        lambda m, i: m.decode(i["z"]).sample,
        {"z": z},
        convolutional=True,
    )


def clip_twin(models: Models) -> Twin:
    reference, loom, _ = models.clip()
    with _seeded(5):
        ids = torch.randint(0, 49406, (2, 77))
    ids[:, 0], ids[:, -1] = 49406, 49407
    return Twin(
        loom,
        reference,
        lambda m, i: m(i["ids"], i["eos"]).hidden,
        lambda m, i: m(i["ids"]).last_hidden_state,
        {"ids": ids, "eos": torch.full((2,), 76)},
    )


def sdxl_unet_twin(latent: int, device: torch.device) -> Twin:
    """The full SDXL UNet (2.57 B parameters) on a batch of 2 at ``latent``² latents, 77 context tokens and SDXL's
    size conditioning (1024² original and target, no crop), built in fp32 on ``device``; Loom's module adopts
    diffusers' tensors renamed to the LDM layout (``unet_to_ldm``), so the fp32 weights exist once."""
    from diffusers import UNet2DConditionModel

    from diffusion.unet import sdxl_adm_vector, unet_from_state_dict

    started = time.perf_counter()
    with _seeded(14), device:
        reference: Any = UNet2DConditionModel(**SDXL_UNET)
    reference.eval().requires_grad_(False)
    loom = unet_from_state_dict(unet_to_ldm(reference.state_dict(), reference.config)).eval()
    print(f"  (built the SDXL UNet in {time.perf_counter() - started:.0f} s)", flush=True)
    with _seeded(15):
        x, context, pooled = torch.randn(2, 4, latent, latent), torch.randn(2, 77, 2048), torch.randn(2, 1280)
    inputs = {
        "x": x,
        "t": torch.tensor([500.0, 500.0]),
        "context": context,
        "y": sdxl_adm_vector(pooled, (1024, 1024), (0, 0), (1024, 1024)),
        "pooled": pooled,
        "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2),
    }

    def reference_call(model: Any, i: Inputs) -> torch.Tensor:
        added = {"text_embeds": i["pooled"], "time_ids": i["time_ids"]}
        return model(i["x"], i["t"], i["context"], added_cond_kwargs=added).sample

    return Twin(
        loom,
        reference,
        lambda m, i: m(i["x"], i["t"], i["context"], i["y"]),
        reference_call,
        inputs,
        convolutional=True,
        fixed=("t", "time_ids"),
    )


def sdxl_unet_contenders(latent: int) -> list[Contender]:
    """On the CPU: fp32 only (the module docstring says why)."""
    twin = sdxl_unet_twin(latent, torch.device("cpu"))
    return [
        Contender("loom", "fp32", functools.partial(twin.loom_call, twin.loom, twin.inputs)),
        Contender("diffusers", "fp32", functools.partial(twin.reference_call, twin.reference, twin.inputs)),
    ]


def _randomise_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights at scales that keep activations finite through 57 blocks, drawn where the module is (as
    bench/memory_sdxl.py's ``random_tensor`` draws them for its files): matrices normal(0, 1/sqrt(fan_in)),
    biases normal(0, 0.02), the other 1-D weights (norm scales) normal(1, 0.02)."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, parameter[0].numel() ** -0.5, generator=generator)
            else:
                parameter.normal_(0.0 if name.endswith("bias") else 1.0, 0.02, generator=generator)


def _no_meta_left(module: torch.nn.Module, what: str) -> None:
    left = [name for name, t in itertools.chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: {len(left)} tensors were never given data, e.g. {left[:3]}")


def flux_full_contenders(
    device: torch.device, size: int = 1024, text_tokens: int = 512, depth: tuple[int, int] = (19, 38)
) -> list[Contender]:
    """The whole FLUX.1-dev-size transformer (``depth``: 19 double and 38 single blocks, 11.9 B parameters) at
    ``size``², built straight on ``device`` in bf16 (in fp32 it would be 47.6 GB per side): Loom's drawn at random
    there, diffusers' adopting the same tensors through its single-file converter (the splits are views: one
    23.8 GB copy serves both sides). Loom's fp8 model keeps every 2-D weight in float8_e4m3fn and computes in
    bf16, as ``place`` runs an fp8 file (``diffusion.stored_weights``); diffusers' fp8 counterpart is its own
    layerwise casting (``enable_layerwise_casting``), when this diffusers has it."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from diffusion.flux import FluxConfig, FluxTransformer

    started = time.perf_counter()
    config = FluxConfig(depth=depth[0], depth_single_blocks=depth[1])

    def meta_models() -> tuple[torch.nn.Module, Any]:
        with torch.device("meta"):
            loom = FluxTransformer(config).eval().requires_grad_(False)
            reference: Any = FluxTransformer2DModel(
                num_layers=depth[0], num_single_layers=depth[1], guidance_embeds=True
            )
        return loom, reference.eval().requires_grad_(False)

    loom, reference = meta_models()
    loom = loom.to(torch.bfloat16).to_empty(device=device)
    _randomise_(loom, torch.Generator(device).manual_seed(16))
    weights = dict(loom.state_dict())
    reference.load_state_dict(convert_flux_transformer_checkpoint_to_diffusers(dict(weights)), strict=True, assign=True)
    _no_meta_left(reference, "diffusers' FLUX")
    loom_fp8, reference_fp8 = meta_models()
    fp8 = {key: value.to(torch.float8_e4m3fn) if value.ndim == 2 else value for key, value in weights.items()}
    loom_fp8.load_state_dict(fp8, strict=True, assign=True)
    place(loom_fp8, device, torch.bfloat16)
    del fp8
    print(f"  (built the FLUX transformer on {device} in {time.perf_counter() - started:.0f} s)", flush=True)

    latent = size // 8
    with _seeded(17):
        x, context, pooled = torch.randn(1, 16, latent, latent), torch.randn(1, text_tokens, 4096), torch.randn(1, 768)
    twin = Twin(
        loom, reference, _flux_loom_call, _flux_reference_call, flux_inputs(x, context, pooled), fixed=FLUX_FIXED
    )
    inputs = cast_inputs(twin, device, torch.bfloat16, channels_last=False)
    contenders = [
        Contender("loom", "bf16", functools.partial(_flux_loom_call, loom, inputs), device_bytes(loom)),
        Contender(
            "diffusers", "bf16", functools.partial(_flux_reference_call, reference, inputs), device_bytes(reference)
        ),
        Contender("loom", FP8_MODE, functools.partial(_flux_loom_call, loom_fp8, inputs), device_bytes(loom_fp8)),
    ]
    try:
        reference_fp8.load_state_dict(
            convert_flux_transformer_checkpoint_to_diffusers(dict(weights)), strict=True, assign=True
        )
        reference_fp8.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        call = functools.partial(_flux_reference_call, reference_fp8, inputs)
        contenders.append(Contender("diffusers", FP8_MODE, call, device_bytes(reference_fp8)))
    except Exception as error:  # an optional contender: the case stands without it
        print(f"  diffusers {FP8_MODE} left out: {type(error).__name__}: {error}", flush=True)
    return contenders


def time_on_device(
    contenders: list[Contender], repeats: int, warmups: int = 2
) -> tuple[list[float], list[int], dict[str, torch.Tensor]]:
    """Min-of-``repeats`` seconds per contender (rounds interleaved, each call bracketed by
    ``torch.cuda.synchronize()``), its peak VRAM (``Contender.weight_bytes`` plus what its own call allocated
    above what was in use before it) and its warm-up output for the parity check (on the CPU, in fp32)."""
    outputs: dict[str, torch.Tensor] = {}
    peaks = []
    best = [float("inf")] * len(contenders)
    with torch.no_grad():
        for c in contenders:
            for _ in range(warmups):
                out = c.call()
            outputs[f"{c.side}/{c.mode}"] = out.float().cpu()
            del out
        for c in contenders:
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            c.call()
            torch.cuda.synchronize()
            peaks.append(c.weight_bytes + torch.cuda.max_memory_allocated() - before)
        for _ in range(repeats):
            for index, c in enumerate(contenders):
                torch.cuda.synchronize()
                start = time.perf_counter()
                c.call()
                torch.cuda.synchronize()
                best[index] = min(best[index], time.perf_counter() - start)
    return best, peaks, outputs


def run_device_case(case: str, contenders: list[Contender], repeats: int, peaks: dict[str, float]) -> list[Row]:
    """Time one case's contenders; parity against diffusers in fp32 where it ran (else its first mode)."""
    reference = next(c for c in contenders if c.side == "diffusers")
    gflop = count_gflop(reference.call)
    seconds, peak_bytes, outputs = time_on_device(contenders, repeats)
    base = f"diffusers/{reference.mode}"
    expected = outputs[base]
    print(
        f"  {case}: {gflop:,.0f} GFLOP per call (counted on {base}); outputs against {base} "
        f"(max |{base}| {expected.abs().max().item():.2e}):"
    )
    for name, output in outputs.items():
        if name != base:
            print(f"    {name}: max |out - {base}| = {(output - expected).abs().max().item():.2e}")
    rows = [Row(case, c.side, c.mode, s, gflop, p) for c, s, p in zip(contenders, seconds, peak_bytes)]
    report_device_rows(rows, peaks)
    return rows


def compute_dtype_name(mode: str) -> str:
    """The dtype a mode multiplies in: ``fp16+CL`` -> fp16; an fp8-weights mode computes in bf16."""
    return "bf16" if mode == FP8_MODE else mode.split("+")[0]


def mode_group(mode: str) -> str:
    """The modes compared with each other for a per-dtype ratio: fp16 (+CL), bf16 (+CL), fp8 weights."""
    return "fp8" if mode == FP8_MODE else compute_dtype_name(mode)


def _gb(n: float | None) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


def report_device_rows(rows: list[Row], peaks: dict[str, float]) -> None:
    print("\n| case | side | mode | min ms | TFLOP/s | % of the card's matmul peak | peak VRAM GB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        peak = peaks.get(compute_dtype_name(row.mode))
        share = f"{100 * row.gflops / peak:.0f} %" if peak else ""
        print(
            f"| {row.case} | {row.side} | {row.mode} | {1000 * row.seconds:.2f} | {row.gflops / 1000:.1f} | {share} "
            f"| {_gb(row.peak_bytes)} |"
        )
    print(flush=True)


def report_device_summary(rows: list[Row]) -> None:
    """Per case: each mode group's ratio (Loom's best / diffusers' best in that group), the fastest of each side,
    and the peak VRAM of those fastest contenders. Issue 20's goals: every ratio <= 0.9, Loom's VRAM <= diffusers'."""
    print("| case | fp32 loom/diffusers | fp16 | bf16 | fp8 weights | fastest: loom (mode) / diffusers (mode) | "
          "ratio | peak VRAM GB loom / diffusers (fastest modes) | VRAM ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for case in dict.fromkeys(r.case for r in rows):
        mine = [r for r in rows if r.case == case]
        ratios = []
        for group in ("fp32", "fp16", "bf16", "fp8"):
            best = {
                side: min((r.seconds for r in mine if r.side == side and mode_group(r.mode) == group), default=None)
                for side in ("loom", "diffusers")
            }
            mine_s, theirs_s = best["loom"], best["diffusers"]
            ratios.append(f"{mine_s / theirs_s:.2f}" if mine_s and theirs_s else "")
        fastest = {
            side: min((r for r in mine if r.side == side), key=lambda r: r.seconds) for side in ("loom", "diffusers")
        }
        lo, di = fastest["loom"], fastest["diffusers"]
        vram = f"{lo.peak_bytes / di.peak_bytes:.2f}" if lo.peak_bytes and di.peak_bytes else ""
        print(
            f"| {case} | {' | '.join(ratios)} | {1000 * lo.seconds:.2f} ms ({lo.mode}) / {1000 * di.seconds:.2f} ms "
            f"({di.mode}) | {lo.seconds / di.seconds:.2f} | {_gb(lo.peak_bytes)} / {_gb(di.peak_bytes)} | {vram} |"
        )


def describe_device(device: torch.device) -> str:
    """The card, its driver, and the torch/CUDA/cuDNN/diffusers versions, for the record."""
    import diffusers
    import transformers

    props = torch.cuda.get_device_properties(device)
    driver = "unknown (no nvidia-smi)"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"]
        result = subprocess.run(query, capture_output=True, text=True)
        driver = result.stdout.strip() or f"unknown (nvidia-smi: {result.stderr.strip()[:200]})"
    return (
        f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, compute "
        f"capability {props.major}.{props.minor}; driver {driver}\ntorch {torch.__version__} (CUDA "
        f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}; cudnn.benchmark {torch.backends.cudnn.benchmark}, "
        f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}"
    )


def device_matmul_peaks(device: torch.device, repeats: int, n: int = 8192) -> dict[str, float]:
    """GFLOP/s of an ``n``³ matmul on random data in each compute dtype: this card's practical ceiling (fp32 as
    torch computes it by default: TF32 off for matmuls)."""
    peaks = {}
    for name, dtype in {"fp32": torch.float32, **DEVICE_DTYPES}.items():
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        seconds, _, _ = time_on_device([Contender("matmul", name, functools.partial(torch.matmul, a, b))], repeats)
        peaks[name] = 2 * n**3 / seconds[0] / 1e9
    return peaks


def run_on_device(cases: list[str], repeats: int, latent: int) -> None:
    """``--device cuda``: every named case that has a device form, each on its own, a failure reported and passed."""
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: this torch ({torch.__version__}, CUDA {torch.version.cuda}) sees no CUDA device"
        )
    device = torch.device("cuda", torch.cuda.current_device())
    print(describe_device(device), flush=True)
    print(f"repeats {repeats}, large latent {latent} ({8 * latent}² image)", flush=True)
    peaks = device_matmul_peaks(device, repeats)
    print(", ".join(f"8192³ {name} matmul {peak / 1000:.0f} TFLOP/s" for name, peak in peaks.items()), flush=True)
    models = Models()
    builders: dict[str, Callable[[], list[Contender]]] = {
        "unet64": lambda: device_contenders(unet_twin(models, 64), device),
        "unet32": lambda: device_contenders(unet_twin(models, 32), device),
        "vae": lambda: device_contenders(vae_twin(models, 64), device),
        "vae1024": lambda: device_contenders(vae_twin(models, latent), device),
        "clip": lambda: device_contenders(clip_twin(models), device),
        "sdxl_unet": lambda: device_contenders(sdxl_unet_twin(latent, device), device),
        "flux": lambda: device_contenders(flux_twin(1024, 512), device),
        "flux_full": lambda: flux_full_contenders(device),
    }
    rows: list[Row] = []
    for case in cases:
        if case not in builders:
            print(f"{case}: no GPU form prepared (only {', '.join(builders)}); skipped", flush=True)
            continue
        print(f"{case} ...", flush=True)
        started = time.perf_counter()
        try:
            rows += run_device_case(case, builders[case](), repeats, peaks)
        except Exception:  # one case's failure (memory, a version mismatch) must not cost the others on a lent card
            traceback.print_exc()
            print(f"{case}: FAILED (traceback above); going on", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        print(f"  ({case} took {time.perf_counter() - started:.0f} s)", flush=True)
    if rows:
        print("\nAll cases:")
        report_device_rows(rows, peaks)
        report_device_summary(rows)


def bf16_skip_reason() -> str | None:
    """Why the bf16 modes cannot be measured meaningfully here, or None when they can."""
    if cpu_computes_bf16_fast():
        return None
    return (
        f"this CPU ({torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 kernels: "
        f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}) has no native bf16, so bf16 would be computed "
        "in software on both sides; fp32 is the fast mode here"
    )


def run_speed_case(case: str, contenders: list[Contender], repeats: int) -> list[Row]:
    # Counted on the reference: the counter sees aten convolutions and matmuls, not the oneDNN
    # prepacked-weight op Loom's convolutions dispatch to (same arithmetic, different op name).
    gflop = count_gflop(next(c for c in contenders if (c.side, c.mode) == ("diffusers", "fp32")).call)
    seconds, outputs = time_interleaved(contenders, repeats)
    expected = outputs["diffusers/fp32"]
    parity = (outputs["loom/fp32"] - expected).abs().max().item()
    print(
        f"  {case}: {gflop:,.0f} GFLOP per call; fp32 max |loom - diffusers| = {parity:.2e} "
        f"(max |diffusers| {expected.abs().max().item():.2e})"
    )
    for name, output in outputs.items():
        if not name.endswith("/fp32"):
            print(f"    {name}: max |out - diffusers fp32| = {(output - expected).abs().max().item():.2e}")
    return [Row(case, c.side, c.mode, s, gflop) for c, s in zip(contenders, seconds)]


def matmul_peak_gflops(dtype: torch.dtype, repeats: int) -> float:
    """This machine's practical ceiling: a 4096^3 matmul, min of ``repeats`` (the 400–470 GFLOP/s measured earlier are
    another CPU model's; these machines are not all alike)."""
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    seconds, _ = time_interleaved([Contender("matmul", str(dtype), lambda: a @ b)], repeats)
    return 2 * 4096**3 / seconds[0] / 1e9


def report_speed(rows: list[Row], peak: float, peak_dtype: str) -> None:
    print("\n| case | side | mode | min s | GFLOP/s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.case} | {row.side} | {row.mode} | {row.seconds:.3f} | {row.gflops:.0f} |")
    print(
        f"\nbf16 peak: measured earlier {BF16_PEAK_GFLOPS[0]:.0f}-{BF16_PEAK_GFLOPS[1]:.0f} GFLOP/s; "
        f"this machine's 4096^3 {peak_dtype} matmul {peak:.0f} GFLOP/s"
    )
    print(
        "\n| case | fp32 loom/diffusers | fastest: loom (mode) / diffusers (mode) | ratio "
        f"| loom fastest % of the measured bf16 peak | % of this machine's {peak_dtype} matmul |"
    )
    print("|---|---|---|---|---|---|")
    for case in dict.fromkeys(r.case for r in rows):
        mine = [r for r in rows if r.case == case]
        fp32 = {r.side: r for r in mine if r.mode == "fp32"}
        fastest = {
            side: min((r for r in mine if r.side == side), key=lambda r: r.seconds) for side in ("loom", "diffusers")
        }
        lo, di = fastest["loom"], fastest["diffusers"]
        share = "/".join(f"{100 * lo.gflops / p:.0f}" for p in BF16_PEAK_GFLOPS)
        print(
            f"| {case} | {fp32['loom'].seconds / fp32['diffusers'].seconds:.2f} | "
            f"{lo.seconds:.3f} ({lo.mode}) / {di.seconds:.3f} ({di.mode}) | "
            f"{lo.seconds / di.seconds:.2f} | {share} % | {100 * lo.gflops / peak:.0f} % |"
        )


def write_checkpoint(models: Models) -> None:
    """A random SD1.5 single-file checkpoint in fp16, and the diffusers config folder to read it."""
    from diffusers import PNDMScheduler
    from safetensors.torch import save_file

    from diffusion.tokenizer import load_clip_tokenizer

    reference_unet, _, unet_weights = models.unet()
    reference_vae, _, vae_weights = models.vae()
    reference_clip, _, clip_weights = models.clip()
    tensors = {}
    for prefix, weights in (
        ("model.diffusion_model.", unet_weights),
        ("first_stage_model.", vae_weights),
        ("cond_stage_model.transformer.", clip_weights),
    ):
        tensors.update({prefix + k: v.to(torch.float16).contiguous() for k, v in weights.items()})
    save_file(tensors, str(CHECKPOINT))
    del tensors

    reference_unet.save_config(CONFIG_DIR / "unet")
    reference_vae.save_config(CONFIG_DIR / "vae")
    reference_clip.config.save_pretrained(CONFIG_DIR / "text_encoder")
    # transformers' CLIPTokenizer files, derived from the shipped BPE vocabulary as diffusion/tokenizer.py does.
    (CONFIG_DIR / "tokenizer").mkdir(parents=True, exist_ok=True)
    (CONFIG_DIR / "tokenizer" / "vocab.json").write_text(json.dumps(load_clip_tokenizer().token_ids), encoding="utf-8")
    merges = gzip.open(VOCAB_FILE, "rt", encoding="utf-8").read().split("\n")[1:48895]
    (CONFIG_DIR / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).save_config(CONFIG_DIR / "scheduler")
    (CONFIG_DIR / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "feature_extractor": [None, None],
                "safety_checker": [None, None],
                "requires_safety_checker": False,
                "scheduler": ["diffusers", "PNDMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        ),
        encoding="utf-8",
    )


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe_load(loader: str) -> None:
    """Child-process body: import, note RSS, load the checkpoint, print peak and final RSS as JSON."""
    if loader.startswith("loom"):
        from diffusion.checkpoint import load_checkpoint
    else:
        from diffusers import StableDiffusionPipeline
    dtype = {"lazy": None, "fp32": torch.float32, "bf16": torch.bfloat16}[loader.split("-")[1]]
    before = _memory_kb("VmRSS")
    started = time.perf_counter()
    if loader.startswith("loom"):
        loaded = load_checkpoint(CHECKPOINT, dtype=dtype)
    else:
        loaded = StableDiffusionPipeline.from_single_file(
            str(CHECKPOINT),
            config=str(CONFIG_DIR),
            local_files_only=True,
            torch_dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    seconds = time.perf_counter() - started
    assert loaded is not None
    print(
        json.dumps(
            {
                "loader": loader,
                "seconds": seconds,
                "rss_before_mb": before / 1024,
                "peak_mb": _memory_kb("VmHWM") / 1024,
                "rss_after_mb": _memory_kb("VmRSS") / 1024,
            }
        )
    )


def run_load_case(models: Models) -> None:
    if not CHECKPOINT.exists() or not (CONFIG_DIR / "model_index.json").exists():
        print(f"  writing {CHECKPOINT} and {CONFIG_DIR} (once)", flush=True)
        write_checkpoint(models)
    print("\n| loader | load s | RSS after imports MB | peak RSS MB | peak − imports MB | RSS after MB |")
    print("|---|---|---|---|---|---|")
    for loader in LOADERS:
        result = subprocess.run([sys.executable, __file__, "--probe", loader], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"load probe {loader} failed:\n{result.stderr[-3000:]}")
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"| {loader} | {r['seconds']:.1f} | {r['rss_before_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] - r['rss_before_mb']:.0f} | {r['rss_after_mb']:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of {', '.join(CASES)} (default on the CPU: {', '.join(CPU_CASES)}; "
        f"on cuda: {', '.join(DEVICE_CASES)})",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides compute (cpu)")
    parser.add_argument(
        "--repeats", type=int, help="timed rounds per contender, min reported (default 3 on the CPU, 10 on cuda)"
    )
    parser.add_argument(
        "--controlnet-latent",
        type=int,
        default=SDXL_CONTROLNET_LATENT,
        help="latent side of the controlnet case (128, SDXL's 1024² image, by default; 64 or 32 to make it quick)",
    )
    parser.add_argument(
        "--large-latent",
        type=int,
        help="latent side of sdxl_unet and vae1024 (default 128, a 1024² image, on cuda; 32 on the CPU, a smoke run)",
    )
    parser.add_argument("--probe", choices=LOADERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe_load(args.probe)
        return
    on_device = args.device == "cuda"
    cases = [c for c in (args.only or ",".join(DEVICE_CASES if on_device else CPU_CASES)).split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    repeats = args.repeats or (10 if on_device else 3)
    latent = args.large_latent or (SDXL_CONTROLNET_LATENT if on_device else 32)
    if on_device:
        run_on_device(cases, repeats, latent)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {repeats}", flush=True)
    skip_bf16 = bf16_skip_reason()
    if skip_bf16:
        print(f"skipped modes bf16, bf16+CL, autocast: {skip_bf16}", flush=True)
    models = Models()
    builders = {
        "unet64": lambda: unet_contenders(models, 64),
        "unet32": lambda: unet_contenders(models, 32),
        "vae": lambda: vae_contenders(models),
        "clip": lambda: clip_contenders(models),
        "flux": flux_contenders,
        "mmdit": mmdit_contenders,
        "zimage": zimage_contenders,
        "qwen3": qwen3_contenders,
        "controlnet": lambda: controlnet_contenders(args.controlnet_latent),
        "sdxl_unet": lambda: sdxl_unet_contenders(latent),
        "vae1024": lambda: vae_contenders(models, latent),
    }
    rows: list[Row] = []
    for case in cases:
        if case == "flux_full":
            print("flux_full: skipped on the CPU: 11.9 B parameters are 47.6 GB per side in fp32, 23.8 in bf16")
        elif case in builders:
            print(f"{case} ..." + (f" (latent {latent}²)" if case in ("sdxl_unet", "vae1024") else ""), flush=True)
            if case == "sdxl_unet":
                print("  fp32 only on the CPU: a bf16 copy of either side would not fit beside 10.3 GB of fp32 weights")
            contenders = [c for c in builders[case]() if not (skip_bf16 and not c.mode.startswith("fp32"))]
            rows += run_speed_case(case, contenders, repeats)
            del contenders  # the model copies of this case's modes go before the next case builds its own
            gc.collect()
    if rows:
        fp32_peak = matmul_peak_gflops(torch.float32, repeats)
        if skip_bf16:
            print(f"4096^3 matmul: fp32 {fp32_peak:.0f} GFLOP/s (bf16 skipped)")
            report_speed(rows, fp32_peak, "fp32")
        else:
            bf16_peak = matmul_peak_gflops(torch.bfloat16, repeats)
            print(f"4096^3 matmul: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s")
            report_speed(rows, bf16_peak, "bf16")
    if "load" in cases:
        run_load_case(models)


if __name__ == "__main__":
    main()
