"""Splitting a model into blocks that can be streamed, and placing a model larger than the budget in part.

The CPU stands in for both devices: what proves a block was streamed is that its weights are unreachable (on
the meta device) outside its own call, and the bytes ``ModelMemory`` counts in flight.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion.devices import compute_device
from diffusion.model_memory import MemoryBudgetError, ModelMemory, module_bytes
from diffusion.weight_streaming import KEEP_RESIDENT, split_units

WIDTH = 16
LINEAR_BYTES = WIDTH * WIDTH * 4 + WIDTH * 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(WIDTH, WIDTH)
        self.outer = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(x)))


class FusedBlock(Block):
    """Reads its layers' weights itself, as a fused MLP does."""

    loom_stream_whole = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.relu(self.inner(x)), self.outer.weight, self.outer.bias)


class EnteredByMethod(Block):
    """Called through a method besides forward, as Chroma calls a FLUX block's ``modulated``."""

    loom_stream_whole = True
    loom_stream_methods = ("scaled",)

    def scaled(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        return self.outer(self.inner(x)) * factor


class Group(nn.Module):
    """Only groups blocks; the model calls them itself."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(count))


class Model(nn.Module):
    def __init__(self, count: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.scale = nn.Parameter(torch.ones(WIDTH))
        self.group = Group(count)
        self.head = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.group.blocks:
            x = block(x * self.scale)
        return self.head(x)


def test_blocks_are_split_through_the_root_containers_and_modules_without_a_forward() -> None:
    model = Model()
    units, resident = split_units(model, module_bytes, largest=1 << 30)
    assert [type(u.module).__name__ for u in units] == ["Block"] * 4 + ["Linear"]
    assert [u.size for u in units] == [2 * LINEAR_BYTES] * 4 + [LINEAR_BYTES]
    assert resident[:3] == [model, model.group, model.group.blocks], "their own tensors stay on the device"


def test_a_block_larger_than_the_limit_is_split_unless_it_reads_its_layers_itself() -> None:
    plain, fused = Block(), FusedBlock()
    holder = nn.ModuleList([plain, fused])
    units, _ = split_units(holder, module_bytes, largest=LINEAR_BYTES)
    assert [u.module for u in units] == [plain.inner, plain.outer, fused]


def test_a_module_marked_keep_resident_stays_inside_its_streamed_block() -> None:
    model = Model(count=2)
    setattr(model.group.blocks[0].inner, KEEP_RESIDENT, True)
    units, resident = split_units(model, module_bytes, largest=1 << 30)
    assert units[0].size == LINEAR_BYTES and model.group.blocks[0].inner in resident


def test_a_model_over_the_budget_streams_its_blocks_with_the_same_result_and_within_the_budget() -> None:
    model = Model()
    x = torch.randn(3, WIDTH)
    want = model(x)
    budget = 3 * 2 * LINEAR_BYTES  # the head, one resident block, one block in flight, the root's scale
    memory = ModelMemory("cpu", budget, unreachable_streaming=True)
    memory.use(model)
    assert memory.is_partial(model)
    assert model.group.blocks[-1].inner.weight.device.type == "meta", "unreachable between its calls"
    assert torch.equal(model(x), want)
    assert 0 < memory.peak_bytes <= budget
    assert compute_device(model) == torch.device("cpu")


def test_a_block_entered_through_a_declared_method_is_bound_for_that_call() -> None:
    block = EnteredByMethod()
    x = torch.randn(2, WIDTH)
    want = block.scaled(x, 2.0)
    memory = ModelMemory("cpu", 2 * LINEAR_BYTES + 1, unreachable_streaming=True)
    holder = nn.ModuleList([block, Block()])
    memory.use(holder)
    assert block.inner.weight.device.type == "meta"
    assert torch.equal(block.scaled(x, 2.0), want)
    assert block.inner.weight.device.type == "meta", "released again after the call"


def test_an_exception_inside_a_streamed_block_still_releases_its_weights() -> None:
    model = Model()
    memory = ModelMemory("cpu", 3 * 2 * LINEAR_BYTES, unreachable_streaming=True)
    memory.use(model)
    with pytest.raises(RuntimeError):
        model(torch.randn(3, WIDTH + 1))
    assert model.group.blocks[-1].inner.weight.device.type == "meta"
    assert memory.peak_bytes <= memory.budget_bytes
    assert torch.isfinite(model(torch.randn(3, WIDTH))).all(), "the next call binds them again"


def test_a_budget_below_the_largest_block_is_refused_with_the_sizes() -> None:
    model = Model()
    memory = ModelMemory("cpu", LINEAR_BYTES)  # blocks over a quarter of it are split down to their layers
    with pytest.raises(MemoryBudgetError) as refused:
        memory.use(model)
    assert refused.value.needed == LINEAR_BYTES + WIDTH * 4  # the largest layer and the root's scale
    assert "streamed block by block" in str(refused.value)


def test_a_partial_model_is_placed_whole_once_the_budget_allows_and_offloading_ends_streaming() -> None:
    model = Model()
    x = torch.randn(3, WIDTH)
    want = model(x)
    memory = ModelMemory("cpu", 3 * 2 * LINEAR_BYTES, unreachable_streaming=True)
    memory.use(model)
    memory.budget_bytes = 10 * module_bytes(model)
    memory.use(model)
    assert memory.is_resident(model) and not memory.is_partial(model)
    assert all(p.device.type == "cpu" for p in model.parameters()), "no stand-ins left"
    memory.budget_bytes = 3 * 2 * LINEAR_BYTES
    memory.use(model)
    memory.offload(model)
    assert not memory.is_resident(model) and all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(model(x), want)
