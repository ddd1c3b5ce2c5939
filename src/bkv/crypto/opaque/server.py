"""OPAQUE server login (RFC 9807 sections 6.3.2.2, 6.4.4): pure functions over ServerSecrets.

These run only inside the HSM application: the OPRF seed and the AKE private key
never leave :class:`ServerSecrets`. Between KE2 and KE3 the server keeps a
:class:`ServerLoginState` (expected client MAC and session key) that an HSM can
seal and hand to the host; it holds nothing that helps guess the password.

Client-enumeration protection (RFC 9807 sections 6.3.2.2 and 10.9). For an
unknown credential identifier the server answers with a KE2 computed over a
fake record, so that a probe cannot tell registered from unregistered
identifiers. The RFC draws the fake client key and masking key at random; we
derive them deterministically from the oprf_seed (HKDF-Expand with bkv-specific
labels): the masking key per credential identifier, the client public key once
per fleet (:attr:`ServerSecrets.fake_client_public_key`). Why deterministic: a
real record is fixed per identifier, so the real server's behaviour for an
identifier is a fixed function of its inputs; a fake record that changed on
every probe would be a difference an adversary could look for across repeated
probes (and across HSMs of the fleet, which share the oprf_seed but not a
random fake record). Deriving it also keeps the HSM stateless for unknown
identifiers: nothing to store, nothing to replicate. Why one client public key
for all fake records (as opaque-ke's ``ServerSetup`` keeps one dummy key pair):
a record's client public key never appears in KE2; it only enters the 3DH and
the preamble, whose outputs are keyed by secrets the prober lacks, so sharing
it is invisible, and it spares every login a fixed-base multiplication that a
per-identifier key would cost (the fake record is derived on every login, see
:func:`server_login_start`). The OPRF key for a fake identifier is derived
exactly as for a real one, as the RFC requires.

Two forms of the login start: :func:`server_login_start` on message objects
(decoded with ``from_bytes``), and :func:`server_login_start_bytes` on the
encodings, which deserializes each received point in the multiplication that
uses it (libsodium decodes its input anyway) instead of a second time before.
Both run the same code (:func:`_respond`) and check the same things.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Self

from bkv.crypto import ristretto
from bkv.crypto.opaque import ake
from bkv.crypto.opaque.config import NH, NN, NOE, NPK, NSEED, Config
from bkv.crypto.opaque.envelope import cleartext_identities, mask_response
from bkv.crypto.opaque.keys import ServerSecrets, derive_diffie_hellman_key_pair
from bkv.crypto.opaque.messages import (
    ENVELOPE_SIZE,
    KE1,
    KE1_SIZE,
    KE2,
    KE3,
    KE3_SIZE,
    MASKING_KEY_SIZE,
    REGISTRATION_RECORD_SIZE,
    AuthResponse,
    CredentialResponse,
    Envelope,
    RegistrationRecord,
    exact_bytes,
)
from bkv.crypto.opaque.registration import check_credential_identifier
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import (
    ClientAuthenticationError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)

_ZERO_ENVELOPE = bytes(ENVELOPE_SIZE)  # a fake record's envelope (RFC 9807 section 6.3.2.2)
_KE1_KEYSHARE_START = KE1_SIZE - NPK
_RECORD_ENVELOPE_START = NPK + MASKING_KEY_SIZE

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
        # Both slices are 64-byte ``bytes``, exactly what __post_init__ accepts.
        return cls._of_trusted(data[_STATE_TAG_SIZE:_MAC_END], data[_MAC_END:])

    @classmethod
    def _of_trusted(cls, expected_client_mac: bytes, session_key: bytes) -> Self:
        """Build from fields known to be 64-byte ``bytes`` (just computed or sliced).

        Skips the generated ``__init__`` and ``__post_init__``: they are most of the cost
        of the KE3 check (RFC 9807 section 6.4.5). Anything else goes through the
        constructor.
        """
        state = object.__new__(cls)
        fields = state.__dict__
        fields["expected_client_mac"] = expected_client_mac
        fields["session_key"] = session_key
        return state


def fake_record(secrets: ServerSecrets, credential_identifier: bytes) -> RegistrationRecord:
    """The deterministic fake record for an unknown identifier (see the module docstring).

    Shape as in RFC 9807 section 6.3.2.2: a valid client public key, an Nh-byte
    masking key and an all-zero envelope.
    """
    masking_key = secrets.fake_masking_key(credential_identifier)
    zero_envelope = Envelope.from_bytes(_ZERO_ENVELOPE)
    return RegistrationRecord(secrets.fake_client_public_key, masking_key, zero_envelope)


_Randomness = tuple[bytes, bytes, bytes]
"""(masking_nonce, server_nonce, server_keyshare_seed): GenerateKE2's random values."""


