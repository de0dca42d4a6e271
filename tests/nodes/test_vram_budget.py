"""``--vram-budget``: a workflow whose models do not fit keeps what fits on the device, streams the rest block by
block, and gives the same picture, bit for bit.

On the CPU the budget is a simulation: nothing moves, but the streamed blocks' weights are made unreachable
between their calls (``ModelMemory.unreachable_streaming``), so a model that read a streamed weight outside
that block's own call (where, on a GPU, it would still sit in CPU RAM) fails here instead of passing. Each
model is given a budget of its own that keeps about a third of its blocks resident, since the tiny text
encoders' token tables would otherwise decide the budget of every model.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffusion.model_memory import ModelMemory, module_bytes
from diffusion.weight_streaming import direct_tensors, split_units
from graph.services import services_context
from graph.validation import validate_prompt
from nodes.runtime import Runtime, RuntimeOptions, build_runtime
from server.runtime_args import add_runtime_arguments
from tests.examples.test_examples import EXAMPLES, load, provide_models, shrink
from tests.nodes.tiny_models import make_executor, run_prompt


def _uses_models(path: Path) -> bool:
    return any("Loader" in node["class_type"] for node in load(path).values())


#: (example, whether streamed weights are unreachable between calls): every example that loads a model. A LoRA
#: handle computes its patched weights from the loaded ones outside any call, so with LoRAs the blocks rest
#: readable, as in production.
EXAMPLES_STREAMED = [
    (path.name.removesuffix(".api.json"), "lora" not in path.name)
    for path in sorted(EXAMPLES.glob("*.api.json"))
    if _uses_models(path)
]


def budget_for(models: tuple[nn.Module, ...]) -> int:
    """A budget that keeps the resident tensors, the largest block in flight and about a third of the other
    blocks on the device, so every one of ``models`` is placed in part."""
    total = sum(module_bytes(m) for m in models)

    def needs(budget: int) -> tuple[int, int]:  # (resident tensors + largest block, blocks' bytes) at ``budget``
        splits = [split_units(m, module_bytes, budget // 4) for m in models]
        glue = sum(t.numel() * t.element_size() for _, kept in splits for m in kept for *_, t in direct_tensors(m))
        largest = max(u.size for units, _ in splits for u in units)
        return glue + largest, total - glue - largest

    budget = total
    for _ in range(4):  # a quarter of the budget bounds a block, so the split moves with the budget: settle it
        fixed, blocks = needs(budget)
        budget = fixed + blocks // 3
    while needs(budget)[0] > budget:
        budget += budget // 8
    assert budget < total, "the budget leaves something to stream"
    return budget


@contextmanager
def budget_per_use(memory: ModelMemory) -> Iterator[list[tuple[str, int, bool]]]:
    """Set the budget for each ``use`` from its own models; yield (model, budget, placed in part) per use."""
    record: list[tuple[str, int, bool]] = []
    plain_use = memory.use

    def use(*models: nn.Module, extra_bytes: int = 0) -> None:
        if not all(memory.is_partial(m) for m in models):
            memory.budget_bytes = 1 << 40
            plain_use(*models)  # placed whole first: cast to the compute dtype, so the budget is sized on that
            memory.budget_bytes = budget_for(models)
        memory.peak_bytes = 0
        plain_use(*models, extra_bytes=extra_bytes)
        record.append((type(models[0]).__name__, memory.budget_bytes, all(memory.is_partial(m) for m in models)))

    memory.use = use  # type: ignore[method-assign]
    yield record


def run_example(name: str, base: Path, runtime: Runtime) -> np.ndarray:
    prompt = load(EXAMPLES / f"{name}.api.json")
    with services_context(runtime):
        provide_models(prompt, runtime.folders)
        shrink(prompt)
        run_prompt(make_executor(), prompt, name)
    (saved,) = runtime.folders.output.rglob("*.png")
    pixels = np.asarray(Image.open(saved))
    saved.unlink()
    return pixels


def runtime_at(base: Path, vram_budget: int | None, device: str = "cpu") -> Runtime:
    dtype = "fp32" if device == "cpu" else "auto"
    return build_runtime(RuntimeOptions(base_dir=base, device=device, dtype=dtype, vram_budget_bytes=vram_budget))


@pytest.mark.parametrize(("name", "unreachable"), EXAMPLES_STREAMED)
def test_a_workflow_streaming_every_model_gives_the_same_picture(name: str, unreachable: bool, tmp_path: Path) -> None:
    whole = run_example(name, tmp_path, runtime_at(tmp_path, None))
    streaming = runtime_at(tmp_path, 1 << 40)
    streaming.memory.unreachable_streaming = unreachable
    peaks: list[tuple[int, int]] = []
    with budget_per_use(streaming.memory) as uses:
        plain_exit = streaming.memory._exit_stream

        def exit_stream(size: int) -> None:
            peaks.append((streaming.memory.peak_bytes, streaming.memory.budget_bytes))
            plain_exit(size)

        streaming.memory._exit_stream = exit_stream  # type: ignore[method-assign]
        streamed = run_example(name, tmp_path, streaming)
    assert np.array_equal(whole, streamed)
    assert uses and all(partial for _, _, partial in uses), uses
    assert {"AutoencoderKL"} < {model for model, _, _ in uses}, "the diffusion model and the VAE streamed too"
    assert peaks and all(peak <= budget for peak, budget in peaks), "blocks in flight stayed within the budget"


def test_a_budget_below_the_largest_block_names_the_sizes(tmp_path: Path) -> None:
    runtime = runtime_at(tmp_path, 1 << 20)
    prompt = load(EXAMPLES / "sd15_txt2img.api.json")
    with services_context(runtime):
        provide_models(prompt, runtime.folders)
        shrink(prompt)
        executor = make_executor()
        valid = validate_prompt(prompt, executor.registry)
        record = executor.execute(valid.prompt, valid.outputs, prompt_id="p")
    assert record.error is not None and record.error["node_type"] == "CLIPTextEncode"
    message: str = record.error["exception_message"]
    assert "budget is 1.0 MiB" in message and "streamed block by block" in message


def test_vram_budget_is_a_flag_of_serve_and_run() -> None:
    parser = argparse.ArgumentParser()
    add_runtime_arguments(parser)
    options = RuntimeOptions.of(parser.parse_args(["--vram-budget", "6G"]))
    assert options.vram_budget_bytes == 6 * 2**30
    assert RuntimeOptions.of(parser.parse_args([])).vram_budget_bytes is None
    with pytest.raises(ValueError, match="positive size"):
        RuntimeOptions(vram_budget_bytes=0)


def test_the_runtime_memory_takes_the_budget(tmp_path: Path) -> None:
    assert runtime_at(tmp_path, 6 * 2**30).memory.budget_bytes == 6 * 2**30


def test_the_cache_vram_budget_is_a_flag_and_reaches_the_runtime(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_runtime_arguments(parser)
    options = RuntimeOptions.of(parser.parse_args(["--cache-vram-budget", "2G"]))
    assert options.cache_vram_budget_bytes == 2 * 2**30
    given = build_runtime(RuntimeOptions(base_dir=tmp_path, device="cpu", cache_vram_budget_bytes=2**30))
    assert given.cache_vram_budget_bytes == 2**30
    assert runtime_at(tmp_path, None).cache_vram_budget_bytes is None, "the CPU makes no device outputs to bound"
    with pytest.raises(ValueError, match="cache vram budget"):
        RuntimeOptions(cache_vram_budget_bytes=-1)


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; the CPU simulation above covers every path"
)
@pytest.mark.parametrize("name", ["sdxl_txt2img", "flux_dev_txt2img", "zimage_turbo_txt2img"])
def test_on_a_gpu_streamed_blocks_really_move_and_give_the_same_picture(name: str, tmp_path: Path) -> None:
    whole = run_example(name, tmp_path, runtime_at(tmp_path, None, "cuda"))
    streaming = runtime_at(tmp_path, 1 << 40, "cuda")
    with budget_per_use(streaming.memory) as uses:
        streamed = run_example(name, tmp_path, streaming)
    assert np.array_equal(whole, streamed)
    assert uses and all(partial for _, _, partial in uses), uses
