"""``loom plugins``: what each node pack in the plugin folders does when loaded, and installing its requirements.

``list`` loads every pack as the server would (built-in nodes first, ComfyUI's modules offered) and prints,
per pack, whether it loaded and why not, how many nodes it registered, its import time, the packages its
``requirements.txt`` names that are not installed, and any install it ran while it was imported.
``install-requirements NAME`` runs pip on one pack's ``requirements.txt`` in Loom's own environment; Loom
never installs anything unless asked this way.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TextIO

from graph.plugins import PluginReport, PluginStatus, discover_plugins

__all__ = ["add_plugins_command", "missing_requirements", "requirements_file"]

REQUIREMENTS = "requirements.txt"
# A requirement line's distribution name: what precedes a version specifier, extras or marker.
_DISTRIBUTION = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements_file(pack: Path) -> Path | None:
    """The pack's ``requirements.txt``, if it is a folder that has one."""
    candidate = pack / REQUIREMENTS
    return candidate if pack.is_dir() and candidate.is_file() else None


def missing_requirements(pack: Path) -> list[str]:
    """Distribution names in the pack's ``requirements.txt`` that are not installed (options, URLs, paths
    and ``-r`` includes are not checked)."""
    path = requirements_file(pack)
    if path is None:
        return []
    missing = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("-", ".", "/")) or "://" in line:
            continue
        match = _DISTRIBUTION.match(line)
        if match is None:
            continue
        try:
            metadata.distribution(match.group(1))
        except metadata.PackageNotFoundError:
            missing.append(match.group(1))
    return missing


def add_plugins_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from server.runtime_args import add_runtime_arguments

    plugins = subparsers.add_parser("plugins", help="list the node packs in custom_nodes/, install their requirements")
    actions = plugins.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="load every pack and report what happened to each")
    add_runtime_arguments(listing)
    installing = actions.add_parser(
        "install-requirements", help="pip-install one pack's requirements.txt into Loom's environment"
    )
    installing.add_argument("name", help="the pack's folder name")
    for parser in (listing, installing):
        parser.add_argument(
            "--extra-custom-nodes-dir",
            dest="extra_custom_node_dirs",
            action="append",
            default=[],
            metavar="DIR",
            help="another plugin folder, searched after custom_nodes/ (repeatable)",
        )
    listing.set_defaults(handler=_list_command)
    installing.set_defaults(handler=_install_command)


def _folders(args: argparse.Namespace) -> list[Path]:
    from server.plugins import REPO_CUSTOM_NODES

    return [REPO_CUSTOM_NODES, *map(Path, args.extra_custom_node_dirs)]


def _list_command(args: argparse.Namespace) -> int:
    from graph.registry import NodeRegistry
    from nodes import register_builtin_nodes
    from nodes.runtime import build_runtime
    from nodes.runtime_options import RuntimeOptions
    from server.plugins import load_plugin_folders

    registry = NodeRegistry()
    register_builtin_nodes(registry)
    runtime = build_runtime(RuntimeOptions.of(args))
    print_reports(load_plugin_folders(registry, _folders(args), runtime), sys.stdout)
    return 0


def print_reports(reports: Sequence[PluginReport], out: TextIO) -> None:
    """One block per pack: status, nodes and import time, then what explains a failure."""
    if not reports:
        print("no node packs found", file=out)
    for report in reports:
        print(f"{report.name}: {report.status.value}, {len(report.nodes)} nodes, {report.seconds:.3f} s", file=out)
        if report.status is not PluginStatus.LOADED and report.error:
            print(f"    {report.error}", file=out)
        missing = missing_requirements(report.path)
        if missing:
            print(f"    not installed from {REQUIREMENTS}: {', '.join(missing)}", file=out)
            print(f"    (loom plugins install-requirements {report.path.name})", file=out)
        for command in report.installs:
            print(f"    ran an install while imported: {command}", file=out)
        if report.alias_reason:
            print(f"    imported as {report.module_name}: {report.alias_reason}", file=out)


def _install_command(args: argparse.Namespace) -> int:
    pack = next((entry.path for entry in discover_plugins(_folders(args)) if entry.path.name == args.name), None)
    if pack is None:
        print(f"loom plugins: no pack named {args.name!r} in {', '.join(map(str, _folders(args)))}", file=sys.stderr)
        return 2
    path = requirements_file(pack)
    if path is None:
        print(f"loom plugins: {pack} has no {REQUIREMENTS}; nothing to install", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "pip", "install", "-r", str(path)]
    print("running: " + " ".join(command))
    return subprocess.run(command, check=False).returncode
