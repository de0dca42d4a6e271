"""``loom serve``: the flags (docs/compatibility.md Appendix B names where one exists) and running the app."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from graph.registry import NodeRegistry
from nodes.runtime_options import option_values
from server.config import AUTH_TOKEN_ENV, ServerConfig, parse_size
from server.distributed.spec import DistributedUnavailableError, parse_workers, require_ray
from server.log_buffer import LOG_FORMAT
from server.runtime_args import add_runtime_arguments
from server.static import FRONTENDS, frontend_root

__all__ = ["add_serve_arguments", "config_from_args", "serve_from_args", "run_server"]


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _workers(text: str) -> str:
    """Checked while parsing, so a bad value or a missing Ray stops ``loom serve`` before it starts."""
    try:
        spec = parse_workers(text)
        if spec.uses_ray:
            require_ray(text)
    except (ValueError, DistributedUnavailableError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig(auth_token=None)
    parser.add_argument(
        "--host",
        "--listen",
        dest="host",
        default=defaults.host,
        help="address(es) to bind, comma-separated (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=defaults.port, help="port (default 8188)")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--cache-budget",
        type=parse_size,
        default=defaults.cache_budget_bytes,
        help="bytes of node outputs kept in RAM between prompts, loaded models included, e.g. 12G "
        "(default: three quarters of this machine's RAM)",
    )
    parser.add_argument(
        "--auth-token",
        default=None,
        help=f"require this token on every request (or set {AUTH_TOKEN_ENV}, which keeps it out of ps)",
    )
    parser.add_argument(
        "--frontend",
        choices=FRONTENDS,
        default=None,
        help="the editor served at /: loom (default, web/) or comfyui, ComfyUI's own frontend "
        "(needs the 'comfyui-frontend' extra: pip install 'loom[comfyui-frontend]')",
    )
    parser.add_argument(
        "--frontend-root", type=_path, default=None, help="serve this folder's static frontend at / instead"
    )
    parser.add_argument(
        "--max-upload-size",
        type=float,
        default=defaults.max_upload_bytes / 2**20,
        help="request body limit in MB (default 100)",
    )
    parser.add_argument(
        "--enable-cors-header",
        dest="cors_origin",
        nargs="?",
        const="*",
        default=None,
        help="send CORS headers for this origin (no value: '*'); off by default",
    )
    parser.add_argument(
        "--disable-custom-nodes",
        "--disable-all-custom-nodes",
        dest="disable_custom_nodes",
        action="store_true",
        help="load no plugins from custom_nodes/ (except those given to --whitelist-custom-nodes)",
    )
    parser.add_argument(
        "--whitelist-custom-nodes",
        nargs="+",
        default=[],
        metavar="NAME",
        help="plugins to load despite --disable-custom-nodes: folder names, or file names with or without .py",
    )
    parser.add_argument(
        "--extra-custom-nodes-dir",
        dest="extra_custom_node_dirs",
        type=_path,
        action="append",
        default=[],
        metavar="DIR",
        help="another plugin folder, searched after custom_nodes/ (repeatable)",
    )
    parser.add_argument(
        "--no-starter-files",
        dest="starter_files",
        action="store_false",
        help="do not place the bundled Real-ESRGAN models and the sample image at start",
    )
    parser.add_argument(
        "--enable-model-downloads",
        action="store_true",
        help="let the editor download the model files a workflow names (HTTPS only) into the models folders; "
        "off by default",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=defaults.workers,
        help="where prompts run: local (default, in this process), ray-local:N (N Ray worker actors "
        "on this machine) or ray://ADDRESS (a Ray cluster; needs the 'distributed' extra)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        **option_values(args),
        cache_budget_bytes=args.cache_budget,
        auth_token=args.auth_token or os.environ.get(AUTH_TOKEN_ENV) or None,
        frontend_root=frontend_root(args.frontend, args.frontend_root),
        disable_custom_nodes=args.disable_custom_nodes,
        custom_node_whitelist=tuple(args.whitelist_custom_nodes),
        extra_custom_node_dirs=tuple(args.extra_custom_node_dirs),
        max_upload_bytes=int(args.max_upload_size * 2**20),
        cors_origin=args.cors_origin,
        workers=args.workers,
        starter_files=args.starter_files,
        enable_model_downloads=args.enable_model_downloads,
    )


def run_server(config: ServerConfig, registry: NodeRegistry | None = None) -> None:
    """Serve until interrupted; refuses a non-loopback bind without a token only with a warning."""
    from server.app import create_app

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if not config.loopback_only and not config.auth_token:
        logging.getLogger(__name__).warning(
            "listening on %s without --auth-token: anyone who can reach this port can run workflows", config.host
        )
    hosts = [part.strip() for part in config.host.split(",") if part.strip()]
    web.run_app(create_app(config, registry), host=hosts, port=config.port, print=None, shutdown_timeout=5.0)


def serve_from_args(args: argparse.Namespace) -> int:
    """Exit status 2, with the reason on stderr, for settings the server cannot start with."""
    from nodes.compute import ComputeSettingsError
    from nodes.extra_model_paths import ExtraModelPathsError

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"loom serve: {error}", file=sys.stderr)
        return 2
    try:
        run_server(config)
    except (ExtraModelPathsError, ComputeSettingsError) as error:
        print(f"loom serve: {error}", file=sys.stderr)
        return 2
    return 0
