"""The error of a run configuration a user can fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag (or combination) that cannot run: a bad value, sizes that do not divide, a flag that
    needs a missing package.  Ends the run with one ``error:`` line, not a traceback."""
