"""The audit core against a witness that lies: every audit rule has a negative test."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from rogue_witness import NAMESPACE, ORIGIN, T0, RogueWitness, Served, artifact, key

from bkv.audit.delta import all_deltas, render_table
from bkv.audit.verify import audit_namespace
from bkv.client.state import ClientState
from bkv.errors import (
    AuditError,
    BundleError,
    CodecError,
    ConsistencyProofError,
    CounterSignatureError,
    EpochRollbackError,
    InclusionProofError,
    NamespaceMismatchError,
    SubmissionSignatureError,
    TimestampError,
    UnknownKeyError,
    WitnessSignatureError,
)
from bkv.protocol.bundle import build_bundle, encode_bundle
from bkv.protocol.countersign import countersign
from bkv.protocol.plexi import WitnessKey, sign_statement
from bkv.protocol.submission import AuditEntry, sign_submission
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.note import Ed25519Signer as NoteSigner

DAY_MS = 24 * 3600 * 1000


def honest() -> RogueWitness:
    rogue = RogueWitness()
    for epoch, seed in enumerate("abc", start=1):
        rogue.sign(artifact(seed), epoch)
    return rogue


def test_honest_record_passes() -> None:
    rogue = honest()
    report = audit_namespace(rogue, NAMESPACE, rogue.pins())
    assert [e.epoch for e in report.epochs] == [1, 2, 3]
    assert report.state().epoch == 3
    table = render_table(all_deltas(report.epochs))
    assert "changed" in table


def test_other_namespaces_in_the_log_are_ignored() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("x"), 1, namespace="someone.else.v1")
    rogue.sign(artifact("b"), 2)
    assert len(audit_namespace(rogue, NAMESPACE, rogue.pins()).epochs) == 2


def test_repeated_digest() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("a"), 2)
    with pytest.raises(AuditError, match="re-signs a digest"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_digest_of_any_earlier_epoch_is_refused() -> None:
    rogue = RogueWitness()
    for epoch, seed in enumerate("abcb", start=1):
        rogue.sign(artifact(seed), epoch)
    with pytest.raises(AuditError, match="epoch 4 re-signs a digest"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_epoch_gap() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 3, serve_as=2)
    with pytest.raises(AuditError, match="served epoch 3 as epoch 2"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_timestamps_going_backwards() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1, timestamp_ms=T0 + 100)
    rogue.sign(artifact("b"), 2, timestamp_ms=T0 + 50)
    with pytest.raises(TimestampError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_hidden_logged_epoch() -> None:
    rogue = honest()
    rogue.last_epoch = 2  # epoch 3 is logged but the Plexi API does not admit it
    with pytest.raises(AuditError, match="does not serve"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_statement_signed_but_never_logged() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 2, log=False)
    with pytest.raises(InclusionProofError, match="not in the log"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_served_index_points_at_another_entry() -> None:
    rogue = honest()
    rogue.served[2].index = 0
    with pytest.raises(InclusionProofError, match="served log entry differs"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_log_order_differs_from_epoch_order() -> None:
    rogue = RogueWitness()
    two = rogue.sign(artifact("b"), 2, serve_as=0, timestamp_ms=T0 + 1)
    rogue.sign(artifact("a"), 1, timestamp_ms=T0 + 1)
    rogue.served[2] = two
    with pytest.raises(AuditError, match="sits before"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_operator_never_authorised_it() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 2, operator=key("mallory"))
    with pytest.raises(SubmissionSignatureError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_wrong_witness_key_pinned() -> None:
    rogue = honest()
    with pytest.raises(UnknownKeyError):
        audit_namespace(
            rogue, NAMESPACE, rogue.pins(witness_keys=(WitnessKey(key("x").public_key(), 0),))
        )


def test_statement_by_impostor_with_same_key_id() -> None:
    rogue = honest()
    target = rogue.witness.public_key()[-1]
    impostor = next(
        s for s in (key(f"imp-{i}") for i in range(5000)) if s.public_key()[-1] == target
    )
    rogue.witness = impostor
    rogue.sign(artifact("d"), 4)
    with pytest.raises(WitnessSignatureError):
        audit_namespace(
            rogue,
            NAMESPACE,
            rogue.pins(witness_keys=(WitnessKey(key("rogue-witness").public_key(), 0),)),
        )


def test_statement_for_another_namespace_served_here() -> None:
    rogue = RogueWitness()
    served = rogue.sign(artifact("a"), 1, namespace="other.v1")
    rogue.served[1] = served
    with pytest.raises(NamespaceMismatchError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_rollback_against_previous_audit() -> None:
    rogue = honest()
    before = audit_namespace(rogue, NAMESPACE, rogue.pins()).state()
    rogue.last_epoch = 2
    rogue.served.pop(3)
    with pytest.raises(EpochRollbackError, match="a former audit saw 3"):
        audit_namespace(rogue, NAMESPACE, rogue.pins(previous=before))


def test_previous_audit_saw_another_digest() -> None:
    rogue = honest()
    state = audit_namespace(rogue, NAMESPACE, rogue.pins()).state()
    forged = ClientState(state.epoch, b"\x01" * 32, state.checkpoint_size, state.checkpoint_root)
    with pytest.raises(EpochRollbackError, match="another digest"):
        audit_namespace(rogue, NAMESPACE, rogue.pins(previous=forged))


def test_counter_signatures_served_by_the_witness_are_checked() -> None:
    rogue = honest()
    for epoch in (1, 2, 3):
        signature = rogue.served[epoch].statement.signature
        rogue.counter_signatures[epoch] = countersign(rogue.operator, signature).hex()
    pins = dataclasses.replace(rogue.pins(), require_countersignatures=True)
    report = audit_namespace(rogue, NAMESPACE, pins)
    assert report.countersigned_epochs == {1, 2, 3}
    # One epoch without: refused when every epoch must be counter-signed.
    del rogue.counter_signatures[2]
    with pytest.raises(AuditError, match=r"no operator counter-signature .* epoch\(s\) \[2\]"):
        audit_namespace(rogue, NAMESPACE, pins)
    assert audit_namespace(rogue, NAMESPACE, rogue.pins()).countersigned_epochs == {1, 3}


def test_counter_signature_by_another_key_fails_the_audit() -> None:
    rogue = honest()
    signature = rogue.served[2].statement.signature
    rogue.counter_signatures[2] = countersign(key("mallory"), signature).hex()
    with pytest.raises(CounterSignatureError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())
    # the operator's counter-signature of another epoch's statement
    rogue.counter_signatures[2] = countersign(
        rogue.operator, rogue.served[1].statement.signature
    ).hex()
    with pytest.raises(CounterSignatureError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


@pytest.mark.parametrize("served", ["00" * 63, "AB" * 64, 7])
def test_malformed_counter_signature_fails_the_audit(served: object) -> None:
    rogue = honest()
    rogue.counter_signatures[1] = served  # type: ignore[assignment]
    with pytest.raises(CodecError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


# --- the client's own checks, made by the auditor too ---------------------------------


def test_logged_evidence_other_than_the_artifacts_fails_the_audit() -> None:
    # The artifact names no evidence but the
    # log entry records other evidence; a client refuses such a bundle, so must the audit.
    rogue = RogueWitness()
    data = artifact("a")
    digest = hashlib.sha256(data).digest()
    statement = sign_statement(rogue.witness, NAMESPACE, T0 + 1, 1, digest)
    submission = sign_submission(
        rogue.operator, NAMESPACE, 1, data, submitted_at_ms=T0 + 1, evidence=b"other evidence"
    )
    entry = AuditEntry(
        namespace=NAMESPACE,
        epoch=1,
        timestamp_ms=T0 + 1,
        digest=digest,
        key_id=statement.key_id,
        witness_signature=statement.signature,
        evidence_digest=submission.evidence_digest,
        submitted_at_ms=T0 + 1,
        operator_signature=submission.operator_signature,
    ).to_bytes()
    index = rogue.log.append(entry)
    rogue.history[rogue.log.size] = rogue.checkpoint()
    rogue.served[1] = Served(statement, data, index, entry)
    with pytest.raises(BundleError, match="evidence"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_statement_made_after_the_artifact_expired_fails_the_audit() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 2, timestamp_ms=T0 * 2 + 1)  # artifact not_after is T0 * 2
    with pytest.raises(TimestampError, match="not_after"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_statement_made_before_the_artifact_was_valid_fails_the_audit() -> None:
    rogue = RogueWitness()
    late = artifact("late", not_before_ms=T0 + DAY_MS)
    rogue.sign(late, 1)
    with pytest.raises(TimestampError, match="not_before"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


class _EditedJson:
    """The rogue witness, with one convenience field of the audit JSON changed."""

    def __init__(self, rogue: RogueWitness, name: str, value: object) -> None:
        self.rogue, self.name, self.value = rogue, name, value

    def get_json(self, path: str) -> Any:
        data = self.rogue.get_json(path)
        if "/audits/" in path:
            data = {**data, self.name: self.value}
        return data

    def get_bytes(self, path: str, max_size: int) -> bytes:
        return self.rogue.get_bytes(path, max_size)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("namespace", "other.v1"),
        ("epoch", 2),
        ("timestamp", T0 + 99),
        ("digest", "00" * 32),
    ],
)
def test_audit_json_fields_that_disagree_with_the_signed_bytes(name: str, value: object) -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    assert [e.epoch for e in audit_namespace(rogue, NAMESPACE, rogue.pins()).epochs] == [1]
    with pytest.raises(AuditError, match=f"JSON field {name} differs"):
        audit_namespace(_EditedJson(rogue, name, value), NAMESPACE, rogue.pins())


def test_forked_but_valid_checkpoint_in_a_bundle_fails_the_audit() -> None:
    # The bundle validates like a client would (its checkpoint is signed by the log key
    # and includes the epoch), but its tree is a fork of the audited log.
    rogue = RogueWitness()
    first = rogue.sign(artifact("a"), 1)
    fork = MerkleLog(MemoryHashStore())
    fork.append(first.entry)
    fork.append(b"an entry only clients were shown")
    rogue.sign(artifact("b"), 2)
    fork_note = Checkpoint(ORIGIN, fork.size, fork.root()).sign([NoteSigner(ORIGIN, rogue.log_key)])
    bundle = encode_bundle(
        build_bundle(
            artifact=first.artifact,
            namespace=NAMESPACE,
            epoch=1,
            statement=first.statement,
            counter_signature=countersign(rogue.operator, first.statement.signature),
            log_entry=first.entry,
            log_index=first.index,
            inclusion_proof=fork.inclusion_proof(first.index, fork.size),
            checkpoint=fork_note,
        )
    )
    honest_bundle = encode_bundle(
        build_bundle(
            artifact=first.artifact,
            namespace=NAMESPACE,
            epoch=1,
            statement=first.statement,
            counter_signature=countersign(rogue.operator, first.statement.signature),
            log_entry=first.entry,
            log_index=first.index,
            inclusion_proof=rogue.log.inclusion_proof(first.index, rogue.log.size),
            checkpoint=rogue.checkpoint(),
        )
    )
    report = audit_namespace(rogue, NAMESPACE, rogue.pins(bundles=(honest_bundle,)))
    assert 1 in report.countersigned_epochs
    with pytest.raises(ConsistencyProofError, match="forked"):
        audit_namespace(rogue, NAMESPACE, rogue.pins(bundles=(bundle,)))
