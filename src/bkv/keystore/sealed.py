"""The sealed-blob format shared by every :class:`bkv.keystore.Sealer` backend.

Layout (all sizes in bytes)::

    alg (1) || salt (32) || AES-256-GCM ciphertext || tag (16)        alg 0x03, written
    alg (1) || nonce (12) || AES-256-GCM ciphertext || tag (16)       alg 0x01, opened only

``alg`` names the construction and doubles as the format version; the AEAD's
associated data is ``alg || aad`` so a blob cannot be re-labelled as another
construction. Any other ``alg`` byte is refused (:class:`SealingError`).

A key per blob (alg 0x03). Every seal draws a fresh random ``salt`` and
encrypts under its own *blob key*::

    salt     = r1 (12) || 0^32 || r2 (12) || 0^32     r1, r2 random, neither all zero
    blob_key = AES-256-ECB(sealing_key, salt)        (two blocks: 32 bytes)
    ciphertext || tag = AES-256-GCM(blob_key, nonce = 0^96, plaintext, alg || aad)

This is PKCS#11's CKM_AES_ECB_ENCRYPT_DATA key derivation (PKCS#11 v2.40
Current Mechanisms, "Key derivation by data encryption - DES & AES"), so a
token derives the blob key and runs GCM without either key leaving it, and the
software backend computes the same bytes.
AES is a permutation, so two blob keys are equal only if their salts are: each
blob key encrypts exactly one message, and the fixed nonce is never reused
under a key. Why: the host decides how often the HSM seals (every KE1 seals a
whole state, for any account id), so a limit on seals per key that the host can
drive past is no limit. With random 96-bit nonces under the sealing key itself
(alg 0x01) the limit is 2^32 seals (NIST SP 800-38D section 8.3).

Why each salt block ends in 32 zero bits. A key that sealed legacy blobs (alg
0x01, below) has enciphered, for each of them, ``0^128`` (GCM's hash key H),
``nonce || u32(1)`` (the tag mask) and ``nonce || u32(i)`` for i >= 2, the
keystream (SP 800-38D section 7.1), and whoever knows some plaintext of such a
blob (the host stores the blobs and chooses account ids) knows those keystream
blocks. A salt made of two of them would name a blob key the host knows, and
with it a blob that opens. No block GCM with a 96-bit nonce enciphers ends in
32 zero bits other than ``0^128`` (its counter starts at 1 and a message is
shorter than 2^32 - 2 blocks), so blob keys derive only from inputs the
sealing key never enciphered for anything else, and :func:`decode` refuses any
other salt before a key is derived from it. The argument does not rest on
anything in the AAD being secret.

The sealing-key budget (alg 0x03). What remains is the sealing key's use as a
block cipher on random inputs: after ``q`` seals it has encrypted ``2q``
blocks, and telling its outputs from random ones has advantage at most
``(2q)^2 / 2^129`` (the PRP/PRF switching lemma), plus ``q^2 / 2^193`` for two
equal salts (192 random bits each). That is below 2^-31 up to q = 2^48 seals:
89 years at 100 000 seals a second, far beyond what a host can make an HSM do. Nothing counts
seals: there is no limit within reach to enforce (docs/threat-model.md,
"Sealing-key budget").

Alg 0x01, AES-256-GCM under the sealing key with a random 96-bit nonce, is what
bkv wrote before per-blob keys: blobs in that format still open (with the same
key), and no backend writes it any more. Alg 0x02 (ChaCha20-Poly1305 with a
random nonce) was never written by a bkv command and is refused like any
unknown byte.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from bkv.crypto.rng import Rng, draw
from bkv.errors import SealingError


class SealAlgorithm(enum.IntEnum):
    """The ``alg`` byte of a sealed blob."""

    AES_256_GCM = 0x01
    """Legacy: AES-256-GCM under the sealing key, random 96-bit nonce. Opened, never written."""

    AES_256_GCM_BLOB_KEY = 0x03
    """AES-256-GCM under a per-blob key derived from a random salt (module doc)."""


SEAL_ALGORITHM: Final = SealAlgorithm.AES_256_GCM_BLOB_KEY
"""The construction every backend seals with."""

KEY_SIZE: Final = 32
"""AES-256 keys: the sealing key and every blob key."""

SALT_SIZE: Final = 32
"""Two AES blocks: the blob key is the sealing key's encryption of the salt."""

SALT_BLOCK_RANDOM: Final = 12
"""Random bytes per salt block; the block's last four bytes are zero (module doc)."""

_BLOCK_SIZE: Final = 16
_SALT_BLOCK_TAIL: Final = bytes(_BLOCK_SIZE - SALT_BLOCK_RANDOM)

NONCE_SIZE: Final = 12
"""96-bit GCM nonces (SP 800-38D section 8.2.2)."""

BLOB_KEY_NONCE: Final = bytes(NONCE_SIZE)
"""The GCM nonce under a blob key: fixed, since each blob key encrypts one message."""

TAG_SIZE: Final = 16
"""128-bit authentication tags."""

_HEAD_SIZE: Final = {
    SealAlgorithm.AES_256_GCM_BLOB_KEY: SALT_SIZE,
    SealAlgorithm.AES_256_GCM: NONCE_SIZE,
}
"""What follows the alg byte: the salt (per-blob key) or the nonce (legacy)."""

