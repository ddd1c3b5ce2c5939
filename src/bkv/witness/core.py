"""The witness state machine (sans-IO): what the witness signs, and when it refuses.

A witness serves operators who registered a namespace (ours: ``bkv.fleet_keys.v1``)
together with the operator's Ed25519 public key. An operator *submission* carries
the namespace, the epoch, the fleet-key artifact and its SHA-256 digest, optional
deployment evidence and a time of submission, all authenticated by the operator's
Ed25519 signature over :func:`submission_signing_bytes`.

The witness signs the Plexi ``SignatureMessage`` (:mod:`bkv.protocol.plexi`) for a
submission only if every rule holds, checked in this order so the error names the
first thing that failed:

1. the namespace is registered (:class:`UnknownNamespaceError`);
2. the operator's signature verifies (:class:`SubmissionSignatureError`);
3. ``submitted_at_ms`` lies within [now - 5 min, now + 1 min] (:class:`TimestampError`):
   a captured submission cannot be replayed later against a rolled-back witness;
4. ``digest == SHA-256(artifact)`` (:class:`DigestMismatchError`); the artifact
   parses with the clients' strict parser (:mod:`bkv.protocol.artifact`,
   :class:`ArtifactError`); its ``evidence_digest`` is SHA-256 of the submitted
   evidence, or null when none is submitted (:class:`DigestMismatchError`); and
   evidence, when a checker is configured, verifies against the artifact
   (:class:`AttestationError`);
5. ``epoch == last signed epoch + 1``; the first epoch is 1 (:class:`EpochConflictError`);
6. the digest was never signed in this namespace (:class:`DigestReusedError`);
7. the witness clock is not behind the last statement of the namespace
   (:class:`TimestampError`): statement timestamps never go backwards.

On accept it signs the statement with the witness key, appends an
:class:`AuditEntry` to the witness's RFC 9162 Merkle log, signs a fresh checkpoint
and returns a :class:`Receipt`. Storage is behind :class:`WitnessState`; the SQLite
adapter (:mod:`bkv.witness.store`) runs a whole submission in one transaction, so
a refused or failed submission changes nothing, and it enforces rules 5 and 6 a
second time with UNIQUE constraints so that no code path (nor a restart) can sign
an epoch or a digest twice.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bkv.errors import (
    AttestationError,
    CountersignatureExistsError,
    DigestMismatchError,
    DigestReusedError,
    EpochConflictError,
    NamespaceExistsError,
    SizeLimitError,
    TimestampError,
    UnknownEpochError,
    UnknownNamespaceError,
)
from bkv.protocol import artifact as artifact_format
from bkv.protocol import plexi
from bkv.protocol.countersign import verify_countersignature
from bkv.protocol.submission import (
    MAX_EVIDENCE_BYTES,
    SHA256_SIZE,
    SUBMISSION_MAX_AGE_MS,
    SUBMISSION_MAX_SKEW_MS,
    AuditEntry,
    Submission,
    check_namespace_name,
    check_operator_key,
    check_uint64,
    verify_submission_signature,
)
from bkv.tlog.log import MerkleLog

__all__ = [
    "CheckpointSigner",
    "CountersignatureState",
    "EvidenceChecker",
    "NamespaceRecord",
    "Receipt",
    "SignedEpoch",
    "WitnessState",
    "process_submission",
    "record_countersignature",
    "register_namespace",
]

# --- state -----------------------------------------------------------------------


@dataclass(frozen=True)
class NamespaceRecord:
    """A registered namespace and the operator key allowed to submit to it."""

    name: str
    operator_public_key: bytes
    created_ms: int


@dataclass(frozen=True)
class SignedEpoch:
    """Everything the witness keeps about one signed epoch.

    ``entry`` is the leaf logged at ``log_index`` (statement fields, witness signature
    and key id, operator submission signature); the artifact and evidence are what the
    operator submitted.
    """

    entry: AuditEntry
    log_index: int
    artifact: bytes = field(repr=False)
    evidence: bytes | None = field(repr=False)

    @property
    def statement(self) -> plexi.SignedStatement:
        """The witness's statement of this epoch, as it signed it."""
        return plexi.SignedStatement(
            message_bytes=self.entry.message_bytes(),
            signature=self.entry.witness_signature,
            key_id=self.entry.key_id,
        )


