"""Tapcast: shared core (wire formats, keys, config, CLI, virtual hall)."""
from __future__ import annotations

__version__ = "0.1.0"
