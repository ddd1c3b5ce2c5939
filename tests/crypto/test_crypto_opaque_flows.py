"""OPAQUE end to end through the public API: round trips, every failure, fake records."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bkv.crypto.opaque import (
    KE1,
    KE2,
    KE2_SIZE,
    KE3,
    Argon2id,
    Config,
    Identity,
    RegistrationRecord,
    RegistrationRequest,
    ServerLoginState,
    ServerSecrets,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    server_login_finish,
    server_login_start,
    server_registration_response,
)
from bkv.crypto.opaque.messages import AuthRequest, CredentialRequest
from bkv.crypto.opaque.server import fake_record
from bkv.errors import (
    ClientAuthenticationError,
    EnvelopeRecoveryError,
    InvalidPointError,
    ServerAuthenticationError,
)

PASSWORD = b"correct horse battery staple"
CREDENTIAL_ID = b"user-0001"
TINY_ARGON2 = Argon2id(memory_kib=64, iterations=1, lanes=1)
CONFIGS = {
    "identity": Config(context=b"bkv-test", ksf=Identity()),
    "argon2id-tiny": Config(context=b"bkv-test", ksf=TINY_ARGON2),
}


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)  # deterministic test randomness, not for secrets
    return generator.randbytes


def register(
    secrets: ServerSecrets,
    config: Config,
    password: bytes = PASSWORD,
    **identities: bytes | None,
) -> tuple[RegistrationRecord, bytes]:
    state, request = client_registration_start(password)
    response = server_registration_response(secrets, request, CREDENTIAL_ID)
    return client_registration_finish(state, config, response, **identities)


@pytest.fixture(scope="module")
def secrets() -> ServerSecrets:
    return ServerSecrets.generate()


@pytest.mark.parametrize("config_name", CONFIGS)
def test_registration_and_login_round_trip(secrets: ServerSecrets, config_name: str) -> None:
    config = CONFIGS[config_name]
    record, export_key = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start(
        secrets, config, RegistrationRecord.from_bytes(record.to_bytes()), CREDENTIAL_ID, ke1
    )
    ke3, session_key, login_export_key = client_login_finish(
        state, config, KE2.from_bytes(ke2.to_bytes())
    )
    sealed = server_state.to_bytes()  # as an HSM would persist it between KE2 and KE3
    assert server_login_finish(ServerLoginState.from_bytes(sealed), ke3) == session_key
    assert login_export_key == export_key
    assert len(session_key) == 64


def test_identities_must_match_on_both_sides(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    ids = {"client_identity": b"alice", "server_identity": b"vault.example"}
    record, _ = register(secrets, config, **ids)
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1, **ids)
    ke3, session_key, _ = client_login_finish(state, config, ke2, **ids)
    assert server_login_finish(server_state, ke3) == session_key
    # The envelope binds the identities: omitting them at login fails recovery.
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1, **ids)
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish(state, config, ke2)


@pytest.mark.parametrize("config_name", CONFIGS)
def test_wrong_password_fails_envelope_recovery(secrets: ServerSecrets, config_name: str) -> None:
    config = CONFIGS[config_name]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD + b"!")
    ke2, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1)
    with pytest.raises(EnvelopeRecoveryError) as caught:
        client_login_finish(state, config, ke2)
    message = str(caught.value)
    assert message == "envelope auth tag did not verify"  # names what failed, carries no secret
    assert caught.value.args == (message,)


def test_mismatched_ksf_fails_envelope_recovery(secrets: ServerSecrets) -> None:
    record, _ = register(secrets, CONFIGS["argon2id-tiny"])
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = server_login_start(secrets, CONFIGS["identity"], record, CREDENTIAL_ID, ke1)
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish(state, CONFIGS["identity"], ke2)


def test_mismatched_context_fails_server_authentication(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    other = Config(context=b"another-app", ksf=Identity())
    ke2, _ = server_login_start(secrets, other, record, CREDENTIAL_ID, ke1)
    with pytest.raises(ServerAuthenticationError):
        client_login_finish(state, config, ke2)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("index", "error"),
    [
        (40, EnvelopeRecoveryError),  # masking_nonce: unmasks garbage
        (100, EnvelopeRecoveryError),  # masked envelope nonce
        (150, EnvelopeRecoveryError),  # masked envelope auth tag
        (200, ServerAuthenticationError),  # server_nonce
        (300, ServerAuthenticationError),  # server_mac
        (319, ServerAuthenticationError),  # server_mac, last byte
    ],
)
def test_tampered_ke2_is_rejected(
    secrets: ServerSecrets, index: int, error: type[Exception]
) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1)
    with pytest.raises(error):
        client_login_finish(state, config, KE2.from_bytes(_flip(ke2.to_bytes(), index)))


def test_untampered_ke2_passes_so_the_tamper_tests_can_fail(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1)
    client_login_finish(state, config, KE2.from_bytes(ke2.to_bytes()))


@pytest.mark.parametrize("index", [0, 31, 63])
def test_tampered_ke3_is_rejected(secrets: ServerSecrets, index: int) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1)
    ke3, _, _ = client_login_finish(state, config, ke2)
    with pytest.raises(ClientAuthenticationError):
        server_login_finish(server_state, KE3(_flip(ke3.client_mac, index)))


def test_tampered_ke1_makes_the_server_reject_ke3(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    # Replace the client nonce: the transcripts differ, so the client rejects KE2.
    forged = KE1.from_bytes(_flip(ke1.to_bytes(), 40))
    ke2, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, forged)
    with pytest.raises(ServerAuthenticationError):
        client_login_finish(state, config, ke2)


def test_ke2_from_a_different_server_key_is_rejected(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    # Same OPRF seed (so the password unblinds correctly), different AKE key pair:
    # the envelope's tag binds the genuine server public key.
    other = ServerSecrets.generate()
    impostor = ServerSecrets(secrets.oprf_seed, other.server_private_key, other.server_public_key)
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = server_login_start(impostor, config, record, CREDENTIAL_ID, ke1)
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish(state, config, ke2)


def test_record_reuse_with_another_credential_identifier_fails(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    state, ke1 = client_login_start(PASSWORD)
    ke2, _ = server_login_start(secrets, config, record, b"user-0002", ke1)
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish(state, config, ke2)


def test_deterministic_with_an_injected_rng(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    runs = []
    for _ in range(2):
        _, ke1 = client_login_start(PASSWORD, rng=seeded_rng(1))
        ke2, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1, rng=seeded_rng(2))
        runs.append((ke1.to_bytes(), ke2.to_bytes()))
    assert runs[0] == runs[1]


# --- client enumeration protection (RFC 9807 sections 6.3.2.2, 10.9) -------------------


def test_fake_record_ke2_has_the_real_size_and_fails_like_a_wrong_password(
    secrets: ServerSecrets,
) -> None:
    config = CONFIGS["identity"]
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start(secrets, config, None, b"nobody", ke1)
    assert len(ke2.to_bytes()) == KE2_SIZE
    assert KE2.from_bytes(ke2.to_bytes()) == ke2
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish(state, config, ke2)
    with pytest.raises(ClientAuthenticationError):
        server_login_finish(server_state, KE3(bytes(64)))


def test_fake_record_is_stable_per_identifier_and_seed(secrets: ServerSecrets) -> None:
    assert fake_record(secrets, b"nobody") == fake_record(secrets, b"nobody")
    assert fake_record(secrets, b"nobody") != fake_record(secrets, b"nobody2")
    other_seed = ServerSecrets(bytes(64), secrets.server_private_key, secrets.server_public_key)
    assert fake_record(other_seed, b"nobody") != fake_record(secrets, b"nobody")
    assert fake_record(secrets, b"nobody").envelope.to_bytes() == bytes(96)


def test_fake_record_ke2_is_stable_for_the_same_identifier(secrets: ServerSecrets) -> None:
    """Same identifier, KE1 and server randomness: the same KE2; another identifier differs."""
    config = CONFIGS["identity"]
    _, ke1 = client_login_start(PASSWORD, rng=seeded_rng(3))

    def probe(identifier: bytes, server: ServerSecrets = secrets) -> bytes:
        ke2, _ = server_login_start(server, config, None, identifier, ke1, rng=seeded_rng(4))
        return ke2.to_bytes()

    assert probe(b"nobody") == probe(b"nobody")
    assert probe(b"nobody") != probe(b"nobody2")
    # Fresh server randomness changes the masking nonce and key share but not the OPRF reply.
    fresh, _ = server_login_start(secrets, config, None, b"nobody", ke1)
    assert fresh.to_bytes()[:32] == probe(b"nobody")[:32]
    assert fresh.to_bytes()[32:] != probe(b"nobody")[32:]


def test_fake_and_real_oprf_replies_are_the_same_function(secrets: ServerSecrets) -> None:
    """The evaluated element depends only on (oprf_seed, identifier): a probe can't tell."""
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    _, ke1 = client_login_start(PASSWORD, rng=seeded_rng(5))
    real, _ = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1)
    fake, _ = server_login_start(secrets, config, None, CREDENTIAL_ID, ke1)
    assert real.credential_response.evaluated_message == fake.credential_response.evaluated_message


