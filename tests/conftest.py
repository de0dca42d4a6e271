"""Shared pytest configuration for Loom's test suite."""
