"""``python -m tests.server.standin_server [loom serve flags]``: the real server with the stand-in nodes.

The restart test runs this as a separate process so it can kill it with SIGKILL mid-queue.
"""

from __future__ import annotations

import argparse

from server.serve import add_serve_arguments, config_from_args, run_server
from tests.server.standin_nodes import standin_registry

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    run_server(config_from_args(parser.parse_args()), standin_registry())