class WitnessState(Protocol):
    """One transaction's view of the witness's storage (the adapter commits or rolls back)."""

    def namespace(self, name: str) -> NamespaceRecord | None:
        """The registered namespace, or None."""
        ...

    def add_namespace(self, record: NamespaceRecord) -> None:
        """Register a namespace (raises NamespaceExistsError if it exists)."""
        ...

    def last_signed(self, name: str) -> SignedEpoch | None:
        """The highest signed epoch of the namespace, or None."""
        ...

    def digest_signed(self, name: str, digest: bytes) -> bool:
        """Whether ``digest`` was ever signed in the namespace."""
        ...

    def record_signed(self, signed: SignedEpoch) -> None:
        """Persist a signed epoch (must refuse a duplicate epoch or digest)."""
        ...

    def record_checkpoint(self, size: int, note: bytes) -> None:
        """Persist the newest signed checkpoint of the audit log."""
        ...

    @property
    def audit_log(self) -> MerkleLog:
        """The witness's Merkle log, within this transaction."""
        ...


class CountersignatureState(Protocol):
    """One transaction's view of the stored operator counter-signatures."""

    def namespace(self, name: str) -> NamespaceRecord | None:
        """The registered namespace, or None."""
        ...

    def signed_epoch(self, name: str, epoch: int) -> SignedEpoch | None:
        """The signed epoch, or None."""
        ...

    def countersignature(self, name: str, epoch: int) -> bytes | None:
        """The stored counter-signature of the epoch, or None."""
        ...

    def add_countersignature(self, name: str, epoch: int, counter_signature: bytes) -> None:
        """Persist the counter-signature (must refuse a second one for the epoch)."""
        ...


#: (tree size, root hash) -> signed C2SP checkpoint note bytes.
CheckpointSigner = Callable[[int, bytes], bytes]
#: (artifact, evidence) -> None, raising AttestationError if the evidence does not
#: attest exactly the artifact's fleet keys.
EvidenceChecker = Callable[[bytes, bytes], None]


@dataclass(frozen=True)
class Receipt:
    """What the witness returns for an accepted submission."""

    statement: plexi.SignedStatement
    log_index: int
    log_entry: bytes
    tree_size: int
    inclusion_proof: Sequence[bytes]
    checkpoint: bytes


def register_namespace(
    state: WitnessState, name: str, operator_public_key: bytes, now_ms: int
) -> NamespaceRecord:
    """Register ``name`` for the operator holding ``operator_public_key``."""
    check_namespace_name(name)
    check_operator_key(operator_public_key)
    check_uint64("now_ms", now_ms)
    if state.namespace(name) is not None:
        raise NamespaceExistsError(f"namespace {name} is already registered")
    record = NamespaceRecord(name=name, operator_public_key=operator_public_key, created_ms=now_ms)
    state.add_namespace(record)
    return record


def _check_sizes(submission: Submission) -> None:
    max_artifact = artifact_format.MAX_ARTIFACT_BYTES
    if not 0 < len(submission.artifact) <= max_artifact:
        raise SizeLimitError(f"artifact must be 1..{max_artifact} bytes")
    if submission.evidence is not None and not 0 < len(submission.evidence) <= MAX_EVIDENCE_BYTES:
        raise SizeLimitError(f"evidence must be 1..{MAX_EVIDENCE_BYTES} bytes")
    if len(submission.digest) != SHA256_SIZE:
        raise SizeLimitError(f"digest must be {SHA256_SIZE} bytes (SHA-256)")


def _check_submitted_at(submitted_at_ms: int, now_ms: int) -> None:
    if submitted_at_ms > now_ms + SUBMISSION_MAX_SKEW_MS:
        raise TimestampError("submission timestamp is in the witness's future")
    if submitted_at_ms < now_ms - SUBMISSION_MAX_AGE_MS:
        raise TimestampError("submission timestamp is too old (expired)")


def _check_artifact(submission: Submission) -> None:
    # The witness vouches for a digest that clients will act on: it signs only bytes
    # that the clients' own strict parser accepts (canonical JSON, every field, roles,
    # quorum; ArtifactError), so no statement names a digest of arbitrary bytes.
    artifact = artifact_format.parse_artifact(submission.artifact)
    # The evidence the witness receives (and logs the digest of) must be the evidence
    # the artifact names; no evidence <=> the artifact names none.
    named = artifact.evidence_digest or b""
    if not hmac.compare_digest(named, submission.evidence_digest):
        raise DigestMismatchError(
            "the artifact's evidence_digest is not the SHA-256 of the submitted evidence"
            if submission.evidence is not None
            else "the artifact names deployment evidence but none was submitted"
        )


def _check_evidence(submission: Submission, evidence_checker: EvidenceChecker | None) -> None:
    if evidence_checker is None:
        return
    if submission.evidence is None:
        raise AttestationError("this witness requires deployment evidence with each submission")
    evidence_checker(submission.artifact, submission.evidence)


