"""Injected randomness.

Sans-IO modules never reach for a global random source: every function that
needs fresh bytes takes ``rng: Rng`` so tests (and RFC test vectors) can inject
fixed values, and the default is the operating system's CSPRNG.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

Rng = Callable[[int], bytes]
"""Returns exactly ``n`` uniformly random bytes when called with ``n``."""

default_rng: Rng = secrets.token_bytes


def draw(rng: Rng, size: int) -> bytes:
    """Call ``rng`` and check it honoured the requested length (a short read would be fatal)."""
    out = rng(size)
    if not isinstance(out, bytes) or len(out) != size:
        raise ValueError(f"rng returned {len(out)} bytes, expected {size}")
    return out
