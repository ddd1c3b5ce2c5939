"""RFC 9497 OPRF, mode modeOPRF (0x00), suite ristretto255-SHA512.

Only the base OPRF mode is implemented: OPAQUE (RFC 9807 section 4.1) uses it.
Each function follows the RFC's pseudocode of the same name (sections 3.2.1,
3.3.1); the blind is injectable so that Appendix A vectors can be replayed.
"""

from __future__ import annotations

from bkv.crypto import hkdf, ristretto
from bkv.crypto.ristretto import Element, Scalar
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import DeriveKeyPairError, InvalidPointError

MODE_OPRF = 0x00
SUITE_IDENTIFIER = b"ristretto255-SHA512"
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + SUITE_IDENTIFIER
"""RFC 9497 section 3.1: "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier."""

OUTPUT_SIZE = hkdf.HASH_SIZE
"""Nh: bytes of an OPRF output."""
SEED_SIZE = 32
"""Bytes of the DeriveKeyPair seed (Nseed for this suite)."""
MAX_INPUT_SIZE = 65535
"""Inputs are length-prefixed with two bytes in Finalize (section 3.3.1)."""
MAX_INFO_SIZE = 65535

_HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
_DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING
_derive_key_pair_hash = ristretto.ScalarHash(_DERIVE_KEY_PAIR_DST)
_MAX_DERIVE_COUNTER = 255
_COUNTER_OCTETS = tuple(bytes((i,)) for i in range(_MAX_DERIVE_COUNTER + 1))


def _i2osp2(value: int) -> bytes:
    return value.to_bytes(2, "big")


class PrivateKeyDerivation:
    """The skS half of DeriveKeyPair(seed, info) (section 3.2.1) for one fixed ``info``.

    Built once per ``info`` (OPAQUE has two, both constant), so that a login only
    hashes: deriveInput = seed || I2OSP(len(info), 2) || info, then HashToScalar over
    deriveInput || I2OSP(counter, 1) until the scalar is nonzero.
    """

    __slots__ = ("_info_suffix",)

    def __init__(self, info: bytes) -> None:
        if len(info) > MAX_INFO_SIZE:
            raise ValueError("DeriveKeyPair info too long")
        self._info_suffix = _i2osp2(len(info)) + info

    def __call__(self, seed: bytes) -> Scalar:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"DeriveKeyPair seed must be {SEED_SIZE} bytes")
        derive_input = seed + self._info_suffix
        for counter in range(_MAX_DERIVE_COUNTER + 1):
            secret = _derive_key_pair_hash(derive_input + _COUNTER_OCTETS[counter])
            if not ristretto.is_zero_scalar(secret):
                return secret
        raise DeriveKeyPairError("DeriveKeyPair: every counter gave the zero scalar")


def derive_private_key(seed: bytes, info: bytes) -> Scalar:
    """The skS half of DeriveKeyPair(seed, info) (section 3.2.1), without computing pkS."""
    return PrivateKeyDerivation(info)(seed)


def derive_key_pair(seed: bytes, info: bytes) -> tuple[Scalar, Element]:
    """DeriveKeyPair(seed, info) (section 3.2.1): deterministic (skS, pkS)."""
    secret = derive_private_key(seed, info)
    return secret, ristretto.scalar_mult_base(secret)


def _hash_input_to_group(private_input: bytes) -> Element:
    if len(private_input) > MAX_INPUT_SIZE:
        raise ValueError("OPRF input longer than 65535 bytes")
    element = ristretto.hash_to_group(private_input, _HASH_TO_GROUP_DST)
    if ristretto.is_identity(element):
        # RFC 9497 section 3.3.1: InvalidInputError (probability negligible).
        raise InvalidPointError("OPRF input hashed to the identity element")
    return element


def blind(
    private_input: bytes,
    *,
    rng: Rng = default_rng,
    blind_scalar: Scalar | None = None,
) -> tuple[Scalar, Element]:
    """Blind(input) (section 3.3.1): returns (blind, blindedElement).

    ``blind_scalar`` replaces RandomScalar() for test vectors only.
    """
    scalar = ristretto.random_scalar(rng) if blind_scalar is None else blind_scalar
    if ristretto.is_zero_scalar(scalar):
        raise ValueError("blind must be nonzero")
    return scalar, ristretto.scalar_mult(scalar, _hash_input_to_group(private_input))


def blind_evaluate(private_key: Scalar, blinded_element: Element) -> Element:
    """BlindEvaluate(skS, blindedElement) (section 3.3.1): skS * blindedElement."""
    return ristretto.scalar_mult(private_key, blinded_element)


def _finalize_hash(private_input: bytes, unblinded_element: Element) -> bytes:
    return hkdf.sha512(
        _i2osp2(len(private_input))
        + private_input
        + _i2osp2(len(unblinded_element))
        + unblinded_element
        + b"Finalize"
    )


def finalize(private_input: bytes, blind_scalar: Scalar, evaluated_element: Element) -> bytes:
    """Finalize(input, blind, evaluatedElement) (section 3.3.1): the Nh-byte OPRF output."""
    if len(private_input) > MAX_INPUT_SIZE:
        raise ValueError("OPRF input longer than 65535 bytes")
    unblinded = ristretto.scalar_mult(ristretto.scalar_invert(blind_scalar), evaluated_element)
    return _finalize_hash(private_input, unblinded)


def evaluate(private_key: Scalar, private_input: bytes) -> bytes:
    """Evaluate(skS, input) (section 3.3.1): the server computing the PRF directly."""
    issued = ristretto.scalar_mult(private_key, _hash_input_to_group(private_input))
    return _finalize_hash(private_input, issued)
