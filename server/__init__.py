"""Loom server package."""
