"""Read and write PNG text chunks without decoding the image.

Saved images carry their workflow as text chunks (docs/compatibility.md §2.3): ``prompt`` (the API prompt) and
``workflow`` (the editor graph), as ``tEXt`` because ``json.dumps`` escapes everything outside
ASCII. Other writers use ``iTXt`` (UTF-8, optionally deflated) or ``zTXt`` (deflated Latin-1), so
all three are read. Only the chunk framing is parsed (PNG spec section 5: length, type, data, CRC),
which makes loading a workflow from a large image cheap and needs no imaging library.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping

from graph.errors import PngFormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")


def iter_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield ``(type, payload, offset)`` for every chunk, checking framing and CRCs, up to ``IEND``."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngFormatError("missing PNG signature", 0)
    offset = len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise PngFormatError("file ends before the IEND chunk", offset)
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 8 + length
        if end + 4 > len(data):
            raise PngFormatError(f"chunk {kind!r} of {length} bytes runs past the end of the file", offset)
        payload = data[offset + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + payload) != crc:
            raise PngFormatError(f"CRC mismatch in chunk {kind!r}", offset)
        yield kind, payload, offset
        if kind == b"IEND":
            return
        offset = end + 4


def read_text_chunks(data: bytes) -> dict[str, str]:
    """Every text chunk's keyword → text; a later chunk with the same keyword wins."""
    texts: dict[str, str] = {}
    for kind, payload, offset in iter_chunks(data):
        if kind in _TEXT_TYPES:
            keyword, text = _decode_text(kind, payload, offset)
            texts[keyword] = text
    return texts


def _decode_text(kind: bytes, payload: bytes, offset: int) -> tuple[str, str]:
    keyword, separator, rest = payload.partition(b"\0")
    if not separator:
        raise PngFormatError(f"{kind.decode()} chunk without a keyword terminator", offset)
    name = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            return name, zlib.decompress(rest[1:]).decode("latin-1")
        compressed, _method = rest[0], rest[1]
        _language, _, rest = rest[2:].partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return name, (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError) as error:
        raise PngFormatError(f"unreadable {kind.decode()} chunk {name!r}: {error}", offset) from error


def text_chunk(keyword: str, text: str) -> bytes:
    """One framed chunk: ``tEXt`` when the text is Latin-1, else uncompressed UTF-8 ``iTXt``."""
    key = keyword.encode("latin-1")
    if not 1 <= len(key) <= 79 or b"\0" in key:
        raise ValueError(f"PNG text keyword must be 1-79 Latin-1 characters without NUL, got {keyword!r}")
    try:
        kind, payload = b"tEXt", key + b"\0" + text.encode("latin-1")
    except UnicodeEncodeError:
        kind, payload = b"iTXt", key + b"\0\0\0\0\0" + text.encode("utf-8")
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def add_text_chunks(data: bytes, texts: Mapping[str, str]) -> bytes:
    """The same PNG with ``texts`` inserted before the first ``IDAT``.

    Before the image data because readers that stop at the pixels (PIL's ``Image.open().info``)
    then still see them.
    """
    # iter_chunks ends at IEND or raises, so an insertion point always exists.
    offset = next(offset for kind, _payload, offset in iter_chunks(data) if kind in (b"IDAT", b"IEND"))
    inserted = b"".join(text_chunk(keyword, text) for keyword, text in texts.items())
    return data[:offset] + inserted + data[offset:]