def process_submission(
    state: WitnessState,
    submission: Submission,
    *,
    statement_signer: plexi.Ed25519Signer,
    sign_checkpoint: CheckpointSigner,
    now_ms: int,
    evidence_checker: EvidenceChecker | None = None,
) -> Receipt:
    """Check ``submission`` against the rules (module docstring) and witness it."""
    check_uint64("now_ms", now_ms)
    record = state.namespace(submission.namespace)
    if record is None:
        raise UnknownNamespaceError(f"namespace {submission.namespace} is not registered")
    _check_sizes(submission)
    verify_submission_signature(submission, record.operator_public_key)
    _check_submitted_at(submission.submitted_at_ms, now_ms)
    if not hmac.compare_digest(hashlib.sha256(submission.artifact).digest(), submission.digest):
        raise DigestMismatchError("digest is not the SHA-256 of the artifact")
    _check_artifact(submission)
    _check_evidence(submission, evidence_checker)

    last = state.last_signed(submission.namespace)
    expected = 1 if last is None else last.entry.epoch + 1
    if submission.epoch != expected:
        raise EpochConflictError(
            f"namespace {submission.namespace}: epoch {submission.epoch} refused, "
            f"the next epoch is {expected}"
        )
    if state.digest_signed(submission.namespace, submission.digest):
        raise DigestReusedError(
            f"namespace {submission.namespace}: digest {submission.digest.hex()} was already signed"
        )
    if last is not None and now_ms < last.entry.timestamp_ms:
        raise TimestampError("witness clock is behind its last statement in this namespace")

    statement = plexi.sign_statement(
        statement_signer, submission.namespace, now_ms, submission.epoch, submission.digest
    )
    entry = AuditEntry(
        namespace=submission.namespace,
        epoch=submission.epoch,
        timestamp_ms=now_ms,
        digest=submission.digest,
        key_id=statement.key_id,
        witness_signature=statement.signature,
        evidence_digest=submission.evidence_digest,
        submitted_at_ms=submission.submitted_at_ms,
        operator_signature=submission.operator_signature,
    )
    entry_bytes = entry.to_bytes()
    log = state.audit_log
    index = log.append(entry_bytes)
    size = log.size
    checkpoint = sign_checkpoint(size, log.root(size))
    state.record_checkpoint(size, checkpoint)
    state.record_signed(
        SignedEpoch(
            entry=entry, log_index=index, artifact=submission.artifact, evidence=submission.evidence
        )
    )
    return Receipt(
        statement=statement,
        log_index=index,
        log_entry=entry_bytes,
        tree_size=size,
        inclusion_proof=tuple(log.inclusion_proof(index, size)),
        checkpoint=checkpoint,
    )


# --- operator counter-signatures --------------------------------------------------


def record_countersignature(
    state: CountersignatureState, namespace: str, epoch: int, counter_signature: bytes
) -> bool:
    """Store the operator's counter-signature of a signed epoch; True if newly stored.

    The witness keeps and serves the counter-signature so that auditors (``bkv audit
    log``) can check that the operator endorsed every statement without asking the
    operator for its bundles. Rules, first failure named:

    1. the namespace is registered (:class:`UnknownNamespaceError`) and the epoch was
       signed (:class:`UnknownEpochError`);
    2. it verifies under the namespace's operator key over the exact bytes of
       :func:`bkv.protocol.countersign.countersignature_message` of the witness
       signature of that epoch (:class:`CounterSignatureError`);
    3. it is immutable once stored: the same bytes again are accepted (a retried
       request), other bytes are refused (:class:`CountersignatureExistsError`).
       Ed25519 signing is deterministic, so an honest operator never has two.
    """
    record = state.namespace(namespace)
    if record is None:
        raise UnknownNamespaceError(f"namespace {namespace} is not registered")
    check_uint64("epoch", epoch)
    signed = state.signed_epoch(namespace, epoch)
    if signed is None:
        raise UnknownEpochError(f"epoch {epoch} of {namespace} was never signed")
    verify_countersignature(
        record.operator_public_key, signed.entry.witness_signature, counter_signature
    )
    existing = state.countersignature(namespace, epoch)
    if existing is not None:
        if hmac.compare_digest(existing, counter_signature):
            return False
        raise CountersignatureExistsError(
            f"epoch {epoch} of {namespace} already has another counter-signature"
        )
    state.add_countersignature(namespace, epoch, counter_signature)
    return True
