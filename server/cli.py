"""The ``loom`` command: ``serve``, ``run WORKFLOW``, ``tiny-checkpoint PATH`` and ``plugins``.

Heavy imports (torch, aiohttp) happen inside the sub-commands, so ``loom --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from server.plugins_cli import add_plugins_command


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from server.runtime_args import add_runtime_arguments

    run = subparsers.add_parser(
        "run", help="run a workflow file headless (API format, editor format, or a PNG that carries one)"
    )
    run.add_argument("workflow", help="path to the workflow .json or .png")
    add_runtime_arguments(run)
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--disable-custom-nodes", action="store_true", help="load no plugins from custom_nodes/")
    run.add_argument(
        "--extra-custom-nodes-dir",
        dest="extra_custom_node_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="another plugin folder, searched after custom_nodes/ (repeatable)",
    )
    run.set_defaults(handler=_run_workflow)


# Written out, not imported, so that `loom --help` does not import torch; a test checks that the help names
# everything diffusion.tiny_parts accepts (it decides what is valid, and per family and part what is not).
_TINY_FAMILIES = (
    "sd15, sd2, sdxl, sdxl_refiner, sd3, sd35_medium, sd35_large, flux_dev, flux_schnell, flux_fill, flux_canny, "
    "flux_depth, zimage, chroma"
)
_TINY_PARTS = (
    "checkpoint, diffusion_model, vae, clip_l, clip_g, t5xxl, qwen3_4b, lora, controlnet, t2i_adapter, "
    "controlnet_union, style_model, clip_vision_h, clip_vision_g, siglip_vision"
)
_TINY_DTYPES = "fp32, fp16, bf16, fp8, fp8_scaled, fp8_mixed"


def _add_tiny_checkpoint(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tiny = subparsers.add_parser(
        "tiny-checkpoint",
        help="write a tiny random model file in the real key layout (it makes noise, not pictures)",
        description="Write a tiny random checkpoint, or one part of a model (a diffusion model, VAE, text encoder, "
        "LoRA, control model or image encoder), in the key layout of the file users download. An unknown family, "
        "part or dtype exits 2 listing the valid ones.",
    )
    tiny.add_argument("path", help="the .safetensors file to write")
    tiny.add_argument("--family", default="sd15", help=f"model family: {_TINY_FAMILIES} (default sd15)")
    tiny.add_argument(
        "--part",
        default="checkpoint",
        help=f"what the file holds: {_TINY_PARTS} (default checkpoint: all in one; SD1/SD2/SDXL have only that "
        "and a controlnet for their UNet, Z-Image and Chroma have no all-in-one file)",
    )
    tiny.add_argument(
        "--dtype",
        default="fp32",
        help=f"how weights are stored: {_TINY_DTYPES} (default fp32; fp8 only for the flow-matching checkpoint, "
        "diffusion_model, t5xxl)",
    )
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_write_tiny_checkpoint)


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from server.serve import add_serve_arguments, serve_from_args

    serve = subparsers.add_parser("serve", help="run the server with the editor (binds 127.0.0.1 by default)")
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_from_args)


def _run_workflow(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nodes.runtime_options import RuntimeOptions
    from server.headless import EXIT_INVALID, run_workflow_file
    from server.plugins import REPO_CUSTOM_NODES

    try:
        options = RuntimeOptions.of(args)
    except ValueError as error:
        print(f"loom run: {error}", file=sys.stderr)
        return EXIT_INVALID
    plugin_folders = [] if args.disable_custom_nodes else [REPO_CUSTOM_NODES, *map(Path, args.extra_custom_node_dirs)]
    return run_workflow_file(args.workflow, options, show_progress=not args.quiet, plugin_folders=plugin_folders)


def _write_tiny_checkpoint(args: argparse.Namespace) -> int:
    from diffusion.tiny_parts import TinyFileError, write_tiny_file

    try:
        write_tiny_file(args.path, args.family, args.part, args.dtype, seed=args.seed)
    except TinyFileError as error:
        print(f"loom tiny-checkpoint: {error}", file=sys.stderr)
        return 2
    stored = "" if args.dtype == "fp32" else f" ({args.dtype})"
    what = f"{args.family} {args.part}{stored}"
    print(f"wrote a tiny random {what} to {args.path} (random weights: it makes noise, not pictures)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loom", description="Loom, a node-based workflow engine for diffusion models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve(subparsers)
    _add_run(subparsers)
    _add_tiny_checkpoint(subparsers)
    add_plugins_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
