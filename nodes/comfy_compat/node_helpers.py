"""ComfyUI's ``node_helpers`` for node packs: conditioning edits, tolerant image opening, alpha matching.

Supported: ``conditioning_set_values(conditioning, values, append=False)`` (every entry gets the
values, in a copy: the input stays as the cache holds it; with ``append`` an existing value is
extended, ``old + new``), ``pillow(fn, arg)`` (retries an image open that failed on a truncated
file with Pillow's ``LOAD_TRUNCATED_IMAGES``) and ``image_alpha_fix(destination, source)`` (gives
``source`` as many channels as ``destination``: alpha dropped, or an opaque one added).

Not supported: ``hasher``, ``string_to_torch_dtype``, ``conditioning_set_values_with_timestep_range``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from PIL import ImageFile, UnidentifiedImageError

__all__ = ["conditioning_set_values", "image_alpha_fix", "pillow"]

_T = TypeVar("_T")
_A = TypeVar("_A")

#: ``LOAD_TRUNCATED_IMAGES`` is a Pillow module global: retries are serialised so that one restoring
#: the previous value cannot switch it off under another.
_truncated_retry = threading.Lock()


def conditioning_set_values(
    conditioning: list[Any], values: Mapping[str, Any] | None = None, append: bool = False
) -> list[list[Any]]:
    """A copy of ``conditioning`` with ``values`` set in every entry's options."""
    changed = []
    for tensor, options in conditioning:
        options = dict(options)
        for key, value in (values or {}).items():
            previous = options.get(key)
            options[key] = previous + value if append and previous is not None else value
        changed.append([tensor, options])
    return changed


def pillow(fn: Callable[[_A], _T], arg: _A) -> _T:
    """``fn(arg)``, retried once with truncated images allowed if Pillow refused the file (a cut-short
    download or a file still being written is most of a picture, which is what the user wants)."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        with _truncated_retry:
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                return fn(arg)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(destination, source)`` with ``source`` cut or padded (opaque alpha) to ``destination``'s channels."""
    channels = destination.shape[-1]
    if channels < source.shape[-1]:
        source = source[..., :channels]
    elif channels > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, 1), value=1.0)
    return destination, source
