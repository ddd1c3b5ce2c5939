"""Sealing of a released secret under the OPAQUE session key, bound to the request.

After a valid KE3 the HSM returns the record's secret (the backup key data) in
:class:`bkv.protocol.messages.KeyReleased`. On top of the channel's response seal
(which only the requesting client can open), the secret is encrypted under a
key that only the two ends of *this* OPAQUE login hold:

    prk = HKDF-Extract(salt = "bkv.protocol.release.v1", ikm = session_key)   (RFC 5869 2.2)
    key = HKDF-Expand(prk, info = SHA-256(request_bytes), 32)          (RFC 5869 2.3)
    sealed_secret = nonce(12) || ChaCha20-Poly1305(key, nonce, secret, aad = label)

``session_key`` is the RFC 9807 session key (section 6.4.4) and
``request_bytes`` is the exact outer :class:`~bkv.protocol.messages.HsmRequest`
that carried the KE3, so the sealed secret is bound to that request: it cannot
be opened with another session's key or presented as the answer to another
request. The label carries the version; a change of construction changes it.
HKDF here is the suite's HKDF-SHA512 (:mod:`bkv.crypto.hkdf`).
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bkv.crypto import hkdf
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import DecryptionError

RELEASE_LABEL = b"bkv.protocol.release.v1"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


def release_key(session_key: bytes, request_bytes: bytes) -> bytes:
    """The one-time AEAD key for the secret released in answer to ``request_bytes``."""
    if not session_key or not request_bytes:
        raise ValueError("session key and request bytes must be non-empty")
    prk = hkdf.extract(RELEASE_LABEL, session_key)
    return hkdf.expand(prk, hashlib.sha256(request_bytes).digest(), KEY_SIZE)


def seal_release(
    session_key: bytes, request_bytes: bytes, secret: bytes, rng: Rng = default_rng
) -> bytes:
    """HSM side: ``nonce || AEAD(secret)`` under :func:`release_key`."""
    if not secret:
        raise ValueError("secret must be non-empty")
    nonce = draw(rng, NONCE_SIZE)
    aead = ChaCha20Poly1305(release_key(session_key, request_bytes))
    return nonce + aead.encrypt(nonce, secret, RELEASE_LABEL)


def open_release(session_key: bytes, request_bytes: bytes, sealed_secret: bytes) -> bytes:
    """Client side: the secret, or :class:`DecryptionError` (wrong session, request or bytes)."""
    if len(sealed_secret) <= OVERHEAD:
        raise DecryptionError("released secret is too short")
    nonce, body = sealed_secret[:NONCE_SIZE], sealed_secret[NONCE_SIZE:]
    aead = ChaCha20Poly1305(release_key(session_key, request_bytes))
    try:
        return aead.decrypt(nonce, body, RELEASE_LABEL)
    except InvalidTag:
        raise DecryptionError("released secret failed to authenticate") from None
