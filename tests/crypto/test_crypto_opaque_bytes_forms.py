"""The server steps on encodings (``*_bytes``): same outputs and same checks as the object forms.

The ``*_bytes`` forms decode each received point in the libsodium multiplication that uses it
instead of once more beforehand; every test here pins that this loses no check: each bad point
the object form refuses in ``from_bytes``, the bytes form refuses too, with the same error type.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bkv.crypto.opaque import (
    KE1,
    KE2,
    KE2_SIZE,
    KE3,
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
    server_login_finish_bytes,
    server_login_start,
    server_login_start_bytes,
    server_registration_response,
    server_registration_response_bytes,
)
from bkv.crypto.opaque.server import fake_record
from bkv.errors import (
    ClientAuthenticationError,
    EnvelopeRecoveryError,
    InvalidPointError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)

PASSWORD = b"correct horse battery staple"
CREDENTIAL_ID = b"user-0001"
CONFIG = Config(context=b"bkv-test", ksf=Identity())

# RFC 9496 Appendix A.2 (invalid encodings) and the identity, which DeserializeElement refuses.
BAD_POINTS = {
    "non-canonical-s=p": "ed" + "ff" * 30 + "7f",
    "non-canonical-high-bit": "00" + "ff" * 31,
    "negative-s=1": "01" + "00" * 31,
    "non-square-x2": "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "negative-xy": "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
    "s=-1-y=0": "ec" + "ff" * 30 + "7f",
    "identity": "00" * 32,
    # The generator with bit 255 set: libsodium 1.0.18 alone would accept it (RFC 9496 4.3.1).
    "generator-bit-255": "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2df6",
}


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)  # deterministic test randomness, not for secrets
    return generator.randbytes


@pytest.fixture(scope="module")
def secrets() -> ServerSecrets:
    return ServerSecrets.generate()


@pytest.fixture(scope="module")
def record(secrets: ServerSecrets) -> RegistrationRecord:
    state, request = client_registration_start(PASSWORD)
    response = server_registration_response(secrets, request, CREDENTIAL_ID)
    return client_registration_finish(state, CONFIG, response)[0]


def with_point(data: bytes, offset: int, point_hex: str) -> bytes:
    return data[:offset] + bytes.fromhex(point_hex) + data[offset + 32 :]


# --- registration response ---------------------------------------------------------------


@pytest.mark.parametrize("identifier", [CREDENTIAL_ID, b"x", bytes(range(256))])
def test_registration_response_bytes_equals_the_object_form(
    secrets: ServerSecrets, identifier: bytes
) -> None:
    _, request = client_registration_start(PASSWORD)
    expected = server_registration_response(secrets, request, identifier).to_bytes()
    assert server_registration_response_bytes(secrets, request.to_bytes(), identifier) == expected
    as_bytearray = bytearray(request.to_bytes())
    assert server_registration_response_bytes(secrets, as_bytearray, identifier) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("name", BAD_POINTS)
def test_registration_response_bytes_refuses_what_from_bytes_refuses(
    secrets: ServerSecrets, name: str
) -> None:
    bad = bytes.fromhex(BAD_POINTS[name])
    with pytest.raises(InvalidPointError):
        RegistrationRequest.from_bytes(bad)
    with pytest.raises(InvalidPointError, match="RegistrationRequest"):
        server_registration_response_bytes(secrets, bad, CREDENTIAL_ID)


@pytest.mark.parametrize(("size", "error"), [(0, TruncatedError), (31, TruncatedError),
                                             (33, TrailingBytesError)])  # fmt: skip
def test_registration_response_bytes_refuses_wrong_sizes(
    secrets: ServerSecrets, size: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match="RegistrationRequest"):
        server_registration_response_bytes(secrets, b"\x01" * size, CREDENTIAL_ID)


def test_registration_response_bytes_refuses_misuse(secrets: ServerSecrets) -> None:
    request = client_registration_start(PASSWORD)[1].to_bytes()
    with pytest.raises(ValueError, match="must be"):
        server_registration_response_bytes(secrets, request, b"")
    with pytest.raises(TypeError, match="must be bytes"):
        server_registration_response_bytes(secrets, request.hex(), CREDENTIAL_ID)  # type: ignore[arg-type]


# --- login start ---------------------------------------------------------------------------


@pytest.mark.parametrize("registered", [True, False], ids=["record", "fake-record"])
def test_login_start_bytes_equals_the_object_form(
    secrets: ServerSecrets, record: RegistrationRecord, registered: bool
) -> None:
    _, ke1 = client_login_start(PASSWORD, rng=seeded_rng(1))
    stored = record if registered else None
    ke2, state = server_login_start(secrets, CONFIG, stored, CREDENTIAL_ID, ke1, rng=seeded_rng(2))
    ke2_bytes, state_from_bytes = server_login_start_bytes(
        secrets,
        CONFIG,
        record.to_bytes() if registered else None,
        CREDENTIAL_ID,
        ke1.to_bytes(),
        rng=seeded_rng(2),
    )
    assert ke2_bytes == ke2.to_bytes()
    assert len(ke2_bytes) == KE2_SIZE
    assert state_from_bytes.to_bytes() == state.to_bytes()


def test_login_start_bytes_with_identities_equals_the_object_form(
    secrets: ServerSecrets,
) -> None:
    identities = {"client_identity": b"alice", "server_identity": b"bkv.example"}
    state, request = client_registration_start(PASSWORD)
    response = server_registration_response(secrets, request, CREDENTIAL_ID)
    record, _ = client_registration_finish(state, CONFIG, response, **identities)
    client_state, ke1 = client_login_start(PASSWORD)
    ke2_bytes, server_state = server_login_start_bytes(
        secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, ke1.to_bytes(), **identities
    )
    ke3, session_key, _ = client_login_finish(
        client_state, CONFIG, KE2.from_bytes(ke2_bytes), **identities
    )
    assert server_login_finish(server_state, ke3) == session_key
    with pytest.raises(ValueError, match="identity"):
        server_login_start_bytes(
            secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, ke1.to_bytes(), client_identity=b""
        )


def test_login_round_trip_through_the_bytes_forms(
    secrets: ServerSecrets, record: RegistrationRecord
) -> None:
    client_state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start_bytes(
        secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, ke1.to_bytes()
    )
    ke3, session_key, _ = client_login_finish(client_state, CONFIG, KE2.from_bytes(ke2))
    assert server_login_finish_bytes(server_state.to_bytes(), ke3.to_bytes()) == session_key
    assert server_login_finish(server_state, ke3) == session_key


# Offsets of the received points: KE1 = blinded_message || client_nonce || client_keyshare;
# the record = client_public_key || masking_key || envelope.
@pytest.mark.parametrize("name", BAD_POINTS)
@pytest.mark.parametrize(
    ("where", "offset", "field"),
    [("ke1", 0, "blinded_message"), ("ke1", 64, "client_public_keyshare"),
     ("record", 0, "client_public_key")],
)  # fmt: skip
def test_login_start_bytes_refuses_what_from_bytes_refuses(
    secrets: ServerSecrets,
    record: RegistrationRecord,
    name: str,
    where: str,
    offset: int,
    field: str,
) -> None:
    ke1 = client_login_start(PASSWORD)[1].to_bytes()
    record_bytes = record.to_bytes()
    if where == "ke1":
        ke1 = with_point(ke1, offset, BAD_POINTS[name])
        with pytest.raises(InvalidPointError):
            KE1.from_bytes(ke1)
    else:
        record_bytes = with_point(record_bytes, offset, BAD_POINTS[name])
        with pytest.raises(InvalidPointError):
            RegistrationRecord.from_bytes(record_bytes)
    with pytest.raises(InvalidPointError, match=field):
        server_login_start_bytes(secrets, CONFIG, record_bytes, CREDENTIAL_ID, ke1)


def test_login_start_bytes_checks_the_keyshare_on_the_fake_record_too(
    secrets: ServerSecrets,
) -> None:
    ke1 = with_point(client_login_start(PASSWORD)[1].to_bytes(), 64, BAD_POINTS["identity"])
    with pytest.raises(InvalidPointError, match="client_public_keyshare"):
        server_login_start_bytes(secrets, CONFIG, None, CREDENTIAL_ID, ke1)


@pytest.mark.parametrize(("delta", "error"), [(-1, TruncatedError), (1, TrailingBytesError)])
def test_login_start_bytes_refuses_wrong_sizes(
    secrets: ServerSecrets, record: RegistrationRecord, delta: int, error: type[Exception]
) -> None:
    ke1 = client_login_start(PASSWORD)[1].to_bytes()

    def resized(data: bytes) -> bytes:
        return data[:delta] if delta < 0 else data + b"\x00" * delta

    with pytest.raises(error, match="KE1"):
        server_login_start_bytes(secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, resized(ke1))
    with pytest.raises(error, match="RegistrationRecord"):
        server_login_start_bytes(secrets, CONFIG, resized(record.to_bytes()), CREDENTIAL_ID, ke1)


def test_login_start_bytes_refuses_misuse(
    secrets: ServerSecrets, record: RegistrationRecord
) -> None:
    ke1 = client_login_start(PASSWORD)[1].to_bytes()
    with pytest.raises(ValueError, match="must be"):
        server_login_start_bytes(secrets, CONFIG, record.to_bytes(), b"", ke1)
    with pytest.raises(TypeError, match="must be bytes"):
        server_login_start_bytes(secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, ke1.hex())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rng returned"):
        server_login_start_bytes(
            secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, ke1, rng=lambda n: bytes(n - 1)
        )


# --- login finish --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(secrets: ServerSecrets, record: RegistrationRecord) -> tuple[bytes, bytes, bytes]:
    """(serialized server state, KE3 bytes, session key) of one login."""
    client_state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start(secrets, CONFIG, record, CREDENTIAL_ID, ke1)
    ke3, session_key, _ = client_login_finish(client_state, CONFIG, ke2)
    return server_state.to_bytes(), ke3.to_bytes(), session_key


def test_login_finish_bytes_equals_the_object_form(finished: tuple[bytes, bytes, bytes]) -> None:
    state, ke3, session_key = finished
    assert server_login_finish_bytes(state, ke3) == session_key
    objects = server_login_finish(ServerLoginState.from_bytes(state), KE3.from_bytes(ke3))
    assert objects == session_key
    # bytes-like inputs take the decoders' path and give the same key
    assert server_login_finish_bytes(bytearray(state), memoryview(ke3)) == session_key  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [0, 31, 63])
def test_login_finish_bytes_refuses_a_tampered_mac(
    finished: tuple[bytes, bytes, bytes], index: int
) -> None:
    state, ke3, _ = finished
    tampered = bytearray(ke3)
    tampered[index] ^= 0x01
    with pytest.raises(ClientAuthenticationError):
        server_login_finish_bytes(state, bytes(tampered))


def test_login_finish_bytes_refuses_a_malformed_state_or_ke3(
    finished: tuple[bytes, bytes, bytes],
) -> None:
    state, ke3, _ = finished
    with pytest.raises(UnknownTagError):
        server_login_finish_bytes(b"X" + state[1:], ke3)
    with pytest.raises(TruncatedError, match="ServerLoginState"):
        server_login_finish_bytes(state[:-1], ke3)
    with pytest.raises(TrailingBytesError, match="ServerLoginState"):
        server_login_finish_bytes(state + b"\x00", ke3)
    with pytest.raises(TruncatedError, match="KE3"):
        server_login_finish_bytes(state, ke3[:-1])
    with pytest.raises(TrailingBytesError, match="KE3"):
        server_login_finish_bytes(state, ke3 + b"\x00")
    with pytest.raises(TypeError):
        server_login_finish_bytes(state.hex(), ke3)  # type: ignore[arg-type]


# --- the fake record -------------------------------------------------------------------------


def test_fake_records_share_one_client_key_per_oprf_seed(secrets: ServerSecrets) -> None:
    """One fake client public key per fleet (it never appears in KE2); masking keys differ."""
    nobody, other = fake_record(secrets, b"nobody"), fake_record(secrets, b"nobody2")
    assert nobody.client_public_key == other.client_public_key == secrets.fake_client_public_key
    assert nobody.masking_key != other.masking_key
    reseeded = ServerSecrets(bytes(64), secrets.server_private_key, secrets.server_public_key)
    assert reseeded.fake_client_public_key != secrets.fake_client_public_key
    # A valid element: the fake login multiplies it like a real record's key.
    assert RegistrationRecord.from_bytes(nobody.to_bytes()) == nobody


def test_no_record_client_key_is_in_ke2(secrets: ServerSecrets, record: RegistrationRecord) -> None:
    """Sharing one fake client key is invisible only because KE2 never carries a record's key.

    RFC 9807 section 6.3.2.2: it enters the 3DH and the preamble only, both keyed by
    secrets a prober lacks; the masking key stays per identifier, the nonce per login.
    """
    ke1 = client_login_start(PASSWORD)[1].to_bytes()
    fake_ke2, _ = server_login_start_bytes(secrets, CONFIG, None, CREDENTIAL_ID, ke1)
    real_ke2, _ = server_login_start_bytes(secrets, CONFIG, record.to_bytes(), CREDENTIAL_ID, ke1)
    assert secrets.fake_client_public_key not in fake_ke2
    assert record.client_public_key not in real_ke2
    first, _ = server_login_start_bytes(secrets, CONFIG, None, b"nobody", ke1)
    again, _ = server_login_start_bytes(secrets, CONFIG, None, b"nobody", ke1)
    # A fresh masking nonce and key share each time, as for a real record.
    assert first[32:64] != again[32:64]
    assert first != again


def test_fake_ke2_from_the_bytes_form_fails_like_a_wrong_password(
    secrets: ServerSecrets,
) -> None:
    client_state, ke1 = client_login_start(PASSWORD)
    ke2, server_state = server_login_start_bytes(secrets, CONFIG, None, b"nobody", ke1.to_bytes())
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish(client_state, CONFIG, KE2.from_bytes(ke2))
    with pytest.raises(ClientAuthenticationError):
        server_login_finish_bytes(server_state.to_bytes(), bytes(64))


def test_derived_secrets_fields_stay_out_of_equality_and_repr(secrets: ServerSecrets) -> None:
    again = ServerSecrets.from_bytes(secrets.to_bytes())
    assert again == secrets
    assert again.fake_client_public_key == secrets.fake_client_public_key
    assert secrets.fake_client_public_key.hex() not in repr(secrets)
    assert "HmacKey" not in repr(secrets)
