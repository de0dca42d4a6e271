"""Tell what a weight file is from its first bytes, never from its name.

Names lie both ways. Download tools keep a URL's name, so safetensors files arrive as `.pt`, `.bin`
or `.ckpt`; and what sits under a model's name is often not weights at all: the HTML error or login
page a download saved instead, the git-lfs pointer a clone without git-lfs leaves, an empty or
cut-short file. Every weight file Loom reads is opened through `files.open_state_dict`, which starts
here, so each of these gets one sentence naming the file and what it really holds.
"""

from __future__ import annotations

import re
import struct
from enum import Enum
from pathlib import Path

from .errors import CheckpointFormatError

__all__ = ["NCNN_PARAM_MAGIC", "WeightFormat", "sniff_weight_format"]


class WeightFormat(Enum):
    """The formats Loom reads; the values name them in error messages."""

    SAFETENSORS = "safetensors file"
    TORCH_ZIP = "torch zip archive"  # torch.save since PyTorch 1.6
    TORCH_PICKLE = "legacy torch pickle"  # torch.save before 1.6, or with _use_new_zipfile_serialization=False
    NCNN_PARAM = "ncnn network description"  # an ncnn upscaler's text .param; its weights are a .bin beside it


#: The first line of every text ncnn ``.param`` file (ncnn's raw ``.bin`` has no magic at all).
NCNN_PARAM_MAGIC = "7767517"

_HEAD_BYTES = 4096  # enough for an HTML page's <title> and a whole git-lfs pointer
# safetensors itself refuses headers over 100 MB, so a larger "length" means the file is something else
# (text whose byte 8 happens to be "{", say) rather than a safetensors file cut short.
_SAFETENSORS_MAX_HEADER = 100_000_000
_ZIP_MAGIC = b"PK\x03\x04"
# The PROTO opcode (0x80) and a protocol from 2 to 5; torch's legacy format writes protocol 2.
_PICKLE_STARTS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_FOREIGN_MAGIC = {
    b"GGUF": "a GGUF file (llama.cpp's quantised format), which Loom does not read",
    b"\x1f\x8b": "a gzip archive; unpack it first",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive; unpack it first",
    b"Rar!": "a RAR archive; unpack it first",
}
_HTML_START = re.compile(r"<(!doctype\s+html|html|head|body)\b", re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def sniff_weight_format(path: Path) -> WeightFormat:
    """The format of the file at `path`, judged by its content.

    Anything that is not one of `WeightFormat` raises `CheckpointFormatError` saying what it is
    instead, so callers never hand a web page to the unpickler or a pickle to the safetensors parser.
    """
    if path.is_dir():
        raise CheckpointFormatError(path, "is a directory, not a model file")
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise CheckpointFormatError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not head:
        raise CheckpointFormatError(path, "is empty (0 bytes), as a failed download or copy leaves a file")
    # safetensors is checked first: a header length of 128 modulo 256 makes its first byte the
    # pickle PROTO opcode, while no zip or pickle has "{" at byte 8.
    if head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= _SAFETENSORS_MAX_HEADER:
        return WeightFormat.SAFETENSORS
    if head.startswith(_ZIP_MAGIC):
        return WeightFormat.TORCH_ZIP
    if head.startswith(_PICKLE_STARTS):
        return WeightFormat.TORCH_PICKLE
    if head.split(b"\n", 1)[0].strip() == NCNN_PARAM_MAGIC.encode():
        return WeightFormat.NCNN_PARAM
    raise CheckpointFormatError(path, _describe(head))


def _describe(head: bytes) -> str:
    """What a file that is no weight format looks like, in the words a user can act on."""
    if head.startswith(_LFS_POINTER):
        size = re.search(rb"^size (\d+)$", head, re.MULTILINE)
        real = f" (the real file has {int(size.group(1))} bytes)" if size else ""
        return (
            f"is a git-lfs pointer, not the weights{real}: the repository was cloned without git-lfs; "
            "run `git lfs pull` there or download the file itself"
        )
    for magic, what in _FOREIGN_MAGIC.items():
        if head.startswith(magic):
            return f"is {what}"
    text = _as_text(head)
    if text is None:
        return f"is not a weights file Loom can read: unrecognised content (first bytes {head[:8].hex(' ')})"
    if _HTML_START.match(text):
        title = _HTML_TITLE.search(text)
        titled = f" titled {_snippet(title.group(1))!r}" if title else ""
        return (
            f"is an HTML page{titled}, not weights: the download saved a web page (an error, login or "
            "redirect page) in place of the file"
        )
    kind = "a JSON document" if text[:1] in ("{", "[") else "a text file"
    return f"is {kind}, not weights (starts with {_snippet(text)!r})"


def _as_text(head: bytes) -> str | None:
    """`head` as text with leading whitespace and any byte-order mark removed, or None if it is binary."""
    text = head.decode("utf-8-sig", errors="replace")
    if len(head) == _HEAD_BYTES:
        text = text.rstrip("\ufffd")  # a multi-byte character cut by the read is no sign of binary
    if "\ufffd" in text or any(not char.isprintable() and char not in "\t\r\n" for char in text):
        return None
    return text.lstrip()


def _snippet(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
