"""Every node test gets its own folders under a temporary base directory."""

from __future__ import annotations

from pathlib import Path

import pytest

import nodes.folders
from nodes.folders import Folders, configure_folders


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Folders:
    """Configured folders under ``tmp_path/loom``; the previous configuration comes back afterwards."""
    monkeypatch.setattr(nodes.folders, "_current", None)
    return configure_folders(tmp_path / "loom")
