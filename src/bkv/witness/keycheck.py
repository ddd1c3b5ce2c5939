"""Strict checks on pinned Ed25519 public keys (sans-IO; libsodium through ctypes).

RFC 8032 verification accepts any point encoding as a public key, including the
identity and the other small-order points. Under such a key one signature
(``R`` = identity, ``S`` = 0) verifies for *every* message, so a pinned
small-order witness key would let anyone mint statements, and a mixed-order
key lets its holder make signatures that verify for more than one message.
Every Ed25519 key that bkv pins or loads to verify with (witness statement
keys, operator keys, the witness log's note key, cosigner keys) is therefore
checked with libsodium's ``crypto_core_ed25519_is_valid_point``, which accepts
only canonical encodings of points on the curve, in the prime-order subgroup,
and not of small order.

With such a key, a valid signature ``(R, S)`` determines its message up to a
SHA-512 collision modulo the group order (``S·B = R + H(R, A, M)·A`` and ``A``
has prime order), which is what lets the operator counter-sign the witness's
*signature* bytes (:mod:`bkv.witness.countersign`) and thereby endorse exactly
one statement.

The libsodium handle is pysodium's (as in :mod:`bkv.crypto.ristretto`).
"""

from __future__ import annotations

import ctypes
from typing import Final

import pysodium

ED25519_PUBLIC_KEY_SIZE: Final = 32

_is_valid_point = pysodium.sodium["crypto_core_ed25519_is_valid_point"]
_is_valid_point.restype = ctypes.c_int
_is_valid_point.argtypes = [ctypes.c_char_p]


def is_strong_ed25519_key(public_key: bytes) -> bool:
    """True iff ``public_key`` is a canonical prime-order, non-small-order point."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        return False
    # libsodium reads exactly 32 bytes from the pointer; the length is checked above.
    return bool(_is_valid_point(public_key) == 1)


def check_ed25519_public_key(public_key: bytes, what: str = "Ed25519 public key") -> bytes:
    """Return ``public_key`` if strong; ValueError (a bad pin is caller misuse) otherwise."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError(f"{what} must be 32 bytes")
    if not is_strong_ed25519_key(public_key):
        raise ValueError(
            f"{what} is not a prime-order Ed25519 point (small-order, identity or "
            "non-canonical keys accept forged signatures)"
        )
    return public_key
