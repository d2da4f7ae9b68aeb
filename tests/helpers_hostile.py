"""A pickle that runs code when it is loaded: the hostile payload of the security tests."""

from __future__ import annotations

import os


class Payload:
    """Unpickling this runs ``touch MARKER``: the marker existing afterwards means code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
