"""Recognising weight files by content, and naming what a file is when it is not weights."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from diffusion.checkpoint.errors import CheckpointFormatError
from diffusion.checkpoint.sniff import WeightFormat, sniff_weight_format
from tests.diffusion.weight_files import torch_file_bytes

_TENSORS = {"w": torch.ones(2, 2)}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("model.pt", save(_TENSORS), WeightFormat.SAFETENSORS),
        ("model.safetensors", torch_file_bytes(_TENSORS, zipped=True), WeightFormat.TORCH_ZIP),
        ("model.bin", torch_file_bytes(_TENSORS, zipped=False), WeightFormat.TORCH_PICKLE),
        ("x4.txt", b"7767517\n3 3\nInput input 0 1 data 0=3\n", WeightFormat.NCNN_PARAM),
        ("x4.param", b"7767517\r\n3 3\r\n", WeightFormat.NCNN_PARAM),
    ],
)
def test_the_format_comes_from_the_content_not_the_name(
    tmp_path: Path, name: str, content: bytes, expected: WeightFormat
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert sniff_weight_format(path) is expected


def test_a_header_length_whose_low_byte_is_the_pickle_opcode_is_still_safetensors(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (384 - len(header))  # 384 = 0x180: the file's first byte is 0x80
    path = tmp_path / "unlucky.pt"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    assert sniff_weight_format(path) is WeightFormat.SAFETENSORS


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (bytes(range(200, 256)) * 4, r"unrecognised content \(first bytes c8 c9 ca cb cc cd ce cf\)"),
        (b"hello, this is not a model\n" * 3, r"is a text file, not weights \(starts with 'hello, this is not"),
        ("\ufeff  see https://example.com/model".encode(), r"is a text file, not weights \(starts with 'see https"),
        # Byte 8 is "{", as in a safetensors file, but the "header length" in front of it is absurd.
        (b'{"unet":{"in_channels": 4}}', r"is a JSON document, not weights \(starts with '\{\"unet\":\{"),
        (b"<html><body>404</body></html>", r"is an HTML page, not weights: the download saved a web page"),
        (b"GGUF\x03\x00\x00\x00" + bytes(64), "is a GGUF file"),
        (gzip.compress(b"weights"), "is a gzip archive; unpack it first"),
    ],
)
def test_other_content_is_described(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match=reason) as caught:
        sniff_weight_format(path)
    assert caught.value.path == path


def test_a_directory_or_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="is a directory"):
        sniff_weight_format(tmp_path)
    with pytest.raises(CheckpointFormatError, match=r"absent\.pt: cannot be read \(No such file"):
        sniff_weight_format(tmp_path / "absent.pt")
