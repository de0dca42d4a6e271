"""ComfyUI's ``comfy.model_management`` for node packs: devices, dtypes, memory and interruption, from Loom.

Supported, answered from the runtime ``pack_runtime()`` picks (``nodes.runtime``: one device and one
dtype per installation):
- devices: ``get_torch_device``, ``unet_offload_device``, ``intermediate_device``,
  ``text_encoder_device``/``_offload_device``, ``vae_device``/``_offload_device``; Loom computes
  every model on the runtime's device and offloads to the CPU, and nodes exchange values on the CPU;
- dtypes: ``unet_dtype``, ``vae_dtype``, ``text_encoder_dtype`` (all the runtime's dtype: Loom picks
  one per installation, ``--dtype``), ``should_use_fp16``/``should_use_bf16``;
- memory: ``get_free_memory``, ``get_total_memory``, ``soft_empty_cache``, ``unload_all_models``,
  and ``load_models_gpu``/``load_model_gpu``, which place a pack's own ``torch.nn.Module`` within
  the runtime's device budget (``ModelMemory.use``) and leave anything else alone: Loom's MODEL,
  CLIP and VAE values place themselves when they compute;
- ``cpu_mode``, ``mps_mode``, ``is_device_cpu``/``_mps``/``_cuda``; ``xformers_enabled`` is False
  (Loom computes attention with PyTorch's SDPA, never xformers);
- interruption: ``InterruptProcessingException`` *is* ``graph.progress.Interrupted``, the exception
  Loom's executor ends a prompt with as interrupted, so a pack raising or catching it speaks Loom's
  interrupt. ``processing_interrupted()`` reads the running prompt's stop flag,
  ``throw_exception_if_processing_interrupted()`` raises when it is set, and
  ``interrupt_current_processing()`` sets it from inside a node.

Not supported: ComfyUI's memory states (``vram_state``, ``VRAMState``, ``cpu_state``), ``ModelPatcher``
placement (``LoadedModel``, ``current_loaded_models``), casting helpers. Unlike ComfyUI, raising the
exception does not clear the flag (the server owns it and clears it between prompts), and
``interrupt_current_processing(False)`` does not cancel a user's stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from diffusion.devices import memory_info
from graph import progress
from graph.progress import Interrupted, check_interrupted
from nodes.comfy_compat.pack_runtime import pack_runtime

__all__ = [
    "OOM_EXCEPTION",
    "InterruptProcessingException",
    "cpu_mode",
    "get_free_memory",
    "get_torch_device",
    "get_total_memory",
    "intermediate_device",
    "interrupt_current_processing",
    "is_device_cpu",
    "is_device_cuda",
    "is_device_mps",
    "load_model_gpu",
    "load_models_gpu",
    "mps_mode",
    "processing_interrupted",
    "should_use_bf16",
    "should_use_fp16",
    "soft_empty_cache",
    "text_encoder_device",
    "text_encoder_dtype",
    "text_encoder_offload_device",
    "throw_exception_if_processing_interrupted",
    "unet_dtype",
    "unet_offload_device",
    "unload_all_models",
    "vae_device",
    "vae_dtype",
    "vae_offload_device",
    "xformers_enabled",
    "xformers_enabled_vae",
]

log = logging.getLogger(__name__)

InterruptProcessingException = Interrupted
OOM_EXCEPTION = torch.cuda.OutOfMemoryError

_CPU = torch.device("cpu")


def get_torch_device() -> torch.device:
    return pack_runtime().compute.device


def unet_offload_device() -> torch.device:
    return pack_runtime().memory.offload_device


def intermediate_device() -> torch.device:
    return _CPU


def text_encoder_device() -> torch.device:
    return get_torch_device()


def text_encoder_offload_device() -> torch.device:
    return unet_offload_device()


def vae_device() -> torch.device:
    return get_torch_device()


def vae_offload_device() -> torch.device:
    return unet_offload_device()


def _dtype() -> torch.dtype:
    return pack_runtime().compute.dtype


def unet_dtype(
    device: Any = None, model_params: int = 0, supported_dtypes: Any = None, weight_dtype: Any = None
) -> torch.dtype:
    return _dtype()


def vae_dtype(device: Any = None, allowed_dtypes: Any = None) -> torch.dtype:
    return _dtype()


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    return _dtype()


def should_use_fp16(
    device: Any = None, model_params: int = 0, prioritize_performance: bool = True, manual_cast: bool = False
) -> bool:
    return _dtype() == torch.float16


def should_use_bf16(
    device: Any = None, model_params: int = 0, prioritize_performance: bool = True, manual_cast: bool = False
) -> bool:
    return _dtype() == torch.bfloat16


def _device_type(device: Any) -> str | None:
    return getattr(device, "type", None) if not isinstance(device, str) else torch.device(device).type


def is_device_cpu(device: Any) -> bool:
    return _device_type(device) == "cpu"


def is_device_mps(device: Any) -> bool:
    return _device_type(device) == "mps"


def is_device_cuda(device: Any) -> bool:
    return _device_type(device) == "cuda"


def cpu_mode() -> bool:
    return is_device_cpu(get_torch_device())


def mps_mode() -> bool:
    return is_device_mps(get_torch_device())


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def get_free_memory(dev: torch.device | str | None = None, torch_free_too: bool = False) -> Any:
    """Bytes free on ``dev`` (the runtime's device by default), counting what torch holds cached on a GPU;
    with ``torch_free_too``, ``(free, free in torch's cache)``."""
    device = torch.device(dev) if dev is not None else get_torch_device()
    cached = 0
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    free = memory_info(device).free + cached
    return (free, cached) if torch_free_too else free


def get_total_memory(dev: torch.device | str | None = None, torch_total_too: bool = False) -> Any:
    device = torch.device(dev) if dev is not None else get_torch_device()
    total = memory_info(device).total
    if not torch_total_too:
        return total
    return total, torch.cuda.memory_reserved(device) if device.type == "cuda" else total


def soft_empty_cache(force: bool = False) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_all_models() -> None:
    """Move every model of the runtime off the device (they stay loaded, in CPU memory)."""
    pack_runtime().memory.unload_all()


def load_models_gpu(models: Iterable[Any], memory_required: int = 0, *args: Any, **kwargs: Any) -> None:
    """Put a pack's own modules on the device within the runtime's budget, leaving ``memory_required``
    bytes free; other objects (Loom's MODEL values among them) place themselves and are left alone."""
    modules = [model for model in models if isinstance(model, nn.Module)]
    if modules:
        pack_runtime().memory.use(*modules, extra_bytes=int(memory_required))


def load_model_gpu(model: Any) -> None:
    load_models_gpu([model])


def processing_interrupted() -> bool:
    """Whether the running prompt was asked to stop (False outside a node)."""
    try:
        check_interrupted()
    except Interrupted:
        return True
    return False


def throw_exception_if_processing_interrupted() -> None:
    """Raise ``InterruptProcessingException`` (Loom's ``Interrupted``) if the running prompt was asked to stop."""
    check_interrupted()


def interrupt_current_processing(value: bool = True) -> None:
    """Ask the running prompt to stop at its next interruption point; outside a node there is no
    prompt to stop here (the server's ``/interrupt`` does that), so it only logs a warning."""
    if not value:
        return
    if not progress.interrupt_running_prompt():
        log.warning("interrupt_current_processing() called outside a running node: nothing to interrupt")
