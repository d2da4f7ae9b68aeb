"""The one exception type of the conversion tools."""

from __future__ import annotations


class ConversionError(ValueError):
    """Input that cannot be converted (the message names the file and what is wrong)."""
