"""OPAQUE registration (RFC 9807 section 5), client and server halves.

The public functions draw their randomness from ``rng``; the ``*_with``
variants take every random value explicitly so that the RFC 9807 Appendix C
vectors can be replayed. The server half is pure and uses the server's
secrets only through :class:`ServerSecrets` (it runs inside the HSM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bkv.crypto import hkdf, oprf, ristretto
from bkv.crypto.ksf import Ksf
from bkv.crypto.opaque.config import NN, Config
from bkv.crypto.opaque.envelope import StoredEnvelope, store
from bkv.crypto.opaque.keys import ServerSecrets
from bkv.crypto.opaque.messages import (
    REGISTRATION_REQUEST_SIZE,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    exact_bytes,
)
from bkv.crypto.ristretto import Scalar
from bkv.crypto.rng import Rng, default_rng, draw

MAX_PASSWORD_SIZE = oprf.MAX_INPUT_SIZE
"""The password is the OPRF input, length-prefixed with two bytes."""
MAX_CREDENTIAL_IDENTIFIER_SIZE = 65535 - len(b"OprfKey")
"""Bound so that credential_identifier || "OprfKey" stays a sane HKDF info."""


def check_password(password: bytes) -> None:
    """Caller misuse checks for a password (any non-empty bytes up to the OPRF limit)."""
    if not isinstance(password, bytes):
        raise TypeError("password must be bytes")
    if not 0 < len(password) <= MAX_PASSWORD_SIZE:
        raise ValueError(f"password must be 1..{MAX_PASSWORD_SIZE} bytes")


def check_credential_identifier(credential_identifier: bytes) -> None:
    """Caller misuse checks for a credential identifier."""
    if not isinstance(credential_identifier, bytes):
        raise TypeError("credential_identifier must be bytes")
    if not 0 < len(credential_identifier) <= MAX_CREDENTIAL_IDENTIFIER_SIZE:
        raise ValueError(f"credential_identifier must be 1..{MAX_CREDENTIAL_IDENTIFIER_SIZE} bytes")


def randomized_password(oprf_output: bytes, ksf: Ksf) -> bytes:
    """randomized_password = Extract("", oprf_output || Stretch(oprf_output)) (section 5.2.3)."""
    return hkdf.extract(b"", oprf_output + ksf.stretch(oprf_output))


@dataclass(frozen=True)
class ClientRegistrationState:
    """What the client keeps between its two registration steps. Secret: no repr of fields."""

    password: bytes = field(repr=False)
    blind: Scalar = field(repr=False)


# --- client -----------------------------------------------------------------


def client_registration_start_with(
    password: bytes, blind: Scalar
) -> tuple[ClientRegistrationState, RegistrationRequest]:
    """CreateRegistrationRequest (section 5.2.1) with an explicit blind."""
    check_password(password)
    blind, blinded_element = oprf.blind(password, blind_scalar=blind)
    return ClientRegistrationState(password, blind), RegistrationRequest(blinded_element)


def client_registration_start(
    password: bytes, rng: Rng = default_rng
) -> tuple[ClientRegistrationState, RegistrationRequest]:
    """CreateRegistrationRequest (RFC 9807 section 5.2.1)."""
    return client_registration_start_with(password, ristretto.random_scalar(rng))


@dataclass(frozen=True)
class RegistrationTrace:
    """Intermediate values of FinalizeRegistrationRequest, for vector checks."""

    randomized_password: bytes = field(repr=False)
    stored: StoredEnvelope


def client_registration_finish_traced(
    state: ClientRegistrationState,
    config: Config,
    response: RegistrationResponse,
    *,
    envelope_nonce: bytes,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[RegistrationRecord, bytes, RegistrationTrace]:
    """FinalizeRegistrationRequest (section 5.2.3) with an explicit envelope nonce."""
    evaluated = ristretto.decode_element(response.evaluated_message)
    oprf_output = oprf.finalize(state.password, state.blind, evaluated)
    rwd = randomized_password(oprf_output, config.ksf)
    stored = store(
        rwd, response.server_public_key, server_identity, client_identity, envelope_nonce
    )
    record = RegistrationRecord(stored.client_public_key, stored.masking_key, stored.envelope)
    return record, stored.export_key, RegistrationTrace(rwd, stored)


def client_registration_finish(
    state: ClientRegistrationState,
    config: Config,
    response: RegistrationResponse,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    rng: Rng = default_rng,
) -> tuple[RegistrationRecord, bytes]:
    """FinalizeRegistrationRequest (RFC 9807 section 5.2.3): returns (record, export_key)."""
    record, export_key, _ = client_registration_finish_traced(
        state,
        config,
        response,
        envelope_nonce=draw(rng, NN),
        client_identity=client_identity,
        server_identity=server_identity,
    )
    return record, export_key


# --- server (pure; runs inside the HSM application) ---------------------------


def server_registration_response(
    secrets: ServerSecrets, request: RegistrationRequest, credential_identifier: bytes
) -> RegistrationResponse:
    """CreateRegistrationResponse (RFC 9807 section 5.2.2)."""
    check_credential_identifier(credential_identifier)
    # Decoded strictly by RegistrationRequest.from_bytes; libsodium decodes it again.
    evaluated = _blind_evaluate(secrets, request.blinded_message, credential_identifier)
    return RegistrationResponse(evaluated, secrets.server_public_key)


def server_registration_response_bytes(
    secrets: ServerSecrets, request: bytes, credential_identifier: bytes
) -> bytes:
    """:func:`server_registration_response` on encodings: request bytes in, response bytes out.

    The same checks as ``RegistrationRequest.from_bytes`` first (exact size; the blinded
    element canonical and not the identity, :class:`InvalidPointError`), but the element
    is deserialized by the BlindEvaluate multiplication itself instead of once more before
    (:func:`bkv.crypto.ristretto.decode_and_scalar_mult`).
    """
    check_credential_identifier(credential_identifier)
    blinded = exact_bytes("RegistrationRequest", request, REGISTRATION_REQUEST_SIZE)
    return _blind_evaluate(secrets, blinded, credential_identifier) + secrets.server_public_key


def _blind_evaluate(secrets: ServerSecrets, blinded: bytes, credential_identifier: bytes) -> bytes:
    """BlindEvaluate (RFC 9497 section 3.3.1) under the identifier's OPRF key (section 5.2.2)."""
    oprf_key = secrets.oprf_key(credential_identifier)
    return ristretto.decode_and_scalar_mult(oprf_key, blinded, "RegistrationRequest")
