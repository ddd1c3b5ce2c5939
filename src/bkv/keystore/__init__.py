"""Key stores: where bkv keeps the keys it signs and seals with.

Two interfaces, each with a software backend (the default) and a PKCS#11
backend (SoftHSM2 in tests; a real HSM in a real deployment):

- :class:`Signer` — Ed25519 (RFC 8032). ``public_key()`` returns the raw
  32-byte key; ``sign(message)`` returns the 64-byte signature over exactly
  ``message`` (PureEdDSA: no pre-hash, no context).
- :class:`Sealer` — an AEAD for state at rest. ``seal(plaintext, aad)``
  returns ``alg || salt || ciphertext || tag``, encrypted under a key derived
  for that blob alone (format and sealing-key budget in
  :mod:`bkv.keystore.sealed`); ``open(sealed, aad)`` returns the plaintext or
  raises :class:`bkv.errors.SealingError`.

Backends:

- :mod:`bkv.keystore.software` — :class:`SoftwareSigner`, :class:`SoftwareSealer`
  (keys in process memory; the caller persists them, e.g. sealed or in a file
  readable only by the service).
- :mod:`bkv.keystore.pkcs11` — ``Pkcs11Signer``, ``Pkcs11Sealer`` and
  ``init_token``: keys are generated inside the token as sensitive and
  non-extractable and never leave it. Imported explicitly (it loads the PKCS#11
  library), never from here, so that importing :mod:`bkv.keystore` does no I/O.

The HSM's NV counter (:mod:`bkv.keystore.counter`) moves by compare-and-swap,
and :func:`bkv.keystore.files.lock_private_directory` keeps a second HSM process
off the HSM's private directory.
"""

from __future__ import annotations

from bkv.crypto.interfaces import (
    COUNTER_ID_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    Sealer,
    Signer,
)
from bkv.keystore.software import SoftwareSealer, SoftwareSigner

__all__ = [
    "COUNTER_ID_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "Sealer",
    "Signer",
    "SoftwareSealer",
    "SoftwareSigner",
]
