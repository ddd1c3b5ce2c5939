"""Software backends of :class:`bkv.keystore.Signer` and :class:`bkv.keystore.Sealer`.

The keys live in this process's memory (pyca/cryptography objects). They are
the default for development and tests; a deployment that has an HSM uses
:mod:`bkv.keystore.pkcs11` instead, behind the same interface.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import SealingError
from bkv.keystore import sealed
from bkv.keystore.sealed import SealAlgorithm

SEED_SIZE = 32
"""An Ed25519 private key is a 32-byte seed (RFC 8032 section 5.1.5)."""


class SoftwareSigner:
    """Ed25519 signing with a key held in process memory."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ValueError("an Ed25519 seed is exactly 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> SoftwareSigner:
        """A fresh key from ``rng``."""
        return cls(draw(rng, SEED_SIZE))

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature over exactly ``message``."""
        if not isinstance(message, bytes):
            raise TypeError("message must be bytes")
        return self._key.sign(message)

    def seed_bytes(self) -> bytes:
        """The private seed, for the caller to persist under its own protection."""
        return self._key.private_bytes_raw()

    def __repr__(self) -> str:
        return f"SoftwareSigner(public_key={self._public.hex()})"


class SoftwareSealer:
    """AEAD sealing (AES-256-GCM by default) with a key held in process memory.

    Every seal draws a fresh random 96-bit nonce from ``rng``; see
    :mod:`bkv.keystore.sealed` for the nonce-safety limit (2^32 seals per key).
    """

    __slots__ = ("_aead", "_algorithm", "_key", "_rng")

    def __init__(
        self,
        key: bytes,
        algorithm: SealAlgorithm = SealAlgorithm.AES_256_GCM,
        rng: Rng = default_rng,
    ) -> None:
        if not isinstance(key, bytes) or len(key) != sealed.KEY_SIZE:
            raise ValueError("a sealing key is exactly 32 bytes")
        self._algorithm = SealAlgorithm(algorithm)
        self._key = key
        self._aead: AESGCM | ChaCha20Poly1305 = (
            AESGCM(key) if self._algorithm is SealAlgorithm.AES_256_GCM else ChaCha20Poly1305(key)
        )
        self._rng = rng

    @classmethod
    def generate(
        cls, algorithm: SealAlgorithm = SealAlgorithm.AES_256_GCM, rng: Rng = default_rng
    ) -> SoftwareSealer:
        """A fresh random key."""
        return cls(draw(rng, sealed.KEY_SIZE), algorithm, rng)

    @property
    def algorithm(self) -> SealAlgorithm:
        """The AEAD this key is used with."""
        return self._algorithm

    def key_bytes(self) -> bytes:
        """The raw key, for the caller to persist under its own protection."""
        return self._key

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``alg || nonce || AEAD(plaintext, ad = alg || aad)`` under a fresh random nonce."""
        sealed.check_seal_arguments(plaintext, aad)
        nonce = draw(self._rng, sealed.NONCE_SIZE)
        ad = sealed.associated_data(self._algorithm, aad)
        return sealed.encode(self._algorithm, nonce, self._aead.encrypt(nonce, plaintext, ad))

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext of a blob made by :meth:`seal` with the same key and ``aad``."""
        nonce, body = sealed.decode(ciphertext, aad, self._algorithm)
        try:
            return self._aead.decrypt(nonce, body, sealed.associated_data(self._algorithm, aad))
        except InvalidTag:
            raise SealingError("sealed blob failed to authenticate") from None

    def __repr__(self) -> str:
        return f"SoftwareSealer(algorithm={self._algorithm.name})"
