"""The one exception type for user-input problems; the CLI prints it as one line, exit 2."""

from __future__ import annotations


class ScalingError(ValueError):
    """Bad input (budgets, rule files, logs, results tables): the message says what and where."""
