"""Opening model files: lazy, zero-copy, and precise about what is wrong with a bad file."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint.files import LazyStateDict, open_state_dict, release_file_pages
from tests.diffusion.weight_files import (
    BAD_WEIGHT_FILES,
    PICKLE_SUFFIXES,
    expect_refusal,
    torch_file_bytes,
    write_bad_file,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.a.weight": torch.randn(3, 4, generator=g),
        "model.diffusion_model.b.bias": torch.randn(5, generator=g).half(),
        "first_stage_model.c": torch.randn(2, 2, generator=g).bfloat16(),
        "ids": torch.arange(7),
        "empty": torch.zeros(0, 3),
    }


def _rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def test_safetensors_round_trip_keeps_stored_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), path, metadata={"format": "pt"})
    sd = open_state_dict(path)
    assert set(sd) == set(_tensors())
    assert sd.metadata == {"format": "pt"}
    for key, tensor in _tensors().items():
        assert sd.shape(key) == tuple(tensor.shape)
        assert sd.dtype(key) == tensor.dtype
        assert torch.equal(sd[key], tensor)
    assert sd.nbytes == sum(t.numel() * t.element_size() for t in _tensors().values())


def test_a_header_length_whose_low_byte_looks_like_a_pickle_opcode_is_still_safetensors(tmp_path: Path) -> None:
    """Header lengths of 128 modulo 256 make a file start with 0x80, the pickle protocol opcode."""
    tensor = torch.arange(4, dtype=torch.float32)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    header += b" " * (384 - len(header))  # the format allows trailing spaces in the header
    path = tmp_path / "unlucky.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + tensor.numpy().tobytes())
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(open_state_dict(path)["w"], tensor)


def test_loaded_tensors_are_views_of_the_mapped_file_and_never_write_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), path)
    before = path.read_bytes()
    sd = open_state_dict(path)
    first, second = sd["ids"], sd["ids"]
    assert first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
    first.add_(1)
    assert path.read_bytes() == before
    assert torch.equal(open_state_dict(path)["ids"], torch.arange(7))


@pytest.mark.parametrize("suffix", [".safetensors", *PICKLE_SUFFIXES])
def test_opening_reads_the_header_only_whatever_the_suffix(tmp_path: Path, suffix: str) -> None:
    """A 1 GiB sparse data section: listing keys and taking a tensor view costs no resident memory."""
    size = 1 << 30
    header = json.dumps({"big": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / f"big{suffix}"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size)
    rss = _rss_bytes()
    sd = open_state_dict(path)
    tensor = sd["big"]
    assert sd.shape("big") == (size // 4,)
    assert tensor.shape == (size // 4,)
    assert _rss_bytes() - rss < 64 << 20
    assert float(tensor[-1]) == 0.0


def test_prefix_views_strip_the_prefix_and_nest(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), path)
    sd = open_state_dict(path)
    model = sd.view("model.")
    unet = model.view("diffusion_model.")
    assert sorted(unet) == ["a.weight", "b.bias"]
    assert unet.shape("a.weight") == (3, 4)
    assert torch.equal(unet["a.weight"], _tensors()["model.diffusion_model.a.weight"])
    assert sd.has_prefix("first_stage_model.") and not sd.has_prefix("cond_stage_model.")
    with pytest.raises(KeyError):
        unet["first_stage_model.c"]


def test_in_memory_tensors_share_the_interface() -> None:
    sd = LazyStateDict.from_tensors({"x.y": torch.ones(2, device="meta")})
    assert sd.view("x.").shape("y") == (2,)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_pickles_open_under_any_pickle_suffix(tmp_path: Path, zipped: bool, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    path.write_bytes(torch_file_bytes(_tensors(), zipped))
    sd = open_state_dict(path)
    assert set(sd) == set(_tensors())
    assert torch.equal(sd["model.diffusion_model.a.weight"], _tensors()["model.diffusion_model.a.weight"])


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("suffix", [".safetensors", ".sft", ".SafeTensors"])
def test_a_pickle_named_safetensors_is_refused_not_unpickled(tmp_path: Path, zipped: bool, suffix: str) -> None:
    """The name promises a file that cannot carry code; a pickle under it is a disguise or a mix-up."""
    path = tmp_path / f"m{suffix}"
    path.write_bytes(torch_file_bytes(_tensors(), zipped))
    expect_refusal(open_state_dict, path, rf"is named {re.escape(suffix)} but is a .*; Loom does not unpickle")


@pytest.mark.parametrize(
    ("saved", "keys"),
    [
        ({"state_dict": {"a": torch.ones(1)}, "global_step": 10}, {"a"}),  # PyTorch Lightning (SD .ckpt)
        ({"params_ema": {"a": torch.ones(1)}, "params": {"b": torch.ones(1)}}, {"a"}),  # BasicSR: EMA first
        ({"params": {"b": torch.ones(1)}}, {"b"}),
        ({"string_to_param": {"*": torch.ones(1)}, "name": "style", "step": 500}, {"string_to_param.*"}),  # A1111
    ],
)
def test_training_wrappers_are_removed_and_nested_dicts_give_dotted_keys(
    tmp_path: Path, saved: dict, keys: set[str]
) -> None:
    path = tmp_path / "m.pt"
    torch.save(saved, path)
    assert set(open_state_dict(path)) == keys


class NotAWeight:
    """A class a malicious pickle could smuggle in; weights_only loading must refuse it."""


def test_pickles_with_code_are_refused_naming_the_global(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "payload": NotAWeight()}, path)
    expect_refusal(open_state_dict, path, r"safe \(weights_only\) loading refuses: it asks for .*\.NotAWeight,")


class MakesAFolder:
    """A pickle payload that runs a function when unpickled, as real malicious files do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.target),))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs_it(tmp_path: Path, protocol: int) -> None:
    path, target = tmp_path / "evil.pt", tmp_path / "made_by_the_pickle"
    path.write_bytes(pickle.dumps({"w": MakesAFolder(target)}, protocol=protocol))
    expect_refusal(open_state_dict, path, r"safe \(weights_only\) loading refuses")
    assert not target.exists()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(("name", "content", "reason"), BAD_WEIGHT_FILES)
