"""Errors that end a run with a one-line message instead of a traceback (the user can fix them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag combination that cannot run here (sizes that do not divide, a missing package)."""
