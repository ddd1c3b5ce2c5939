"""Operator counter-signature: exact format, software and PKCS#11 (SoftHSM2) signers."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_world import NOW_MS, World, det_bytes, make_artifact, signer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv.client.state import ClientState
from bkv.client.validation import validate_bundle
from bkv.errors import CounterSignatureError
from bkv.keystore.pkcs11 import generate_signing_key, init_token
from bkv.protocol.bundle import encode_bundle
from bkv.protocol.countersign import (
    COUNTERSIGNATURE_CONTEXT,
    countersign,
    countersignature_message,
    verify_countersignature,
)

WITNESS_SIG = det_bytes("witness-signature", 64)


def test_message_format_is_exact() -> None:
    assert COUNTERSIGNATURE_CONTEXT == b"bkv operator countersignature v1\x00"
    assert len(COUNTERSIGNATURE_CONTEXT) == 33
    assert countersignature_message(WITNESS_SIG) == COUNTERSIGNATURE_CONTEXT + WITNESS_SIG


def test_software_countersignature_verifies_independently() -> None:
    operator = signer("operator")
    sig = countersign(operator, WITNESS_SIG)
    # Checked with pyca directly, over the documented bytes, not through our verifier.
    Ed25519PublicKey.from_public_bytes(operator.public_key()).verify(
        sig, b"bkv operator countersignature v1\x00" + WITNESS_SIG
    )
    verify_countersignature(operator.public_key(), WITNESS_SIG, sig)


def test_wrong_operator_key_rejected() -> None:
    sig = countersign(signer("operator"), WITNESS_SIG)
    with pytest.raises(CounterSignatureError):
        verify_countersignature(signer("other").public_key(), WITNESS_SIG, sig)


def test_other_witness_signature_rejected() -> None:
    operator = signer("operator")
    sig = countersign(operator, WITNESS_SIG)
    with pytest.raises(CounterSignatureError):
        verify_countersignature(operator.public_key(), det_bytes("other", 64), sig)


def test_signature_over_raw_bytes_is_not_a_countersignature() -> None:
    # Domain separation: the operator signing the bare 64 bytes elsewhere does not count.
    operator = signer("operator")
    raw = operator.sign(WITNESS_SIG)
    with pytest.raises(CounterSignatureError):
        verify_countersignature(operator.public_key(), WITNESS_SIG, raw)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_wrong_length_countersignature_rejected(length: int) -> None:
    with pytest.raises(CounterSignatureError):
        verify_countersignature(signer("operator").public_key(), WITNESS_SIG, b"\x00" * length)


def test_misuse_is_value_error() -> None:
    with pytest.raises(ValueError):
        countersignature_message(b"short")
    with pytest.raises(ValueError):
        verify_countersignature(b"\x00" * 31, WITNESS_SIG, b"\x00" * 64)


@pytest.mark.softhsm
def test_pkcs11_countersignature(tmp_path: Path) -> None:
    config = init_token(tmp_path / "tokens", "bkv-operator", "so-pin-1234", "user-pin-1234")
    with generate_signing_key(config, "operator") as operator:
        sig = countersign(operator, WITNESS_SIG)
        public_key = operator.public_key()
    # Verified with pyca over the documented bytes, and through our verifier.
    Ed25519PublicKey.from_public_bytes(public_key).verify(
        sig, b"bkv operator countersignature v1\x00" + WITNESS_SIG
    )
    verify_countersignature(public_key, WITNESS_SIG, sig)
    with pytest.raises(CounterSignatureError):
        verify_countersignature(public_key, det_bytes("other", 64), sig)


@pytest.mark.softhsm
def test_pkcs11_countersigned_bundle_validates(tmp_path: Path) -> None:
    # The operator's key lives in a SoftHSM2 token; the client pins its public key.
    config = init_token(tmp_path / "tokens", "bkv-operator", "so-pin-1234", "user-pin-1234")
    with generate_signing_key(config, "operator") as operator:
        world = World(operator=operator)  # submits and counter-signs with the token key
        published = world.publish(make_artifact().to_bytes())
        bundle = world.bundle(published)
    keys, _ = validate_bundle(encode_bundle(bundle), world.roots(), ClientState(), NOW_MS)
    assert keys.epoch == 1
    software = (signer("operator").public_key(),)
    with pytest.raises(CounterSignatureError):
        validate_bundle(
            encode_bundle(bundle), world.roots(operator_keys=software), ClientState(), NOW_MS
        )
