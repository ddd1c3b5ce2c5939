"""Key-handle interfaces: what the sans-IO cores need of a key kept elsewhere.

The HSM application and the witness sign and seal through these protocols; the
backends that implement them (software keys, PKCS#11 tokens) are adapters in
:mod:`bkv.keystore`, which the cores never import (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = [
    "COUNTER_ID_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "Sealer",
    "Signer",
]

COUNTER_ID_SIZE = 16
"""Bytes of an NV counter's random id, which the sealed state binds (``bkv.keystore.counter``).

Defined with the interfaces, not with the counter's file and token adapters, so
that the HSM core can name it without importing an adapter."""

ED25519_PUBLIC_KEY_SIZE = 32
"""Raw Ed25519 public key (RFC 8032 section 5.1.5)."""

ED25519_SIGNATURE_SIZE = 64
"""Ed25519 signature R || S (RFC 8032 section 5.1.6)."""


@runtime_checkable
class Signer(Protocol):
    """An Ed25519 signing key whose private half may live outside this process."""

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature over exactly ``message``."""
        ...


@runtime_checkable
class Sealer(Protocol):
    """An AEAD key for state at rest whose key may live outside this process."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``, binding ``aad``, under a key for this blob.

        Every call draws a fresh random salt and derives the blob's own AEAD key
        from it, so how often the caller seals sets no nonce limit
        (:mod:`bkv.keystore.sealed`, "sealing-key budget").
        """
        ...

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        """Return the plaintext, or raise :class:`bkv.errors.SealingError`."""
        ...
