"""SHA-512, HMAC-SHA512 and HKDF-SHA512 (RFC 5869), the hash/MAC/KDF of the
ristretto255-SHA512 OPAQUE suite (RFC 9807 section 4)."""

from __future__ import annotations

import hashlib
import hmac

HASH_SIZE = 64
"""Nh = Nx = Nm for SHA-512."""

_MAX_EXPAND = 255 * HASH_SIZE  # RFC 5869 section 2.3: L <= 255*HashLen


def sha512(data: bytes) -> bytes:
    """Hash(data) of the suite."""
    return hashlib.sha512(data).digest()


def hmac_sha512(key: bytes, data: bytes) -> bytes:
    """MAC(key, data) of the suite (RFC 2104)."""
    return hmac.digest(key, data, "sha512")


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract. An empty salt equals HashLen zero bytes under HMAC's key padding."""
    return hmac_sha512(salt, ikm)


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3)."""
    if not 0 < length <= _MAX_EXPAND:
        raise ValueError(f"HKDF-Expand length {length} out of range")
    blocks: list[bytes] = []
    previous = b""
    for counter in range(1, -(-length // HASH_SIZE) + 1):  # bounded: at most 255 blocks
        previous = hmac_sha512(prk, previous + info + bytes([counter]))
        blocks.append(previous)
    return b"".join(blocks)[:length]
