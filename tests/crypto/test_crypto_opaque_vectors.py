"""RFC 9807 Appendix C: every ristretto255 vector (real C.1.1, C.1.2; fake C.2.1).

Each listed intermediate and output value is a separately named test. Values
that both parties compute (session_key, handshake_secret, MAC keys) or that
two protocol steps produce (export_key at registration and at login) are
checked on every side that computes them.
"""

from __future__ import annotations

import dataclasses

import pytest
from crypto_vectors import VECTORS_DIR, OpaqueVector, opaque_vectors

from bkv.crypto import oprf, ristretto
from bkv.crypto.opaque import KE1, Config, Identity, RegistrationRecord, ServerSecrets
from bkv.crypto.opaque.client import client_login_finish_traced, client_login_start_with
from bkv.crypto.opaque.envelope import derive_auth_key, derive_export_key
from bkv.crypto.opaque.keys import derive_oprf_key
from bkv.crypto.opaque.messages import ENVELOPE_SIZE, Envelope
from bkv.crypto.opaque.registration import (
    client_registration_finish_traced,
    client_registration_start_with,
    randomized_password,
    server_registration_response,
)
from bkv.crypto.opaque.server import server_login_finish, server_login_start_traced

ALL_VECTORS = opaque_vectors(VECTORS_DIR / "rfc9807-appendix-c.txt")
# "ristretto255 vectors": OPRF ristretto255-SHA512 with the AKE group ristretto255.
OURS = [
    v
    for v in ALL_VECTORS
    if v.configuration["Group"] == "ristretto255"
    and v.configuration["OPRF"] == "ristretto255-SHA512"
]
REAL = [v for v in OURS if v.number.startswith("C.1.")]
FAKE = [v for v in OURS if v.number.startswith("C.2.")]


def test_the_vectors_we_claim_are_all_there() -> None:
    assert [v.number for v in REAL] == ["C.1.1", "C.1.2"]
    assert [v.number for v in FAKE] == ["C.2.1"]
    for vector in OURS:
        assert vector.configuration["KSF"] == "Identity"
        assert vector.configuration["Nh"] == "64"


def _optional(vector: OpaqueVector, name: str) -> bytes | None:
    return vector.input(name) if name in vector.inputs else None


def _secrets(vector: OpaqueVector) -> ServerSecrets:
    return ServerSecrets(
        vector.input("oprf_seed"),
        vector.input("server_private_key"),
        vector.input("server_public_key"),
    )


def compute_real(vector: OpaqueVector) -> dict[str, list[bytes]]:
    """Run registration and login with the vector's injected values.

    Returns every value we compute, by the appendix's name, from every side.
    """
    config = Config(context=bytes.fromhex(vector.configuration["Context"]), ksf=Identity())
    secrets = _secrets(vector)
    password = vector.input("password")
    credential_identifier = vector.input("credential_identifier")
    identities = {
        "client_identity": _optional(vector, "client_identity"),
        "server_identity": _optional(vector, "server_identity"),
    }

    # Registration (RFC 9807 section 5).
    reg_state, request = client_registration_start_with(
        password, ristretto.decode_scalar(vector.input("blind_registration"))
    )
    response = server_registration_response(secrets, request, credential_identifier)
    record, reg_export_key, reg_trace = client_registration_finish_traced(
        reg_state, config, response, envelope_nonce=vector.input("envelope_nonce"), **identities
    )
    record = RegistrationRecord.from_bytes(record.to_bytes())  # as the server would load it

    # Login (RFC 9807 section 6).
    login_state, ke1 = client_login_start_with(
        password,
        blind=ristretto.decode_scalar(vector.input("blind_login")),
        client_nonce=vector.input("client_nonce"),
        client_keyshare_seed=vector.input("client_keyshare_seed"),
    )
    ke2, server_state, server_keys = server_login_start_traced(
        secrets,
        config,
        record,
        credential_identifier,
        KE1.from_bytes(ke1.to_bytes()),
        masking_nonce=vector.input("masking_nonce"),
        server_nonce=vector.input("server_nonce"),
        server_keyshare_seed=vector.input("server_keyshare_seed"),
        **identities,
    )
    ke3, client_session_key, login_export_key, client_trace = client_login_finish_traced(
        login_state, config, ke2, **identities
    )
    server_session_key = server_login_finish(server_state, ke3)

    envelope_nonce = reg_trace.stored.envelope.nonce
    return {
        "client_public_key": [reg_trace.stored.client_public_key, record.client_public_key],
        "auth_key": [derive_auth_key(reg_trace.randomized_password, envelope_nonce)],
        "randomized_password": [
            reg_trace.randomized_password,
            client_trace.randomized_password,
        ],
        "envelope": [reg_trace.stored.envelope.to_bytes(), record.envelope.to_bytes()],
        "handshake_secret": [server_keys.handshake_secret, client_trace.keys.handshake_secret],
        "server_mac_key": [server_keys.server_mac_key, client_trace.keys.server_mac_key],
        "client_mac_key": [server_keys.client_mac_key, client_trace.keys.client_mac_key],
        "oprf_key": [derive_oprf_key(secrets.oprf_seed, credential_identifier)],
        "registration_request": [request.to_bytes()],
        "registration_response": [response.to_bytes()],
        "registration_upload": [record.to_bytes()],
        "KE1": [ke1.to_bytes()],
        "KE2": [ke2.to_bytes()],
        "KE3": [ke3.to_bytes()],
        "export_key": [reg_export_key, login_export_key],
        "session_key": [client_session_key, server_session_key],
    }


