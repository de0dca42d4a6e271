"""Choosing a worker: an idle one already holding the prompt's models, else the least busy."""

from __future__ import annotations

from server.distributed.placement import Dispatcher, model_files

SD15 = frozenset({"sd15.safetensors"})
XL = frozenset({"xl.safetensors"})


def dispatcher(*names: str) -> Dispatcher:
    pool = Dispatcher()
    for name in names:
        pool.add(name)
    return pool


def test_model_files_are_the_loader_inputs_naming_files_and_can_be_limited_to_nodes():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {
            "class_type": "LoraLoader",
            "inputs": {"lora_name": "detail.safetensors", "model": ["1", 0], "strength_model": 1.0},
        },
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 5}},
        "4": {"class_type": "Odd", "inputs": {"ckpt_name": ["1", 0]}},
    }
    assert model_files(prompt) == {"sd15.safetensors", "detail.safetensors"}
    assert model_files(prompt, ["2", "3", "missing"]) == {"detail.safetensors"}


def test_an_idle_worker_holding_the_checkpoint_wins_over_an_idle_empty_one():
    pool = dispatcher("a", "b")
    pool.release(pool.acquire(XL), XL)  # a has run an XL prompt
    assert pool.acquire(SD15) == "b" and pool.book("b").running == 1
    pool.release("b", SD15)
    assert pool.acquire(SD15) == "b"
    assert pool.acquire(XL) == "a"


def test_without_a_holder_the_least_busy_worker_is_chosen_and_work_spreads():
    pool = dispatcher("a", "b", "c")
    assert [pool.acquire(SD15) for _ in range(3)] == ["a", "b", "c"]
    pool.release("b", SD15)
    assert pool.acquire(XL) == "b"  # the only idle one, though it holds another model
    assert pool.acquire(XL) == "a"  # all busy: the least busy, then the one that finished fewest


def test_a_busy_holder_does_not_beat_an_idle_worker():
    pool = dispatcher("a", "b")
    pool.release(pool.acquire(SD15), SD15)
    assert pool.acquire(SD15) == "a"
    assert pool.acquire(SD15) == "b"


def test_excluded_and_removed_workers_are_never_chosen():
    pool = dispatcher("a", "b")
    assert pool.acquire(SD15, exclude=["a"]) == "b"
    pool.remove("b")
    pool.release("b", SD15)  # the release of a removed worker is ignored
    assert pool.acquire(SD15, exclude=["a"]) is None and pool.names() == ["a"]


def test_free_forgets_every_held_model():
    pool = dispatcher("a", "b")
    pool.release(pool.acquire(SD15), SD15)
    pool.forget_models()
    assert pool.book("a").held == set() and pool.acquire(SD15) == "b"