def _respond(
    secrets: ServerSecrets,
    config: Config,
    credential_identifier: bytes,
    ke1: bytes,
    *,
    client_public_key: bytes,
    masking_key: bytes,
    envelope: bytes,
    randomness: _Randomness,
    client_identity: bytes | None,
    server_identity: bytes | None,
) -> tuple[bytes, bytes, ServerLoginState, ake.AkeKeys]:
    """GenerateKE2 over encodings: (CredentialResponse, AuthResponse, state, keys).

    RFC 9807 sections 6.3.2.2 (CreateCredentialResponse) and 6.4.4 (AuthServerRespond).
    ``ke1``, the record's fields (real, or fake) and the random values have the right
    sizes. The three received points (KE1's blinded element and client key share, the
    record's client public key) are deserialized by the multiplications that use them
    (:func:`ristretto.decode_and_scalar_mult`), so each is decoded once per use, as
    libsodium must, and none is accepted unchecked; all three are multiplied before any
    output is returned.
    """
    masking_nonce, server_nonce, server_keyshare_seed = randomness
    server_public_key = secrets.server_public_key
    # CreateCredentialResponse: BlindEvaluate under the identifier's OPRF key, then mask.
    evaluated = ristretto.decode_and_scalar_mult(
        secrets.oprf_key(credential_identifier), ke1[:NOE], "KE1 blinded_message"
    )
    masked = mask_response(masking_key, masking_nonce, server_public_key + envelope)
    credential_response = evaluated + masking_nonce + masked
    # AuthServerRespond: 3DH over a fresh key share, keys and MACs over the preamble.
    server_keyshare_secret, server_public_keyshare = derive_diffie_hellman_key_pair(
        server_keyshare_seed
    )
    server_identity, client_identity = cleartext_identities(
        server_public_key, client_public_key, server_identity, client_identity
    )
    preamble = ake.preamble_of_encodings(
        config.context,
        client_identity,
        ke1,
        server_identity,
        credential_response,
        server_nonce=server_nonce,
        server_public_keyshare=server_public_keyshare,
    )
    client_keyshare = ke1[_KE1_KEYSHARE_START:]
    ikm = (
        ristretto.decode_and_scalar_mult(
            server_keyshare_secret, client_keyshare, "KE1 client_public_keyshare"
        )
        + ristretto.decode_and_scalar_mult(
            secrets.private_scalar, client_keyshare, "KE1 client_public_keyshare"
        )
        + ristretto.decode_and_scalar_mult(
            server_keyshare_secret, client_public_key, "record client_public_key"
        )
    )
    keys, server_mac, expected_client_mac = ake.derive_keys_and_macs(ikm, preamble)
    auth_response = server_nonce + server_public_keyshare + server_mac
    state = ServerLoginState._of_trusted(expected_client_mac, keys.session_key)
    return credential_response, auth_response, state, keys


def _generate_ke2(
    secrets: ServerSecrets,
    config: Config,
    record: RegistrationRecord,
    credential_identifier: bytes,
    ke1: KE1,
    *,
    randomness: _Randomness,
    client_identity: bytes | None,
    server_identity: bytes | None,
) -> tuple[KE2, ServerLoginState, ake.AkeKeys]:
    """GenerateKE2 on message objects (RFC 9807 sections 6.3.2.2 and 6.4.4)."""
    envelope = record.envelope
    credential_response, auth_response, state, keys = _respond(
        secrets,
        config,
        credential_identifier,
        ke1.to_bytes(),
        client_public_key=record.client_public_key,
        masking_key=record.masking_key,
        envelope=envelope.nonce + envelope.auth_tag,
        randomness=randomness,
        client_identity=client_identity,
        server_identity=server_identity,
    )
    nonce_end = NOE + NN
    keyshare_end = NN + NPK
    ke2 = KE2(
        CredentialResponse(
            credential_response[:NOE],
            credential_response[NOE:nonce_end],
            credential_response[nonce_end:],
        ),
        AuthResponse(
            auth_response[:NN], auth_response[NN:keyshare_end], auth_response[keyshare_end:]
        ),
    )
    return ke2, state, keys


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
        randomness=(masking_nonce, server_nonce, server_keyshare_seed),
        client_identity=client_identity,
        server_identity=server_identity,
    )


