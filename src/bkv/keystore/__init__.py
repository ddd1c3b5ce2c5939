"""Key stores: where bkv keeps the keys it signs and seals with.

Two interfaces, each with a software backend (the default) and a PKCS#11
backend (SoftHSM2 in tests; a real HSM in a real deployment):

- :class:`Signer` — Ed25519 (RFC 8032). ``public_key()`` returns the raw
  32-byte key; ``sign(message)`` returns the 64-byte signature over exactly
  ``message`` (PureEdDSA: no pre-hash, no context).
- :class:`Sealer` — an AEAD for state at rest. ``seal(plaintext, aad)``
  returns ``tag || nonce || ciphertext`` (format in :mod:`bkv.keystore.sealed`);
  ``open(sealed, aad)`` returns the plaintext or raises
  :class:`bkv.errors.SealingError`.

Backends:

- :mod:`bkv.keystore.software` — :class:`SoftwareSigner`, :class:`SoftwareSealer`
  (keys in process memory; the caller persists them, e.g. sealed or in a file
  readable only by the service).
- :mod:`bkv.keystore.pkcs11` — ``Pkcs11Signer``, ``Pkcs11Sealer`` and
  ``init_token``: keys are generated inside the token as sensitive and
  non-extractable and never leave it. Imported explicitly (it loads the PKCS#11
  library), never from here, so that importing :mod:`bkv.keystore` does no I/O.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bkv.keystore.software import SoftwareSealer, SoftwareSigner

COUNTER_ID_SIZE = 16
"""Bytes of an NV counter's random id, which the sealed state binds (``bkv.keystore.counter``).

Defined here, in the backend-free part of the package, so that the HSM core can
name it without importing the counter's file and token adapters."""

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
        """Encrypt and authenticate ``plaintext``, binding ``aad``; fresh random nonce."""
        ...

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        """Return the plaintext, or raise :class:`bkv.errors.SealingError`."""
        ...


__all__ = [
    "COUNTER_ID_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "Sealer",
    "Signer",
    "SoftwareSealer",
    "SoftwareSigner",
]