# --- hygiene -------------------------------------------------------------------------


def test_reprs_hold_no_secrets(secrets: ServerSecrets) -> None:
    config = CONFIGS["identity"]
    reg_state, request = client_registration_start(PASSWORD)
    response = server_registration_response(secrets, request, CREDENTIAL_ID)
    record, export_key = client_registration_finish(reg_state, config, response)
    state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start(secrets, config, record, CREDENTIAL_ID, ke1)
    _, session_key, _ = client_login_finish(state, config, ke2)
    texts = " ".join(repr(x) for x in (secrets, reg_state, state, server_state, record))
    for secret in (
        secrets.oprf_seed,
        secrets.server_private_key,
        PASSWORD,
        record.masking_key,
        session_key,
        export_key,
        server_state.expected_client_mac,
    ):
        assert repr(secret) not in texts
        assert secret.hex() not in texts
    assert repr(secrets.server_public_key) in repr(secrets)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: client_registration_start(b""),
        lambda s: client_login_start(b""),
        lambda s: server_registration_response(s, client_registration_start(b"p")[1], b""),
    ],
    ids=["empty-password-registration", "empty-password-login", "empty-identifier"],
)
def test_caller_misuse_is_value_error(
    secrets: ServerSecrets, call: Callable[[ServerSecrets], object]
) -> None:
    with pytest.raises(ValueError, match="must be"):
        call(secrets)