def _draw_randomness(rng: Rng) -> _Randomness:
    """The random values of one GenerateKE2, from one call to ``rng``."""
    drawn = draw(rng, NN + NN + NSEED)  # draw checks the length
    return drawn[:NN], drawn[NN : 2 * NN], drawn[2 * NN :]


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
        randomness=_draw_randomness(rng),
        client_identity=client_identity,
        server_identity=server_identity,
    )
    return ke2, state


def server_login_start_bytes(
    secrets: ServerSecrets,
    config: Config,
    record: bytes | None,
    credential_identifier: bytes,
    ke1: bytes,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    rng: Rng = default_rng,
) -> tuple[bytes, ServerLoginState]:
    """:func:`server_login_start` on encodings: KE1 and record bytes in, KE2 bytes out.

    The same checks as decoding with ``KE1.from_bytes`` / ``RegistrationRecord.from_bytes``
    first (exact sizes: :class:`TruncatedError`, :class:`TrailingBytesError`; every point
    canonical and not the identity: :class:`InvalidPointError`), but each point is decoded
    by the multiplication that uses it instead of once more beforehand (see
    :func:`_respond`). Fails before any output leaves, like the object form.
    """
    check_credential_identifier(credential_identifier)
    ke1 = exact_bytes("KE1", ke1, KE1_SIZE)
    # As in server_login_start: the fake record's per-identifier part is derived on every call.
    fake_masking_key = secrets.fake_masking_key(credential_identifier)
    client_public_key: bytes
    if record is None:
        client_public_key = secrets.fake_client_public_key
        masking_key, envelope = fake_masking_key, _ZERO_ENVELOPE
    else:
        record = exact_bytes("RegistrationRecord", record, REGISTRATION_RECORD_SIZE)
        client_public_key = record[:NPK]
        masking_key = record[NPK:_RECORD_ENVELOPE_START]
        envelope = record[_RECORD_ENVELOPE_START:]
    credential_response, auth_response, state, _ = _respond(
        secrets,
        config,
        credential_identifier,
        ke1,
        client_public_key=client_public_key,
        masking_key=masking_key,
        envelope=envelope,
        randomness=_draw_randomness(rng),
        client_identity=client_identity,
        server_identity=server_identity,
    )
    return credential_response + auth_response, state


def server_login_finish(state: ServerLoginState, ke3: KE3) -> bytes:
    """ServerFinish (RFC 9807 section 6.4.5): checks KE3, returns the session key."""
    if not hmac.compare_digest(ke3.client_mac, state.expected_client_mac):
        raise ClientAuthenticationError("client MAC in KE3 did not verify")
    return state.session_key


def server_login_finish_bytes(state: bytes, ke3: bytes) -> bytes:
    """:func:`server_login_finish` on encodings: a serialized ServerLoginState and KE3 bytes.

    The same checks as ``ServerLoginState.from_bytes`` and ``KE3.from_bytes`` first (exact
    sizes, the state's version tag), then the constant-time MAC comparison.
    """
    if not (
        type(state) is bytes
        and len(state) == SERVER_LOGIN_STATE_SIZE
        and state.startswith(_STATE_TAG)
        and type(ke3) is bytes
        and len(ke3) == KE3_SIZE
    ):
        # Raises the decoders' typed error, or takes a bytes-like the fast test refused.
        return server_login_finish(ServerLoginState.from_bytes(state), KE3.from_bytes(ke3))
    if not hmac.compare_digest(ke3, state[_STATE_TAG_SIZE:_MAC_END]):
        raise ClientAuthenticationError("client MAC in KE3 did not verify")
    return state[_MAC_END:]
