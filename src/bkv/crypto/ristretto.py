"""ristretto255 (RFC 9496) group and scalar operations over libsodium.

Group operations go through libsodium (the library pysodium loads), called via
ctypes on pysodium's own ``sodium`` handle so that we control every return code
and never pay pysodium's per-call version checks. Scalar arithmetic on secret
scalars (reduction of hash outputs, inversion of blinds) is libsodium's
constant-time code too; plain Python integers only encode public values and
check canonical encodings. Zero checks on secret scalars use
``hmac.compare_digest``.

Encodings (RFC 9497 section 4.1, ristretto255-SHA512):

- an element is its 32-byte canonical ristretto255 encoding; decoding rejects
  non-canonical encodings and the identity (:class:`InvalidPointError`);
- a scalar is 32 bytes little-endian and must be canonical, i.e. < L
  (:class:`InvalidScalarError`).
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
from typing import Any, NewType

import pysodium

from bkv.crypto import hkdf
from bkv.crypto.rng import Rng, draw
from bkv.errors import InvalidPointError, InvalidScalarError

ELEMENT_SIZE = 32
"""Noe / Npk: bytes of a serialized element."""
SCALAR_SIZE = 32
"""Ns / Nsk: bytes of a serialized scalar."""
HASH_TO_GROUP_SIZE = 64
"""Bytes of uniform input that crypto_core_ristretto255_from_hash maps to an element."""

ORDER = 2**252 + 27742317777372353535851937790883648493
"""L, the prime order of the ristretto255 group."""

Element = NewType("Element", bytes)
"""A validated canonical, non-identity element encoding."""
Scalar = NewType("Scalar", bytes)
"""A validated canonical scalar encoding (< L)."""

_IDENTITY = bytes(ELEMENT_SIZE)  # the canonical encoding of the identity element
_ZERO_SCALAR = bytes(SCALAR_SIZE)

_sodium = pysodium.sodium


def _sodium_function(name: str) -> Any:
    """A private ctypes handle on a libsodium function (``CDLL[name]`` makes a fresh one).

    Private so that pysodium's shared attribute objects keep their own settings. No argtypes:
    ctypes then passes ``bytes`` as ``const unsigned char *`` and a ``c_char`` array as the
    output pointer without per-argument conversion (about 0.3 µs per call). libsodium reads
    exactly 32 bytes from each input, which ctypes cannot check either way, so every wrapper
    below checks type and length first.
    """
    function = _sodium[name]
    function.restype = ctypes.c_int
    return function


_is_valid_point = _sodium_function("crypto_core_ristretto255_is_valid_point")
_from_hash = _sodium_function("crypto_core_ristretto255_from_hash")
_scalarmult = _sodium_function("crypto_scalarmult_ristretto255")
_scalarmult_base = _sodium_function("crypto_scalarmult_ristretto255_base")
# Constant-time scalar arithmetic: blinds, OPRF keys and hash outputs are secret, and
# Python's big integers (pow, %) take time that depends on their values.
_scalar_reduce = _sodium_function("crypto_core_ristretto255_scalar_reduce")
_scalar_invert = _sodium_function("crypto_core_ristretto255_scalar_invert")
_scalar_reduce.restype = None  # void in libsodium
_ElementBuffer = ctypes.c_char * ELEMENT_SIZE  # a fresh one per call: ctypes drops the GIL


def _operand_error(name: str, size: int) -> TypeError:
    """Caller misuse: libsodium would read ``size`` bytes from whatever it is given."""
    return TypeError(f"{name} must be {size} bytes")


# --- elements ---------------------------------------------------------------


def _has_bit_255(encoding: bytes) -> bool:
    """Whether the top bit of a 32-byte encoding is set: never in a canonical one.

    RFC 9496 section 4.3.1 decodes ``s`` as a 256-bit little-endian integer and
    fails if ``s >= p``; libsodium before 1.0.19 (Debian 12 ships 1.0.18) masks
    bit 255 off before its canonical check, so ``s + 2^255`` would decode as the
    same point. Every place a peer's point enters checks this bit first.
    """
    return encoding[ELEMENT_SIZE - 1] & 0x80 != 0


def decode_element(data: bytes) -> Element:
    """DeserializeElement: strict; rejects wrong length, non-canonical bytes and the identity."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) != ELEMENT_SIZE:
        raise InvalidPointError(f"element must be {ELEMENT_SIZE} bytes, got {len(data)}")
    if data == _IDENTITY:
        # RFC 9497 section 2.1: DeserializeElement fails on the identity element.
        raise InvalidPointError("element is the identity")
    if _has_bit_255(data):
        raise InvalidPointError("element is not a canonical ristretto255 encoding (bit 255 set)")
    if _is_valid_point(data) != 1:
        raise InvalidPointError("element is not a canonical ristretto255 encoding")
    return Element(data)


