"""ComfyUI's ``comfy.cli_args`` for node packs: ``args`` and the ``LatentPreviewMethod`` enum.

``args`` has every attribute ComfyUI's parser gives with no flags, so a pack reading
``args.disable_metadata`` or ``args.preview_size`` gets ComfyUI's default. The attributes Loom's
runtime decides are read from it when asked (``pack_runtime()``): ``cpu`` (the runtime computes on
the CPU), ``preview_method`` (``--preview-method``), ``base_directory``, ``models_directory``,
``input_directory``, ``output_directory``, ``temp_directory``, ``user_directory``. ``disable_xformers``
is True: Loom never uses xformers.

Not supported: Loom's server flags (``listen``, ``port``, ``enable_cors_header`` ...) are the
server's, not the runtime's, so they hold ComfyUI's defaults unless the host assigns them; a pack
assigning an attribute changes what packs read, not how Loom runs. The parser itself is not provided.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from typing import Any

from nodes.comfy_compat.pack_runtime import pack_runtime
from nodes.runtime import Runtime

__all__ = ["LatentPreviewMethod", "args"]


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


#: ComfyUI's values for the flags Loom has no counterpart for (its parser with no arguments).
_COMFY_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1",
    "port": 8188,
    "tls_keyfile": None,
    "tls_certfile": None,
    "enable_cors_header": None,
    "max_upload_size": 100,
    "extra_model_paths_config": None,
    "auto_launch": False,
    "disable_auto_launch": False,
    "cuda_device": None,
    "cuda_malloc": False,
    "disable_cuda_malloc": False,
    "force_fp32": False,
    "force_fp16": False,
    "fp32_unet": False,
    "fp64_unet": False,
    "bf16_unet": False,
    "fp16_unet": False,
    "fp8_e4m3fn_unet": False,
    "fp8_e5m2_unet": False,
    "fp16_vae": False,
    "fp32_vae": False,
    "bf16_vae": False,
    "cpu_vae": False,
    "fp8_e4m3fn_text_enc": False,
    "fp8_e5m2_text_enc": False,
    "fp16_text_enc": False,
    "fp32_text_enc": False,
    "bf16_text_enc": False,
    "force_channels_last": False,
    "directml": None,
    "oneapi_device_selector": None,
    "disable_ipex_optimize": False,
    "supports_fp8_compute": False,
    "preview_size": 512,
    "preview_stream": False,
    "cache_classic": False,
    "cache_lru": 0,
    "cache_none": False,
    "use_split_cross_attention": False,
    "use_quad_cross_attention": False,
    "use_pytorch_cross_attention": False,
    "use_sage_attention": False,
    "use_flash_attention": False,
    "disable_xformers": True,
    "force_upcast_attention": False,
    "dont_upcast_attention": False,
    "gpu_only": False,
    "highvram": False,
    "normalvram": False,
    "lowvram": False,
    "novram": False,
    "reserve_vram": None,
    "async_offload": False,
    "default_hashing_function": "sha256",
    "disable_smart_memory": False,
    "deterministic": False,
    "fast": set(),
    "mmap_torch_files": False,
    "disable_mmap": False,
    "dont_print_server": False,
    "quick_test_for_ci": False,
    "windows_standalone_build": False,
    "disable_metadata": False,
    "disable_all_custom_nodes": False,
    "whitelist_custom_nodes": [],
    "disable_api_nodes": False,
    "multi_user": False,
    "verbose": "INFO",
    "log_stdout": False,
    "front_end_version": "comfyanonymous/ComfyUI@latest",
    "front_end_root": None,
    "enable_compress_response_body": False,
}

#: Attributes read from the runtime at every access, unless a pack assigned them.
_FROM_RUNTIME: dict[str, Callable[[Runtime], Any]] = {
    "cpu": lambda runtime: runtime.compute.device.type == "cpu",
    "preview_method": lambda runtime: LatentPreviewMethod(runtime.previews.method),
    "base_directory": lambda runtime: str(runtime.folders.base),
    "models_directory": lambda runtime: str(runtime.folders.models),
    "input_directory": lambda runtime: str(runtime.folders.input),
    "output_directory": lambda runtime: str(runtime.folders.output),
    "temp_directory": lambda runtime: str(runtime.folders.temp),
    "user_directory": lambda runtime: str(runtime.folders.user),
}


class ComfyArgs(argparse.Namespace):
    """ComfyUI's parsed flags: its defaults, plus what the runtime decides read live (module doc)."""

    def __init__(self) -> None:
        super().__init__(**{name: value.copy() if isinstance(value, (set, list)) else value
                            for name, value in _COMFY_DEFAULTS.items()})  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        read = _FROM_RUNTIME.get(name)
        if read is None:
            raise AttributeError(f"comfy.cli_args.args has no {name!r}: ComfyUI's parser has no such flag")
        return read(pack_runtime())


args = ComfyArgs()
