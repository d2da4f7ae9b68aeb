"""Held-out split by hashing the recording id.

The hash is of the *base* id (Emilia recordings split at a non-contiguous speaker run carry a
``#n`` suffix), so every variant and piece of a recording lands on the same side, and the
assignment never depends on file order, sharding or worker count.
"""

from __future__ import annotations

import hashlib


def base_id(recording_id: str) -> str:
    return recording_id.split("#", 1)[0]


def heldout_score(recording_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) determined by the id."""
    digest = hashlib.blake2b(f"{salt}{base_id(recording_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(recording_id: str, fraction: float, salt: str = "") -> bool:
    return fraction > 0 and heldout_score(recording_id, salt) < fraction
