"""Every OPAQUE codec: exact sizes, round trips, and random bytes raise only typed errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.crypto import ristretto
from bkv.crypto.opaque import (
    KE1,
    KE1_SIZE,
    KE2,
    KE2_SIZE,
    KE3,
    KE3_SIZE,
    REGISTRATION_RECORD_SIZE,
    REGISTRATION_REQUEST_SIZE,
    REGISTRATION_RESPONSE_SIZE,
    SERVER_LOGIN_STATE_SIZE,
    SERVER_SECRETS_SIZE,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    ServerLoginState,
    ServerSecrets,
)
from bkv.crypto.opaque.messages import (
    AUTH_REQUEST_SIZE,
    AUTH_RESPONSE_SIZE,
    CREDENTIAL_REQUEST_SIZE,
    CREDENTIAL_RESPONSE_SIZE,
    ENVELOPE_SIZE,
    AuthRequest,
    AuthResponse,
    CredentialRequest,
    CredentialResponse,
    Envelope,
)
from bkv.errors import (
    CodecError,
    InvalidPointError,
    InvalidScalarError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)

# (class, size, number of 32-byte element slots at these offsets)
CODECS: list[tuple[Any, int, list[int]]] = [
    (RegistrationRequest, REGISTRATION_REQUEST_SIZE, [0]),
    (RegistrationResponse, REGISTRATION_RESPONSE_SIZE, [0, 32]),
    (Envelope, ENVELOPE_SIZE, []),
    (RegistrationRecord, REGISTRATION_RECORD_SIZE, [0]),
    (CredentialRequest, CREDENTIAL_REQUEST_SIZE, [0]),
    (CredentialResponse, CREDENTIAL_RESPONSE_SIZE, [0]),
    (AuthRequest, AUTH_REQUEST_SIZE, [32]),
    (AuthResponse, AUTH_RESPONSE_SIZE, [32]),
    (KE1, KE1_SIZE, [0, 64]),
    (KE2, KE2_SIZE, [0, 224]),
    (KE3, KE3_SIZE, []),
]
IDS = [c[0].__name__ for c in CODECS]


def test_contract_sizes() -> None:
    assert (REGISTRATION_REQUEST_SIZE, REGISTRATION_RESPONSE_SIZE) == (32, 64)
    assert REGISTRATION_RECORD_SIZE == 192
    assert (KE1_SIZE, KE2_SIZE, KE3_SIZE) == (96, 320, 64)
    assert SERVER_SECRETS_SIZE == 128


elements = st.integers(min_value=1, max_value=ristretto.ORDER - 1).map(
    lambda k: bytes(ristretto.scalar_mult_base(ristretto.scalar_from_int(k)))
)


@st.composite
def valid_encodings(draw: st.DrawFn, size: int, element_offsets: list[int]) -> bytes:
    raw = bytearray(draw(st.binary(min_size=size, max_size=size)))
    for offset in element_offsets:
        raw[offset : offset + 32] = draw(elements)
    return bytes(raw)


@pytest.mark.parametrize(("cls", "size", "offsets"), CODECS, ids=IDS)
@given(data=st.data())
def test_round_trip(cls: Any, size: int, offsets: list[int], data: st.DataObject) -> None:
    encoded = data.draw(valid_encodings(size, offsets))
    message = cls.from_bytes(encoded)
    assert message.to_bytes() == encoded
    assert cls.from_bytes(message.to_bytes()) == message


@pytest.mark.parametrize(("cls", "size", "offsets"), CODECS, ids=IDS)
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_only_typed_errors(
    cls: Any, size: int, offsets: list[int], data: bytes
) -> None:
    try:
        message = cls.from_bytes(data)
    except (CodecError, InvalidPointError):
        return
    assert message.to_bytes() == data


@pytest.mark.parametrize(("cls", "size", "offsets"), CODECS, ids=IDS)
def test_wrong_lengths_name_the_problem(cls: Any, size: int, offsets: list[int]) -> None:
    with pytest.raises(TruncatedError):
        cls.from_bytes(bytes(size - 1))
    with pytest.raises(TruncatedError):
        cls.from_bytes(b"")
    with pytest.raises(TrailingBytesError):
        cls.from_bytes(bytes(size + 1))


@pytest.mark.parametrize(("cls", "size", "offsets"), [c for c in CODECS if c[2]], ids=lambda x: x)
def test_identity_and_non_canonical_points_are_rejected(
    cls: Any, size: int, offsets: list[int]
) -> None:
    valid = bytearray(size)
    generator = ristretto.scalar_mult_base(ristretto.scalar_from_int(1))
    for offset in offsets:
        valid[offset : offset + 32] = generator
    cls.from_bytes(bytes(valid))
    for offset in offsets:
        for bad in (bytes(32), b"\x01" + bytes(31), b"\xed" + b"\xff" * 30 + b"\x7f"):
            corrupted = bytearray(valid)
            corrupted[offset : offset + 32] = bad
            with pytest.raises(InvalidPointError):
                cls.from_bytes(bytes(corrupted))


def test_server_login_state_codec() -> None:
    state = ServerLoginState(bytes(range(64)), bytes(range(64, 128)))
    encoded = state.to_bytes()
    assert len(encoded) == SERVER_LOGIN_STATE_SIZE
    assert ServerLoginState.from_bytes(encoded) == state
    with pytest.raises(TruncatedError):
        ServerLoginState.from_bytes(encoded[:-1])
    with pytest.raises(TrailingBytesError):
        ServerLoginState.from_bytes(encoded + b"\x00")
    with pytest.raises(UnknownTagError):
        ServerLoginState.from_bytes(b"X" + encoded[1:])


@given(st.binary(max_size=200))
def test_server_login_state_random_bytes(data: bytes) -> None:
    try:
        ServerLoginState.from_bytes(data)
    except CodecError:
        return
    raise AssertionError("random bytes decoded as a state")


def test_server_secrets_codec_and_checks() -> None:
    secrets = ServerSecrets.generate()
    encoded = secrets.to_bytes()
    assert len(encoded) == SERVER_SECRETS_SIZE
    assert ServerSecrets.from_bytes(encoded) == secrets
    with pytest.raises(TruncatedError):
        ServerSecrets.from_bytes(encoded[:-1])
    with pytest.raises(TrailingBytesError):
        ServerSecrets.from_bytes(encoded + b"\x00")
    other = ServerSecrets.generate()
    mismatched = encoded[:96] + other.server_public_key
    with pytest.raises(InvalidScalarError, match="does not match"):
        ServerSecrets.from_bytes(mismatched)
    with pytest.raises(InvalidScalarError):
        ServerSecrets.from_bytes(encoded[:64] + bytes(32) + encoded[96:])
    with pytest.raises(InvalidScalarError):
        ServerSecrets.from_bytes(encoded[:64] + b"\xff" * 32 + encoded[96:])


@given(st.binary(min_size=SERVER_SECRETS_SIZE, max_size=SERVER_SECRETS_SIZE))
def test_server_secrets_random_bytes(data: bytes) -> None:
    try:
        ServerSecrets.from_bytes(data)
    except (CodecError, InvalidPointError, InvalidScalarError):
        return
    raise AssertionError("random bytes decoded as server secrets")


# --- constructor checks (caller misuse) and the decoders' fast paths --------------------------


class _Bytes(bytes):
    """A bytes subclass: the constructors' fast path tests ``type(x) is bytes``, the slow path
    ``isinstance``; both must accept it."""


def _valid_message(cls: Any, size: int, offsets: list[int]) -> Any:
    encoded = bytearray(size)
    generator = ristretto.scalar_mult_base(ristretto.scalar_from_int(1))
    for offset in offsets:
        encoded[offset : offset + 32] = generator
    return cls.from_bytes(bytes(encoded))


@pytest.mark.parametrize(("cls", "size", "offsets"), CODECS, ids=IDS)
def test_constructors_check_every_bytes_field(cls: Any, size: int, offsets: list[int]) -> None:
    message = _valid_message(cls, size, offsets)
    byte_fields = [
        f.name for f in dataclasses.fields(cls) if isinstance(getattr(message, f.name), bytes)
    ]
    for name in byte_fields:
        value = getattr(message, name)
        with pytest.raises(ValueError, match=name):
            dataclasses.replace(message, **{name: value + b"\x00"})
        with pytest.raises(ValueError, match=name):
            dataclasses.replace(message, **{name: value[:-1]})
        with pytest.raises(TypeError, match=name):
            dataclasses.replace(message, **{name: bytearray(value)})
        assert dataclasses.replace(message, **{name: _Bytes(value)}) == message


@pytest.mark.parametrize(("cls", "size", "offsets"), [c for c in CODECS if c[0] in (KE1, KE2)])
def test_composite_constructors_check_their_parts(cls: Any, size: int, offsets: list[int]) -> None:
    message = _valid_message(cls, size, offsets)
    for f in dataclasses.fields(cls):
        with pytest.raises(TypeError, match=f.name):
            dataclasses.replace(message, **{f.name: getattr(message, f.name).to_bytes()})


def test_record_constructor_checks_the_envelope_type() -> None:
    record = _valid_message(RegistrationRecord, REGISTRATION_RECORD_SIZE, [0])
    with pytest.raises(TypeError, match="envelope"):
        dataclasses.replace(record, envelope=record.envelope.to_bytes())


@pytest.mark.parametrize(("cls", "size", "offsets"), CODECS, ids=IDS)
def test_decoders_take_any_bytes_like_and_reject_other_types(
    cls: Any, size: int, offsets: list[int]
) -> None:
    encoded = _valid_message(cls, size, offsets).to_bytes()
    decoded = cls.from_bytes(encoded)
    assert cls.from_bytes(bytearray(encoded)) == decoded
    assert cls.from_bytes(memoryview(encoded)) == decoded
    assert type(cls.from_bytes(bytearray(encoded)).to_bytes()) is bytes
    with pytest.raises(TypeError):
        cls.from_bytes(encoded.hex())


def test_fast_decoded_finish_inputs_behave_like_constructed_ones() -> None:
    """KE3 and ServerLoginState.from_bytes skip the generated __init__ (their hot path): the
    objects must still be equal, hashable, frozen and secret-free in repr."""
    mac, key = bytes(range(64)), bytes(range(64, 128))
    state = ServerLoginState.from_bytes(ServerLoginState(mac, key).to_bytes())
    ke3 = KE3.from_bytes(bytearray(mac))
    assert state == ServerLoginState(mac, key) and hash(state) == hash(ServerLoginState(mac, key))
    assert ke3 == KE3(mac) and hash(ke3) == hash(KE3(mac))
    assert type(ke3.client_mac) is bytes
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.session_key = mac  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ke3.client_mac = key  # type: ignore[misc]
    assert mac.hex() not in repr(state) and key.hex() not in repr(state)
    assert str(list(mac)) not in repr(state) and repr(mac) not in repr(state)
    assert ServerLoginState.from_bytes(memoryview(state.to_bytes())) == state
    with pytest.raises(TypeError):
        ServerLoginState.from_bytes(SERVER_LOGIN_STATE_SIZE)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mac", "key"), [(bytes(63), bytes(64)), (bytes(64), bytes(65))])
def test_server_login_state_constructor_checks_lengths(mac: bytes, key: bytes) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        ServerLoginState(mac, key)
    with pytest.raises(TypeError, match="bytes"):
        ServerLoginState(bytearray(64), bytes(64))  # type: ignore[arg-type]
    assert ServerLoginState(_Bytes(64), _Bytes(64)) == ServerLoginState(bytes(64), bytes(64))
