"""The ComfyUI modules are installed for every test here, and what packs add to ``folder_paths`` (which
lives as long as the process, as in ComfyUI) is set back after each test."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

from nodes.comfy_compat import folder_paths, install_comfy_modules


@pytest.fixture(autouse=True)
def comfy_modules() -> Iterator[None]:
    install_comfy_modules()
    added, extensions = copy.deepcopy(folder_paths.pack_folders), set(folder_paths.supported_pt_extensions)
    yield
    folder_paths.pack_folders.clear()
    folder_paths.pack_folders.update(added)
    folder_paths.supported_pt_extensions.clear()
    folder_paths.supported_pt_extensions.update(extensions)
