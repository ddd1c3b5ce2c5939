"""The channel's HPKE primitive against RFC 9180 appendix A.2 (base mode) vectors.

What is checked, and why only this:

- DeriveKeyPair (RFC 9180 section 7.1.3), which bkv implements itself, for the
  receiver (ikmR -> skRm, pkRm) and the sender's ephemeral key (ikmE -> skEm, pkEm).
- cryptography's HPKE decrypts the vector's first ciphertext (sequence 0; the
  single-shot API has no later sequence numbers) with skRm and the vector's
  info and aad, giving the vector's plaintext. The public API takes no AAD, so
  this uses cryptography's private ``_decrypt_with_aad`` binding, in this test
  only.
- Encapsulation cannot be checked byte for byte: cryptography draws the
  ephemeral key itself and offers no way to inject skEm. The exporter values
  cannot be checked either: cryptography has no secret export, and bkv does not
  use one (see bkv.crypto.channel for the response-key design).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from bkv.crypto import channel

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
VECTOR_FILE = VECTORS / "rfc9180-x25519-sha256-chacha20poly1305.json"


def _load() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(VECTOR_FILE.read_text())
    return entries


ENTRIES = _load()


def test_vector_file_is_our_suite_in_base_mode() -> None:
    assert len(ENTRIES) == 1
    for entry in ENTRIES:
        assert (entry["mode"], entry["kem_id"], entry["kdf_id"], entry["aead_id"]) == (
            0,
            channel.KEM_ID,
            channel.KDF_ID,
            channel.AEAD_ID,
        )
        assert entry["encryptions"][0]["sequence_number"] == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_derive_key_pair_receiver(entry: dict[str, Any]) -> None:
    private, public = channel.derive_channel_key_pair(bytes.fromhex(entry["ikmR"]))
    assert private.hex() == entry["skRm"]
    assert public.hex() == entry["pkRm"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_derive_key_pair_ephemeral(entry: dict[str, Any]) -> None:
    private, public = channel.derive_channel_key_pair(bytes.fromhex(entry["ikmE"]))
    assert private.hex() == entry["skEm"]
    assert public.hex() == entry["pkEm"] == entry["enc"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_public_key_of_vector_private_key(entry: dict[str, Any]) -> None:
    assert channel.channel_public_key(bytes.fromhex(entry["skRm"])).hex() == entry["pkRm"]


def _suite() -> Suite:
    return Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)


@pytest.mark.parametrize("entry", ENTRIES)
def test_cryptography_hpke_opens_vector_ciphertext(entry: dict[str, Any]) -> None:
    first = entry["encryptions"][0]
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(entry["skRm"]))
    plaintext = rust_openssl.hpke._decrypt_with_aad(
        _suite(),
        bytes.fromhex(entry["enc"] + first["ct"]),
        private,
        info=bytes.fromhex(entry["info"]),
        aad=bytes.fromhex(first["aad"]),
    )
    assert plaintext.hex() == first["pt"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_cryptography_hpke_rejects_vector_under_other_info_or_aad(entry: dict[str, Any]) -> None:
    # The negative twin of the test above: info and aad really enter the
    # computation, which is what bkv's info-binding of the request aad relies on.
    first = entry["encryptions"][0]
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(entry["skRm"]))
    data = bytes.fromhex(entry["enc"] + first["ct"])
    info, aad = bytes.fromhex(entry["info"]), bytes.fromhex(first["aad"])
    with pytest.raises(InvalidTag):
        rust_openssl.hpke._decrypt_with_aad(_suite(), data, private, info=info + b"x", aad=aad)
    with pytest.raises(InvalidTag):
        rust_openssl.hpke._decrypt_with_aad(_suite(), data, private, info=info, aad=aad + b"x")
    with pytest.raises(InvalidTag):
        # The public single-shot API is RFC 9180 Open with an empty aad.
        _suite().decrypt(data, private, info=info)


@pytest.mark.parametrize("entry", ENTRIES)
def test_later_sequence_numbers_do_not_open_single_shot(entry: dict[str, Any]) -> None:
    # Sequence 1 uses base_nonce XOR 1: a single-shot open (sequence 0) must fail.
    second = entry["encryptions"][1]
    assert second["sequence_number"] == 1
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(entry["skRm"]))
    with pytest.raises(InvalidTag):
        rust_openssl.hpke._decrypt_with_aad(
            _suite(),
            bytes.fromhex(entry["enc"] + second["ct"]),
            private,
            info=bytes.fromhex(entry["info"]),
            aad=bytes.fromhex(second["aad"]),
        )
