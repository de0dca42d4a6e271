"""Loom nodes package."""
