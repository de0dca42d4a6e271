"""Handing the C heap's free memory back to the operating system after a prompt.

glibc keeps memory freed by a prompt (activations, decoded images, tensors of evicted cache entries)
in its heaps for reuse, and returns the top of a heap only. After an SD1.5 run that was 231-246 MB of
a long-lived server's RSS, all of it returned by ``malloc_trim(0)`` (bench/RESULTS.md, "Memory"),
for a call of a few milliseconds once per prompt. Elsewhere (musl, macOS, Windows) there is no such
call and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["return_free_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def return_free_heap() -> bool:
    """Return the heaps' free pages to the OS; False where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
