"""One installation's settings as the nodes see them: folders, model paths, compute, previews, memory.

``loom serve``, ``loom run`` and every Ray worker turn their parsed options into a ``RuntimeOptions``
and call ``build_runtime`` on it: one sequence, so the three cannot drift apart. The ``Runtime`` is
handed to the executor (``Executor(..., services=runtime)``), which lends it to node code for the
length of each prompt through ``graph.services``; nodes read it with ``current_runtime()``. Nothing
here is a module global, so two servers with different folders in one process never see each
other's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusion.model_memory import DEFAULT_RESERVE_BYTES, ModelMemory
from graph.services import current_services
from nodes.compute import Compute
from nodes.folders import Folders, make_folders
from nodes.model_folders import ModelPaths
from nodes.previews import Previews
from nodes.runtime_options import RuntimeOptions

__all__ = [
    "Runtime",
    "RuntimeNotConfiguredError",
    "RuntimeOptions",
    "build_runtime",
    "current_runtime",
    "find_model",
    "list_models",
]


#: Output tensors kept on a GPU between prompts unless ``--cache-vram-budget`` says otherwise.
DEFAULT_CACHE_VRAM_BYTES = 1 << 30


@dataclass(frozen=True)
class Runtime:
    """What nodes need from their installation; built by ``build_runtime``, never changed after."""

    folders: Folders
    model_paths: ModelPaths
    compute: Compute
    previews: Previews
    #: Places the runtime's models on the device and shares their loads; owns none (docs/architecture.md, "Memory").
    memory: ModelMemory
    #: Bytes of output tensors the output cache may keep on the device (``OutputCache.device_budget_bytes``).
    cache_vram_budget_bytes: int | None = None


def build_runtime(options: RuntimeOptions) -> Runtime:
    """Create the folders, read the paths files and resolve the compute settings; raises
    ``ComputeSettingsError``, ``ExtraModelPathsError`` or ``ValueError`` (preview method) for bad
    options before anything runs."""
    compute = Compute.from_settings(options.device, options.dtype)
    previews = Previews(options.preview_method)
    folders = make_folders(
        options.base_dir,
        input=options.input_dir,
        output=options.output_dir,
        temp=options.temp_dir,
        user=options.user_dir,
        models=options.models_dir,
    )
    model_paths = ModelPaths.from_files(folders.models, options.extra_model_paths)
    cache_vram = options.cache_vram_budget_bytes
    if cache_vram is None and compute.device.type != "cpu":
        cache_vram = DEFAULT_CACHE_VRAM_BYTES
    memory = ModelMemory.for_device(
        compute.device,
        reserve_bytes=DEFAULT_RESERVE_BYTES + (cache_vram or 0),
        dtype=compute.dtype,
        budget_bytes=options.vram_budget_bytes,
    )
    return Runtime(folders, model_paths, compute, previews, memory, cache_vram)


class RuntimeNotConfiguredError(RuntimeError):
    """Node code ran outside any prompt or request that lends a runtime."""

    def __init__(self) -> None:
        super().__init__(
            "no Loom runtime here: nodes that use files or models run inside an Executor built with "
            "services=build_runtime(...), or inside graph.services.services_context(runtime)"
        )


def current_runtime() -> Runtime:
    """The runtime lent to the running prompt or request."""
    services = current_services()
    if not isinstance(services, Runtime):
        raise RuntimeNotConfiguredError()
    return services


def list_models(key: str) -> list[str]:
    """The model names of folder ``key`` in the current runtime (what loader combos offer)."""
    return current_runtime().model_paths.names(key)


def find_model(key: str, name: str) -> Path:
    """The file a loader's model name refers to in the current runtime."""
    return current_runtime().model_paths.find(key, name)
