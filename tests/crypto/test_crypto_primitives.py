"""HKDF-SHA512 against pyca/cryptography's independent HKDF; OPRF and rng misuse."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from bkv.crypto import hkdf, oprf, ristretto
from bkv.crypto.opaque import ake
from bkv.crypto.rng import draw


@given(
    salt=st.binary(max_size=80),
    ikm=st.binary(max_size=200),
    info=st.binary(max_size=100),
    length=st.integers(min_value=1, max_value=300),
)
def test_hkdf_matches_pyca(salt: bytes, ikm: bytes, info: bytes, length: int) -> None:
    ours = hkdf.expand(hkdf.extract(salt, ikm), info, length)
    theirs = HKDF(hashes.SHA512(), length, salt or None, info).derive(ikm)
    assert ours == theirs


def test_hkdf_expand_matches_pyca_at_the_block_boundaries() -> None:
    prk = bytes(range(64))
    for length in (1, 32, 63, 64, 65, 128, 129, 255 * 64):
        theirs = HKDFExpand(hashes.SHA512(), length, b"info").derive(prk)
        assert hkdf.expand(prk, b"info", length) == theirs


@given(key=st.binary(max_size=300), data=st.binary(max_size=300))
def test_hmac_sha512_matches_openssl(key: bytes, data: bytes) -> None:
    # Keys shorter than, equal to and longer than SHA-512's 128-byte block (RFC 2104 hashes these).
    assert hkdf.hmac_sha512(key, data) == hmac.digest(key, data, "sha512")


@pytest.mark.parametrize("key_size", [0, 1, 64, 127, 128, 129, 200])
def test_hmac_sha512_at_the_key_padding_boundaries(key_size: int) -> None:
    key = bytes(range(key_size % 256)) + bytes(max(0, key_size - 256))
    assert hkdf.hmac_sha512(key, b"msg") == hmac.digest(key, b"msg", "sha512")
    assert hkdf.extract(b"", key) == hmac.digest(bytes(64), key, "sha512")


def test_hmac_sha512_takes_bytes_like_keys_and_rejects_others() -> None:
    expected = hmac.digest(b"key", b"msg", "sha512")
    assert hkdf.hmac_sha512(bytearray(b"key"), b"msg") == expected  # type: ignore[arg-type]
    assert hkdf.hmac_sha512(memoryview(b"key"), b"msg") == expected  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be bytes"):
        hkdf.hmac_sha512("key", b"msg")  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, -1, 255 * 64 + 1])
def test_hkdf_expand_rejects_impossible_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="length"):
        hkdf.expand(bytes(64), b"", length)


def test_draw_rejects_a_short_rng() -> None:
    assert draw(lambda n: b"\x01" * n, 4) == b"\x01" * 4
    with pytest.raises(ValueError, match="rng returned 3 bytes, expected 4"):
        draw(lambda n: b"\x01" * (n - 1), 4)


def test_oprf_rejects_misuse() -> None:
    with pytest.raises(ValueError, match="seed"):
        oprf.derive_key_pair(bytes(31), b"")
    with pytest.raises(ValueError, match="info"):
        oprf.derive_key_pair(bytes(32), bytes(65536))
    with pytest.raises(ValueError, match="nonzero"):
        oprf.blind(b"x", blind_scalar=ristretto.scalar_from_int(0))
    with pytest.raises(ValueError, match="65535"):
        oprf.blind(bytes(65536))
    key, _ = oprf.derive_key_pair(bytes(32), b"")
    with pytest.raises(ValueError, match="65535"):
        oprf.evaluate(key, bytes(65536))


@given(st.binary(max_size=100))
def test_oprf_blind_evaluate_finalize_equals_evaluate(private_input: bytes) -> None:
    key, _ = oprf.derive_key_pair(b"\x05" * 32, b"property")
    blind, blinded = oprf.blind(private_input)
    output = oprf.finalize(private_input, blind, oprf.blind_evaluate(key, blinded))
    assert output == oprf.evaluate(key, private_input)
    assert len(output) == oprf.OUTPUT_SIZE


def test_oprf_output_depends_on_key_and_input() -> None:
    key_a, _ = oprf.derive_key_pair(b"\x05" * 32, b"a")
    key_b, _ = oprf.derive_key_pair(b"\x05" * 32, b"b")
    assert oprf.evaluate(key_a, b"x") != oprf.evaluate(key_b, b"x")
    assert oprf.evaluate(key_a, b"x") != oprf.evaluate(key_a, b"y")


@given(ikm=st.binary(min_size=96, max_size=96), preamble=st.binary(max_size=600))
def test_derive_keys_and_macs_equals_the_separate_rfc_functions(
    ikm: bytes, preamble: bytes
) -> None:
    keys, server_mac, client_mac = ake.derive_keys_and_macs(ikm, preamble)
    assert keys == ake.derive_keys(ikm, preamble)
    assert server_mac == ake.server_mac(keys, preamble)
    assert client_mac == ake.client_mac(keys, preamble, server_mac)
    # Expand-Label's generic path agrees with derive_keys' precomputed labels.
    prk = hkdf.extract(b"", ikm)
    assert keys.session_key == ake.derive_secret(prk, b"SessionKey", hkdf.sha512(preamble))
    assert keys.client_mac_key == ake.derive_secret(keys.handshake_secret, b"ClientMAC", b"")


def test_expand_label_rejects_oversized_label_or_context() -> None:
    with pytest.raises(ValueError, match="label"):
        ake.expand_label(bytes(64), b"x" * 249, b"", 64)
    with pytest.raises(ValueError, match="context"):
        ake.expand_label(bytes(64), b"x", bytes(256), 64)
    assert len(ake.expand_label(bytes(64), b"x" * 248, bytes(255), 64)) == 64


# --- HmacKey: HMAC and HKDF-Expand under a key prepared once -----------------------------


@given(key=st.binary(max_size=300), data=st.binary(max_size=300))
def test_hmac_key_matches_openssl(key: bytes, data: bytes) -> None:
    prepared = hkdf.HmacKey(key)
    assert prepared.mac(data) == hmac.digest(key, data, "sha512")
    assert prepared.mac(data) == hmac.digest(key, data, "sha512")  # reusable: states copied


@pytest.mark.parametrize("key_size", [0, 1, 64, 127, 128, 129, 200])
def test_hmac_key_at_the_key_padding_boundaries(key_size: int) -> None:
    key = bytes(range(key_size % 256)) + bytes(max(0, key_size - 256))
    assert hkdf.HmacKey(key).mac(b"msg") == hmac.digest(key, b"msg", "sha512")
    assert hkdf.HmacKey(bytearray(key)).mac(b"msg") == hmac.digest(key, b"msg", "sha512")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be bytes"):
        hkdf.HmacKey(key.hex())  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [1, 32, 63, 64, 65, 128, 129, 255 * 64])
def test_hmac_key_expand_matches_pyca(length: int) -> None:
    prk = bytes(range(64))
    theirs = HKDFExpand(hashes.SHA512(), length, b"info").derive(prk)
    assert hkdf.HmacKey(prk).expand(b"info", length) == theirs


@pytest.mark.parametrize("length", [0, -1, 255 * 64 + 1])
def test_hmac_key_expand_rejects_impossible_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="length"):
        hkdf.HmacKey(bytes(64)).expand(b"", length)


def test_hmac_key_repr_holds_no_key() -> None:
    key = b"\xaa" * 64
    assert repr(hkdf.HmacKey(key)) == "HmacKey(...)"
    assert key.hex() not in repr(hkdf.HmacKey(key))
