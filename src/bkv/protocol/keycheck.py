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
*signature* bytes (:mod:`bkv.protocol.countersign`) and thereby endorse exactly
one statement.

The point check itself lives in :mod:`bkv.crypto.ed25519` so that the log core
(:mod:`bkv.tlog.note`, every note and cosigner key) uses the same check without
depending on the witness package.
"""

from __future__ import annotations

from bkv.crypto.ed25519 import ED25519_PUBLIC_KEY_SIZE, is_strong_ed25519_key

__all__ = ["ED25519_PUBLIC_KEY_SIZE", "check_ed25519_public_key", "is_strong_ed25519_key"]


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
