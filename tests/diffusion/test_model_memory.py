"""Placing models within a memory budget: LRU offloading, counted moves (CPU stands in for both sides).
Sharing loads without owning them: neither placement nor sharing keeps a model alive."""

from __future__ import annotations

import copy
import gc
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.checkpoint import open_state_dict
from diffusion.fused_linear import FusedLinear
from diffusion.lora import FullDelta, apply_lora_patches
from diffusion.model_memory import MemoryBudgetError, ModelMemory, module_bytes, place
from diffusion.onednn import onednn_computes
from diffusion.packed_conv import PackedConv2d

MODEL_BYTES = 16 * 16 * 4 + 16 * 4  # one fp32 Linear(16, 16)


class Recorded(nn.Linear):
    """A model that logs every move into a shared journal."""

    def __init__(self, name: str, journal: list[tuple[str, str]]) -> None:
        super().__init__(16, 16)
        self.name = name
        self.journal = journal

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Every move (``.to``, ``place``) goes through here; where fn sends a tensor is where it moves.
        self.journal.append((self.name, str(fn(torch.empty(0)).device)))
        return super()._apply(fn, recurse)


@pytest.fixture
def journal() -> list[tuple[str, str]]:
    return []


def _models(journal: list[tuple[str, str]], *names: str) -> list[Recorded]:
    return [Recorded(n, journal) for n in names]


def test_module_bytes_counts_parameters_and_buffers() -> None:
    model = nn.BatchNorm1d(8)  # 2 parameters + running mean/var + a counter
    assert module_bytes(model) == 4 * 8 * 4 + 8


def test_a_model_is_moved_once_and_then_stays(journal) -> None:
    (a,) = _models(journal, "a")
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES)
    memory.use(a)
    memory.use(a)
    assert journal == [("a", "cpu")]
    assert memory.is_resident(a)
    assert memory.resident_bytes == MODEL_BYTES


def test_a_model_already_on_the_device_counts_as_resident(journal) -> None:
    (a,) = _models(journal, "a")
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES, offload_device="meta")
    memory.use(a)
    assert journal == []
    assert memory.resident_bytes == MODEL_BYTES


def test_least_recently_used_models_are_offloaded_to_make_room(journal) -> None:
    a, b, c = _models(journal, "a", "b", "c")
    memory = ModelMemory("cpu", budget_bytes=2 * MODEL_BYTES)
    memory.use(a)
    memory.use(b)
    memory.use(a)  # a is now more recent than b
    journal.clear()
    memory.use(c)
    assert journal == [("b", "cpu"), ("c", "cpu")]
    assert [memory.is_resident(m) for m in (a, b, c)] == [True, False, True]


def test_only_as_much_is_offloaded_as_needed(journal) -> None:
    a, b, c, d = _models(journal, "a", "b", "c", "d")
    memory = ModelMemory("cpu", budget_bytes=3 * MODEL_BYTES)
    for model in (a, b, c):
        memory.use(model)
    memory.use(d)
    assert [memory.is_resident(m) for m in (a, b, c, d)] == [False, True, True, True]


def test_models_used_together_never_evict_each_other(journal) -> None:
    a, b, c = _models(journal, "a", "b", "c")
    memory = ModelMemory("cpu", budget_bytes=2 * MODEL_BYTES)
    memory.use(a)
    memory.use(b)
    memory.use(c, a)
    assert [memory.is_resident(m) for m in (a, b, c)] == [True, False, True]


def test_working_memory_counts_against_the_budget(journal) -> None:
    a, b = _models(journal, "a", "b")
    memory = ModelMemory("cpu", budget_bytes=2 * MODEL_BYTES)
    memory.use(a)
    memory.use(b, extra_bytes=MODEL_BYTES // 2)
    assert not memory.is_resident(a)


def test_a_request_larger_than_the_budget_is_refused_with_sizes(journal) -> None:
    a, b = _models(journal, "a", "b")
    memory = ModelMemory("cpu", budget_bytes=MODEL_BYTES + 1)
    memory.use(a)
    with pytest.raises(MemoryBudgetError) as err:
        memory.use(a, b)
    assert (err.value.needed, err.value.budget) == (2 * MODEL_BYTES, MODEL_BYTES + 1)
    assert "MiB" in str(err.value)
    assert memory.is_resident(a)  # nothing was offloaded for a request that cannot succeed


def test_registered_sizes_override_parameter_counts(journal) -> None:
    a, b = _models(journal, "a", "b")
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES - 1)
    memory.register(a, size_bytes=9 * MODEL_BYTES)
    memory.use(a)
    memory.use(b)
    assert not memory.is_resident(a)


