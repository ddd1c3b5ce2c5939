"""validate_bundle: the positive path and a negative test for every check."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path

import pytest
from client_world import (
    DAY_MS,
    NAMESPACE,
    NOW_MS,
    ORIGIN,
    World,
    make_artifact,
    signer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bkv.client.state import ClientState
from bkv.client.store_json import JsonFileStateStore
from bkv.client.validation import validate_bundle
from bkv.errors import (
    ArtifactError,
    BkvError,
    BundleError,
    CheckpointError,
    CodecError,
    ConsistencyProofError,
    CosignerPolicyError,
    CounterSignatureError,
    DigestMismatchError,
    EpochRollbackError,
    InclusionProofError,
    NamespaceMismatchError,
    NoteError,
    SizeLimitError,
    TimestampError,
    TrailingBytesError,
    TruncatedError,
    UnknownKeyError,
    UnknownTagError,
    WitnessSignatureError,
)
from bkv.protocol.bundle import (
    MAX_BUNDLE_SIZE,
    ValidationBundle,
    decode_bundle,
    encode_bundle,
)
from bkv.protocol.countersign import countersign
from bkv.protocol.plexi import WitnessKey
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.note import Ed25519Signer as NoteSigner
from bkv.tlog.note import NoteSignature, sign_note

FRESH = ClientState()


def _validate(world: World, bundle: ValidationBundle, state: ClientState = FRESH, **roots: object):  # type: ignore[no-untyped-def]
    return validate_bundle(encode_bundle(bundle), world.roots(**roots), state, NOW_MS)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def first(world: World) -> ValidationBundle:
    return world.bundle(world.publish(make_artifact().to_bytes()))


# --- positive paths ---------------------------------------------------------------


def test_valid_bundle_accepted(world: World, first: ValidationBundle) -> None:
    keys, state = _validate(world, first)
    assert keys.source == "over_the_air"
    assert keys.epoch == 1
    assert keys.fleet_id == "fleet-a"
    assert keys.public_key("opaque_ake") == make_artifact().key("opaque_ake").key
    assert keys.digest == make_artifact().digest
    assert state == ClientState(1, keys.digest, 1, world.log.root(1))


def test_next_epoch_with_consistency_proof(world: World, first: ValidationBundle) -> None:
    _, state = _validate(world, first)
    second = world.publish(make_artifact(seed="b").to_bytes())
    world.publish(make_artifact(seed="c").to_bytes())
    bundle = world.bundle(second, client_size=state.checkpoint_size)
    keys, new_state = _validate(world, bundle, state)
    assert keys.epoch == 2
    assert new_state.epoch == 2
    assert new_state.checkpoint_size == 3


def test_same_epoch_same_digest_accepted_again(world: World, first: ValidationBundle) -> None:
    _, state = _validate(world, first)
    keys, again = _validate(world, first, state)
    assert keys.epoch == 1
    assert again == state


def test_older_checkpoint_than_last_seen_accepted_with_proof(world: World) -> None:
    one = world.publish(make_artifact().to_bytes())
    two = world.publish(make_artifact(seed="b").to_bytes())
    _, state = _validate(world, world.bundle(two))
    # A cached bundle for epoch 2 against the older size-2 tree... epoch 1 would roll back,
    # so re-serve epoch 2 with a checkpoint of size 2 after the client saw size 3.
    world.publish(make_artifact(seed="c").to_bytes())
    _, state3 = _validate(world, world.bundle(two, client_size=state.checkpoint_size), state)
    assert state3.checkpoint_size == 3
    cached = world.bundle(two, size=2, client_size=3)
    _, kept = _validate(world, cached, state3)
    assert kept.checkpoint_size == 3
    assert one.index == 0


def test_rotated_witness_key_accepted_after_not_before(world: World) -> None:
    new_witness = signer("witness-2")
    published = world.publish(make_artifact().to_bytes(), witness=new_witness)
    keys = (WitnessKey(world.witness.public_key(), 0), WitnessKey(new_witness.public_key(), NOW_MS))
    result, _ = _validate(world, world.bundle(published), witness_keys=keys)
    assert result.epoch == 1


def test_second_operator_key_accepted(world: World) -> None:
    published = world.publish(make_artifact().to_bytes())
    bundle = world.bundle(published, counter_signer=signer("operator-2"))
    operators = (world.operator.public_key(), signer("operator-2").public_key())
    keys, _ = _validate(world, bundle, operator_keys=operators)
    assert keys.epoch == 1


def test_cosigner_policy_satisfied(world: World) -> None:
    published = world.publish(make_artifact().to_bytes())
    keys, _ = _validate(
        world, world.bundle(published, cosigned_by=2), cosigner_policy=world.policy(2)
    )
    assert keys.epoch == 1


def test_state_persisted_only_on_success(
    world: World, first: ValidationBundle, tmp_path: Path
) -> None:
    store = JsonFileStateStore(tmp_path / "client.json")
    keys, state = validate_bundle(encode_bundle(first), world.roots(), store.load(), NOW_MS)
    store.save(state)
    # Another log's epoch 1 with another digest: refused, and the stored state is untouched.
    fork = World()
    forked = encode_bundle(fork.bundle(fork.publish(make_artifact(seed="z").to_bytes())))
    with pytest.raises(EpochRollbackError):
        validate_bundle(forked, world.roots(), store.load(), NOW_MS)
    assert store.load() == state
    assert keys.epoch == 1


# --- step 1: decoding -------------------------------------------------------------


def test_truncated_bundle(world: World, first: ValidationBundle) -> None:
    data = encode_bundle(first)
    with pytest.raises(TruncatedError):
        validate_bundle(data[:-1], world.roots(), FRESH, NOW_MS)


def test_trailing_bytes(world: World, first: ValidationBundle) -> None:
    with pytest.raises(TrailingBytesError):
        validate_bundle(encode_bundle(first) + b"\x00", world.roots(), FRESH, NOW_MS)


def test_oversized_bundle(world: World) -> None:
    with pytest.raises(SizeLimitError):
        validate_bundle(b"\x03\x01\x01" + bytes(MAX_BUNDLE_SIZE), world.roots(), FRESH, NOW_MS)


@pytest.mark.parametrize("data", [b"", b"\x03", b"\x03\x01\x02" + bytes(100), b"\x00\x00\x01"])
def test_garbage_bundle(world: World, data: bytes) -> None:
    with pytest.raises(CodecError):
        validate_bundle(data, world.roots(), FRESH, NOW_MS)


def test_wrong_version_is_unknown_tag(world: World, first: ValidationBundle) -> None:
    data = bytearray(encode_bundle(first))
    data[2] = 2
    with pytest.raises(UnknownTagError):
        validate_bundle(bytes(data), world.roots(), FRESH, NOW_MS)


def test_bundle_epoch_differs_from_statement(world: World, first: ValidationBundle) -> None:
    with pytest.raises(BundleError):
        _validate(world, dataclasses.replace(first, epoch=2))


def test_bundle_namespace_differs_from_statement(world: World, first: ValidationBundle) -> None:
    with pytest.raises(BundleError):
        _validate(world, dataclasses.replace(first, namespace="other"))


def test_non_canonical_signature_message(world: World, first: ValidationBundle) -> None:
    # A padded varint (0x81 0x00 for 1) in the ciphersuite: not Plexi's one encoding.
    message = b"\x08\x81\x00" + first.signature_message[2:]
    with pytest.raises(CodecError):
        _validate(world, dataclasses.replace(first, signature_message=message))


# --- step 2: digest ---------------------------------------------------------------


def test_tampered_artifact(world: World, first: ValidationBundle) -> None:
    tampered = first.artifact.replace(b'"guess_limit":10', b'"guess_limit":99')
    assert tampered != first.artifact
    with pytest.raises(DigestMismatchError):
        _validate(world, dataclasses.replace(first, artifact=tampered))


def test_artifact_swapped_for_another_epoch(world: World, first: ValidationBundle) -> None:
    other = make_artifact(seed="b").to_bytes()
    with pytest.raises(DigestMismatchError):
        _validate(world, dataclasses.replace(first, artifact=other))


# --- step 3: namespace ------------------------------------------------------------


def test_wrong_namespace(world: World) -> None:
    world.namespace = "other.namespace.v1"
    published = world.publish(make_artifact().to_bytes())
    with pytest.raises(NamespaceMismatchError):
        _validate(world, world.bundle(published))


# --- steps 4-5: witness key and signature -----------------------------------------


def test_unknown_witness_key(world: World, first: ValidationBundle) -> None:
    other = signer("not-the-witness").public_key()
    with pytest.raises(UnknownKeyError):
        _validate(world, first, witness_keys=(WitnessKey(other, 0),))


def test_witness_key_not_yet_valid(world: World, first: ValidationBundle) -> None:
    key = WitnessKey(world.witness.public_key(), NOW_MS + 1)
    with pytest.raises(UnknownKeyError):
        _validate(world, first, witness_keys=(key,))


def test_wrong_key_id(world: World, first: ValidationBundle) -> None:
    with pytest.raises(UnknownKeyError):
        _validate(
            world, dataclasses.replace(first, witness_key_id=(first.witness_key_id + 1) % 256)
        )


def test_statement_signed_by_impostor_with_same_key_id(world: World) -> None:
    # Find an impostor key sharing the witness's one-byte key id (bounded search).
    target = world.witness.public_key()[-1]
    impostor = next(
        s for s in (signer(f"impostor-{i}") for i in range(5000)) if s.public_key()[-1] == target
    )
    published = world.publish(make_artifact().to_bytes(), witness=impostor)
    with pytest.raises(WitnessSignatureError):
        _validate(world, world.bundle(published))


def test_tampered_witness_signature(world: World, first: ValidationBundle) -> None:
    bad = bytes([first.witness_signature[0] ^ 1]) + first.witness_signature[1:]
    with pytest.raises(WitnessSignatureError):
        _validate(world, dataclasses.replace(first, witness_signature=bad))


def test_swapped_signatures(world: World, first: ValidationBundle) -> None:
    swapped = dataclasses.replace(
        first,
        witness_signature=first.counter_signature,
        counter_signature=first.witness_signature,
    )
    with pytest.raises(WitnessSignatureError):
        _validate(world, swapped)


def test_statement_for_other_digest_in_message(world: World, first: ValidationBundle) -> None:
    # Re-timestamped message bytes (same fields otherwise) are not what was signed.
    message = bytearray(first.signature_message)
    stamp = message.index(0x18) + 1
    message[stamp] ^= 0x01
    with pytest.raises(WitnessSignatureError):
        _validate(world, dataclasses.replace(first, signature_message=bytes(message)))


# --- step 6: operator counter-signature -------------------------------------------


def test_wrong_operator_key(world: World, first: ValidationBundle) -> None:
    with pytest.raises(CounterSignatureError):
        _validate(world, first, operator_keys=(signer("other-operator").public_key(),))


def test_countersigned_by_someone_else(world: World) -> None:
    published = world.publish(make_artifact().to_bytes())
    with pytest.raises(CounterSignatureError):
        _validate(world, world.bundle(published, counter_signer=signer("mallory")))


def test_countersignature_from_another_epoch(world: World) -> None:
    one = world.publish(make_artifact().to_bytes())
    two = world.publish(make_artifact(seed="b").to_bytes())
    bundle = world.bundle(two)
    stale = countersign(world.operator, one.statement.signature)
    with pytest.raises(CounterSignatureError):
        _validate(world, dataclasses.replace(bundle, counter_signature=stale))


def test_witness_alone_cannot_make_a_bundle(world: World) -> None:
    # The witness "counter-signs" itself: not a pinned operator key.
    published = world.publish(make_artifact().to_bytes())
    with pytest.raises(CounterSignatureError):
        _validate(world, world.bundle(published, counter_signer=world.witness))


# --- step 7: artifact -------------------------------------------------------------


def test_witnessed_but_non_canonical_artifact(world: World) -> None:
    # Two honest signers vouching for bytes that are not a canonical artifact: still refused.
    data = make_artifact().to_bytes().replace(b'"version":1', b'"version": 1')
    with pytest.raises(ArtifactError):
        _validate(world, world.bundle(world.publish(data)))


def test_witnessed_artifact_missing_role(world: World) -> None:
    data = make_artifact().to_bytes().replace(b'"role":"opaque_ake"', b'"role":"zz_other"')
    with pytest.raises(ArtifactError):
        _validate(world, world.bundle(world.publish(data)))


# --- step 8: epochs ---------------------------------------------------------------


def test_older_epoch_is_rollback(world: World) -> None:
    one = world.publish(make_artifact().to_bytes())
    two = world.publish(make_artifact(seed="b").to_bytes())
    _, state = _validate(world, world.bundle(two))
    with pytest.raises(EpochRollbackError):
        _validate(world, world.bundle(one), state)


def test_same_epoch_different_digest_is_rollback(world: World, first: ValidationBundle) -> None:
    _, state = _validate(world, first)
    fork = World()
    forked = fork.publish(make_artifact(seed="evil").to_bytes())
    with pytest.raises(EpochRollbackError):
        _validate(fork, fork.bundle(forked), state)


# --- step 9: time -----------------------------------------------------------------


def test_statement_from_the_future(world: World) -> None:
    published = world.publish(make_artifact().to_bytes(), timestamp_ms=NOW_MS + 10 * 60 * 1000)
    with pytest.raises(TimestampError):
        _validate(world, world.bundle(published))


def test_statement_within_skew_accepted(world: World) -> None:
    published = world.publish(make_artifact().to_bytes(), timestamp_ms=NOW_MS + 60 * 1000)
    keys, _ = _validate(world, world.bundle(published))
    assert keys.epoch == 1


def test_expired_artifact(world: World) -> None:
    artifact = make_artifact(not_before_ms=NOW_MS - 3 * DAY_MS, not_after_ms=NOW_MS - DAY_MS)
    published = world.publish(artifact.to_bytes(), timestamp_ms=NOW_MS - 2 * DAY_MS)
    with pytest.raises(TimestampError, match="expired"):
        _validate(world, world.bundle(published))


def test_artifact_not_yet_valid(world: World) -> None:
    artifact = make_artifact(not_before_ms=NOW_MS + DAY_MS, not_after_ms=NOW_MS + 9 * DAY_MS)
    with pytest.raises(TimestampError, match="not valid yet"):
        _validate(world, world.bundle(world.publish(artifact.to_bytes())))


def test_statement_made_after_artifact_expiry(world: World) -> None:
    artifact = make_artifact(not_before_ms=0, not_after_ms=NOW_MS + 1000)
    published = world.publish(artifact.to_bytes(), timestamp_ms=NOW_MS + 2000)
    with pytest.raises(TimestampError):
        _validate(world, world.bundle(published))


# --- step 10: checkpoint note and cosigners ---------------------------------------


def _resign(world: World, bundle: ValidationBundle, text: str) -> ValidationBundle:
    return dataclasses.replace(bundle, checkpoint=sign_note(text, [world.log_signer]))


def test_checkpoint_by_unknown_key_only(world: World, first: ValidationBundle) -> None:
    stranger = NoteSigner(ORIGIN, signer("stranger"))
    text = Checkpoint(ORIGIN, 1, world.log.root(1)).text()
    with pytest.raises(NoteError, match="no signature from a known key"):
        _validate(world, dataclasses.replace(first, checkpoint=sign_note(text, [stranger])))


def test_checkpoint_with_duplicate_signatures(world: World, first: ValidationBundle) -> None:
    text, block = first.checkpoint.decode().split("\n\n")
    doubled = (text + "\n\n" + block + block).encode()
    with pytest.raises(NoteError, match="same key"):
        _validate(world, dataclasses.replace(first, checkpoint=doubled))


def test_checkpoint_with_too_many_signatures(world: World, first: ValidationBundle) -> None:
    text = Checkpoint(ORIGIN, 1, world.log.root(1)).text()
    sigs = [NoteSignature(f"junk{i}.test", i, b"\x00" * 64) for i in range(101)]
    sigs.append(
        NoteSignature(
            world.log_signer.name, world.log_signer.key_id, world.log_signer.sign(text.encode())
        )
    )
    data = (text + "\n" + "".join(s.line() for s in sigs)).encode()
    with pytest.raises(NoteError, match="more than 100 signatures"):
        _validate(world, dataclasses.replace(first, checkpoint=data))


def test_checkpoint_signature_tampered(world: World, first: ValidationBundle) -> None:
    other_root = Checkpoint(ORIGIN, 1, b"\x07" * 32).text()
    _text, block = first.checkpoint.decode().split("\n\n")
    with pytest.raises(NoteError):
        _validate(
            world, dataclasses.replace(first, checkpoint=(other_root + "\n" + block).encode())
        )


def test_checkpoint_non_canonical_base64_signature(world: World, first: ValidationBundle) -> None:
    text, block = first.checkpoint.decode().split("\n\n")
    # Strip the padding of the signature's base64: same bytes, non-canonical spelling.
    unpadded = block.rstrip("\n").rstrip("=") + "\n"
    assert unpadded != block
    with pytest.raises(NoteError):
        _validate(world, dataclasses.replace(first, checkpoint=(text + "\n\n" + unpadded).encode()))


def test_checkpoint_non_canonical_size(world: World, first: ValidationBundle) -> None:
    text = Checkpoint(ORIGIN, 1, world.log.root(1)).text().replace("\n1\n", "\n01\n")
    with pytest.raises(CheckpointError):
        _validate(world, _resign(world, first, text))


def test_checkpoint_for_other_origin(world: World, first: ValidationBundle) -> None:
    other = NoteSigner(ORIGIN, world.log_key)
    text = Checkpoint("other.test/log", 1, world.log.root(1)).text()
    with pytest.raises(CheckpointError):
        _validate(world, dataclasses.replace(first, checkpoint=sign_note(text, [other])))


def test_missing_cosigners(world: World) -> None:
    published = world.publish(make_artifact().to_bytes())
    with pytest.raises(CosignerPolicyError):
        _validate(world, world.bundle(published, cosigned_by=1), cosigner_policy=world.policy(2))


def test_bad_cosignature(world: World) -> None:  # a configured cosigner's line is corrupt
    published = world.publish(make_artifact().to_bytes())
    bundle = world.bundle(published, cosigned_by=1)
    text, block = bundle.checkpoint.decode().split("\n\n")
    lines = block.splitlines()
    name, sig = lines[1].rsplit(" ", 1)
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    lines[1] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
    data = (text + "\n\n" + "\n".join(lines) + "\n").encode()
    with pytest.raises(NoteError):
        _validate(
            world, dataclasses.replace(bundle, checkpoint=data), cosigner_policy=world.policy(1)
        )


# --- step 11: inclusion -----------------------------------------------------------


@pytest.fixture
def deep(world: World) -> ValidationBundle:
    for seed in "abcde":
        world.publish(make_artifact(seed=seed).to_bytes())
    return world.bundle(world.published[2])


def test_truncated_inclusion_proof(world: World, deep: ValidationBundle) -> None:
    with pytest.raises(InclusionProofError):
        _validate(world, dataclasses.replace(deep, inclusion_proof=deep.inclusion_proof[:-1]))


def test_extra_inclusion_proof_hash(world: World, deep: ValidationBundle) -> None:
    longer = (*deep.inclusion_proof, b"\x00" * 32)
    with pytest.raises(InclusionProofError):
        _validate(world, dataclasses.replace(deep, inclusion_proof=longer))


def test_tampered_inclusion_proof(world: World, deep: ValidationBundle) -> None:
    bad = (b"\x01" * 32, *deep.inclusion_proof[1:])
    with pytest.raises(InclusionProofError):
        _validate(world, dataclasses.replace(deep, inclusion_proof=bad))


def test_wrong_log_index(world: World, deep: ValidationBundle) -> None:
    with pytest.raises(InclusionProofError):
        _validate(world, dataclasses.replace(deep, log_index=deep.log_index + 1))


def test_index_outside_tree(world: World, deep: ValidationBundle) -> None:
    with pytest.raises(InclusionProofError):
        _validate(world, dataclasses.replace(deep, log_index=99))


def test_log_entry_of_another_statement(world: World, deep: ValidationBundle) -> None:
    other = world.published[3]
    with pytest.raises(InclusionProofError, match="does not record"):
        _validate(world, dataclasses.replace(deep, log_entry=other.entry))


def test_malformed_log_entry(world: World, deep: ValidationBundle) -> None:
    with pytest.raises(InclusionProofError, match="malformed"):
        _validate(world, dataclasses.replace(deep, log_entry=deep.log_entry[:-1]))


def test_checkpoint_not_containing_entry(world: World, deep: ValidationBundle) -> None:
    # An older checkpoint (size 2) cannot contain leaf 2.
    early = dataclasses.replace(deep, checkpoint=world.checkpoint(size=2))
    with pytest.raises(InclusionProofError):
        _validate(world, early)
    # Nor one of size 4 with the size-5 proof.
    with pytest.raises(InclusionProofError):
        _validate(world, dataclasses.replace(deep, checkpoint=world.checkpoint(size=4)))


def test_evidence_digest_mismatch(world: World) -> None:
    # The artifact names no evidence but the witness logged some with the statement.
    published = world.publish(make_artifact().to_bytes(), evidence=b"deployment evidence")
    with pytest.raises(BundleError, match="evidence"):
        _validate(world, world.bundle(published))


def test_evidence_digest_match_accepted(world: World) -> None:
    evidence = b"deployment evidence"
    artifact = make_artifact(evidence_digest=hashlib.sha256(evidence).digest())
    published = world.publish(artifact.to_bytes(), evidence=evidence)
    keys, _ = _validate(world, world.bundle(published))
    assert keys.artifact.evidence_digest == hashlib.sha256(evidence).digest()


# --- step 12: consistency ---------------------------------------------------------


def _seen(world: World) -> ClientState:
    _, state = _validate(world, world.bundle(world.published[0]))
    assert isinstance(state, ClientState)
    return state


def test_missing_consistency_proof(world: World, first: ValidationBundle) -> None:
    state = _seen(world)
    world.publish(make_artifact(seed="b").to_bytes())
    with pytest.raises(ConsistencyProofError, match="no consistency proof"):
        _validate(world, world.bundle(world.published[1]), state)


def test_consistency_proof_from_wrong_size(world: World, first: ValidationBundle) -> None:
    state = _seen(world)
    for seed in "bc":
        world.publish(make_artifact(seed=seed).to_bytes())
    with pytest.raises(ConsistencyProofError):
        _validate(world, world.bundle(world.published[2], client_size=2), state)


def test_tampered_consistency_proof(world: World, first: ValidationBundle) -> None:
    state = _seen(world)
    for seed in "bc":
        world.publish(make_artifact(seed=seed).to_bytes())
    bundle = world.bundle(world.published[2], client_size=1)
    bad = (b"\x02" * 32, *bundle.consistency_proof[1:])
    with pytest.raises(ConsistencyProofError):
        _validate(world, dataclasses.replace(bundle, consistency_proof=bad), state)


def test_truncated_consistency_proof(world: World, first: ValidationBundle) -> None:
    state = _seen(world)
    for seed in "bc":
        world.publish(make_artifact(seed=seed).to_bytes())
    bundle = world.bundle(world.published[2], client_size=1)
    short = bundle.consistency_proof[:-1]
    with pytest.raises(ConsistencyProofError):
        _validate(world, dataclasses.replace(bundle, consistency_proof=short), state)


def test_forked_log_same_size(world: World, first: ValidationBundle) -> None:
    state = _seen(world)
    forked = dataclasses.replace(state, checkpoint_root=b"\x09" * 32)
    with pytest.raises(ConsistencyProofError, match="fork"):
        _validate(world, first, forked)


def test_forked_log_larger(world: World, first: ValidationBundle) -> None:
    # The client saw a different size-1 tree; the new checkpoint cannot extend it.
    forked = ClientState(0, None, 1, b"\x09" * 32)
    world.publish(make_artifact(seed="b").to_bytes())
    with pytest.raises(ConsistencyProofError):
        _validate(world, world.bundle(world.published[1], client_size=1), forked)


# --- properties ------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    # Random bytes never get past strict decoding (step 1): the error is a CodecError.
    world = World()
    with pytest.raises(CodecError):
        validate_bundle(data, world.roots(), FRESH, NOW_MS)


_WORLD = World()
_PUBLISHED = _WORLD.publish(make_artifact().to_bytes())
_GOOD = encode_bundle(_WORLD.bundle(_PUBLISHED))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=len(_GOOD) - 1), st.integers(min_value=1, max_value=255))
def test_flipped_byte_never_changes_accepted_keys(position: int, flip: int) -> None:
    data = bytearray(_GOOD)
    data[position] ^= flip
    try:
        keys, _ = validate_bundle(bytes(data), _WORLD.roots(), FRESH, NOW_MS)
    except BkvError:
        return
    # Only fields no check covers may change (e.g. an unused consistency size).
    assert keys.digest == make_artifact().digest


def test_bundle_codec_round_trip(first: ValidationBundle) -> None:
    data = encode_bundle(first)
    assert decode_bundle(data) == first
    assert encode_bundle(decode_bundle(data)) == data
    assert first.namespace == NAMESPACE
