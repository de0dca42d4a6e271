"""The output cache keeps results within its byte budgets: offload device tensors first, then drop LRU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from graph.cache import CacheBudgetError, OutputCache
from graph.sizeof import SMALL_OBJECT_BYTES, device_nbytes, is_device_tensor, nbytes, sizes


class FakeTensor:
    """Duck-types the bits of ``torch.Tensor`` the cache uses, on a pretend accelerator."""

    def __init__(self, count: int, device: str = "cuda", itemsize: int = 4) -> None:
        self.count, self.itemsize = count, itemsize
        self.device = SimpleNamespace(type=device)

    def element_size(self) -> int:
        return self.itemsize

    def nelement(self) -> int:
        return self.count

    def to(self, device: str) -> FakeTensor:
        return FakeTensor(self.count, device, self.itemsize)


class Sized:
    def __init__(self, size: int) -> None:
        self.size = size

    def loom_nbytes(self) -> int:
        return self.size


class FakeModule:
    """Duck-types a torch module of one layer: parameters and buffers."""

    def __init__(self, *counts: int) -> None:
        self.tensors = [FakeTensor(count, "cpu") for count in counts]

    def modules(self) -> list[FakeModule]:
        return [self]

    def parameters(self, recurse: bool = True) -> list[FakeTensor]:
        return self.tensors[:-1]

    def buffers(self, recurse: bool = True) -> list[FakeTensor]:
        return self.tensors[-1:]


class Handle:
    """A model handle's shape: shared modules, plus what the handle holds alone."""

    def __init__(self, *parts: object) -> None:
        self.parts = parts

    def loom_parts(self) -> tuple[object, ...]:
        return self.parts


# --- sizeof ----------------------------------------------------------------------------------------


def test_torch_tensors_count_their_element_bytes() -> None:
    torch = pytest.importorskip("torch")
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [0, 1]}
    assert nbytes(torch.zeros(3, 5, dtype=torch.float16)) == 30
    assert nbytes(latent) == 2 * 4 * 8 * 8 * 4 + 2 * SMALL_OBJECT_BYTES
    assert device_nbytes(latent) == 0
    assert not is_device_tensor(torch.zeros(1))


def test_containers_sum_their_items_and_count_shared_objects_once() -> None:
    shared = Sized(1000)
    conditioning = [[shared, {"pooled_output": Sized(10)}], [shared, {}]]
    assert nbytes(conditioning) == 1010
    assert nbytes((b"abcd", "xy")) == 6


def test_device_bytes_count_only_tensors_off_the_cpu() -> None:
    value = ([FakeTensor(10, "cuda")], [FakeTensor(5, "cpu")])
    assert sizes(value) == (60, 40)
    assert is_device_tensor(FakeTensor(1, "mps"))


def test_deeply_nested_values_do_not_recurse() -> None:
    value: list = []
    for _ in range(50_000):
        value = [value]
    assert nbytes(value) == 0


def test_numpy_style_objects_report_nbytes() -> None:
    assert nbytes(SimpleNamespace(nbytes=123)) == 123


def test_modules_hold_their_parameters_and_buffers() -> None:
    assert nbytes(FakeModule(10, 20, 5)) == 35 * 4
    torch = pytest.importorskip("torch")
    assert nbytes(torch.nn.BatchNorm1d(8)) == 4 * 8 * 4 + 8  # weight, bias, running mean and var, a counter


def test_handles_over_one_checkpoint_are_charged_its_modules_once() -> None:
    unet, vae = FakeModule(100, 1), FakeModule(50, 1)
    model, clip = Handle(unet, vae), Handle(unet, vae)
    lora = Handle(unet, vae, Sized(30))
    checkpoint = (100 + 1 + 50 + 1) * 4
    assert nbytes(model) == nbytes(clip) == checkpoint
    assert nbytes([model, clip, vae]) == checkpoint
    assert nbytes((model, lora)) == checkpoint + 30


# --- the cache -------------------------------------------------------------------------------------


def outputs(size: int) -> tuple[list, ...]:
    return ([Sized(size)],)


def test_get_returns_what_put_stored_with_its_ui_and_counts_hits() -> None:
    cache = OutputCache()
    cache.put(b"k", outputs(10), {"images": [{"filename": "a.png"}]})
    entry = cache.get(b"k")
    assert entry is not None and entry.ui == {"images": [{"filename": "a.png"}]} and entry.nbytes == 10
    assert cache.get(b"missing") is None
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses) == (1, 10, 1, 1)


def test_replacing_a_key_does_not_double_count() -> None:
    cache = OutputCache()
    cache.put(b"k", outputs(10))
    cache.put(b"k", outputs(30))
    assert cache.stats().bytes == 30 and len(cache) == 1


def test_over_budget_the_least_recently_used_entries_go_first() -> None:
    cache = OutputCache(budget_bytes=100)
    cache.put(b"a", outputs(40))
    cache.put(b"b", outputs(40))
    cache.get(b"a")
    cache.put(b"c", outputs(40))
    assert b"b" not in cache and b"a" in cache and b"c" in cache
    assert cache.stats().evictions == 1 and cache.stats().bytes == 80