MAX_PLAINTEXT_SIZE: Final = 64 * 1024 * 1024
"""Largest plaintext one seal covers (64 MiB): well under GCM's per-message limit."""

MAX_AAD_SIZE: Final = 64 * 1024
"""Associated data is a context label, not bulk data."""

MAX_SEALED_SIZE: Final = 1 + SALT_SIZE + MAX_PLAINTEXT_SIZE + TAG_SIZE


class SealedBlob(NamedTuple):
    """A sealed blob split into its parts (:func:`decode`)."""

    alg: SealAlgorithm
    head: bytes
    """The salt (alg 0x03) or the nonce (alg 0x01)."""
    body: bytes
    """Ciphertext and tag."""

    @property
    def nonce(self) -> bytes:
        """The GCM nonce: fixed under a blob key, carried in the blob for legacy ones."""
        return BLOB_KEY_NONCE if self.alg is SealAlgorithm.AES_256_GCM_BLOB_KEY else self.head


def check_seal_arguments(plaintext: bytes, aad: bytes) -> None:
    """Refuse misuse before any cryptography runs (a bug in the caller, not an attack)."""
    if not isinstance(plaintext, bytes) or not isinstance(aad, bytes):
        raise TypeError("plaintext and aad must be bytes")
    if not 0 < len(plaintext) <= MAX_PLAINTEXT_SIZE:
        raise ValueError(f"plaintext size {len(plaintext)} outside 1..{MAX_PLAINTEXT_SIZE}")
    if len(aad) > MAX_AAD_SIZE:
        raise ValueError(f"aad size {len(aad)} exceeds {MAX_AAD_SIZE}")


def new_salt(rng: Rng) -> bytes:
    """A fresh salt: two blocks of 12 bytes from ``rng`` and 32 zero bits each (module doc).

    ValueError if ``rng`` returns the wrong length or an all-zero block (a broken rng).
    """
    random = draw(rng, 2 * SALT_BLOCK_RANDOM)
    salt = b"".join(
        random[i : i + SALT_BLOCK_RANDOM] + _SALT_BLOCK_TAIL
        for i in range(0, len(random), SALT_BLOCK_RANDOM)
    )
    if not _is_blob_key_salt(salt):
        raise ValueError("the rng returned an all-zero salt block")
    return salt


def _is_blob_key_salt(salt: bytes) -> bool:
    """Whether every block of ``salt`` ends in 32 zero bits and is not all zero."""
    blocks = [salt[i : i + _BLOCK_SIZE] for i in range(0, len(salt), _BLOCK_SIZE)]
    return len(salt) == SALT_SIZE and all(
        block.endswith(_SALT_BLOCK_TAIL) and any(block) for block in blocks
    )


def associated_data(alg: SealAlgorithm, aad: bytes) -> bytes:
    """The AEAD associated data: the algorithm byte bound in front of the caller's aad."""
    return bytes([alg]) + aad


def encode(alg: SealAlgorithm, head: bytes, ciphertext_and_tag: bytes) -> bytes:
    """Assemble a sealed blob: ``alg || head || ciphertext || tag``."""
    if len(head) != _HEAD_SIZE[alg]:
        raise ValueError(f"{alg.name} blobs carry a {_HEAD_SIZE[alg]}-byte salt or nonce")
    if alg is SealAlgorithm.AES_256_GCM_BLOB_KEY and not _is_blob_key_salt(head):
        raise ValueError("a blob-key salt comes from new_salt()")
    if len(ciphertext_and_tag) <= TAG_SIZE:
        raise ValueError("a sealed blob carries at least one ciphertext byte and the tag")
    return bytes([alg]) + head + ciphertext_and_tag


def decode(sealed: bytes, aad: bytes) -> SealedBlob:
    """Split a sealed blob into its parts, checking the alg byte and the sizes.

    Raises :class:`SealingError` (the blob is untrusted input from storage) for
    an unknown alg byte, a size out of range or a salt outside the blob-key
    domain; the tag is checked by the AEAD.
    """
    if not isinstance(sealed, bytes) or not isinstance(aad, bytes):
        raise TypeError("ciphertext and aad must be bytes")
    if len(aad) > MAX_AAD_SIZE:
        raise ValueError(f"aad size {len(aad)} exceeds {MAX_AAD_SIZE}")
    if not sealed:
        raise SealingError("sealed blob is empty")
    try:
        alg = SealAlgorithm(sealed[0])
    except ValueError:
        raise SealingError(f"sealed blob algorithm 0x{sealed[0]:02x} is unknown") from None
    head_end = 1 + _HEAD_SIZE[alg]
    if not head_end + 1 + TAG_SIZE <= len(sealed) <= head_end + MAX_PLAINTEXT_SIZE + TAG_SIZE:
        raise SealingError(f"sealed blob size {len(sealed)} is out of range for {alg.name}")
    head = sealed[1:head_end]
    if alg is SealAlgorithm.AES_256_GCM_BLOB_KEY and not _is_blob_key_salt(head):
        # Never derive a key from it: see "Why each salt block ends in 32 zero bits".
        raise SealingError("sealed blob salt is outside the blob-key domain")
    return SealedBlob(alg, head, sealed[head_end:])
