"""The sealed-blob format shared by every :class:`bkv.keystore.Sealer` backend.

Layout (all sizes in bytes)::

    alg (1) || nonce (12) || AEAD ciphertext || tag (16)

``alg`` names the AEAD and doubles as the format version; the AEAD's
associated data is ``alg || aad`` so a blob cannot be re-labelled as another
algorithm. Both algorithms use 256-bit keys, 96-bit nonces and 128-bit tags.

Nonce safety. Nonces are drawn at random for every seal, so the limit is the
birthday bound on 96-bit values: NIST SP 800-38D section 8.3 caps a key with
random IVs at 2^32 seals (collision probability below 2^-32). The same bound
is used for ChaCha20-Poly1305. A nonce collision under one key breaks
confidentiality of both messages and, for GCM, lets an attacker forge, so the
operator must rotate a sealing key long before 2^32 seals (bkv's HSM state
writes are far below that: one per acknowledged write). Nothing here counts
seals: a counter in memory would not survive restarts, and one on disk is
state we would have to seal.

The AEAD choice per backend: PKCS#11 tokens (SoftHSM2 included) offer
AES-GCM (CKM_AES_GCM) but not ChaCha20-Poly1305, so the PKCS#11 backend and the
software default both use AES-256-GCM; ChaCha20-Poly1305 is available to the
software backend for hosts without AES instructions.
"""

from __future__ import annotations

import enum

from bkv.errors import SealingError


class SealAlgorithm(enum.IntEnum):
    """The ``alg`` byte of a sealed blob."""

    AES_256_GCM = 0x01
    CHACHA20_POLY1305 = 0x02


KEY_SIZE = 32
"""Both algorithms take 256-bit keys."""

NONCE_SIZE = 12
"""96-bit nonces (SP 800-38D section 8.2.2 random construction; RFC 8439 section 2.8)."""

TAG_SIZE = 16
"""128-bit authentication tags."""

HEADER_SIZE = 1 + NONCE_SIZE

MIN_SEALED_SIZE = HEADER_SIZE + 1 + TAG_SIZE
"""A sealed blob carries at least one plaintext byte (empty plaintexts are refused)."""

MAX_PLAINTEXT_SIZE = 64 * 1024 * 1024
"""Largest plaintext one seal covers (64 MiB): well under both AEADs' per-message limits."""

MAX_AAD_SIZE = 64 * 1024
"""Associated data is a context label, not bulk data."""

MAX_SEALED_SIZE = HEADER_SIZE + MAX_PLAINTEXT_SIZE + TAG_SIZE


def check_seal_arguments(plaintext: bytes, aad: bytes) -> None:
    """Refuse misuse before any cryptography runs (a bug in the caller, not an attack)."""
    if not isinstance(plaintext, bytes) or not isinstance(aad, bytes):
        raise TypeError("plaintext and aad must be bytes")
    if not 0 < len(plaintext) <= MAX_PLAINTEXT_SIZE:
        raise ValueError(f"plaintext size {len(plaintext)} outside 1..{MAX_PLAINTEXT_SIZE}")
    if len(aad) > MAX_AAD_SIZE:
        raise ValueError(f"aad size {len(aad)} exceeds {MAX_AAD_SIZE}")


def associated_data(alg: SealAlgorithm, aad: bytes) -> bytes:
    """The AEAD associated data: the algorithm byte bound in front of the caller's aad."""
    return bytes([alg]) + aad


def encode(alg: SealAlgorithm, nonce: bytes, ciphertext_and_tag: bytes) -> bytes:
    """Assemble a sealed blob."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    return bytes([alg]) + nonce + ciphertext_and_tag


def decode(sealed: bytes, aad: bytes, expected: SealAlgorithm) -> tuple[bytes, bytes]:
    """Split a sealed blob into ``(nonce, ciphertext_and_tag)``, checking it is well formed.

    Raises :class:`SealingError` (the blob is untrusted input from storage) for a
    wrong size or an algorithm byte other than this key's.
    """
    if not isinstance(sealed, bytes) or not isinstance(aad, bytes):
        raise TypeError("ciphertext and aad must be bytes")
    if len(aad) > MAX_AAD_SIZE:
        raise ValueError(f"aad size {len(aad)} exceeds {MAX_AAD_SIZE}")
    if not MIN_SEALED_SIZE <= len(sealed) <= MAX_SEALED_SIZE:
        raise SealingError(f"sealed blob size {len(sealed)} is out of range")
    if sealed[0] != expected:
        raise SealingError(f"sealed blob algorithm 0x{sealed[0]:02x} is not this key's")
    return sealed[1:HEADER_SIZE], sealed[HEADER_SIZE:]