def compute_fake(vector: OpaqueVector) -> dict[str, list[bytes]]:
    """KE2 for an unregistered identifier, with the vector's fake record (section 6.3.2.2)."""
    config = Config(context=bytes.fromhex(vector.configuration["Context"]), ksf=Identity())
    secrets = _secrets(vector)
    fake = RegistrationRecord(
        vector.input("client_public_key"),
        vector.input("masking_key"),
        Envelope.from_bytes(bytes(ENVELOPE_SIZE)),
    )
    ke1 = KE1.from_bytes(vector.input("KE1"))
    ke2, _, _ = server_login_start_traced(
        secrets,
        config,
        fake,
        vector.input("credential_identifier"),
        ke1,
        masking_nonce=vector.input("masking_nonce"),
        server_nonce=vector.input("server_nonce"),
        server_keyshare_seed=vector.input("server_keyshare_seed"),
        client_identity=_optional(vector, "client_identity"),
        server_identity=_optional(vector, "server_identity"),
    )
    client_private_key = ristretto.decode_nonzero_scalar(vector.input("client_private_key"))
    return {
        "KE2": [ke2.to_bytes()],
        # Inputs that are functions of other inputs: check them too.
        "KE1": [ke1.to_bytes()],
        "client_public_key": [ristretto.scalar_mult_base(client_private_key)],
        "server_public_key": [secrets.public_element],
    }


def _listed(vector: OpaqueVector) -> dict[str, str]:
    return {**vector.intermediates, **vector.outputs}


REAL_CASES = [
    pytest.param(vector, name, id=f"{vector.number}-vector{index}-{name}")
    for index, vector in enumerate(REAL, start=1)
    for name in _listed(vector)
]
FAKE_CASES = [
    pytest.param(vector, name, id=f"{vector.number}-fake{index}-{name}")
    for index, vector in enumerate(FAKE, start=1)
    for name in ["KE2", "KE1", "client_public_key", "server_public_key"]
]


def check(expected_hex: str, computed: list[bytes]) -> None:
    """Every side's value equals the vector's."""
    assert computed, "nothing computed"
    for value in computed:
        assert value.hex() == expected_hex


@pytest.mark.parametrize(("vector", "name"), REAL_CASES)
def test_real_vector_value(vector: OpaqueVector, name: str) -> None:
    check(_listed(vector)[name], compute_real(vector)[name])


@pytest.mark.parametrize(("vector", "name"), FAKE_CASES)
def test_fake_vector_value(vector: OpaqueVector, name: str) -> None:
    expected = {**vector.inputs, **vector.outputs}[name]
    check(expected, compute_fake(vector)[name])


def test_every_listed_value_is_checked() -> None:
    assert len(REAL_CASES) == 2 * 16
    for vector in REAL:
        assert set(_listed(vector)) == set(compute_real(vector))


# --- a check that cannot fail is a defect: corrupt the vector and watch it fail ---


def _with_input(vector: OpaqueVector, name: str, flip_byte: int) -> OpaqueVector:
    raw = bytearray(vector.input(name))
    raw[flip_byte] ^= 0x01
    return dataclasses.replace(vector, inputs={**vector.inputs, name: raw.hex()})


