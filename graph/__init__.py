"""Loom graph package."""
