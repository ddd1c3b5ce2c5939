"""Validation bundle codec (Hypothesis), pinned mode, and the operator's receipt parsing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from client_world import DAY_MS, NOW_MS, World, make_artifact, signer
from hypothesis import given
from hypothesis import strategies as st

from bkv.client.operator import bundle_from_receipt, proof_from_json, statement_from_json
from bkv.client.state import ClientState
from bkv.client.trust import PinnedFleetKeys
from bkv.client.validation import validate_bundle
from bkv.client.vault import build_request
from bkv.errors import CodecError, DigestMismatchError, SubmissionSignatureError, TimestampError
from bkv.protocol.bundle import (
    BUNDLE_TAG,
    MAX_BUNDLE_SIZE,
    MAX_CHECKPOINT_SIZE,
    ValidationBundle,
    decode_bundle,
    encode_bundle,
)
from bkv.protocol.messages import HsmRequest, StatusRequest
from bkv.wire import decode, schema_of

hashes = st.lists(st.binary(min_size=32, max_size=32), max_size=63).map(tuple)

bundles = st.builds(
    ValidationBundle,
    artifact=st.binary(min_size=1, max_size=2048),
    namespace=st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 255),
    epoch=st.integers(min_value=0, max_value=2**64 - 1),
    signature_message=st.binary(min_size=1, max_size=400),
    witness_signature=st.binary(min_size=64, max_size=64),
    witness_key_id=st.integers(min_value=0, max_value=255),
    counter_signature=st.binary(min_size=64, max_size=64),
    log_entry=st.binary(min_size=1, max_size=1024),
    log_index=st.integers(min_value=0, max_value=2**64 - 1),
    inclusion_proof=hashes,
    checkpoint=st.binary(min_size=1, max_size=MAX_CHECKPOINT_SIZE),
    consistency_size=st.integers(min_value=0, max_value=2**64 - 1),
    consistency_proof=hashes,
)


@given(bundles)
def test_bundle_round_trip(bundle: ValidationBundle) -> None:
    data = encode_bundle(bundle)
    assert data[:3] == BUNDLE_TAG.to_bytes(2, "big") + b"\x01"
    assert decode_bundle(data) == bundle
    assert encode_bundle(decode_bundle(data)) == data


@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        bundle = decode_bundle(data)
    except CodecError:
        return
    assert encode_bundle(bundle) == data


@given(bundles, st.data())
def test_truncations_and_extensions_rejected(bundle: ValidationBundle, data: st.DataObject) -> None:
    encoded = encode_bundle(bundle)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CodecError):
        decode_bundle(encoded[:cut])
    with pytest.raises(CodecError):
        decode_bundle(encoded + b"\x00")


def test_size_limit_is_declared() -> None:
    assert schema_of(ValidationBundle).size_limit <= MAX_BUNDLE_SIZE


def test_bundle_field_limits_enforced_on_encode() -> None:
    world = World()
    bundle = world.bundle(world.publish(make_artifact().to_bytes()))
    with pytest.raises(ValueError):
        encode_bundle(dataclasses.replace(bundle, inclusion_proof=(b"\x00" * 32,) * 64))
    with pytest.raises(ValueError):
        encode_bundle(dataclasses.replace(bundle, witness_signature=b"\x00" * 63))


# --- pinned mode --------------------------------------------------------------------


def test_pinned_keys_load() -> None:
    artifact = make_artifact()
    pinned = PinnedFleetKeys(artifact.to_bytes(), artifact.digest)
    keys = pinned.fleet_keys(NOW_MS)
    assert keys.source == "pinned"
    assert keys.epoch is None
    assert keys.public_key("channel") == artifact.key("channel").key


def test_pinned_keys_wrong_digest() -> None:
    artifact = make_artifact()
    with pytest.raises(DigestMismatchError):
        PinnedFleetKeys(artifact.to_bytes(), make_artifact(seed="b").digest).fleet_keys(NOW_MS)


def test_pinned_keys_expired() -> None:
    artifact = make_artifact(not_before_ms=0, not_after_ms=NOW_MS - DAY_MS)
    with pytest.raises(TimestampError):
        PinnedFleetKeys(artifact.to_bytes(), artifact.digest).fleet_keys(NOW_MS)


def test_pinned_and_ota_give_the_same_type() -> None:
    world = World()
    artifact = make_artifact()
    ota, _ = validate_bundle(
        encode_bundle(world.bundle(world.publish(artifact.to_bytes()))),
        world.roots(),
        ClientState(),
        NOW_MS,
    )
    pinned = PinnedFleetKeys(artifact.to_bytes(), artifact.digest).fleet_keys(NOW_MS)
    assert type(ota) is type(pinned)
    assert ota.keys_by_role == pinned.keys_by_role


# --- operator side: receipts ------------------------------------------------------------


def _receipt(world: World) -> tuple[bytes, dict[str, Any]]:
    artifact = make_artifact().to_bytes()
    published = world.publish(artifact)
    return artifact, {
        "serialized_message": published.statement.message_bytes.hex(),
        "signature": published.statement.signature.hex(),
        "key_id": published.statement.key_id,
        "log_index": published.index,
        "log_entry": published.entry.hex(),
        "inclusion_proof": [h.hex() for h in world.log.inclusion_proof(published.index)],
        "checkpoint": world.checkpoint().decode(),
        "extra_field_ignored": True,
    }


def test_bundle_from_receipt_validates() -> None:
    world = World()
    artifact, receipt = _receipt(world)
    bundle = bundle_from_receipt(
        artifact, receipt, world.operator, roots=world.roots(), epoch=1, now_ms=NOW_MS
    )
    keys, _ = validate_bundle(encode_bundle(bundle), world.roots(), ClientState(), NOW_MS)
    assert keys.epoch == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("signature", "00" * 63),
        ("signature", "AB" * 64),
        ("key_id", 256),
        ("key_id", True),
        ("serialized_message", "0"),
        ("log_index", -1),
        ("log_entry", ""),
        ("inclusion_proof", ["00" * 31]),
        ("inclusion_proof", ["00" * 32] * 64),
        ("inclusion_proof", "00"),
        ("checkpoint", ""),
        ("checkpoint", "x" * (MAX_CHECKPOINT_SIZE + 1)),
    ],
)
def test_bad_receipt_fields(field: str, value: Any) -> None:
    world = World()
    artifact, receipt = _receipt(world)
    receipt[field] = value
    with pytest.raises(CodecError):
        bundle_from_receipt(
            artifact, receipt, world.operator, roots=world.roots(), epoch=1, now_ms=NOW_MS
        )


def test_receipt_missing_fields() -> None:
    with pytest.raises(CodecError):
        statement_from_json({"signature": "00" * 64})
    with pytest.raises(CodecError):
        proof_from_json({"log_index": 0})


def test_receipt_of_another_operators_submission_is_not_countersigned() -> None:
    # The logged submission signature is the registered operator's, not this key's.
    world = World()
    artifact, receipt = _receipt(world)
    with pytest.raises(SubmissionSignatureError):
        bundle_from_receipt(
            artifact,
            receipt,
            signer("not-the-operator"),
            roots=world.roots(),
            epoch=1,
            now_ms=NOW_MS,
        )


def test_pinned_of_artifact_built_in_code() -> None:
    artifact = make_artifact()
    keys = PinnedFleetKeys.of(artifact).fleet_keys(NOW_MS)
    assert keys.digest == artifact.digest
    assert keys.keys_by_role == artifact.keys_by_role


def test_fleet_keys_feed_the_vault_protocol() -> None:
    # One FleetKeys type: the vault protocol takes it directly and uses keys by role.
    artifact = make_artifact()
    vault_keys = PinnedFleetKeys.of(artifact).fleet_keys(NOW_MS)
    request = build_request(vault_keys, b"alice", StatusRequest())
    assert decode(HsmRequest, request.request).fleet_id == artifact.fleet_id
    assert vault_keys.fleet_id == artifact.fleet_id
    assert vault_keys.channel_public_key == artifact.key("channel").key
    assert vault_keys.opaque_public_key == artifact.key("opaque_ake").key