def test_files_that_are_not_weights_are_named_with_what_they_are(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    expect_refusal(open_state_dict, write_bad_file(tmp_path, name, content), reason)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (struct.pack("<Q", 10_000) + b'{"a": 1}', "header claims 10000 bytes but only 8"),
        (
            _safetensors_bytes({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}, b"\0" * 8),
            "'w' occupies 8 bytes but shape \\[4, 4\\] of F32 needs 64",
        ),
        (_safetensors_bytes({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype 'C64'"),
        (_safetensors_bytes({"__metadata__": {"format": "pt"}}, b""), "is a safetensors file without any tensors"),
    ],
)
def test_broken_safetensors_files_say_what_is_wrong(tmp_path: Path, content: bytes, reason: str) -> None:
    expect_refusal(open_state_dict, write_bad_file(tmp_path, "model.pt", content), reason)


@pytest.mark.parametrize(
    ("saved", "reason"),
    [
        ([torch.ones(1)], "holds a pickled list, not a dict of tensors"),
        ({"epoch": 3, "optimizer": "adam"}, r"holds a dict without any tensors \(keys: epoch, optimizer\)"),
    ],
)
def test_pickles_without_a_dict_of_tensors_say_what_they_hold(tmp_path: Path, saved: object, reason: str) -> None:
    path = tmp_path / "m.pth"
    torch.save(saved, path)
    expect_refusal(open_state_dict, path, reason)


def test_an_ncnn_param_is_not_a_state_dict(tmp_path: Path) -> None:
    path = write_bad_file(tmp_path, "x4.param", b"7767517\n1 1\nInput data 0 1 data\n")
    expect_refusal(open_state_dict, path, r"is an ncnn network description \(\.param\): it loads only as an upscaler")


def test_a_zip_that_is_not_a_torch_checkpoint_lists_its_contents(tmp_path: Path) -> None:
    path = tmp_path / "images.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cat.png", b"png")
    expect_refusal(open_state_dict, path, r"is a zip archive but not a torch file \(no data\.pkl; holds cat\.png\)")


def test_a_directory_is_not_a_model_file(tmp_path: Path) -> None:
    expect_refusal(open_state_dict, tmp_path, "is a directory")


def test_releasing_a_mapped_tensor_drops_its_resident_pages_and_keeps_its_values(tmp_path: Path) -> None:
    values = torch.arange(16 << 20, dtype=torch.float32)  # 64 MiB
    save_file({"a": values, "b": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    view = open_state_dict(tmp_path / "w.safetensors")["a"]
    assert torch.equal(view, values)  # every page read, so resident
    resident = _rss_bytes("RssFile")
    assert release_file_pages(view)
    assert resident - _rss_bytes("RssFile") > 56 << 20
    assert torch.equal(view, values)  # faulted back in from the file


def test_a_tensor_that_views_no_mapped_file_is_left_alone() -> None:
    tensor = torch.arange(1 << 20, dtype=torch.float32)
    assert not release_file_pages(tensor)
    assert not release_file_pages(tensor[1000:])
    assert torch.equal(tensor, torch.arange(1 << 20, dtype=torch.float32))
