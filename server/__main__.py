"""``python -m server``: the same as ``loom serve``."""

from __future__ import annotations

import argparse
import sys

from server.serve import add_serve_arguments, serve_from_args


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="Run the Loom server.")
    add_serve_arguments(parser)
    return serve_from_args(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
