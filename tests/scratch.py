"""Scratch folders that live exactly as long as the test session's process.

Model templates are written once per session and copied into tests' own folders; a bare ``mkdtemp`` would
leave hundreds of megabytes behind after every run, and enough runs fill the disk CI shares.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def session_scratch_dir(prefix: str) -> Path:
    """A new folder under the system temp dir, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
