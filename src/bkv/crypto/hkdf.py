"""SHA-512, HMAC-SHA512 and HKDF-SHA512 (RFC 5869), the hash/MAC/KDF of the
ristretto255-SHA512 OPAQUE suite (RFC 9807 section 4).

Speed (these run about a dozen times per OPAQUE login, inside the HSM):

- HMAC is RFC 2104 written out over ``hashlib.sha512``, the construction
  CPython's own ``hmac.HMAC`` uses (key padded to the 128-byte block, XOR with
  0x36 / 0x5c via ``bytes.translate``). It is 0.5-1 µs faster per call than
  ``hmac.digest``, which pays OpenSSL 3's per-call HMAC context setup. Tests
  check it against ``hmac.digest`` (OpenSSL) for keys and messages of every
  size class.
- HKDF-Expand with L <= HashLen (every OPAQUE use but the 128-byte
  credential-response pad) is one HMAC: T(1) = HMAC(PRK, info || 0x01).
- A key used more than once (the empty salt, the OPRF seed, the AKE's PRK and
  handshake secret, a masking key) is an :class:`HmacKey`: its two padded
  blocks are hashed once and each MAC continues from copies of those states.
"""

from __future__ import annotations

import hashlib

HASH_SIZE = 64
"""Nh = Nx = Nm for SHA-512."""

_BLOCK_SIZE = 128  # SHA-512's input block: HMAC's key padding length (RFC 2104 section 2)
_MAX_EXPAND = 255 * HASH_SIZE  # RFC 5869 section 2.3: L <= 255*HashLen
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translation tables: key XOR ipad / opad
_OPAD = bytes(b ^ 0x5C for b in range(256))

_OCTETS = tuple(bytes((i,)) for i in range(256))  # I2OSP(i, 1): HKDF-Expand's block counter
_sha512 = hashlib.sha512


def sha512(data: bytes) -> bytes:
    """Hash(data) of the suite."""
    return _sha512(data).digest()


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """(K XOR ipad, K XOR opad) with K the key zero-padded to the block (RFC 2104 section 2)."""
    if not isinstance(key, bytes):
        if not isinstance(key, (bytearray, memoryview)):
            raise TypeError("HMAC key must be bytes")
        key = bytes(key)
    if len(key) > _BLOCK_SIZE:
        key = _sha512(key).digest()  # RFC 2104: keys longer than B are hashed first
    key = key.ljust(_BLOCK_SIZE, b"\x00")
    return key.translate(_IPAD), key.translate(_OPAD)


class HmacKey:
    """An HMAC-SHA512 key whose two padded blocks are hashed once, for several MACs under it.

    H(K XOR ipad || data) and H(K XOR opad || inner) continue from copies of the hash
    states after the first block (RFC 2104 section 2), which saves two SHA-512 blocks and
    the padding per MAC. Holds key material: no repr beyond the class name.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if type(key) is bytes and len(key) <= _BLOCK_SIZE:  # every OPAQUE key: _pads inlined
            key = key.ljust(_BLOCK_SIZE, b"\x00")
            self._inner = _sha512(key.translate(_IPAD))
            self._outer = _sha512(key.translate(_OPAD))
        else:
            inner_pad, outer_pad = _pads(key)
            self._inner = _sha512(inner_pad)
            self._outer = _sha512(outer_pad)

    def __repr__(self) -> str:
        return "HmacKey(...)"

    def mac(self, data: bytes) -> bytes:
        """MAC(key, data): HMAC-SHA512."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def expand(self, info: bytes, length: int) -> bytes:
        """HKDF-Expand (RFC 5869 section 2.3) with this key as the PRK."""
        if 0 < length <= HASH_SIZE:  # N = 1: T(1) = HMAC(PRK, info || 0x01), mac() inlined
            inner = self._inner.copy()
            inner.update(info + b"\x01")
            outer = self._outer.copy()
            outer.update(inner.digest())
            block = outer.digest()
            return block if length == HASH_SIZE else block[:length]
        if not 0 < length <= _MAX_EXPAND:
            raise ValueError(f"HKDF-Expand length {length} out of range")
        okm = previous = b""
        for counter in range(1, -(-length // HASH_SIZE) + 1):  # bounded: at most 255 blocks
            previous = self.mac(previous + info + _OCTETS[counter])  # T(i)
            okm += previous
        return okm[:length]


def hmac_sha512(key: bytes, data: bytes) -> bytes:
    """MAC(key, data) of the suite: HMAC-SHA512 (RFC 2104)."""
    if type(key) is bytes and len(key) <= _BLOCK_SIZE:  # every OPAQUE key: _pads inlined
        key = key.ljust(_BLOCK_SIZE, b"\x00")
        inner_pad, outer_pad = key.translate(_IPAD), key.translate(_OPAD)
    else:
        inner_pad, outer_pad = _pads(key)
    return _sha512(outer_pad + _sha512(inner_pad + data).digest()).digest()


_EMPTY_SALT = HmacKey(b"")
"""HKDF-Extract's key for an empty salt (HashLen zero bytes pad to the same block)."""


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract. An empty salt equals HashLen zero bytes under HMAC's key padding."""
    if not salt:  # OPAQUE's only use (RFC 9807 sections 5.2.3, 6.4.2): precomputed key
        return _EMPTY_SALT.mac(ikm)
    return hmac_sha512(salt, ikm)


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3)."""
    if 0 < length <= HASH_SIZE:
        # N = 1: OKM is the first L bytes of T(1) = HMAC(PRK, T(0) || info || 0x01), T(0) = "".
        block = hmac_sha512(prk, info + b"\x01")
        return block if length == HASH_SIZE else block[:length]
    return HmacKey(prk).expand(info, length)
