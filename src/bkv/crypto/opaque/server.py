"""OPAQUE server login (RFC 9807 sections 6.3.2.2, 6.4.4): pure functions over ServerSecrets.

These run only inside the HSM application: the OPRF seed and the AKE private key
never leave :class:`ServerSecrets`. Between KE2 and KE3 the server keeps a
:class:`ServerLoginState` (expected client MAC and session key) that an HSM can
seal and hand to the host; it holds nothing that helps guess the password.

Client-enumeration protection (RFC 9807 sections 6.3.2.2 and 10.9). For an
unknown credential identifier the server answers with a KE2 computed over a
fake record, so that a probe cannot tell registered from unregistered
identifiers. The RFC draws the fake client key and masking key at random; we
derive them deterministically from the oprf_seed and the credential
identifier (HKDF-Expand with bkv-specific labels). Why: a real record is fixed
per identifier, so the real server's behaviour for an identifier is a fixed
function of its inputs; a fake record that changed on every probe would be a
difference an adversary could look for across repeated probes (and across
HSMs of the fleet, which share the oprf_seed but not a random fake record).
Deriving it also keeps the HSM stateless for unknown identifiers: nothing to
store, nothing to replicate. The OPRF key for a fake identifier is derived
exactly as for a real one, as the RFC requires.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Self

from bkv.crypto import hkdf, oprf
from bkv.crypto.opaque import ake
from bkv.crypto.opaque.config import NH, NN, NSEED, Config
from bkv.crypto.opaque.envelope import create_cleartext_credentials, mask_response
from bkv.crypto.opaque.keys import (
    ServerSecrets,
    derive_diffie_hellman_key_pair,
    derive_oprf_key,
    diffie_hellman,
)
from bkv.crypto.opaque.messages import (
    ENVELOPE_SIZE,
    KE1,
    KE2,
    KE3,
    AuthResponse,
    CredentialResponse,
    Envelope,
    RegistrationRecord,
)
from bkv.crypto.opaque.registration import check_credential_identifier
from bkv.crypto.ristretto import Element
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import (
    ClientAuthenticationError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)

# bkv's own labels for the deterministic fake record (not in RFC 9807; see module docstring).
_FAKE_KEY_SEED_LABEL = b"bkv-OPAQUE-FakeRecord-ClientKeySeed"
_FAKE_MASKING_KEY_LABEL = b"bkv-OPAQUE-FakeRecord-MaskingKey"

_STATE_TAG = b"bkv/opaque/ServerLoginState/v1"
_STATE_TAG_SIZE = len(_STATE_TAG)
SERVER_LOGIN_STATE_SIZE = _STATE_TAG_SIZE + 2 * NH
_MAC_END = _STATE_TAG_SIZE + NH


@dataclass(frozen=True)
class ServerLoginState:
    """The server's state between KE2 and KE3: expected client MAC and session key.

    Both are secret (the session key outright; the expected MAC would let a
    holder forge KE3), so the repr hides them and ``to_bytes`` output must be
    sealed before it leaves the HSM.
    """

    expected_client_mac: bytes = field(repr=False)
    session_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        mac, key = self.expected_client_mac, self.session_key
        if not (type(mac) is bytes and len(mac) == NH and type(key) is bytes and len(key) == NH):
            if not (isinstance(mac, bytes) and isinstance(key, bytes)):
                raise TypeError("ServerLoginState fields must be bytes")
            if len(mac) != NH or len(key) != NH:
                raise ValueError("ServerLoginState fields must be 64 bytes")

    def to_bytes(self) -> bytes:
        """Version tag || expected_client_mac || session_key."""
        return _STATE_TAG + self.expected_client_mac + self.session_key

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError("ServerLoginState must be decoded from bytes")
            data = bytes(data)
        if len(data) != SERVER_LOGIN_STATE_SIZE:
            error = TruncatedError if len(data) < SERVER_LOGIN_STATE_SIZE else TrailingBytesError
            raise error(f"ServerLoginState: {len(data)} bytes")
        if not data.startswith(_STATE_TAG):
            raise UnknownTagError("ServerLoginState: unknown version tag")
        # Both slices are 64-byte ``bytes``, exactly what __post_init__ accepts, so the
        # generated __init__ is skipped: it is most of the cost of the KE3 check.
        state = object.__new__(cls)
        fields = state.__dict__
        fields["expected_client_mac"] = data[_STATE_TAG_SIZE:_MAC_END]
        fields["session_key"] = data[_MAC_END:]
        return state


def fake_record(secrets: ServerSecrets, credential_identifier: bytes) -> RegistrationRecord:
    """The deterministic fake record for an unknown identifier (see the module docstring).

    Shape as in RFC 9807 section 6.3.2.2: a valid client public key, an Nh-byte
    masking key and an all-zero envelope.
    """
    seed = hkdf.expand(secrets.oprf_seed, credential_identifier + _FAKE_KEY_SEED_LABEL, NSEED)
    _, client_public_key = derive_diffie_hellman_key_pair(seed)
    masking_key = hkdf.expand(
        secrets.oprf_seed, credential_identifier + _FAKE_MASKING_KEY_LABEL, NH
    )
    zero_envelope = Envelope.from_bytes(bytes(ENVELOPE_SIZE))
    return RegistrationRecord(client_public_key, masking_key, zero_envelope)


def _credential_response(
    secrets: ServerSecrets,
    ke1: KE1,
    record: RegistrationRecord,
    credential_identifier: bytes,
    masking_nonce: bytes,
) -> CredentialResponse:
    """CreateCredentialResponse (RFC 9807 section 6.3.2.2)."""
    oprf_key = derive_oprf_key(secrets.oprf_seed, credential_identifier)
    # Points in messages were decoded strictly by from_bytes; scalar_mult re-checks them.
    blinded = Element(ke1.credential_request.blinded_message)
    evaluated = oprf.blind_evaluate(oprf_key, blinded)
    envelope = record.envelope
    plaintext = secrets.server_public_key + envelope.nonce + envelope.auth_tag
    masked = mask_response(record.masking_key, masking_nonce, plaintext)
    return CredentialResponse(evaluated, masking_nonce, masked)


def _generate_ke2(
    secrets: ServerSecrets,
    config: Config,
    record: RegistrationRecord,
    credential_identifier: bytes,
    ke1: KE1,
    *,
    masking_nonce: bytes,
    server_nonce: bytes,
    server_keyshare_seed: bytes,
    client_identity: bytes | None,
    server_identity: bytes | None,
) -> tuple[KE2, ServerLoginState, ake.AkeKeys]:
    """GenerateKE2 on checked arguments (RFC 9807 sections 6.3.2.2 and 6.4.4)."""
    credential_response = _credential_response(
        secrets, ke1, record, credential_identifier, masking_nonce
    )
    credentials = create_cleartext_credentials(
        secrets.server_public_key, record.client_public_key, server_identity, client_identity
    )
    server_keyshare_secret, server_public_keyshare = derive_diffie_hellman_key_pair(
        server_keyshare_seed
    )
    preamble = ake.preamble(
        config.context,
        credentials.client_identity,
        ke1,
        credentials.server_identity,
        credential_response,
        server_nonce=server_nonce,
        server_public_keyshare=server_public_keyshare,
    )
    client_keyshare = Element(ke1.auth_request.client_public_keyshare)
    client_public_key = Element(record.client_public_key)
    ikm = (
        diffie_hellman(server_keyshare_secret, client_keyshare)
        + diffie_hellman(secrets.private_scalar, client_keyshare)
        + diffie_hellman(server_keyshare_secret, client_public_key)
    )
    keys, server_mac, expected_client_mac = ake.derive_keys_and_macs(ikm, preamble)
    state = ServerLoginState(expected_client_mac, keys.session_key)
    auth_response = AuthResponse(server_nonce, server_public_keyshare, server_mac)
    return KE2(credential_response, auth_response), state, keys


def server_login_start_traced(
    secrets: ServerSecrets,
    config: Config,
    record: RegistrationRecord,
    credential_identifier: bytes,
    ke1: KE1,
    *,
    masking_nonce: bytes,
    server_nonce: bytes,
    server_keyshare_seed: bytes,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[KE2, ServerLoginState, ake.AkeKeys]:
    """GenerateKE2 (RFC 9807 section 6.3.2.2 and AuthServerRespond, section 6.4.4).

    Every random value is explicit (vectors); the record must be real or fake already.
    """
    check_credential_identifier(credential_identifier)
    if len(masking_nonce) != NN or len(server_nonce) != NN or len(server_keyshare_seed) != NSEED:
        raise ValueError("nonces and keyshare seed must be 32 bytes")
    return _generate_ke2(
        secrets,
        config,
        record,
        credential_identifier,
        ke1,
        masking_nonce=masking_nonce,
        server_nonce=server_nonce,
        server_keyshare_seed=server_keyshare_seed,
        client_identity=client_identity,
        server_identity=server_identity,
    )


def server_login_start(
    secrets: ServerSecrets,
    config: Config,
    record: RegistrationRecord | None,
    credential_identifier: bytes,
    ke1: KE1,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    rng: Rng = default_rng,
) -> tuple[KE2, ServerLoginState]:
    """GenerateKE2 (RFC 9807 section 6.3.2.2); ``record=None`` answers with a fake record."""
    check_credential_identifier(credential_identifier)
    # The fake record is derived on every call, not only when it is used, so that
    # a registered and an unknown identifier cost the same work: the host can time
    # the HSM, and RFC 9807 section 10.9 wants the two cases indistinguishable.
    fake = fake_record(secrets, credential_identifier)
    ke2, state, _ = _generate_ke2(
        secrets,
        config,
        fake if record is None else record,
        credential_identifier,
        ke1,
        masking_nonce=draw(rng, NN),  # draw checks each length
        server_nonce=draw(rng, NN),
        server_keyshare_seed=draw(rng, NSEED),
        client_identity=client_identity,
        server_identity=server_identity,
    )
    return ke2, state


def server_login_finish(state: ServerLoginState, ke3: KE3) -> bytes:
    """ServerFinish (RFC 9807 section 6.4.5): checks KE3, returns the session key."""
    if not hmac.compare_digest(ke3.client_mac, state.expected_client_mac):
        raise ClientAuthenticationError("client MAC in KE3 did not verify")
    return state.session_key