@pytest.mark.parametrize(
    ("name", "must_change"),
    [
        ("envelope_nonce", ["envelope", "registration_upload", "KE2", "export_key"]),
        ("oprf_seed", ["oprf_key", "registration_response", "randomized_password", "KE3"]),
        ("server_nonce", ["KE2", "handshake_secret", "session_key"]),
        ("password", ["registration_request", "KE1", "randomized_password"]),
    ],
)
def test_a_corrupted_input_fails_the_checks(name: str, must_change: list[str]) -> None:
    vector = REAL[0]
    computed = compute_real(_with_input(vector, name, 0))
    for field in must_change:
        with pytest.raises(AssertionError):
            check(_listed(vector)[field], computed[field])


def test_a_corrupted_expected_value_fails_the_check() -> None:
    vector = REAL[0]
    expected = bytearray(bytes.fromhex(vector.outputs["session_key"]))
    expected[-1] ^= 0x80
    with pytest.raises(AssertionError):
        check(expected.hex(), compute_real(vector)["session_key"])


def test_a_corrupted_fake_masking_key_fails_the_check() -> None:
    vector = FAKE[0]
    with pytest.raises(AssertionError):
        check(vector.outputs["KE2"], compute_fake(_with_input(vector, "masking_key", 5))["KE2"])


# --- C.1.3 / C.1.4: OPRF ristretto255-SHA512 with a curve25519 AKE ----------------------
# We implement only the ristretto255 AKE group, but in these vectors every value upstream
# of DeriveDiffieHellmanKeyPair is group-independent: the OPRF key and exchange, the
# randomized password, and the keys Expand()ed from it. Those are checked here too.

CURVE25519_AKE = [
    v
    for v in ALL_VECTORS
    if v.number.startswith("C.1.")
    and v.configuration["OPRF"] == "ristretto255-SHA512"
    and v.configuration["Group"] == "curve25519"
]


def compute_oprf_half(vector: OpaqueVector) -> dict[str, bytes]:
    secrets_seed = vector.input("oprf_seed")
    password = vector.input("password")
    credential_identifier = vector.input("credential_identifier")
    oprf_key = derive_oprf_key(secrets_seed, credential_identifier)
    reg_blind = ristretto.decode_scalar(vector.input("blind_registration"))
    _, blinded = oprf.blind(password, blind_scalar=reg_blind)
    evaluated = oprf.blind_evaluate(oprf_key, blinded)
    rwd = randomized_password(oprf.finalize(password, reg_blind, evaluated), Identity())
    login_blind = ristretto.decode_scalar(vector.input("blind_login"))
    _, login_blinded = oprf.blind(password, blind_scalar=login_blind)
    nonce = vector.input("envelope_nonce")
    return {
        "oprf_key": oprf_key,
        "registration_request": blinded,
        "registration_response[evaluated_message]": evaluated,
        "randomized_password": rwd,
        "auth_key": derive_auth_key(rwd, nonce),
        "export_key": derive_export_key(rwd, nonce),
        "KE1[blinded_message]": login_blinded,
        "KE2[evaluated_message]": oprf.blind_evaluate(oprf_key, login_blinded),
        "KE2[masking_nonce]": vector.input("masking_nonce"),
        "KE2[server_nonce]": vector.input("server_nonce"),
    }


def _expected_oprf_half(vector: OpaqueVector, name: str) -> str:
    slices = {
        "registration_response[evaluated_message]": ("registration_response", 0, 32),
        "KE1[blinded_message]": ("KE1", 0, 32),
        "KE2[evaluated_message]": ("KE2", 0, 32),
        "KE2[masking_nonce]": ("KE2", 32, 64),
        "KE2[server_nonce]": ("KE2", 192, 224),
    }
    listed = _listed(vector)
    if name in slices:
        field, start, end = slices[name]
        return listed[field][2 * start : 2 * end]
    return listed[name]


OPRF_HALF_NAMES = list(compute_oprf_half(REAL[0]))
OPRF_HALF_CASES = [
    pytest.param(vector, name, id=f"{vector.number}-curve25519-ake-{name}")
    for vector in CURVE25519_AKE
    for name in OPRF_HALF_NAMES
]


def test_the_curve25519_ake_vectors_are_there() -> None:
    assert [v.number for v in CURVE25519_AKE] == ["C.1.3", "C.1.4"]


@pytest.mark.parametrize(("vector", "name"), OPRF_HALF_CASES)
def test_curve25519_ake_vector_group_independent_value(vector: OpaqueVector, name: str) -> None:
    assert compute_oprf_half(vector)[name].hex() == _expected_oprf_half(vector, name)


def test_oprf_half_agrees_with_the_full_run_on_the_ristretto_vectors() -> None:
    vector = REAL[0]
    for name, value in compute_oprf_half(vector).items():
        assert value.hex() == _expected_oprf_half(vector, name), name
