"""Software backends of :class:`bkv.keystore.Signer` and :class:`bkv.keystore.Sealer`.

The keys live in this process's memory (pyca/cryptography objects). They are
the default for development and tests; a deployment that has an HSM uses
:mod:`bkv.keystore.pkcs11` instead, behind the same interface.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
    """AES-256-GCM sealing under a per-blob key, with the sealing key held in process memory.

    Every seal draws a fresh salt from ``rng`` (:func:`bkv.keystore.sealed.new_salt`)
    and encrypts under ``AES-256-ECB(key, salt)``, so no GCM key ever encrypts twice; see
    :mod:`bkv.keystore.sealed` for the format and the sealing-key budget. Blobs
    in the legacy format (alg 0x01, GCM under the key itself) still open.
    """

    __slots__ = ("_key", "_key_gcm", "_rng")

    def __init__(self, key: bytes, rng: Rng = default_rng) -> None:
        if not isinstance(key, bytes) or len(key) != sealed.KEY_SIZE:
            raise ValueError("a sealing key is exactly 32 bytes")
        self._key = key
        self._key_gcm = AESGCM(key)  # legacy blobs only: never used to seal
        self._rng = rng

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> SoftwareSealer:
        """A fresh random key."""
        return cls(draw(rng, sealed.KEY_SIZE), rng)

    def key_bytes(self) -> bytes:
        """The raw key, for the caller to persist under its own protection."""
        return self._key

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``alg || salt || AES-256-GCM(blob key, plaintext, ad = alg || aad)``."""
        sealed.check_seal_arguments(plaintext, aad)
        alg = sealed.SEAL_ALGORITHM
        salt = sealed.new_salt(self._rng)
        body = AESGCM(self._blob_key(salt)).encrypt(
            sealed.BLOB_KEY_NONCE, plaintext, sealed.associated_data(alg, aad)
        )
        return sealed.encode(alg, salt, body)

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext of a blob sealed under this key with ``aad``."""
        blob = sealed.decode(ciphertext, aad)
        if blob.alg is SealAlgorithm.AES_256_GCM_BLOB_KEY:
            aead = AESGCM(self._blob_key(blob.head))
        else:
            aead = self._key_gcm
        try:
            return aead.decrypt(blob.nonce, blob.body, sealed.associated_data(blob.alg, aad))
        except InvalidTag:
            raise SealingError("sealed blob failed to authenticate") from None

    def _blob_key(self, salt: bytes) -> bytes:
        # AES-256-ECB over the two salt blocks: what CKM_AES_ECB_ENCRYPT_DATA derives
        # in a token (bkv.keystore.sealed). ECB is right here: the input is random
        # and block-sized, and each block is encrypted on its own by definition.
        encryptor = Cipher(algorithms.AES(self._key), modes.ECB()).encryptor()  # noqa: S305
        return encryptor.update(salt) + encryptor.finalize()

    def __repr__(self) -> str:
        return f"SoftwareSealer(algorithm={sealed.SEAL_ALGORITHM.name})"
