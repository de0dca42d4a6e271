"""Every node test runs inside its own runtime: folders under a temporary base, computing on the CPU.

Node tests compare against reference modules on the CPU in fp32, so the runtime pins that; on a
machine with a GPU, ``auto`` would otherwise move the shared modules to it and compute in bf16.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from graph.services import services_context
from nodes.folders import Folders
from nodes.runtime import Runtime, RuntimeOptions, build_runtime


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """The runtime lent to node code for the whole test, as the executor lends it to a prompt."""
    built = build_runtime(RuntimeOptions(base_dir=tmp_path / "loom", device="cpu", dtype="fp32"))
    with services_context(built):
        yield built


@pytest.fixture
def folders(runtime: Runtime) -> Folders:
    return runtime.folders
