"""Bit 255 of an element encoding is never set (RFC 9496 section 4.3.1).

Decoding reads ``s`` as a 256-bit little-endian integer and fails when ``s >= p``.
libsodium 1.0.18 (Debian 12) masks bit 255 off before its canonical check, so on
its own it decodes ``s + 2^255`` as the point ``s`` encodes; bkv checks the bit
itself wherever a peer's point enters. The server's received points are covered
for every bad encoding in test_crypto_opaque_bytes_forms.py; this file adds the
property over all points and the client's received points.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.crypto import ristretto
from bkv.crypto.opaque import (
    KE2,
    Config,
    Identity,
    RegistrationRequest,
    RegistrationResponse,
    ServerSecrets,
    client_login_start,
    client_registration_start,
    server_login_start,
    server_registration_response,
)
from bkv.errors import InvalidPointError

GENERATOR = bytes.fromhex("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")
GENERATOR_BIT_255 = bytes.fromhex(
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2df6"
)
CONFIG = Config(context=b"bkv-test", ksf=Identity())
SCALAR = ristretto.scalar_from_int(7)


def with_bit_255(encoding: bytes) -> bytes:
    return encoding[:31] + bytes([encoding[31] | 0x80])


def test_the_rfc_example_is_the_generator_with_bit_255_set() -> None:
    assert ristretto.decode_element(GENERATOR) == ristretto.scalar_mult_base(
        ristretto.scalar_from_int(1)
    )
    assert with_bit_255(GENERATOR) == GENERATOR_BIT_255


def test_the_generator_with_bit_255_set_is_refused() -> None:
    with pytest.raises(InvalidPointError, match="bit 255"):
        ristretto.decode_element(GENERATOR_BIT_255)
    with pytest.raises(InvalidPointError, match="bit 255"):
        ristretto.decode_and_scalar_mult(SCALAR, GENERATOR_BIT_255)


@given(st.integers(min_value=1, max_value=2**252))
def test_every_valid_encoding_with_bit_255_set_is_refused(multiple: int) -> None:
    encoding = ristretto.scalar_mult_base(ristretto.scalar_from_int(multiple))
    assert ristretto.decode_element(encoding) == encoding  # the point itself decodes
    with pytest.raises(InvalidPointError):
        ristretto.decode_element(with_bit_255(encoding))
    with pytest.raises(InvalidPointError):
        ristretto.decode_and_scalar_mult(SCALAR, with_bit_255(encoding))


def test_the_client_refuses_bit_255_in_the_registration_response() -> None:
    secrets = ServerSecrets.generate()
    _, request = client_registration_start(b"password")
    response = server_registration_response(secrets, request, b"id").to_bytes()
    RegistrationResponse.from_bytes(response)  # as sent, it decodes
    for offset in (0, 32):  # evaluated element, server public key
        tampered = response[: offset + 31] + bytes([response[offset + 31] | 0x80])
        tampered += response[offset + 32 :]
        with pytest.raises(InvalidPointError):
            RegistrationResponse.from_bytes(tampered)


def test_the_client_refuses_bit_255_in_ke2() -> None:
    secrets = ServerSecrets.generate()
    _, ke1 = client_login_start(b"password")
    ke2 = server_login_start(secrets, CONFIG, None, b"id", ke1)[0].to_bytes()
    KE2.from_bytes(ke2)  # as sent, it decodes
    # KE2 = evaluated element (32) || masking nonce (32) || masked response (128)
    #       || server nonce (32) || server key share (32) || server MAC (64): RFC 9807 4.2.1.
    for offset in (0, 224):
        tampered = ke2[: offset + 31] + bytes([ke2[offset + 31] | 0x80]) + ke2[offset + 32 :]
        with pytest.raises(InvalidPointError):
            KE2.from_bytes(tampered)


def test_the_server_refuses_bit_255_in_a_registration_request() -> None:
    _, request = client_registration_start(b"password")
    with pytest.raises(InvalidPointError):
        RegistrationRequest.from_bytes(with_bit_255(request.to_bytes()))
