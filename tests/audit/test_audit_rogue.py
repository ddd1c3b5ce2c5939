"""The audit core against a witness that lies: every audit rule has a negative test."""

from __future__ import annotations

import dataclasses

import pytest
from rogue_witness import NAMESPACE, T0, RogueWitness, artifact, key

from bkv.audit.delta import all_deltas, render_table
from bkv.audit.verify import audit_namespace
from bkv.client.countersign import countersign
from bkv.client.state import ClientState
from bkv.errors import (
    AuditError,
    CodecError,
    CounterSignatureError,
    EpochRollbackError,
    InclusionProofError,
    NamespaceMismatchError,
    SubmissionSignatureError,
    TimestampError,
    UnknownKeyError,
    WitnessSignatureError,
)
from bkv.witness.plexi import WitnessKey


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
    with pytest.raises(InclusionProofError):
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
    with pytest.raises(AuditError):
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
