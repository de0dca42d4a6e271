"""Turn the opaque preview a node reported into image bytes for a binary WebSocket frame.

Nodes report ``(format, PIL image, max_size)`` the way ComfyUI samplers do (docs/compatibility.md §1.4), or a bare
PIL image. The image is shrunk to ``max_size`` on its longer side (previews are for watching
progress, and a smaller frame costs the slow client less) and encoded here, on the worker thread,
so the event loop never spends time on it. JPEG quality 95 as in ComfyUI.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["PreviewEncodingError", "encode_preview"]

DEFAULT_MAX_SIZE = 512
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}


class PreviewEncodingError(ValueError):
    def __init__(self, preview: Any, reason: str) -> None:
        super().__init__(f"cannot encode preview {type(preview).__name__}: {reason}")
        self.reason = reason


def encode_preview(preview: Any) -> tuple[bytes, str]:
    """``(bytes, mime)`` for a reported preview; raises ``PreviewEncodingError`` for anything else."""
    fmt, image, max_size = "JPEG", preview, DEFAULT_MAX_SIZE
    if isinstance(preview, (tuple, list)):
        if len(preview) != 3:
            raise PreviewEncodingError(preview, "expected (format, image, max_size)")
        fmt, image, max_size = preview
    fmt = str(fmt).upper()
    if fmt not in _MIME:
        raise PreviewEncodingError(preview, f"format {fmt!r} is not JPEG or PNG")
    if not hasattr(image, "save") or not hasattr(image, "size"):
        raise PreviewEncodingError(preview, "the image is not a PIL image")
    if max_size and max(image.size) > int(max_size):
        image = image.copy()
        image.thumbnail((int(max_size), int(max_size)))
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue(), _MIME[fmt]