def test_empty_identity_is_misuse(secrets: ServerSecrets) -> None:
    with pytest.raises(ValueError, match="identity"):
        register(secrets, CONFIGS["identity"], client_identity=b"")


@pytest.mark.parametrize(
    "bad_point", [bytes(32), b"\x01" + bytes(31)], ids=["identity", "non-canonical"]
)
@pytest.mark.parametrize("slot", ["blinded_message", "client_public_keyshare"])
def test_points_that_bypass_from_bytes_still_fail_in_the_group_operation(
    secrets: ServerSecrets, bad_point: bytes, slot: str
) -> None:
    """Constructors only check lengths; libsodium's scalar multiplication is the second line."""
    config = CONFIGS["identity"]
    record, _ = register(secrets, config)
    _, ke1 = client_login_start(PASSWORD)
    if slot == "blinded_message":
        forged = KE1(CredentialRequest(bad_point), ke1.auth_request)
    else:
        forged = KE1(ke1.credential_request, AuthRequest(bytes(32), bad_point))
    with pytest.raises(InvalidPointError):
        server_login_start(secrets, config, record, CREDENTIAL_ID, forged)


def test_identity_blinded_registration_request_fails(secrets: ServerSecrets) -> None:
    with pytest.raises(InvalidPointError):
        server_registration_response(secrets, RegistrationRequest(bytes(32)), CREDENTIAL_ID)
    with pytest.raises(InvalidPointError):
        RegistrationRequest.from_bytes(bytes(32))
