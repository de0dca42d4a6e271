"""Which Loom runtime the ComfyUI modules answer from.

Loom keeps no installation settings in module globals (``nodes.runtime``), but ComfyUI's modules are
globals by nature: packs read ``folder_paths.models_dir`` or call ``get_torch_device()`` while they
are imported, before any prompt runs. So the modules ask, in this order:

1. the runtime lent to the running prompt or request (``nodes.runtime.current_runtime``): node code
   always gets its own installation's folders and device;
2. the default runtime the host gave ``install_comfy_modules(default_runtime=...)``: the server's
   own, which covers pack imports and threads a pack starts;
3. otherwise the settings ``loom serve`` uses with no flags: folders under the working directory
   (not created here), device and dtype ``auto``, previews ``auto``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from diffusion.model_memory import ModelMemory
from graph.services import current_services
from nodes.compute import Compute
from nodes.folders import Folders
from nodes.model_folders import ModelPaths
from nodes.previews import Previews
from nodes.runtime import Runtime
from nodes.runtime_options import RuntimeOptions

__all__ = ["pack_runtime", "set_default_runtime"]

_default: Runtime | None = None


def set_default_runtime(runtime: Runtime | None) -> None:
    """The runtime answered outside prompts and requests (``None``: the working directory's defaults)."""
    global _default
    _default = runtime


def pack_runtime() -> Runtime:
    """The runtime lent here, else the default one, else ``loom serve``'s defaults in the working directory."""
    lent = current_services()
    if isinstance(lent, Runtime):
        return lent
    if _default is not None:
        return _default
    return _defaults_in(Path(os.getcwd()))


@functools.lru_cache(maxsize=2)
def _defaults_in(base: Path) -> Runtime:
    """What ``build_runtime(RuntimeOptions(base_dir=base))`` describes, without creating its folders:
    importing a pack must not leave ``input/``, ``output/`` ... in whatever directory the process has."""
    options = RuntimeOptions(base_dir=base)
    root = base.resolve()
    folders = Folders(
        base=root,
        input=root / "input",
        output=root / "output",
        temp=root / "temp",
        user=root / "user",
        models=root / "models",
    )
    compute = Compute.from_settings(options.device, options.dtype)
    memory = ModelMemory.for_device(compute.device, dtype=compute.dtype)
    return Runtime(folders, ModelPaths(folders.models), compute, Previews(options.preview_method), memory)
