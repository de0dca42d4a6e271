"""How the sampler nodes draw their per-step previews: one method per process (``--preview-method``).

- ``latent2rgb``: a fixed linear map of latent channels to colours; free, blurry, 1/8 size.
- ``taesd``: TAESD, a tiny VAE decoder that gives a full-size preview close to the final image.
  It needs the decoder file for the model's latent space, which Loom does not ship: put
  ``taesd_decoder.pth`` (SD1/SD2) and ``taesdxl_decoder.pth`` (SDXL), or their ``.safetensors``, in
  ``models/vae_approx/``. A missing file falls back to ``latent2rgb`` with one logged warning.
- ``auto`` (the default): TAESD when its file is there, else ``latent2rgb``, silently.
- ``none``: no previews are drawn at all.

The method is part of a runtime (``nodes.runtime``): ``loom serve``, ``loom run`` and each Ray worker
build theirs from the same ``--preview-method``. Loaded decoders are cached per file and modification
time, so a sampler pays the load once, and a replaced file is read again.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

from diffusion.latent_preview import latent_to_rgb
from diffusion.sampling import Previewer
from diffusion.taesd import TAESDDecoder, load_taesd_decoder, taesd_preview
from nodes.model_folders import ModelPaths
from nodes.runtime_options import PREVIEW_METHODS

__all__ = ["PREVIEW_METHODS", "TAESD_DECODERS", "Previews"]

#: Latent family -> the released decoder's file name without extension; SD2 shares SD1's VAE.
TAESD_DECODERS: dict[str, str] = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
_SUFFIXES = (".safetensors", ".pth")

logger = logging.getLogger(__name__)


class Previews:
    """One runtime's preview method, and the families it has already warned about."""

    def __init__(self, method: str = "auto") -> None:
        if method not in PREVIEW_METHODS:
            raise ValueError(f"preview method {method!r}: expected one of {', '.join(PREVIEW_METHODS)}")
        self.method = method
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def previewer_for(self, family: str, model_paths: ModelPaths) -> Previewer | None:
        """The previewer for a model's latent family under this method; None for ``none``."""
        if self.method == "none":
            return None
        path = _taesd_file(family, model_paths) if self.method in ("auto", "taesd") else None
        if path is not None:
            decoder = _load_decoder(path, path.stat().st_mtime_ns)
            return lambda latent: taesd_preview(decoder, latent)
        if self.method == "taesd":
            self._warn_missing(family)
        return lambda latent: latent_to_rgb(latent, family)

    def _warn_missing(self, family: str) -> None:
        with self._lock:
            if family in self._warned:
                return
            self._warned.add(family)
        stem = TAESD_DECODERS.get(family)
        wanted = f"models/vae_approx/{stem}.pth" if stem else f"a TAESD decoder for {family} latents (none is known)"
        logger.warning("--preview-method taesd: %s is missing; previews use latent2rgb instead", wanted)


def _taesd_file(family: str, model_paths: ModelPaths) -> Path | None:
    stem = TAESD_DECODERS.get(family)
    if stem is None:
        return None
    available = set(model_paths.names("vae_approx"))
    for name in (stem + suffix for suffix in _SUFFIXES):
        if name in available:
            return model_paths.find("vae_approx", name)
    return None


@functools.lru_cache(maxsize=4)
def _load_decoder(path: Path, mtime_ns: int) -> TAESDDecoder:
    """``mtime_ns`` is only part of the cache key: a file replaced in place is loaded again."""
    return load_taesd_decoder(path)