def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    cache = OutputCache(budget_bytes=50)
    cache.put(b"a", outputs(10))
    cache.put(b"huge", outputs(60))
    assert len(cache) == 0 and cache.stats().evictions == 2


def test_over_the_device_budget_tensors_are_offloaded_before_anything_is_dropped() -> None:
    cache = OutputCache(budget_bytes=10_000, device_budget_bytes=500)
    cache.put(b"old", ([FakeTensor(100)],))
    cache.put(b"new", ([FakeTensor(100)],))
    assert len(cache) == 2
    stats = cache.stats()
    assert (stats.device_bytes, stats.bytes, stats.offloads, stats.offloaded_bytes, stats.evictions) == (
        400,
        800,
        1,
        400,
        0,
    )
    old = cache.get(b"old")
    assert old is not None and old.outputs[0][0].device.type == "cpu" and old.device_nbytes == 0
    assert cache.get(b"new").outputs[0][0].device.type == "cuda"


def test_device_bytes_count_against_the_device_budget_only_until_they_are_offloaded() -> None:
    cache = OutputCache(budget_bytes=500, device_budget_bytes=1_000)
    cache.put(b"latent", ([FakeTensor(200)],))  # 800 bytes on the device, none in RAM
    cache.put(b"text", outputs(400))
    assert len(cache) == 2 and cache.stats().evictions == 0, "RAM and VRAM are two budgets"
    cache.put(b"image", ([FakeTensor(100)],))  # 1,200 on the device: the oldest device entry moves to RAM
    stats = cache.stats()
    assert (stats.offloads, stats.device_bytes) == (1, 400)
    # Offloaded first, then dropped because RAM (400 + 800) overflowed: the least recently used goes.
    assert (b"latent" in cache, b"text" in cache, b"image" in cache, stats.evictions) == (False, True, True, 1)
    assert stats.bytes - stats.device_bytes == 400


def test_offloading_keeps_container_shapes() -> None:
    cache = OutputCache(device_budget_bytes=0)
    cache.put(b"latent", ([{"samples": FakeTensor(4), "batch_index": [0]}],))
    entry = cache.get(b"latent")
    assert entry.outputs[0][0]["samples"].device.type == "cpu" and entry.outputs[0][0]["batch_index"] == [0]


def test_entries_the_running_prompt_touched_are_pinned_until_it_ends() -> None:
    cache = OutputCache(budget_bytes=100)
    cache.put(b"before", outputs(60))
    with cache.prompt_scope():
        cache.get(b"before")
        cache.put(b"during", outputs(60))
        assert b"before" in cache and b"during" in cache, "nothing the prompt uses may be evicted mid-prompt"
    assert cache.stats().bytes <= 100
    assert b"before" not in cache and b"during" in cache


def test_unpinned_entries_are_evicted_while_a_prompt_runs() -> None:
    cache = OutputCache(budget_bytes=100)
    cache.put(b"old", outputs(60))
    with cache.prompt_scope():
        cache.put(b"new", outputs(60))
        assert b"old" not in cache


def test_clear_frees_everything() -> None:
    cache = OutputCache()
    cache.put(b"a", outputs(10))
    cache.get(b"a")
    cache.clear()
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.device_bytes, stats.hits) == (0, 0, 0, 1)


def test_an_object_several_entries_hold_is_charged_once_and_freed_with_the_last() -> None:
    modules = FakeModule(100, 0)
    cache = OutputCache(budget_bytes=600)
    cache.put(b"loader", ([Handle(modules)],))
    cache.put(b"lora", ([Handle(modules, Sized(40))],))
    assert cache.stats().bytes == 400 + 40
    cache.put(b"other", outputs(150))
    assert cache.stats().bytes == 590 and len(cache) == 3
    cache.put(b"more", outputs(50))  # evicting the loader frees nothing the LoRA entry still holds ...
    assert b"loader" not in cache and b"lora" not in cache  # ... so the LoRA entry goes too
    assert cache.stats().bytes == 200 and cache.stats().evictions == 2


def test_replacing_an_entry_keeps_what_the_new_one_shares_with_it() -> None:
    modules = FakeModule(100, 0)
    cache = OutputCache()
    cache.put(b"k", ([Handle(modules)],))
    cache.put(b"k", ([Handle(modules, Sized(8))],))
    assert cache.stats().bytes == 408
    cache.clear()
    assert cache.stats().bytes == 0


def test_what_grows_after_it_was_stored_is_measured_again_when_the_prompt_ends() -> None:
    """Weights are cast to the compute dtype and LoRA weights computed on first use, after the loader's put."""
    growing = Sized(40)
    cache = OutputCache(budget_bytes=100)
    cache.put(b"old", outputs(30))
    with cache.prompt_scope():
        cache.put(b"model", ([growing],))
        growing.size = 80
    assert cache.stats().bytes == 80 and b"old" not in cache


def test_get_many_looks_up_a_whole_prompt() -> None:
    cache = OutputCache()
    cache.put(b"a", outputs(1))
    found = cache.get_many({"1": b"a", "2": b"b"})
    assert list(found) == ["1"]
    assert (cache.stats().hits, cache.stats().misses) == (1, 1)


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(CacheBudgetError, match="budget_bytes"):
        OutputCache(budget_bytes=-1)
