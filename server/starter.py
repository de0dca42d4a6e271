"""What ``loom serve`` puts in place at start so a new installation gives a real result at once.

The bundled Real-ESRGAN models (``diffusion.upscalers.bundled``) go into ``models/upscale_models`` and
a sample photograph into the input folder; together they make the editor's first workflow, when no
checkpoint is installed yet, an "upscale an image" graph that runs. Both steps are idempotent and
never overwrite a user's file of the same name.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from diffusion.upscalers.bundled import BundledModelsMissingError, install_bundled_models
from nodes.folders import Folders

__all__ = ["SAMPLE_IMAGE", "SAMPLE_IMAGE_NAME", "install_starter_files"]

log = logging.getLogger(__name__)

SAMPLE_IMAGE = Path(__file__).resolve().parent / "data" / "sample_coffee.png"
#: The name the sample has in the input folder, which the editor's upscale workflow loads.
SAMPLE_IMAGE_NAME = "loom_sample_coffee.png"


def install_starter_files(folders: Folders) -> None:
    """Place the bundled upscalers and the sample image; a missing bundle is logged, not fatal."""
    try:
        written = install_bundled_models(folders.models / "upscale_models")
    except BundledModelsMissingError as error:
        log.warning("%s; the upscale workflow will have no model until one is added", error)
    else:
        if written:
            log.info("placed %d bundled Real-ESRGAN files in %s", len(written), folders.models / "upscale_models")
    target = folders.input / SAMPLE_IMAGE_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE_IMAGE, target)