def scalar_mult(scalar: Scalar, element: Element) -> Element:
    """scalar * element; the result of a nonzero scalar on a valid element is never the identity.

    libsodium decodes ``element`` again (rejecting a non-canonical encoding) and fails on an
    identity result, so this is a second line behind :func:`decode_element`.
    """
    if type(scalar) is not bytes or len(scalar) != SCALAR_SIZE:
        raise _operand_error("scalar", SCALAR_SIZE)
    if type(element) is not bytes or len(element) != ELEMENT_SIZE:
        raise _operand_error("element", ELEMENT_SIZE)
    out = _ElementBuffer()
    if _scalarmult(out, scalar, element) != 0:
        raise InvalidPointError("scalar multiplication gave the identity or an invalid point")
    return Element(out.raw)


def decode_and_scalar_mult(scalar: Scalar, data: bytes, name: str = "element") -> Element:
    """DeserializeElement(data), then scalar * element: both in one libsodium call.

    For bytes received from a peer and used only as a multiplicand (RFC 9807's server: the
    blinded element and client key share of KE1, the client public key of a record), this
    is the whole of DeserializeElement (RFC 9497 section 2.1) without decoding the point
    twice: ``crypto_scalarmult_ristretto255`` refuses a non-canonical or invalid encoding
    (RFC 9496 section 4.3.1) and an identity result, and in a prime-order group a nonzero
    scalar gives the identity only from the identity. (A zero scalar would refuse every
    point: never an invalid point accepted.) Raises :class:`InvalidPointError` naming
    ``name``.
    """
    if type(scalar) is not bytes or len(scalar) != SCALAR_SIZE:
        raise _operand_error("scalar", SCALAR_SIZE)
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name} must be bytes")
        data = bytes(data)
    if len(data) != ELEMENT_SIZE:
        raise InvalidPointError(f"{name} must be {ELEMENT_SIZE} bytes, got {len(data)}")
    if _has_bit_255(data):
        raise InvalidPointError(f"{name} is not a canonical ristretto255 encoding (bit 255 set)")
    out = _ElementBuffer()
    if _scalarmult(out, scalar, data) != 0:
        raise InvalidPointError(f"{name} is not a canonical non-identity ristretto255 element")
    return Element(out.raw)


def scalar_mult_base(scalar: Scalar) -> Element:
    """ScalarMultGen: scalar * G."""
    if type(scalar) is not bytes or len(scalar) != SCALAR_SIZE:
        raise _operand_error("scalar", SCALAR_SIZE)
    out = _ElementBuffer()
    if _scalarmult_base(out, scalar) != 0:
        raise InvalidScalarError("scalar is zero")
    return Element(out.raw)


def element_from_uniform_bytes(uniform: bytes) -> Element:
    """The ristretto255 one-way map (RFC 9496 section 4.3.4) of 64 uniform bytes."""
    if type(uniform) is not bytes or len(uniform) != HASH_TO_GROUP_SIZE:
        raise ValueError(f"from_hash needs {HASH_TO_GROUP_SIZE} bytes")
    out = _ElementBuffer()
    if _from_hash(out, uniform) != 0:  # pragma: no cover - libsodium documents no failure
        raise InvalidPointError("from_hash failed")
    return Element(out.raw)


# --- scalars ----------------------------------------------------------------


def decode_scalar(data: bytes) -> Scalar:
    """DeserializeScalar: 32 bytes little-endian, canonical (< L). Zero is allowed here."""
    if len(data) != SCALAR_SIZE:
        raise InvalidScalarError(f"scalar must be {SCALAR_SIZE} bytes, got {len(data)}")
    if int.from_bytes(data, "little") >= ORDER:
        raise InvalidScalarError("scalar is not reduced modulo the group order")
    return Scalar(bytes(data))


def decode_nonzero_scalar(data: bytes) -> Scalar:
    """DeserializeScalar that also rejects zero (private keys, blinds)."""
    scalar = decode_scalar(data)
    if is_zero_scalar(scalar):
        raise InvalidScalarError("scalar is zero")
    return scalar


def is_zero_scalar(scalar: bytes) -> bool:
    """Whether a (secret) scalar encoding is zero, in constant time (unlike ``any``)."""
    return hmac.compare_digest(scalar, _ZERO_SCALAR)


def scalar_from_int(value: int) -> Scalar:
    """Encode ``value mod L``."""
    return Scalar((value % ORDER).to_bytes(SCALAR_SIZE, "little"))


def scalar_to_int(scalar: Scalar) -> int:
    """The integer a scalar encodes."""
    return int.from_bytes(scalar, "little")


def scalar_reduce(wide: bytes) -> Scalar:
    """Reduce 64 uniform bytes (little-endian) modulo L (RFC 9496 section 4.4), in constant time."""
    if type(wide) is not bytes or len(wide) != HASH_TO_GROUP_SIZE:
        raise ValueError(f"scalar reduction needs {HASH_TO_GROUP_SIZE} bytes")
    out = _ElementBuffer()
    _scalar_reduce(out, wide)
    return Scalar(out.raw)


def scalar_invert(scalar: Scalar) -> Scalar:
    """The multiplicative inverse modulo L, in constant time (libsodium); zero has none."""
    if type(scalar) is not bytes or len(scalar) != SCALAR_SIZE:
        raise _operand_error("scalar", SCALAR_SIZE)
    # libsodium tests for zero before reducing: an unreduced encoding of zero (L
    # itself) would "invert" to zero. Only canonical scalars may come in.
    decode_scalar(scalar)
    out = _ElementBuffer()
    if _scalar_invert(out, scalar) != 0:
        raise InvalidScalarError("zero scalar has no inverse")
    return Scalar(out.raw)


