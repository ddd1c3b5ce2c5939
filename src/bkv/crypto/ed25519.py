"""Strict Ed25519 public-key check (sans-IO; libsodium through ctypes).

RFC 8032 verification accepts any point encoding as a public key, including the
identity and the other small-order points. Under such a key one signature
(``R`` = identity, ``S`` = 0) verifies for *every* message, and a mixed-order
key lets its holder make signatures that verify for more than one message.
libsodium's ``crypto_core_ed25519_is_valid_point`` accepts only canonical
encodings of points on the curve, in the prime-order subgroup, and not of small
order; every Ed25519 key bkv verifies with goes through it (the signed-note and
cosignature keys of :mod:`bkv.tlog`, and the pinned keys checked by
:mod:`bkv.protocol.keycheck`).

This module is neutral ground: :mod:`bkv.tlog` (the log core) and
:mod:`bkv.witness` both import it, and it imports no I/O. The libsodium handle
is pysodium's (as in :mod:`bkv.crypto.ristretto`).
"""

from __future__ import annotations

import ctypes
import functools
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
    if type(public_key) is not bytes:
        # The cache looks keys up by __hash__ and __eq__, which a subclass may override:
        # its answer must be for the bytes libsodium reads (memoryview: the buffer itself,
        # not what a __bytes__ method would return).
        public_key = bytes(memoryview(public_key))
    return _is_valid_point_cached(public_key)


@functools.lru_cache(maxsize=256)
def _is_valid_point_cached(public_key: bytes) -> bool:
    # The check costs a scalar multiplication (as much as a signature verification),
    # and the same few pinned keys are checked on every verification: the answer is a
    # pure function of the 32 bytes, so it is remembered (bounded, thread-safe).
    # libsodium reads exactly 32 bytes from the pointer; the caller checked the length.
    return bool(_is_valid_point(public_key) == 1)
