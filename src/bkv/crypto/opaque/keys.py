"""OPAQUE key derivations (RFC 9807 sections 4.1, 5.2.2, 6.4.1) and the server's secrets.

:class:`ServerSecrets` is the only holder of the two long-term server secrets
(the OPRF seed and the AKE private key). In bkv it lives only inside the HSM
application; every server-side function takes it as an argument and is pure.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Self

from bkv.crypto import hkdf, oprf, ristretto
from bkv.crypto.opaque.config import NH, NOK, NPK, NSEED, NSK
from bkv.crypto.ristretto import Element, Scalar
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import InvalidScalarError, TrailingBytesError, TruncatedError

OPRF_SEED_SIZE = NH
"""RFC 9807 section 5.2.2: oprf_seed is Nh bytes."""

# Info strings of RFC 9807 sections 4.1 (OPRF key) and 6.4.1 (AKE keys).
_OPRF_KEY_INFO = b"OPAQUE-DeriveKeyPair"
_DH_KEY_INFO = b"OPAQUE-DeriveDiffieHellmanKeyPair"
_OPRF_KEY_LABEL = b"OprfKey"
# bkv's own labels for the fake record of an unknown identifier (not in RFC 9807; see
# bkv.crypto.opaque.server and docs/protocol.md, "Fake records").
_FAKE_CLIENT_KEY_SEED_LABEL = b"bkv-OPAQUE-FakeRecord-ClientKeySeed"
_FAKE_MASKING_KEY_LABEL = b"bkv-OPAQUE-FakeRecord-MaskingKey"

SERVER_SECRETS_SIZE = OPRF_SEED_SIZE + NSK + NPK

_derive_oprf_private_key = oprf.PrivateKeyDerivation(_OPRF_KEY_INFO)
_derive_dh_private_key = oprf.PrivateKeyDerivation(_DH_KEY_INFO)


def derive_diffie_hellman_key_pair(seed: bytes) -> tuple[Scalar, Element]:
    """DeriveDiffieHellmanKeyPair(seed) (RFC 9807 section 6.4.1) for ristretto255."""
    if len(seed) != NSEED:
        raise ValueError(f"key pair seed must be {NSEED} bytes")
    private_key = _derive_dh_private_key(seed)
    return private_key, ristretto.scalar_mult_base(private_key)


def generate_auth_key_pair(rng: Rng = default_rng) -> tuple[Scalar, Element]:
    """GenerateAuthKeyPair() (RFC 9807 section 6.4.1): a fresh AKE key pair."""
    return derive_diffie_hellman_key_pair(draw(rng, NSEED))


def derive_oprf_key(oprf_seed: bytes, credential_identifier: bytes) -> Scalar:
    """The per-credential OPRF key (RFC 9807 section 5.2.2, CreateRegistrationResponse).

    seed = Expand(oprf_seed, credential_identifier || "OprfKey", Nok), then
    DeriveKeyPair(seed, "OPAQUE-DeriveKeyPair").
    """
    return _oprf_key(hkdf.HmacKey(oprf_seed), credential_identifier)


def _oprf_key(oprf_seed: hkdf.HmacKey, credential_identifier: bytes) -> Scalar:
    seed = oprf_seed.expand(credential_identifier + _OPRF_KEY_LABEL, NOK)
    # Only the server ever needs this key, and never its public half.
    return _derive_oprf_private_key(seed)


def diffie_hellman(private_key: Scalar, public_key: Element) -> bytes:
    """DiffieHellman(k, B) (RFC 9807 section 6.4.1): SerializeElement(k * B)."""
    return ristretto.scalar_mult(private_key, public_key)


@dataclass(frozen=True)
class ServerSecrets:
    """The server's long-term OPAQUE secrets: OPRF seed and AKE key pair.

    The repr shows only the public key. ``from_bytes`` checks that the public
    key matches the private key, so a corrupted blob cannot yield a server
    that signs into the wrong identity.
    """

    oprf_seed: bytes = field(repr=False)
    server_private_key: bytes = field(repr=False)
    server_public_key: bytes
    fake_client_public_key: Element = field(init=False, repr=False, compare=False)
    """The client public key of every fake record (see :meth:`fake_masking_key`)."""
    _oprf_seed_key: hkdf.HmacKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.oprf_seed) != OPRF_SEED_SIZE:
            raise ValueError(f"oprf_seed must be {OPRF_SEED_SIZE} bytes")
        if len(self.server_private_key) != NSK or len(self.server_public_key) != NPK:
            raise ValueError("server key pair has the wrong size")
        private_key = ristretto.decode_nonzero_scalar(self.server_private_key)
        expected = ristretto.scalar_mult_base(private_key)
        if not hmac.compare_digest(expected, ristretto.decode_element(self.server_public_key)):
            raise InvalidScalarError("server public key does not match the private key")
        # Derived once: every login keys two HMACs with the seed (its HMAC state is the seed
        # in another form and lives exactly as long; nothing per-request is kept), and
        # answering an unknown identifier must cost no more group operations than a real
        # login (docs/threat-model.md, "Timing").
        oprf_seed_key = hkdf.HmacKey(self.oprf_seed)
        seed = oprf_seed_key.expand(_FAKE_CLIENT_KEY_SEED_LABEL, NSEED)
        object.__setattr__(self, "_oprf_seed_key", oprf_seed_key)
        object.__setattr__(self, "fake_client_public_key", derive_diffie_hellman_key_pair(seed)[1])

    def oprf_key(self, credential_identifier: bytes) -> Scalar:
        """:func:`derive_oprf_key` under this server's OPRF seed."""
        return _oprf_key(self._oprf_seed_key, credential_identifier)

    def fake_masking_key(self, credential_identifier: bytes) -> bytes:
        """The masking key of the fake record for ``credential_identifier``.

        Expand(oprf_seed, credential_identifier || "bkv-OPAQUE-FakeRecord-MaskingKey", Nh): fixed
        per identifier and per fleet (bkv.crypto.opaque.server explains why).
        """
        return self._oprf_seed_key.expand(credential_identifier + _FAKE_MASKING_KEY_LABEL, NH)

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> Self:
        """Fresh secrets: a random Nh-byte OPRF seed and GenerateAuthKeyPair()."""
        oprf_seed = draw(rng, OPRF_SEED_SIZE)
        private_key, public_key = generate_auth_key_pair(rng)
        return cls(oprf_seed, private_key, public_key)

    @property
    def private_scalar(self) -> Scalar:
        """The AKE private key as a validated scalar."""
        return Scalar(self.server_private_key)

    @property
    def public_element(self) -> Element:
        """The AKE public key as a validated element."""
        return Element(self.server_public_key)

    def to_bytes(self) -> bytes:
        """oprf_seed || server_private_key || server_public_key (128 bytes). Secret: seal it."""
        return self.oprf_seed + self.server_private_key + self.server_public_key

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding; raises CodecError subclasses, InvalidScalarError, InvalidPointError."""
        if len(data) < SERVER_SECRETS_SIZE:
            raise TruncatedError(
                f"ServerSecrets: {len(data)} bytes, expected {SERVER_SECRETS_SIZE}"
            )
        if len(data) > SERVER_SECRETS_SIZE:
            raise TrailingBytesError(
                f"ServerSecrets: {len(data)} bytes, expected {SERVER_SECRETS_SIZE}"
            )
        seed_end = OPRF_SEED_SIZE
        return cls(
            bytes(data[:seed_end]),
            bytes(data[seed_end : seed_end + NSK]),
            bytes(data[seed_end + NSK :]),
        )
