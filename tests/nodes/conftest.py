"""Every node test gets its own folders under a temporary base directory, and computes on the CPU.

Node tests compare against reference modules on the CPU in fp32, so they pin the process's compute
settings to that; on a machine with a GPU, ``auto`` would otherwise move the shared modules to it
and compute in bf16.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nodes.folders
from nodes.compute import configure_compute
from nodes.folders import Folders, configure_folders


@pytest.fixture(autouse=True)
def cpu_compute() -> Iterator[None]:
    configure_compute("cpu", "fp32")
    yield
    configure_compute()


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Folders:
    """Configured folders under ``tmp_path/loom``; the previous configuration comes back afterwards."""
    monkeypatch.setattr(nodes.folders, "_current", None)
    return configure_folders(tmp_path / "loom")
