"""ComfyUI's ``comfy.utils`` for node packs: progress bars, resizing and weight files, backed by Loom.

Supported:
- ``ProgressBar(total)`` with ``update``/``update_absolute(value, total=None, preview=None)``: each
  update goes through ``PROGRESS_BAR_HOOK`` (by default Loom's ``report_progress`` for the running
  node, so the editor draws the bar and a ``(format, PIL image, max size)`` preview), thinned as
  ComfyUI thins it (the first and last update and every preview always, others at most every 0.1 s
  and 0.5 %), and every update, sent or not, is an interruption point
  (``graph.progress.Interrupted``, which is ``comfy.model_management.InterruptProcessingException``).
  ``set_progress_bar_global_hook`` replaces the hook for bars created afterwards, as in ComfyUI.
- ``common_upscale(samples [B, C, H, W] or [B, C, T, H, W], width, height, method, crop)`` with
  ComfyUI's methods (nearest-exact, bilinear, area, bicubic, lanczos, bislerp) and crops (disabled,
  center): Loom's own resizes (``nodes.image.resample``, ``nodes.latent.bislerp``), so a pack
  resizes exactly as Loom's ImageScale and LatentUpscale do. ``lanczos`` and ``bislerp`` alone too.
- ``load_torch_file(path, safe_load, device, return_metadata)`` through Loom's weight reader
  (``diffusion.checkpoint.files``): safetensors by content, not name, and pickled files only with
  ``weights_only``, whatever ``safe_load`` says; a pickle that asks to run code raises
  ``CheckpointFormatError`` naming the file and the refused global. Nested dicts in a pickle come
  back flattened to dotted keys, and training wrappers (``state_dict``, ``params_ema``) unwrapped.
- ``state_dict_prefix_replace``, ``repeat_to_batch_size``, ``PROGRESS_BAR_ENABLED`` /
  ``set_progress_bar_enabled`` (kept for packs that read them; Loom draws no console bars).

Not supported: ComfyUI's model-conversion helpers (``unet_to_diffusers``, ``transformers_convert``
...), ``tiled_scale``, ``save_torch_file``; ComfyUI has no ``comfy.utils.MAX_RESOLUTION`` (it is
``nodes.MAX_RESOLUTION``). A ``ProgressBar``'s ``node_id`` is kept but reports always go to the
running node: Loom routes progress by the node whose code is running.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from diffusion.checkpoint.files import open_state_dict
from graph.progress import check_interrupted, report_progress
from nodes.image import CROP_METHODS, center_crop_to_aspect, resample
from nodes.latent import bislerp

__all__ = [
    "PROGRESS_BAR_ENABLED",
    "PROGRESS_BAR_HOOK",
    "ProgressBar",
    "bislerp",
    "common_upscale",
    "lanczos",
    "load_torch_file",
    "repeat_to_batch_size",
    "set_progress_bar_enabled",
    "set_progress_bar_global_hook",
    "state_dict_prefix_replace",
]

#: ``hook(value, total, preview, node_id=None)``, ComfyUI's progress hook signature.
ProgressHook = Callable[..., None]

#: ComfyUI's thinning of bar updates: WebSocket clients need no more than ten a second.
MIN_REPORT_INTERVAL_S = 0.1
MIN_REPORT_PERCENT = 0.5

PROGRESS_BAR_ENABLED = True


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def report_to_running_node(value: float, total: float, preview: Any = None, node_id: str | None = None) -> None:
    """Loom's hook: a ``progress`` event (and a preview) for the node that is running."""
    report_progress(value, total, preview)


PROGRESS_BAR_HOOK: ProgressHook | None = report_to_running_node


def set_progress_bar_global_hook(function: ProgressHook | None) -> None:
    """The hook bars created from now on report through (a pack wrapping Loom's keeps it working)."""
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    """A node's progress towards ``total``, reported to Loom (see the module doc)."""

    def __init__(self, total: float, node_id: str | None = None) -> None:
        self.total = total
        self.current: float = 0
        self.node_id = node_id
        self.hook = PROGRESS_BAR_HOOK
        self._last_sent_time = 0.0
        self._last_sent_value: float = -1

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        now = time.perf_counter()
        if self.hook is None or not self._worth_sending(now, preview):
            check_interrupted()
            return
        self._last_sent_time, self._last_sent_value = now, self.current
        self.hook(self.current, self.total, preview, node_id=self.node_id)
        check_interrupted()  # a replaced hook may not check; Loom's own already raised

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)

    def _worth_sending(self, now: float, preview: Any) -> bool:
        if preview is not None or self._last_sent_value < 0 or self.current >= self.total:
            return True
        moved = (self.current - max(0, self._last_sent_value)) / self.total * 100 if self.total > 0 else 100
        return now - self._last_sent_time >= MIN_REPORT_INTERVAL_S and moved >= MIN_REPORT_PERCENT


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos resize of ``[B, C, H, W]`` pixels in 0..1 (through 8 bits, as ComfyUI does)."""
    return resample(samples, width, height, "lanczos")


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` (or ``[B, C, T, ..., H, W]``, frame by frame) to ``width`` x ``height``."""
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROP_METHODS)}")
    shape = tuple(samples.shape)
    if len(shape) < 4:
        raise ValueError(f"common_upscale takes [B, C, H, W] samples, got shape {shape}")
    if len(shape) > 4:  # video latents: every frame is resized as a picture of the batch
        samples = samples.reshape(shape[0], shape[1], -1, *shape[-2:]).movedim(2, 1).reshape(-1, shape[1], *shape[-2:])
    if upscale_method == "bislerp":
        cropped = center_crop_to_aspect(samples, width, height) if crop == "center" else samples
        out = bislerp(cropped, width, height)
    else:
        out = resample(samples, width, height, upscale_method, crop)
    if len(shape) == 4:
        return out
    return out.reshape(shape[0], -1, shape[1], height, width).movedim(2, 1).reshape(*shape[:-2], height, width)


def load_torch_file(
    ckpt: str | os.PathLike[str],
    safe_load: bool = False,
    device: torch.device | str | None = None,
    return_metadata: bool = False,
) -> Any:
    """The tensors of a weight file as a plain dict (and its safetensors metadata, or None).

    Pickles are always read with ``weights_only``: ``safe_load=False`` cannot make Loom run the code a
    malicious file carries. Safetensors tensors are copy-on-write views of the file, so editing them
    in place never changes it.
    """
    stored = open_state_dict(Path(ckpt))
    target = torch.device(device) if device is not None else torch.device("cpu")
    tensors = {key: stored[key] if target.type == "cpu" else stored[key].to(target) for key in stored}
    if return_metadata:
        return tensors, (dict(stored.metadata) or None)
    return tensors


def state_dict_prefix_replace(
    state_dict: dict[str, Any], replace_prefix: Mapping[str, str], filter_keys: bool = False
) -> dict[str, Any]:
    """Rename keys starting with each old prefix to the new one; ``filter_keys`` returns only those, in a new dict
    (the renamed keys leave ``state_dict`` either way, as in ComfyUI)."""
    out = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [key for key in state_dict if key.startswith(old)]:
            out[new + key[len(old) :]] = state_dict.pop(key)
    return out


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cut or cycle ``tensor`` along ``dim`` to ``batch_size`` items."""
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / size)
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor
