"""The operator counter-signs a witness receipt only after checking it against its own pins.

The "blind counter-signature" attack (docs/threat-model.md): a lying witness signs and logs a
rogue artifact, answers the operator's legitimate submission with that receipt and reuses
the operator's counter-signature on a bundle for the rogue artifact.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from typing import Any

import pytest
from client_world import DAY_MS, NAMESPACE, NOW_MS, ORIGIN, World, make_artifact, signer

from bkv.cli.operator import parse_witness_key, pinned_roots
from bkv.client.operator import bundle_from_receipt, verify_receipt
from bkv.client.state import ClientState
from bkv.client.validation import validate_bundle
from bkv.errors import (
    BundleError,
    ConfigError,
    DigestMismatchError,
    InclusionProofError,
    NamespaceMismatchError,
    NoteError,
    SubmissionSignatureError,
    TimestampError,
    UnknownKeyError,
)
from bkv.protocol.artifact import FleetKeyArtifact
from bkv.protocol.bundle import build_bundle, encode_bundle
from bkv.protocol.countersign import countersign
from bkv.protocol.plexi import SignedStatement, WitnessKey, sign_statement
from bkv.protocol.submission import AuditEntry, Submission, sign_submission
from bkv.protocol.witness_api import proof_fields, statement_response
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.note import Ed25519Signer as NoteSigner

LEGIT = make_artifact(seed="legit").to_bytes()
ROGUE = make_artifact(fleet_id="impostor", seed="rogue").to_bytes()


def rogue_entry(
    world: World, artifact: bytes, *, operator_signature: bytes
) -> tuple[SignedStatement, bytes]:
    digest = hashlib.sha256(artifact).digest()
    statement = sign_statement(world.witness, NAMESPACE, NOW_MS, 1, digest)
    entry = AuditEntry(
        namespace=NAMESPACE,
        epoch=1,
        timestamp_ms=NOW_MS,
        digest=digest,
        key_id=statement.key_id,
        witness_signature=statement.signature,
        evidence_digest=b"",
        submitted_at_ms=NOW_MS,
        operator_signature=operator_signature,
    ).to_bytes()
    return statement, entry


def receipt_for(world: World, statement: SignedStatement, entry: bytes) -> dict[str, Any]:
    index = world.log.append(entry)
    proof = world.log.inclusion_proof(index)
    return statement_response(statement) | proof_fields(
        index, entry, world.log.size, proof, world.checkpoint()
    )


def honest(world: World) -> tuple[Submission, dict[str, Any]]:
    submission = sign_submission(world.operator, NAMESPACE, 1, LEGIT, submitted_at_ms=NOW_MS)
    statement = sign_statement(world.witness, NAMESPACE, NOW_MS, 1, submission.digest)
    entry = AuditEntry(
        namespace=NAMESPACE,
        epoch=1,
        timestamp_ms=NOW_MS,
        digest=submission.digest,
        key_id=statement.key_id,
        witness_signature=statement.signature,
        evidence_digest=b"",
        submitted_at_ms=NOW_MS,
        operator_signature=submission.operator_signature,
    ).to_bytes()
    return submission, receipt_for(world, statement, entry)


def check(world: World, receipt: dict[str, Any], submission: Submission | None = None) -> None:
    bundle_from_receipt(
        LEGIT,
        receipt,
        world.operator,
        roots=world.roots(),
        epoch=1,
        now_ms=NOW_MS,
        submission=submission,
    )


def test_honest_receipt_is_countersigned_and_validates() -> None:
    world = World()
    submission, receipt = honest(world)
    bundle = bundle_from_receipt(
        LEGIT,
        receipt,
        world.operator,
        roots=world.roots(),
        epoch=1,
        now_ms=NOW_MS,
        submission=submission,
    )
    keys, _ = validate_bundle(encode_bundle(bundle), world.roots(), ClientState(), NOW_MS)
    assert keys.digest == submission.digest


def test_blind_countersign_of_a_rogue_statement_fails_closed() -> None:
    world = World()
    statement, entry = rogue_entry(world, ROGUE, operator_signature=bytes(64))
    with pytest.raises(DigestMismatchError):
        check(world, receipt_for(world, statement, entry))


def test_statement_of_the_right_digest_without_the_operators_submission() -> None:
    # The witness signs the legitimate digest but never received the submission.
    world = World()
    statement, entry = rogue_entry(world, LEGIT, operator_signature=bytes(64))
    with pytest.raises(SubmissionSignatureError):
        check(world, receipt_for(world, statement, entry))


def test_entry_of_an_older_submission_is_not_this_one() -> None:
    world = World()
    _, receipt = honest(world)
    again = sign_submission(world.operator, NAMESPACE, 1, LEGIT, submitted_at_ms=NOW_MS + 1)
    with pytest.raises(SubmissionSignatureError, match="submission just made"):
        check(world, receipt, again)


def test_rogue_bundle_with_a_reused_countersignature_is_refused_by_clients() -> None:
    # Even if an operator tool were tricked into counter-signing, the client checks the
    # operator's logged submission signature too: two operator signatures are needed.
    world = World()
    statement, entry = rogue_entry(world, ROGUE, operator_signature=bytes(64))
    index = world.log.append(entry)
    bundle = build_bundle(
        artifact=ROGUE,
        namespace=NAMESPACE,
        epoch=1,
        statement=statement,
        counter_signature=countersign(world.operator, statement.signature),
        log_entry=entry,
        log_index=index,
        inclusion_proof=world.log.inclusion_proof(index),
        checkpoint=world.checkpoint(),
    )
    with pytest.raises(SubmissionSignatureError):
        validate_bundle(encode_bundle(bundle), world.roots(), ClientState(), NOW_MS)


def test_statement_for_another_namespace_or_epoch() -> None:
    world = World()
    _, receipt = honest(world)
    with pytest.raises(NamespaceMismatchError):
        bundle_from_receipt(
            LEGIT,
            receipt,
            world.operator,
            roots=world.roots(namespace="other.v1"),
            epoch=1,
            now_ms=NOW_MS,
        )
    with pytest.raises(BundleError, match="epoch"):
        bundle_from_receipt(
            LEGIT, receipt, world.operator, roots=world.roots(), epoch=2, now_ms=NOW_MS
        )


def test_statement_signed_by_an_unpinned_witness_key() -> None:
    world = World()
    submission, _ = honest(world)
    impostor = signer("impostor-witness")
    statement = sign_statement(impostor, NAMESPACE, NOW_MS, 1, submission.digest)
    _, entry = rogue_entry(world, LEGIT, operator_signature=submission.operator_signature)
    receipt = receipt_for(world, statement, entry)
    with pytest.raises(UnknownKeyError, match="no pinned witness key"):
        check(world, receipt, submission)
    # Even with a consistent entry, the unpinned key is refused first.
    entry2 = dataclasses.replace(
        AuditEntry.from_bytes(entry), key_id=statement.key_id, witness_signature=statement.signature
    ).to_bytes()
    receipt = receipt_for(world, statement, entry2)
    with pytest.raises(UnknownKeyError):
        check(world, receipt, submission)


def test_entry_recording_another_statement() -> None:
    world = World()
    submission, receipt = honest(world)
    other = sign_statement(world.witness, NAMESPACE, NOW_MS + 1, 1, submission.digest)
    receipt |= {"signature": other.signature.hex(), "serialized_message": other.message_bytes.hex()}
    with pytest.raises(InclusionProofError):
        check(world, receipt, submission)


def test_checkpoint_by_another_log_key() -> None:
    world = World()
    submission, receipt = honest(world)
    forged = Checkpoint("witness.test/bkv-log", world.log.size, world.log.root())
    receipt["checkpoint"] = forged.sign([NoteSigner("witness.test/bkv-log", signer("x"))]).decode()
    with pytest.raises(NoteError):
        check(world, receipt, submission)


def test_inclusion_proof_that_does_not_verify() -> None:
    world = World()
    world.publish(make_artifact(seed="filler").to_bytes())
    submission, receipt = honest(world)
    receipt["inclusion_proof"] = ["00" * 32]
    with pytest.raises(InclusionProofError):
        check(world, receipt, submission)


def test_verify_receipt_returns_what_was_checked() -> None:
    world = World()
    submission, receipt = honest(world)
    verified = verify_receipt(
        LEGIT,
        receipt,
        world.roots(),
        operator_public_key=world.operator.public_key(),
        epoch=1,
        now_ms=NOW_MS,
        submission=submission,
    )
    assert verified.log_index == receipt["log_index"]


# --- the operator CLI's pins ----------------------------------------------------------


def _args(**changes: object) -> argparse.Namespace:
    world = World()
    values: dict[str, object] = {
        "witness_key": [f"{world.witness.public_key().hex()}@5"],
        "log_key": world.roots().log_verifier_key,
        "origin": ORIGIN,
        "namespace": NAMESPACE,
    }
    values.update(changes)
    return argparse.Namespace(**values)


def test_pinned_roots_from_the_command_line() -> None:
    world = World()
    roots = pinned_roots(_args(), world.operator.public_key())
    assert roots.witness_keys == (WitnessKey(world.witness.public_key(), 5),)
    assert parse_witness_key(world.witness.public_key().hex()).not_before_ms == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"witness_key": ["00" * 31]},
        {"witness_key": ["AB" * 32]},
        {"witness_key": [(bytes([1]) + bytes(31)).hex()]},  # identity point: a weak pin
        {"witness_key": [signer("w").public_key().hex() + "@05"]},
        {"witness_key": [signer("w").public_key().hex() + "@+5"]},
        {"witness_key": [signer("w").public_key().hex() + "@x"]},
        {"log_key": "not a vkey"},
        {"origin": ""},
        {"namespace": "../x"},
    ],
)
def test_bad_pins_are_config_errors(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        pinned_roots(_args(**changes), World().operator.public_key())


# --- time: the operator never counter-signs what clients refuse (receipt_time.py) --------


def _receipt_of(world: World, published_index: int) -> dict[str, Any]:
    published = world.published[published_index]
    return statement_response(published.statement) | proof_fields(
        published.index,
        published.entry,
        world.log.size,
        world.log.inclusion_proof(published.index),
        world.checkpoint(),
    )


@pytest.mark.parametrize(
    ("artifact", "timestamp_ms", "match"),
    [
        # A receipt 10 years ahead, and after not_after.
        (make_artifact(seed="t"), NOW_MS + 3650 * DAY_MS, "future"),
        (make_artifact(seed="t"), NOW_MS + 400 * DAY_MS, "future"),
        (make_artifact(seed="t", not_after_ms=NOW_MS - 1), NOW_MS, "not_after"),
        (make_artifact(seed="t", not_before_ms=NOW_MS + DAY_MS), NOW_MS, "not_before"),
    ],
)
def test_receipt_timestamped_outside_now_or_the_artifacts_validity_is_refused(
    artifact: FleetKeyArtifact, timestamp_ms: int, match: str
) -> None:
    world = World()
    data = artifact.to_bytes()
    world.publish(data, timestamp_ms=timestamp_ms)
    receipt = _receipt_of(world, 0)
    with pytest.raises(TimestampError, match=match):
        verify_receipt(
            data,
            receipt,
            world.roots(),
            operator_public_key=world.operator.public_key(),
            epoch=1,
            now_ms=NOW_MS,
        )
    with pytest.raises(TimestampError, match=match):
        bundle_from_receipt(
            data, receipt, world.operator, roots=world.roots(), epoch=1, now_ms=NOW_MS
        )


def test_receipt_within_the_clock_skew_is_countersigned() -> None:
    world = World()
    skew = world.roots().max_clock_skew_ms
    world.publish(LEGIT, timestamp_ms=NOW_MS + skew)
    bundle = bundle_from_receipt(
        LEGIT,
        _receipt_of(world, 0),
        world.operator,
        roots=world.roots(),
        epoch=1,
        now_ms=NOW_MS,
    )
    with pytest.raises(TimestampError):
        bundle_from_receipt(
            LEGIT,
            _receipt_of(world, 0),
            world.operator,
            roots=world.roots(),
            epoch=1,
            now_ms=NOW_MS - 1,
        )
    assert bundle.epoch == 1


def test_statement_timestamped_before_the_logged_submission_is_refused() -> None:
    world = World()
    skew = world.roots().max_clock_skew_ms
    submission = sign_submission(
        world.operator, NAMESPACE, 1, LEGIT, submitted_at_ms=NOW_MS + skew + 1
    )
    statement = sign_statement(world.witness, NAMESPACE, NOW_MS, 1, submission.digest)
    entry = AuditEntry(
        namespace=NAMESPACE,
        epoch=1,
        timestamp_ms=NOW_MS,
        digest=submission.digest,
        key_id=statement.key_id,
        witness_signature=statement.signature,
        evidence_digest=b"",
        submitted_at_ms=NOW_MS + skew + 1,
        operator_signature=submission.operator_signature,
    ).to_bytes()
    with pytest.raises(TimestampError, match="before the submission"):
        check(world, receipt_for(world, statement, entry), submission)


def test_receipt_whose_entry_names_other_evidence_is_refused() -> None:
    # The artifact names no evidence; the witness logged (and checked) other evidence.
    world = World()
    submission = sign_submission(
        world.operator, NAMESPACE, 1, LEGIT, submitted_at_ms=NOW_MS, evidence=b"other evidence"
    )
    statement = sign_statement(world.witness, NAMESPACE, NOW_MS, 1, submission.digest)
    entry = AuditEntry(
        namespace=NAMESPACE,
        epoch=1,
        timestamp_ms=NOW_MS,
        digest=submission.digest,
        key_id=statement.key_id,
        witness_signature=statement.signature,
        evidence_digest=submission.evidence_digest,
        submitted_at_ms=NOW_MS,
        operator_signature=submission.operator_signature,
    ).to_bytes()
    receipt = receipt_for(world, statement, entry)
    with pytest.raises(BundleError, match="evidence"):
        check(world, receipt, submission)
    with pytest.raises(BundleError, match="evidence"):
        check(world, receipt)