def test_unload_all_and_offload_move_models_off_the_device(journal) -> None:
    a, b = _models(journal, "a", "b")
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES)
    memory.use(a, b)
    memory.offload(a)
    assert not memory.is_resident(a) and memory.is_resident(b)
    memory.unload_all()
    assert memory.resident_bytes == 0
    memory.forget(b)
    assert not memory.is_resident(b)


def test_the_budget_of_a_device_leaves_a_reserve() -> None:
    memory = ModelMemory.for_device("cpu", reserve_bytes=1 << 20)
    assert memory.budget_bytes > 0
    assert memory.device == torch.device("cpu")


def test_a_compute_dtype_casts_weights_when_placed_and_counts_the_cast_size() -> None:
    half = nn.Linear(16, 16).half()
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES, dtype=torch.float32)
    assert memory.resident_bytes == 0
    memory.use(half)
    assert half.weight.dtype == torch.float32
    assert memory.resident_bytes == MODEL_BYTES


def test_placing_a_model_never_keeps_it_alive(journal) -> None:
    a, b = _models(journal, "a", "b")
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES)
    memory.use(a, b)
    gone = weakref.ref(a)
    del a
    gc.collect()
    assert gone() is None
    assert memory.resident_bytes == MODEL_BYTES and memory.is_resident(b)


def test_a_shared_load_is_reused_while_held_and_loaded_again_once_dropped() -> None:
    memory = ModelMemory("cpu", budget_bytes=10 * MODEL_BYTES)
    loads: list[str] = []

    def load(name: str) -> nn.Module:
        loads.append(name)
        return nn.Linear(2, 2)

    first = memory.load_shared(("file", 1), lambda: load("file"))
    assert memory.load_shared(("file", 1), lambda: load("file")) is first
    assert memory.load_shared(("file", 2), lambda: load("changed")) is not first  # a new key: a changed file
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None, "the shared-load index must not keep a model alive"
    memory.load_shared(("file", 1), lambda: load("file"))
    assert loads == ["file", "changed", "file"]


class ConvThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = PackedConv2d(4, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.linear = FusedLinear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.conv(x)).mean(dim=(2, 3)))


def _loaded_from_half_file(tmp_path: Path) -> tuple[ConvThenLinear, ConvThenLinear]:
    """(a model whose tensors view an fp16 safetensors file, the same weights cast to fp32 by ``.to``)."""
    torch.manual_seed(0)
    save_file({k: v.half() for k, v in ConvThenLinear().state_dict().items()}, str(tmp_path / "m.safetensors"))
    loaded = ConvThenLinear().requires_grad_(False)
    loaded.load_state_dict(dict(open_state_dict(tmp_path / "m.safetensors")), assign=True)
    return loaded, copy.deepcopy(loaded).float()


def test_placing_casts_like_to_except_weights_that_compute_from_their_stored_copy(tmp_path: Path) -> None:
    model, reference = _loaded_from_half_file(tmp_path)
    place(model, torch.device("cpu"), torch.float32)
    packs = onednn_computes(torch.float32)
    assert model.norm.weight.dtype == model.conv.bias.dtype == model.linear.bias.dtype == torch.float32
    assert (model.linear.weight.dtype, model.linear.computes_in) == (torch.float16, torch.float32)
    assert (model.conv.weight.dtype, model.conv.computes_in) == (
        (torch.float16, torch.float32) if packs else (torch.float32, torch.float32)
    )
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_placed_model_is_counted_at_what_it_holds_computing(tmp_path: Path) -> None:
    model, reference = _loaded_from_half_file(tmp_path)
    place(model, torch.device("cpu"), torch.float32)
    # everything in fp32 but the linear weight, which stays fp16 (the conv's packed copy is fp32)
    assert module_bytes(model) == module_bytes(reference) - model.linear.weight.numel() * 2


def test_a_lora_on_a_weight_computing_from_its_stored_copy_is_summed_in_the_compute_dtype(tmp_path: Path) -> None:
    model, _ = _loaded_from_half_file(tmp_path)
    place(model, torch.device("cpu"), torch.float32)
    delta = torch.full((6, 8), 1e-4)
    patched = apply_lora_patches(model, [({"linear.weight": [FullDelta(delta)]}, 1.0)])
    assert patched["linear.weight"].dtype == torch.float32
    assert torch.equal(patched["linear.weight"], model.linear.weight.float() + delta)
