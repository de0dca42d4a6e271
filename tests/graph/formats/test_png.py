"""PNG text chunks: written without PIL, readable by PIL, and read back from PIL-written files."""

import io
import json
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from graph.errors import PngFormatError
from graph.formats.png import add_text_chunks, iter_chunks, read_text_chunks


def plain_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_written_chunks_are_read_by_pil_and_the_pixels_survive() -> None:
    prompt = json.dumps({"3": {"class_type": "KSampler", "inputs": {}}})
    data = add_text_chunks(plain_png(), {"prompt": prompt, "workflow": '{"nodes": []}', "caption": "café ☕"})
    image = Image.open(io.BytesIO(data))
    assert image.info["prompt"] == prompt
    assert image.info["caption"] == "café ☕"
    assert image.getpixel((0, 0)) == (200, 10, 10)


def test_round_trip_through_our_own_reader() -> None:
    texts = {"prompt": "{}", "workflow": "ünïcode 工作流"}
    assert read_text_chunks(add_text_chunks(plain_png(), texts)) == texts


def test_reads_text_written_by_pil_in_all_three_chunk_kinds() -> None:
    info = PngInfo()
    info.add_text("prompt", '{"a": 1}')
    info.add_text("workflow", "zipped " * 50, zip=True)
    info.add_itxt("title", "naïve ☃", zip=True)
    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, format="PNG", pnginfo=info)
    assert read_text_chunks(buffer.getvalue()) == {"prompt": '{"a": 1}', "workflow": "zipped " * 50, "title": "naïve ☃"}


def test_text_goes_before_the_image_data() -> None:
    kinds = [kind for kind, _, _ in iter_chunks(add_text_chunks(plain_png(), {"prompt": "{}"}))]
    assert kinds.index(b"tEXt") < kinds.index(b"IDAT")


def test_not_a_png() -> None:
    with pytest.raises(PngFormatError) as raised:
        read_text_chunks(b"GIF89a....")
    assert raised.value.offset == 0


def test_a_corrupted_chunk_fails_its_crc() -> None:
    data = bytearray(add_text_chunks(plain_png(), {"prompt": "{}"}))
    position = data.index(b"tEXt") + 6
    data[position] ^= 0xFF
    with pytest.raises(PngFormatError, match="CRC mismatch"):
        read_text_chunks(bytes(data))


def test_a_truncated_file() -> None:
    with pytest.raises(PngFormatError, match="past the end|before the IEND"):
        read_text_chunks(plain_png()[:-20])


def test_a_bad_compressed_chunk_is_reported() -> None:
    payload = b"workflow\0\0" + b"not deflate"
    chunk = len(payload).to_bytes(4, "big") + b"zTXt" + payload + zlib.crc32(b"zTXt" + payload).to_bytes(4, "big")
    data = plain_png()
    data = data[:33] + chunk + data[33:]
    with pytest.raises(PngFormatError, match="unreadable zTXt chunk 'workflow'"):
        read_text_chunks(data)


def test_keywords_must_be_short_latin1() -> None:
    with pytest.raises(ValueError):
        add_text_chunks(plain_png(), {"x" * 80: "too long"})
