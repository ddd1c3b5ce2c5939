"""bkv.crypto.channel: sealing requests to the fleet and binding responses to them."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from bkv.crypto import channel
from bkv.crypto.channel import (
    ClientChannelState,
    ServerChannelState,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from bkv.errors import (
    CodecError,
    CryptoError,
    DecryptionError,
    InvalidPointError,
    SizeLimitError,
    TruncatedError,
    UnknownTagError,
)

FLEET = b"fleet-1"
AAD = b"account=alice;record=7"
SK, PK = channel.derive_channel_key_pair(bytes(range(32)))


def _exchange(
    request: bytes = b"KE1 bytes", response: bytes = b"KE2 bytes"
) -> tuple[ClientChannelState, ServerChannelState, bytes, bytes]:
    client, sealed_request = seal_request(PK, FLEET, request, AAD)
    server, opened = open_request(SK, FLEET, sealed_request, AAD)
    assert opened == request
    return client, server, sealed_request, seal_response(server, response)


def test_round_trip() -> None:
    client, _server, _request, sealed = _exchange()
    assert open_response(client, sealed) == b"KE2 bytes"


def test_wire_layout_and_sizes() -> None:
    client, _server, request, response = _exchange(b"x" * 10, b"y" * 20)
    assert request[0] == channel.REQUEST_TAG
    assert len(request) == 1 + 32 + 32 + 10 + 16
    assert response[0] == channel.RESPONSE_TAG
    assert len(response) == 1 + 32 + 20 + 16
    assert client.request_digest == hashlib.sha256(request).digest()
    assert client.enc == request[1:33]


def test_sealed_bytes_do_not_contain_plaintext_or_secret() -> None:
    secret = b"backup key: " + bytes(range(32))
    client, sealed_request = seal_request(PK, FLEET, secret, AAD)
    server, _ = open_request(SK, FLEET, sealed_request, AAD)
    sealed_response = seal_response(server, secret)
    for blob in (sealed_request, sealed_response):
        assert secret not in blob
        assert bytes(range(32)) not in blob
        assert client.response_secret not in blob


def test_each_request_is_fresh() -> None:
    _, first = seal_request(PK, FLEET, b"same", AAD)
    _, second = seal_request(PK, FLEET, b"same", AAD)
    assert first[1:33] != second[1:33]  # new ephemeral key
    assert first != second


def test_each_response_to_a_replayed_request_uses_a_fresh_key() -> None:
    client, sealed_request = seal_request(PK, FLEET, b"req", AAD)
    server_a, _ = open_request(SK, FLEET, sealed_request, AAD)
    server_b, _ = open_request(SK, FLEET, sealed_request, AAD)
    first, second = seal_response(server_a, b"same"), seal_response(server_b, b"same")
    assert first[1:33] != second[1:33]
    assert first[33:] != second[33:]
    assert open_response(client, first) == open_response(client, second) == b"same"


def test_request_fails_under_wrong_private_key() -> None:
    _, sealed = seal_request(PK, FLEET, b"req", AAD)
    other_sk, _ = channel.generate_channel_key_pair()
    with pytest.raises(DecryptionError):
        open_request(other_sk, FLEET, sealed, AAD)


def test_request_is_bound_to_fleet_id() -> None:
    _, sealed = seal_request(PK, FLEET, b"req", AAD)
    with pytest.raises(DecryptionError):
        open_request(SK, b"fleet-2", sealed, AAD)


def test_request_is_bound_to_aad() -> None:
    _, sealed = seal_request(PK, FLEET, b"req", AAD)
    with pytest.raises(DecryptionError):
        open_request(SK, FLEET, sealed, b"account=mallory;record=7")
    with pytest.raises(DecryptionError):
        open_request(SK, FLEET, sealed, b"")


def test_fleet_id_and_aad_boundary_is_unambiguous() -> None:
    _, sealed = seal_request(PK, b"fleet-1x", b"req", b"")
    with pytest.raises(DecryptionError):
        open_request(SK, b"fleet-1", sealed, b"x")


def test_every_bit_flip_of_a_request_is_rejected() -> None:
    _, sealed = seal_request(PK, FLEET, b"req", AAD)
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises((DecryptionError, UnknownTagError)):
            open_request(SK, FLEET, bytes(tampered), AAD)


def test_every_bit_flip_of_a_response_is_rejected() -> None:
    client, _server, _request, sealed = _exchange()
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises((DecryptionError, UnknownTagError)):
            open_response(client, bytes(tampered))


def test_response_is_bound_to_its_request() -> None:
    client_a, _, _, _ = _exchange(b"request a")
    _client_b, _server_b, _, response_b = _exchange(b"request b")
    with pytest.raises(DecryptionError):
        open_response(client_a, response_b)


def test_response_to_request_with_same_secret_but_other_bytes_fails() -> None:
    # The response key also covers the request digest: a state that shares the
    # response secret and enc but names another request does not open it.
    client, _server, _request, response = _exchange()
    forged = ClientChannelState(
        fleet_id=client.fleet_id,
        enc=client.enc,
        request_digest=bytes(32),
        response_secret=client.response_secret,
    )
    with pytest.raises(DecryptionError):
        open_response(forged, response)


def test_host_cannot_answer_with_a_key_of_its_own() -> None:
    # The host knows enc, the request bytes and the aad, but not the response
    # secret inside the HPKE ciphertext.
    client, sealed_request = seal_request(PK, FLEET, b"req", AAD)
    guess = ServerChannelState(
        fleet_id=FLEET,
        enc=sealed_request[1:33],
        request_digest=hashlib.sha256(sealed_request).digest(),
        response_secret=bytes(32),
    )
    with pytest.raises(DecryptionError):
        open_response(client, seal_response(guess, b"fake KE2"))


def test_request_and_response_tags_are_not_interchangeable() -> None:
    client, _server, request, response = _exchange()
    with pytest.raises(UnknownTagError):
        open_response(client, request[: channel.MAX_SEALED_RESPONSE_SIZE])
    with pytest.raises((UnknownTagError, TruncatedError)):
        open_request(SK, FLEET, response, AAD)


@pytest.mark.parametrize("size", [0, 1, channel.MIN_SEALED_REQUEST_SIZE - 1])
def test_short_requests_are_truncated(size: int) -> None:
    with pytest.raises(TruncatedError):
        open_request(SK, FLEET, bytes([channel.REQUEST_TAG]) * size, AAD)


def test_oversized_request_is_refused_before_decryption() -> None:
    with pytest.raises(SizeLimitError):
        open_request(SK, FLEET, b"\x01" * (channel.MAX_SEALED_REQUEST_SIZE + 1), AAD)


def test_oversized_and_short_responses_are_refused() -> None:
    client, _, _, _ = _exchange()
    with pytest.raises(SizeLimitError):
        open_response(client, b"\x02" * (channel.MAX_SEALED_RESPONSE_SIZE + 1))
    with pytest.raises(TruncatedError):
        open_response(client, b"\x02" * (channel.MIN_SEALED_RESPONSE_SIZE - 1))


def test_maximum_sizes_round_trip() -> None:
    big_request = b"r" * channel.MAX_REQUEST_PLAINTEXT_SIZE
    big_response = b"s" * channel.MAX_RESPONSE_PLAINTEXT_SIZE
    client, sealed = seal_request(PK, FLEET, big_request, b"a" * channel.MAX_AAD_SIZE)
    assert len(sealed) == channel.MAX_SEALED_REQUEST_SIZE
    server, opened = open_request(SK, FLEET, sealed, b"a" * channel.MAX_AAD_SIZE)
    assert opened == big_request
    response = seal_response(server, big_response)
    assert len(response) == channel.MAX_SEALED_RESPONSE_SIZE
    assert open_response(client, response) == big_response


def test_zero_enc_low_order_point_is_rejected() -> None:
    _, sealed = seal_request(PK, FLEET, b"req", AAD)
    zeroed = sealed[:1] + bytes(32) + sealed[33:]
    with pytest.raises(DecryptionError):
        open_request(SK, FLEET, zeroed, AAD)


def test_sealing_to_a_low_order_public_key_is_refused() -> None:
    with pytest.raises(InvalidPointError):
        seal_request(bytes(32), FLEET, b"req", AAD)


@pytest.mark.parametrize(
    ("fleet_id", "plaintext", "aad"),
    [
        (b"", b"req", AAD),
        (b"f" * (channel.MAX_FLEET_ID_SIZE + 1), b"req", AAD),
        (FLEET, b"", AAD),
        (FLEET, b"r" * (channel.MAX_REQUEST_PLAINTEXT_SIZE + 1), AAD),
        (FLEET, b"req", b"a" * (channel.MAX_AAD_SIZE + 1)),
    ],
)
def test_seal_request_refuses_misuse(fleet_id: bytes, plaintext: bytes, aad: bytes) -> None:
    with pytest.raises(ValueError):
        seal_request(PK, fleet_id, plaintext, aad)


def test_misuse_types_and_key_sizes() -> None:
    with pytest.raises(TypeError):
        seal_request(PK, "fleet", b"req", AAD)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        seal_request(PK[:31], FLEET, b"req", AAD)
    with pytest.raises(ValueError):
        open_request(SK + b"\x00", FLEET, b"\x01" * 100, AAD)
    client, server, _, response = _exchange()
    with pytest.raises(TypeError):
        open_response(server, response)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seal_response(client, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        seal_response(server, b"")
    with pytest.raises(ValueError):
        seal_response(server, b"s" * (channel.MAX_RESPONSE_PLAINTEXT_SIZE + 1))


def test_reprs_hold_no_secrets() -> None:
    client, server, _, _ = _exchange()
    for state in (client, server):
        text = repr(state)
        assert state.response_secret.hex() not in text
        assert repr(state.response_secret) not in text
        assert state.request_digest.hex() in text


def test_derive_key_pair_refuses_short_ikm() -> None:
    with pytest.raises(ValueError):
        channel.derive_channel_key_pair(bytes(31))


def test_generate_key_pair_uses_injected_rng() -> None:
    fixed = channel.generate_channel_key_pair(bytes)
    assert fixed == channel.derive_channel_key_pair(bytes(32))
    assert channel.generate_channel_key_pair() != fixed


def test_injected_rng_sets_response_secret_and_nonce() -> None:
    client, sealed_request = seal_request(PK, FLEET, b"req", AAD, rng=lambda n: b"\x07" * n)
    assert client.response_secret == b"\x07" * 32
    server, _ = open_request(SK, FLEET, sealed_request, AAD)
    response = seal_response(server, b"resp", rng=lambda n: b"\x09" * n)
    assert response[1:33] == b"\x09" * 32
    assert open_response(client, response) == b"resp"


@given(st.binary(max_size=300))
def test_random_request_bytes_raise_only_typed_errors(data: bytes) -> None:
    with pytest.raises((CodecError, CryptoError)):
        open_request(SK, FLEET, data, AAD)


@given(st.binary(max_size=300))
def test_random_response_bytes_raise_only_typed_errors(data: bytes) -> None:
    client, _ = seal_request(PK, FLEET, b"req", AAD, rng=bytes)
    with pytest.raises((CodecError, CryptoError)):
        open_response(client, data)


def test_request_format_matches_the_documented_construction() -> None:
    # Independent of bkv's code path: rebuild `info` as the module docstring states it
    # and open the request with cryptography's HPKE directly.

    client, sealed = seal_request(PK, FLEET, b"the request", AAD, rng=lambda n: b"\x05" * n)
    info = b"bkv/channel/v1/request" + bytes([len(FLEET)]) + FLEET + hashlib.sha256(AAD).digest()
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
    inner = suite.decrypt(sealed[1:], X25519PrivateKey.from_private_bytes(SK), info=info)
    assert inner == b"\x05" * 32 + b"the request"
    assert client.response_secret == b"\x05" * 32


def test_response_format_matches_the_documented_construction() -> None:

    client, sealed_request = seal_request(PK, FLEET, b"req", AAD)
    server, _ = open_request(SK, FLEET, sealed_request, AAD)
    response = seal_response(server, b"the response", rng=lambda n: b"\x0a" * n)
    response_nonce = b"\x0a" * 32
    digest = hashlib.sha256(sealed_request).digest()
    salt = sealed_request[1:33] + response_nonce
    # HKDF-Extract (RFC 5869 section 2.2) is HMAC(salt, ikm).
    prk = hmac.digest(salt, client.response_secret, "sha256")
    key = HKDFExpand(hashes.SHA256(), 32, b"bkv/channel/v1/response key" + digest).derive(prk)
    nonce = HKDFExpand(hashes.SHA256(), 12, b"bkv/channel/v1/response nonce" + digest).derive(prk)
    header = b"\x02" + response_nonce
    assert response == header + ChaCha20Poly1305(key).encrypt(nonce, b"the response", header)
