"""The flags that shape the nodes' runtime, shared by ``loom serve`` and ``loom run``.

Both commands take the same folders, extra model paths, device, dtype and preview method, parsed by
the same code and read by name into the same ``RuntimeOptions`` (``RuntimeOptions.of``), so a
workflow that runs in the server runs from the command line with the same flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nodes.runtime_options import DEVICES, DTYPE_MODES, PREVIEW_METHODS, RuntimeOptions
from server.config import parse_size

__all__ = ["add_runtime_arguments"]

FOLDER_NAMES = ("models", "input", "output", "user", "temp")


def _path(text: str) -> Path:
    return Path(text).expanduser()


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RuntimeOptions()
    parser.add_argument(
        "--base-dir", type=_path, default=Path.cwd(), help="folder holding models/, input/, output/, user/, temp/"
    )
    for name in FOLDER_NAMES:
        parser.add_argument(
            f"--{name}-dir", type=_path, default=None, help=f"the {name} folder (default <base-dir>/{name})"
        )
    parser.add_argument(
        "--extra-model-paths",
        "--extra-model-paths-config",
        dest="extra_model_paths",
        type=_path,
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML file of extra model folders, in ComfyUI's extra_model_paths.yaml format (repeatable)",
    )
    parser.add_argument("--device", default=defaults.device, help=f"compute device: {', '.join(DEVICES)} or cuda:N")
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPE_MODES, help="weight dtype mode (default auto)")
    parser.add_argument(
        "--vram-budget",
        dest="vram_budget_bytes",
        type=parse_size,
        default=defaults.vram_budget_bytes,
        metavar="SIZE",
        help="bytes the models may hold on the device, e.g. 6G (default: its memory less 1 GiB and the cache's "
        "share); larger models keep what fits there and stream their other blocks, slower, with the same result",
    )
    parser.add_argument(
        "--cache-vram-budget",
        dest="cache_vram_budget_bytes",
        type=parse_size,
        default=defaults.cache_vram_budget_bytes,
        metavar="SIZE",
        help="bytes of node outputs kept on the device between prompts (default 1G on a GPU); past it the "
        "least recently used move to RAM, under --cache-budget",
    )
    parser.add_argument(
        "--preview-method",
        default=defaults.preview_method,
        choices=PREVIEW_METHODS,
        help="sampler previews: taesd (needs models/vae_approx/taesd_decoder.pth or taesdxl_decoder.pth), "
        "latent2rgb, none, or auto (taesd when its file is there, else latent2rgb)",
    )
