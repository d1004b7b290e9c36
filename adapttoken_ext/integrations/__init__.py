"""Integrations with evaluation frameworks (optional dependencies, imported on use)."""
