"""Weight files as users find them: good bytes under the wrong suffix, and files that hold no weights.

Every loader (checkpoint, LoRA, embedding, upscaler, TAESD) opens files through `open_state_dict`,
so each loader's tests run the same cases through its own entry point with these helpers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from diffusion.checkpoint.errors import CheckpointFormatError

#: Suffixes pickles usually carry, under which safetensors files arrive from download tools.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: What the refusal of a pickle named `.safetensors` says (see `diffusion.checkpoint.files`).
PICKLE_NAMED_SAFETENSORS = r"is named \.safetensors but is a (torch zip archive|legacy torch pickle); Loom does not"


def torch_file_bytes(tensors: Mapping[str, torch.Tensor], zipped: bool) -> bytes:
    """`torch.save` output: the zip archive of PyTorch >= 1.6, or the legacy pickle before it."""
    buffer = io.BytesIO()
    torch.save(dict(tensors), buffer, _use_new_zipfile_serialization=zipped)
    return buffer.getvalue()


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


_SAMPLE = {"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64)}
_HTML_PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in | Model Hub</title></head>
<body><form action="/login">...</form></body></html>
"""
_LFS_POINTER = b"""version https://git-lfs.github.com/spec/v1
oid sha256:6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa
size 4265146304
"""

#: (file name, content, what the error must say): files found under a model's name that are no usable weights.
BAD_WEIGHT_FILES = [
    pytest.param("empty.safetensors", b"", r"is empty \(0 bytes\)", id="empty"),
    pytest.param(
        "login.safetensors", _HTML_PAGE, r"is an HTML page titled 'Sign in \| Model Hub', not weights", id="html-page"
    ),
    pytest.param(
        "pointer.safetensors",
        _LFS_POINTER,
        r"is a git-lfs pointer, not the weights \(the real file has 4265146304 bytes\)",
        id="lfs-pointer",
    ),
    pytest.param(
        "cut.safetensors",
        _first_half(save(_SAMPLE)),
        "truncated safetensors file: tensor 'w' ends at byte 16384",
        id="cut-safetensors",
    ),
    pytest.param(
        "cut.pth", _first_half(torch_file_bytes(_SAMPLE, zipped=True)), "damaged or cut-short zip archive", id="cut-zip"
    ),
    pytest.param(
        "cut.ckpt",
        _first_half(torch_file_bytes(_SAMPLE, zipped=False)),
        "damaged or cut-short torch file",
        id="cut-pickle",
    ),
    pytest.param(
        "reply.bin", b'{"error": "Entry not found"}', r"is a JSON document, not weights \(starts with", id="json-reply"
    ),
]


def write_bad_file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def expect_refusal(load: Callable[[Path], object], path: Path, reason: str) -> None:
    """`load(path)` fails with the opener's error, naming the file and saying `reason`."""
    with pytest.raises(CheckpointFormatError, match=reason) as caught:
        load(path)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")
