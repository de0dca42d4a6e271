"""Opening model files: lazy, zero-copy, and precise about what is wrong with a bad file."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion.checkpoint.errors import CheckpointFormatError
from diffusion.checkpoint.files import LazyStateDict, open_state_dict


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.a.weight": torch.randn(3, 4, generator=g),
        "model.diffusion_model.b.bias": torch.randn(5, generator=g).half(),
        "first_stage_model.c": torch.randn(2, 2, generator=g).bfloat16(),
        "ids": torch.arange(7),
        "empty": torch.zeros(0, 3),
    }


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


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


def test_opening_reads_the_header_only(tmp_path: Path) -> None:
    """A 1 GiB sparse data section: listing keys and taking a tensor view costs no resident memory."""
    size = 1 << 30
    header = json.dumps({"big": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "big.safetensors"
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
def test_pickled_checkpoints_are_unwrapped_from_state_dict(tmp_path: Path, zipped: bool) -> None:
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": _tensors(), "global_step": 10}, path, _use_new_zipfile_serialization=zipped)
    sd = open_state_dict(path)
    assert set(sd) == set(_tensors())
    assert torch.equal(sd["model.diffusion_model.a.weight"], _tensors()["model.diffusion_model.a.weight"])


class NotAWeight:
    """A class a malicious pickle could smuggle in; weights_only loading must refuse it."""


def test_pickles_with_code_are_refused_naming_the_global(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "payload": NotAWeight()}, path)
    with pytest.raises(CheckpointFormatError, match="weights_only.*NotAWeight") as err:
        open_state_dict(path)
    assert err.value.path == path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.safetensors", b"", "is empty"),
        ("noise.safetensors", bytes(range(200, 256)) * 4, "unrecognised content"),
        ("config.safetensors", b'{"_class_name": "UNet2DConditionModel"}', "JSON/text file"),
        ("notes.ckpt", b"hello, this is not a model\n" * 3, "text file"),
        ("short.safetensors", struct.pack("<Q", 10_000) + b'{"a": 1}', "header claims 10000 bytes but only 8"),
        (
            "cut.safetensors",
            _safetensors_bytes({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 20),
            "tensor 'w' ends at byte 64 of the data section, which has only 20",
        ),
        (
            "liar.safetensors",
            _safetensors_bytes({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}, b"\0" * 8),
            "'w' occupies 8 bytes but shape \\[4, 4\\] of F32 needs 64",
        ),
        (
            "exotic.safetensors",
            _safetensors_bytes({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
            "dtype 'C64'",
        ),
    ],
)
def test_bad_files_are_named_with_what_was_found(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(CheckpointFormatError, match=message) as err:
        open_state_dict(path)
    assert str(path) in str(err.value)


def test_a_zip_that_is_not_a_torch_checkpoint_lists_its_contents(tmp_path: Path) -> None:
    path = tmp_path / "images.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cat.png", b"png")
    with pytest.raises(CheckpointFormatError, match="zip archive but not a torch checkpoint.*cat.png"):
        open_state_dict(path)


def test_a_directory_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="is a directory"):
        open_state_dict(tmp_path)
