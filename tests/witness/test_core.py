"""Witness rules on a real SQLite store: epochs, digests, signatures, time, restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from witness_helpers import (
    NS,
    ORIGIN,
    Clock,
    artifact_for,
    db_dump,
    digest,
    fixed_signer,
    make_service,
    submission,
)

from bkv.errors import (
    AttestationError,
    BundleError,
    CheckpointSizeConflictError,
    CodecError,
    ConfigError,
    DigestMismatchError,
    DigestReusedError,
    EpochConflictError,
    NamespaceExistsError,
    SizeLimitError,
    StorageError,
    SubmissionSignatureError,
    TimestampError,
    UnknownNamespaceError,
)
from bkv.keystore import SoftwareSigner
from bkv.protocol import plexi
from bkv.protocol import submission as submission_format
from bkv.protocol.artifact import MAX_ARTIFACT_BYTES
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.merkle import leaf_hash, verify_consistency, verify_inclusion
from bkv.tlog.note import Ed25519Signer, Ed25519Verifier
from bkv.tlog.witness_protocol import format_add_checkpoint
from bkv.witness.service import WitnessConfig, WitnessService
from bkv.witness.store import WitnessStore


def _log_verifier() -> Ed25519Verifier:
    return Ed25519Verifier(ORIGIN, fixed_signer(0x52).public_key())


def _witness_key() -> plexi.WitnessKey:
    return plexi.WitnessKey(fixed_signer(0x51).public_key())


def test_accepts_epochs_in_sequence_and_logs_them(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    checkpoints = []
    for epoch in (1, 2, 3):
        receipt = service.submit(submission(operator, epoch, clock))
        clock.advance(1000)
        message = plexi.verify_statement(
            receipt.statement.message_bytes,
            receipt.statement.signature,
            receipt.statement.key_id,
            [_witness_key()],
        )
        assert (message.namespace, message.epoch) == (NS, epoch)
        assert message.digest == digest(artifact_for(epoch))
        assert receipt.log_index == epoch - 1
        checkpoint = open_checkpoint(receipt.checkpoint, ORIGIN, [_log_verifier()])
        assert checkpoint.size == receipt.tree_size == epoch
        verify_inclusion(
            leaf_hash(receipt.log_entry),
            receipt.log_index,
            receipt.tree_size,
            receipt.inclusion_proof,
            checkpoint.root_hash,
        )
        entry = submission_format.AuditEntry.from_bytes(receipt.log_entry)
        entry.check_statement(receipt.statement)
        entry.check_operator_signature(operator.public_key())
        checkpoints.append(checkpoint)
    with service.store.reading_log() as log:
        proof = log.consistency_proof(1, 3)
    verify_consistency(1, 3, proof, checkpoints[0].root_hash, checkpoints[2].root_hash)


@pytest.mark.parametrize("first", [0, 2, 5])
def test_first_epoch_must_be_one(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, first: int
) -> None:
    with pytest.raises(EpochConflictError, match="next epoch is 1"):
        service.submit(submission(operator, first, clock))


def test_refuses_gap_repeat_and_older_epoch(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    service.submit(submission(operator, 1, clock))
    service.submit(submission(operator, 2, clock))
    with pytest.raises(EpochConflictError):
        service.submit(submission(operator, 4, clock))  # gap
    with pytest.raises(EpochConflictError):
        service.submit(
            submission(operator, 2, clock, artifact=artifact_for("other"))
        )  # re-sign epoch 2
    with pytest.raises(EpochConflictError):
        service.submit(
            submission(operator, 1, clock, artifact=artifact_for("older"))
        )  # older epoch
    last = service.store.last_signed(NS)
    assert last is not None and last.entry.epoch == 2
    assert last.entry.digest == digest(artifact_for(2))
    assert service.store.epoch_count(NS) == 2


def test_refuses_digest_reuse(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    service.submit(submission(operator, 1, clock))
    service.submit(submission(operator, 2, clock))
    with pytest.raises(DigestReusedError):
        service.submit(submission(operator, 3, clock, artifact=artifact_for(1)))


def test_refuses_wrong_operator_key(service: WitnessService, clock: Clock) -> None:
    with pytest.raises(SubmissionSignatureError):
        service.submit(submission(fixed_signer(0x0B), 1, clock))


def test_refuses_swapped_and_tampered_fields(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    good = submission(operator, 1, clock)
    other = submission(operator, 1, clock, artifact=artifact_for("another artifact"))
    cases = [
        # the operator signed a different digest
        (
            submission_format.Submission(
                NS, 1, other.digest, other.artifact, clock(), good.operator_signature
            ),
            SubmissionSignatureError,
        ),
        # the digest is signed, the artifact is not the one it covers
        (
            submission_format.Submission(
                NS, 1, good.digest, b"tampered", clock(), good.operator_signature
            ),
            DigestMismatchError,
        ),
        # the signed epoch differs
        (
            submission_format.Submission(
                NS, 2, good.digest, good.artifact, clock(), good.operator_signature
            ),
            SubmissionSignatureError,
        ),
        # evidence added after signing
        (
            submission_format.Submission(
                NS, 1, good.digest, good.artifact, clock(), good.operator_signature, evidence=b"x"
            ),
            SubmissionSignatureError,
        ),
        (
            submission_format.Submission(
                NS, 1, good.digest, good.artifact, clock(), good.operator_signature[:-1]
            ),
            SubmissionSignatureError,
        ),
        (
            submission_format.Submission(
                NS, 1, good.digest[:-1], good.artifact, clock(), good.operator_signature
            ),
            SizeLimitError,
        ),
        (
            submission_format.Submission(NS, 1, good.digest, b"", clock(), good.operator_signature),
            SizeLimitError,
        ),
    ]
    for bad, error in cases:
        with pytest.raises(error):
            service.submit(bad)
    assert service.store.epoch_count(NS) == 0
    service.submit(good)


def test_refuses_oversized_artifact_and_evidence(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    big = b"x" * (MAX_ARTIFACT_BYTES + 1)
    with pytest.raises(SizeLimitError):
        service.submit(submission(operator, 1, clock, artifact=big))
    huge = b"e" * (submission_format.MAX_EVIDENCE_BYTES + 1)
    with pytest.raises(SizeLimitError):
        service.submit(submission(operator, 1, clock, evidence=huge))
    with pytest.raises(SizeLimitError):
        service.submit(submission(operator, 1, clock, evidence=b""))


def test_refuses_unknown_namespace(service: WitnessService, clock: Clock) -> None:
    op = fixed_signer(0x0A)
    with pytest.raises(UnknownNamespaceError):
        service.submit(submission(op, 1, clock, namespace="other.ns"))


def test_refuses_future_and_expired_submissions(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    art = artifact_for(1)
    future = submission_format.sign_submission(
        operator, NS, 1, art, submitted_at_ms=clock() + submission_format.SUBMISSION_MAX_SKEW_MS + 1
    )
    with pytest.raises(TimestampError, match="future"):
        service.submit(future)
    old = submission_format.sign_submission(
        operator, NS, 1, art, submitted_at_ms=clock() - submission_format.SUBMISSION_MAX_AGE_MS - 1
    )
    with pytest.raises(TimestampError, match="expired"):
        service.submit(old)
    edge = submission_format.sign_submission(
        operator, NS, 1, art, submitted_at_ms=clock() - submission_format.SUBMISSION_MAX_AGE_MS
    )
    service.submit(edge)


def test_refuses_when_witness_clock_goes_backwards(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    service.submit(submission(operator, 1, clock))
    clock.advance(-1)
    with pytest.raises(TimestampError, match="behind"):
        service.submit(submission(operator, 2, clock))


def test_refused_submissions_change_nothing(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    service.submit(submission(operator, 1, clock))
    before = db_dump(db_path)
    bad: list[tuple[submission_format.Submission, type[Exception]]] = [
        (submission(operator, 3, clock), EpochConflictError),
        (submission(operator, 1, clock, artifact=artifact_for("again")), EpochConflictError),
        (submission(operator, 2, clock, artifact=artifact_for(1)), DigestReusedError),
        (submission(fixed_signer(0x0B), 2, clock), SubmissionSignatureError),
    ]
    for sub, error in bad:
        with pytest.raises(error):
            service.submit(sub)
    assert db_dump(db_path) == before


def test_failure_after_log_append_rolls_back(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    """A failing checkpoint signer (after the log append) leaves no trace."""
    svc = make_service(db_path, clock)
    svc.register_namespace(NS, operator.public_key())
    before = db_dump(db_path)

    class BrokenSignerError(Exception):
        pass

    def broken(size: int, root: bytes) -> bytes:
        raise BrokenSignerError

    svc.sign_checkpoint = broken  # type: ignore[method-assign]
    with pytest.raises(BrokenSignerError):
        svc.submit(submission(operator, 1, clock))
    assert db_dump(db_path) == before
    svc.store.close()


def test_rules_hold_after_restart(db_path: Path, operator: SoftwareSigner, clock: Clock) -> None:
    first = make_service(db_path, clock)
    first.register_namespace(NS, operator.public_key())
    first.submit(submission(operator, 1, clock))
    first.submit(submission(operator, 2, clock))
    first.store.close()

    again = make_service(db_path, clock)
    with pytest.raises(EpochConflictError):
        again.submit(submission(operator, 2, clock, artifact=artifact_for("resign")))
    with pytest.raises(EpochConflictError):
        again.submit(submission(operator, 4, clock))
    with pytest.raises(DigestReusedError):
        again.submit(submission(operator, 3, clock, artifact=artifact_for(2)))
    with pytest.raises(NamespaceExistsError):
        again.register_namespace(NS, operator.public_key())
    receipt = again.submit(submission(operator, 3, clock))
    assert receipt.log_index == 2
    assert receipt.tree_size == 3
    again.store.close()


def test_schema_refuses_what_the_core_refuses(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    """Defence in depth: even raw SQL cannot skip an epoch, re-sign or rewrite."""
    service.submit(submission(operator, 1, clock))
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute("SELECT * FROM signed_epochs").fetchone()
        cols = ",".join("?" * len(row))
        gap = (row[0], 3, *row[2:7], 99, *row[8:])
        with pytest.raises(sqlite3.IntegrityError, match="last epoch"):
            conn.execute(f"INSERT INTO signed_epochs VALUES ({cols})", gap)
        same_digest = (row[0], 2, *row[2:7], 98, *row[8:])
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(f"INSERT INTO signed_epochs VALUES ({cols})", same_digest)
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("UPDATE signed_epochs SET digest = zeroblob(32)")
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            conn.execute("DELETE FROM signed_epochs")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM log_entries")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE log_hashes SET hash = zeroblob(32)")
    finally:
        conn.close()


def test_evidence_checker_runs_before_signing(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    seen: list[tuple[bytes, bytes]] = []

    def checker(artifact: bytes, evidence: bytes) -> None:
        seen.append((artifact, evidence))
        if evidence != b"good evidence":
            raise AttestationError("evidence does not attest these keys")

    svc = make_service(db_path, clock)
    svc.evidence_checker = checker
    svc.register_namespace(NS, operator.public_key())
    with pytest.raises(AttestationError, match="requires"):
        svc.submit(submission(operator, 1, clock))
    with pytest.raises(AttestationError, match="attest"):
        svc.submit(submission(operator, 1, clock, evidence=b"bad evidence"))
    receipt = svc.submit(submission(operator, 1, clock, evidence=b"good evidence"))
    entry = submission_format.AuditEntry.from_bytes(receipt.log_entry)
    assert entry.evidence_digest == digest(b"good evidence")
    signed = svc.store.signed_epoch(NS, 1)
    assert signed is not None and signed.evidence == b"good evidence"
    assert seen[-1] == (artifact_for(1, evidence=b"good evidence"), b"good evidence")
    svc.store.close()


def test_namespace_registration_checks(service: WitnessService) -> None:
    with pytest.raises(ValueError):
        service.register_namespace("bad/ns", fixed_signer(1).public_key())
    with pytest.raises(ValueError):
        service.register_namespace("ok.ns", b"\x00" * 31)
    with pytest.raises(NamespaceExistsError):
        service.register_namespace(NS, fixed_signer(1).public_key())


def test_audit_entry_checks(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    receipt = service.submit(submission(operator, 1, clock))
    entry = submission_format.AuditEntry.from_bytes(receipt.log_entry)
    other = plexi.SignedStatement(
        receipt.statement.message_bytes, bytes(64), receipt.statement.key_id
    )
    with pytest.raises(BundleError):
        entry.check_statement(other)
    with pytest.raises(SubmissionSignatureError):
        entry.check_operator_signature(fixed_signer(0x0B).public_key())
    assert submission_format.AuditEntry.from_bytes(entry.to_bytes()) == entry
    with pytest.raises(CodecError):
        submission_format.AuditEntry.from_bytes(receipt.log_entry + b"\x00")
    with pytest.raises(CodecError):
        submission_format.AuditEntry.from_bytes(receipt.log_entry[:-1])


def test_submission_signing_bytes_are_domain_separated(operator: SoftwareSigner) -> None:
    tbs = submission_format.submission_signing_bytes(NS, 1, b"\x11" * 32, b"", 5)
    assert tbs.startswith(submission_format.SUBMISSION_CONTEXT)
    # Never 64 bytes long, so never mistakable for a counter-signed witness signature.
    assert len(tbs) > 64 + len(submission_format.SUBMISSION_CONTEXT)
    with pytest.raises(ValueError):
        submission_format.submission_signing_bytes(NS, 1, b"\x11" * 32, b"\x01" * 5, 5)


@given(st.binary(max_size=400))
def test_audit_entry_decoder_raises_only_codec_errors(data: bytes) -> None:
    try:
        entry = submission_format.AuditEntry.from_bytes(data)
    except CodecError:
        return
    assert entry.to_bytes() == data


def test_service_restart_keeps_witness_keys(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    first = make_service(db_path, clock)
    first.store.close()
    clock.advance(5000)
    again = make_service(db_path, clock)
    assert again.store.witness_keys() == [(fixed_signer(0x51).public_key(), clock.now - 5000)]
    rotated = WitnessService(
        again.store,
        origin=ORIGIN,
        statement_signer=fixed_signer(0x61),
        log_signer=fixed_signer(0x52),
        cosigner_signer=fixed_signer(0x53),
        clock=clock,
    )
    keys = rotated.store.witness_keys()
    assert keys[-1] == (fixed_signer(0x61).public_key(), clock.now)
    again.store.close()


def test_refuses_to_start_on_a_log_that_differs_from_its_checkpoint(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    svc = make_service(db_path, clock)
    svc.register_namespace(NS, operator.public_key())
    svc.submit(submission(operator, 1, clock))
    svc.store.close()
    conn = sqlite3.connect(db_path)
    try:
        # A well-formed extra leaf (entry + its stored hashes) nobody signed a checkpoint for.
        conn.execute("INSERT INTO log_entries (idx, entry) VALUES (1, x'00')")
        conn.execute("INSERT INTO log_hashes (idx, hash) VALUES (1, zeroblob(32))")
        conn.execute("INSERT INTO log_hashes (idx, hash) VALUES (2, zeroblob(32))")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StorageError, match="does not match"):
        make_service(db_path, clock)


def test_refuses_to_start_with_another_log_key(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    make_service(db_path, clock).store.close()
    store = WitnessStore(db_path)
    with pytest.raises(StorageError, match="does not verify"):
        WitnessService(
            store,
            origin=ORIGIN,
            statement_signer=fixed_signer(0x51),
            log_signer=fixed_signer(0x99),
            cosigner_signer=fixed_signer(0x53),
            clock=clock,
        )
    store.close()


def test_two_writers_on_one_database_sign_an_epoch_once(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    """Two services (two SQLite connections, as two processes would have) race for epoch 1."""
    first = make_service(db_path, clock)
    first.register_namespace(NS, operator.public_key())
    second = make_service(db_path, clock)
    results: list[object] = []
    barrier = threading.Barrier(2, timeout=10)

    def race(svc: WitnessService, artifact: bytes) -> None:
        barrier.wait()
        try:
            results.append(svc.submit(submission(operator, 1, clock, artifact=artifact)))
        except EpochConflictError as exc:
            results.append(exc)

    threads = [
        threading.Thread(target=race, args=(first, artifact_for("A"))),
        threading.Thread(target=race, args=(second, artifact_for("B"))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(type(r).__name__ for r in results) == ["EpochConflictError", "Receipt"]
    assert first.store.epoch_count(NS) == 1
    with first.store.reading_log() as log:
        assert log.size == 1
    first.store.close()
    second.store.close()


def test_cosigned_log_state_survives_restart(db_path: Path, clock: Clock) -> None:
    log = MerkleLog(MemoryHashStore())
    signer = Ed25519Signer("example.test/log", fixed_signer(0x71))
    for i in range(3):
        log.append(b"e%d" % i)
    note = Checkpoint("example.test/log", 3, log.root()).sign([signer])
    svc = make_service(db_path, clock)
    svc.add_cosigned_log("example.test/log", [signer.verifier().verifier_key()])
    assert svc.add_checkpoint(format_add_checkpoint(0, [], note))
    svc.store.close()
    again = make_service(db_path, clock)
    with pytest.raises(CheckpointSizeConflictError) as info:
        again.add_checkpoint(format_add_checkpoint(0, [], note))
    assert info.value.current_size == 3
    with pytest.raises(NamespaceExistsError):
        again.add_cosigned_log("example.test/log", [signer.verifier().verifier_key()])
    again.store.close()


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"extra": 1},
        {"name": ""},
        {"keys": {}},
        {"keys": {"statement": {"backend": "nope"}, "log": {}, "cosigner": {}}},
    ],
)
def test_config_file_is_checked(tmp_path: Path, change: dict[str, object]) -> None:
    good = {
        "version": 1,
        "name": "t",
        "origin": "bkv-witness/t",
        "db": "w.db",
        "keys": {
            role: {"backend": "software", "seed_file": f"{role}.seed"}
            for role in ("statement", "log", "cosigner")
        },
    }
    path = tmp_path / "witness.json"
    path.write_text(json.dumps(good))
    assert WitnessConfig.load(path).origin == "bkv-witness/t"
    path.write_text(json.dumps(good | change))
    with pytest.raises(ConfigError):
        WitnessConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        WitnessConfig.load(path)


def test_served_epochs_come_from_the_logged_entries(
    db_path: Path, operator: SoftwareSigner, clock: Clock
) -> None:
    """What the store returns for an epoch is its logged leaf; a leaf that is not is refused."""
    svc = make_service(db_path, clock)
    svc.register_namespace(NS, operator.public_key())
    receipts = [svc.submit(submission(operator, epoch, clock)) for epoch in (1, 2)]
    signed = svc.store.signed_epoch(NS, 2)
    assert signed is not None and signed.entry.to_bytes() == receipts[1].log_entry
    svc.store.close()
    conn = sqlite3.connect(db_path)
    try:
        # Below the store (which never updates the log), rewrite the leaves of the log.
        conn.execute("DROP TRIGGER log_entries_no_update")
        conn.execute("UPDATE log_entries SET entry = ? WHERE idx = 0", (receipts[1].log_entry,))
        conn.execute("UPDATE log_entries SET entry = x'00' WHERE idx = 1")
        conn.commit()
    finally:
        conn.close()
    with WitnessStore(db_path) as store:
        with pytest.raises(StorageError, match="does not record epoch 1"):
            store.signed_epoch(NS, 1)
        with pytest.raises(StorageError, match="not an audit entry"):
            store.signed_epoch(NS, 2)
