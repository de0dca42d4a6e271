"""The examples run inside the same per-test runtime as the node tests."""

from tests.nodes.conftest import folders, runtime  # noqa: F401
