"""After ``install_comfy_modules()`` packs import ComfyUI's module names and get Loom's modules, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.comfy_compat import COMFY_MODULES, install_comfy_modules

REPO = Path(__file__).resolve().parents[3]


def test_the_imports_packs_write_work() -> None:
    import comfy.utils
    import folder_paths
    import latent_preview
    import node_helpers
    from comfy.model_management import get_torch_device
    from comfy.samplers import KSampler
    from comfy_execution.graph_utils import GraphBuilder

    assert callable(get_torch_device) and KSampler.SAMPLERS and GraphBuilder
    assert comfy.utils.ProgressBar and folder_paths.get_filename_list and latent_preview.get_previewer
    assert node_helpers.conditioning_set_values


@pytest.mark.parametrize("name", sorted(COMFY_MODULES))
def test_each_name_is_the_loom_module_itself_not_a_copy(name: str) -> None:
    module = importlib.import_module(name)
    assert module is importlib.import_module(COMFY_MODULES[name])
    assert module.__spec__ is not None and module.__spec__.name == COMFY_MODULES[name]


def test_submodules_are_attributes_of_their_package() -> None:
    import comfy
    import comfy.model_management

    assert comfy.model_management is importlib.import_module("nodes.comfy_compat.comfy.model_management")


def test_installing_twice_adds_one_finder() -> None:
    install_comfy_modules()
    install_comfy_modules()
    finders = [finder for finder in sys.meta_path if type(finder).__name__ == "_ComfyModuleFinder"]
    assert len(finders) == 1


def test_comfy_internals_loom_does_not_provide_fail_to_import_by_name() -> None:
    with pytest.raises(ModuleNotFoundError, match="comfy.model_patcher"):
        importlib.import_module("comfy.model_patcher")


def test_installing_imports_nothing_until_a_pack_imports_a_module() -> None:
    script = (
        "import sys\n"
        "from nodes.comfy_compat import install_comfy_modules\n"
        "install_comfy_modules()\n"
        "assert 'torch' not in sys.modules, 'installing imported torch'\n"
        "assert 'nodes.comfy_compat.folder_paths' not in sys.modules\n"
        "import folder_paths\n"
        "assert 'nodes.comfy_compat.folder_paths' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
