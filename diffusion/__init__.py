"""Loom diffusion package."""
