"""The examples run on the same per-test folders as the node tests."""

from tests.nodes.conftest import folders  # noqa: F401
