"""Free heap memory leaves the process after a prompt, where the C library can give it back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from graph.heap import return_free_heap


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_memory_freed_inside_the_heap_is_returned_to_the_os() -> None:
    # Blocks below the mmap threshold come from the heap; freeing all but the last leaves free
    # pages below the heap's top, which glibc keeps until trimmed.
    blocks = [bytearray(64 << 10) for _ in range(1024)]  # 64 MiB in 64 KiB blocks
    for block in blocks:
        for offset in range(0, len(block), 4096):
            block[offset] = 1
    last = blocks[-1]
    del blocks
    before = _rss_bytes()
    assert return_free_heap()
    assert before - _rss_bytes() > 32 << 20
    assert last[0] == 1