def random_scalar(rng: Rng) -> Scalar:
    """RandomScalar (RFC 9497 section 2.1): a uniform nonzero scalar from 64 random bytes.

    Reducing 512 bits modulo a 253-bit prime leaves a negligible bias. The loop
    only repeats when the result is zero (probability 2^-252), and is bounded.
    """
    for _ in range(8):
        scalar = scalar_reduce(draw(rng, HASH_TO_GROUP_SIZE))
        if not is_zero_scalar(scalar):
            return scalar
    raise ValueError("rng keeps producing zero scalars")


# --- hashing (RFC 9380 section 5.3.1, RFC 9497 section 4.1) ------------------

_XMD_BLOCK_SIZE = 128  # s_in_bytes of SHA-512
_MAX_DST = 255
_MAX_XMD_LENGTH = 255 * hkdf.HASH_SIZE


_sha512 = hashlib.sha512
_Z_PAD_STATE = _sha512(bytes(_XMD_BLOCK_SIZE))  # H state after Z_pad: one whole block


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """expand_message_xmd with SHA-512 (RFC 9380 section 5.3.1)."""
    if not 0 < len(dst) <= _MAX_DST:
        raise ValueError("DST must be 1..255 bytes (RFC 9380 section 5.3.3)")
    if not 0 < length <= _MAX_XMD_LENGTH or length > 65535:
        raise ValueError(f"expand_message_xmd length {length} out of range")
    ell = -(-length // hkdf.HASH_SIZE)
    dst_prime = dst + bytes((len(dst),))
    # b_0 = H(Z_pad || msg || l_i_b_str || I2OSP(0, 1) || DST_prime). Z_pad is exactly one
    # SHA-512 block, so hashing continues from a copy of the state after it.
    b0_hash = _Z_PAD_STATE.copy()
    b0_hash.update(msg + length.to_bytes(2, "big") + b"\x00" + dst_prime)
    b0 = b0_hash.digest()
    bi = hkdf.sha512(b0 + b"\x01" + dst_prime)
    if ell == 1:  # HashToGroup and HashToScalar ask for 64 bytes = one SHA-512 output
        return bi if length == hkdf.HASH_SIZE else bi[:length]
    blocks = [bi]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):  # bounded by ell <= 255
        mixed = (b0_int ^ int.from_bytes(bi, "big")).to_bytes(hkdf.HASH_SIZE, "big")
        bi = hkdf.sha512(mixed + bytes((i,)) + dst_prime)
        blocks.append(bi)
    return b"".join(blocks)[:length]


def hash_to_group(msg: bytes, dst: bytes) -> Element:
    """HashToGroup: hash_to_ristretto255 with expand_message_xmd(SHA-512) (RFC 9497 section 4.1).

    The result may in theory be the identity; callers that must reject it
    (RFC 9497 Blind/Evaluate) do so, so this returns raw bytes typed as Element.
    """
    return element_from_uniform_bytes(expand_message_xmd(msg, dst, HASH_TO_GROUP_SIZE))


def hash_to_scalar(msg: bytes, dst: bytes) -> Scalar:
    """HashToScalar: expand_message_xmd(SHA-512) to 64 bytes, reduced modulo L."""
    return scalar_reduce(expand_message_xmd(msg, dst, HASH_TO_GROUP_SIZE))


class ScalarHash:
    """HashToScalar under one fixed DST, its constant suffixes built once.

    Equal to ``hash_to_scalar(msg, dst)``: expand_message_xmd to 64 bytes (one
    SHA-512 output, ell = 1: RFC 9380 section 5.3.1 steps 7-8) reduced modulo L in
    constant time. For the DeriveKeyPair of every login (RFC 9497 section 3.2.1).
    """

    __slots__ = ("_b0_suffix", "_b1_suffix")

    def __init__(self, dst: bytes) -> None:
        if not 0 < len(dst) <= _MAX_DST:
            raise ValueError("DST must be 1..255 bytes (RFC 9380 section 5.3.3)")
        dst_prime = dst + bytes((len(dst),))
        # b_0 = H(Z_pad || msg || l_i_b_str || I2OSP(0, 1) || DST_prime); b_1 = H(b_0 || 1 || DST').
        self._b0_suffix = HASH_TO_GROUP_SIZE.to_bytes(2, "big") + b"\x00" + dst_prime
        self._b1_suffix = b"\x01" + dst_prime

    def __call__(self, msg: bytes) -> Scalar:
        b0_hash = _Z_PAD_STATE.copy()
        b0_hash.update(msg + self._b0_suffix)
        wide = _sha512(b0_hash.digest() + self._b1_suffix).digest()
        out = _ElementBuffer()
        _scalar_reduce(out, wide)
        return Scalar(out.raw)


def is_identity(element: bytes) -> bool:
    """Whether bytes encode the identity (public data: no constant-time need)."""
    return element == _IDENTITY
