"""The witness state machine (sans-IO): what the witness signs, and when it refuses.

A witness serves operators who registered a namespace (ours: ``bkv.fleet_keys.v1``)
together with the operator's Ed25519 public key. An operator *submission* carries
the namespace, the epoch, the fleet-key artifact and its SHA-256 digest, optional
deployment evidence and a time of submission, all authenticated by the operator's
Ed25519 signature over :func:`submission_signing_bytes`.

The witness signs the Plexi ``SignatureMessage`` (:mod:`bkv.witness.plexi`) for a
submission only if every rule holds, checked in this order so the error names the
first thing that failed:

1. the namespace is registered (:class:`UnknownNamespaceError`);
2. the operator's signature verifies (:class:`SubmissionSignatureError`);
3. ``submitted_at_ms`` lies within [now - 5 min, now + 1 min] (:class:`TimestampError`):
   a captured submission cannot be replayed later against a rolled-back witness;
4. ``digest == SHA-256(artifact)`` (:class:`DigestMismatchError`); the artifact
   parses with the clients' strict parser (:mod:`bkv.witness.artifact`,
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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv import wire
from bkv.errors import (
    AttestationError,
    BundleError,
    CountersignatureExistsError,
    DigestMismatchError,
    DigestReusedError,
    EpochConflictError,
    NamespaceExistsError,
    SizeLimitError,
    SubmissionSignatureError,
    TimestampError,
    UnknownEpochError,
    UnknownNamespaceError,
)
from bkv.tlog.log import MerkleLog
from bkv.wire import U8, U64, Bytes, Fixed, Text
from bkv.witness import artifact as artifact_format
from bkv.witness import plexi
from bkv.witness.countersign import verify_countersignature
from bkv.witness.keycheck import check_ed25519_public_key

__all__ = [
    "AUDIT_ENTRY_TAG",
    "FLEET_KEYS_NAMESPACE",
    "MAX_ARTIFACT_BYTES",
    "MAX_EVIDENCE_BYTES",
    "SUBMISSION_CONTEXT",
    "SUBMISSION_MAX_AGE_MS",
    "SUBMISSION_MAX_SKEW_MS",
    "AuditEntry",
    "CheckpointSigner",
    "CountersignatureState",
    "EvidenceChecker",
    "NamespaceRecord",
    "Receipt",
    "SignedEpoch",
    "Submission",
    "WitnessState",
    "check_namespace_name",
    "process_submission",
    "record_countersignature",
    "register_namespace",
    "sign_submission",
    "submission_signing_bytes",
    "verify_submission_signature",
]

#: The namespace of bkv's fleet-key artifacts.
FLEET_KEYS_NAMESPACE = "bkv.fleet_keys.v1"

SHA256_SIZE = 32
MAX_NAMESPACE_BYTES = plexi.MAX_NAMESPACE_BYTES
ED25519_SIGNATURE_SIZE = plexi.ED25519_SIGNATURE_SIZE
#: The one artifact size limit (defined with the artifact format, re-exported here).
MAX_ARTIFACT_BYTES = artifact_format.MAX_ARTIFACT_BYTES
#: Deployment evidence: attestation chains of every HSM of a fleet.
MAX_EVIDENCE_BYTES = 1024 * 1024
#: Accepted age of a submission (its ``submitted_at_ms``) at the witness.
SUBMISSION_MAX_AGE_MS = 5 * 60 * 1000
#: Accepted clock skew: how far in the witness's future a submission may be.
SUBMISSION_MAX_SKEW_MS = 60 * 1000

#: Signed-message prefix of operator submissions. NUL-terminated ASCII, like the
#: operator's counter-signature context (bkv.witness.countersign), so that neither
#: context is a prefix of the other and no signature of one use verifies as the other.
SUBMISSION_CONTEXT = b"bkv witness submission v1\x00"

#: Namespaces appear in URL paths (/namespaces/{ns}/...): a conservative alphabet.
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")

_UINT64_MAX = (1 << 64) - 1

#: wire tags (0x05xx: witness, bkv.wire docstring).
AUDIT_ENTRY_TAG = 0x0501
_SUBMISSION_TBS_TAG = 0x0502


def check_namespace_name(name: str) -> str:
    """Refuse namespace names outside ``[A-Za-z0-9][A-Za-z0-9._-]{0,254}`` (ValueError)."""
    if not isinstance(name, str) or _NAMESPACE_RE.fullmatch(name) is None:
        raise ValueError("namespace must match [A-Za-z0-9][A-Za-z0-9._-]{0,254}")
    return name


def _check_public_key(public_key: bytes) -> Ed25519PublicKey:
    # Operator keys: registered, and used to verify submissions; a small-order key
    # would accept one forged signature for every submission (bkv.witness.keycheck).
    check_ed25519_public_key(public_key, "operator public key")
    return Ed25519PublicKey.from_public_bytes(public_key)


def _check_uint64(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**64)")


# --- operator submissions ---------------------------------------------------------


def _check_evidence_digest(evidence_digest: bytes) -> None:
    if len(evidence_digest) not in (0, SHA256_SIZE):
        raise ValueError("evidence digest is empty (no evidence) or 32 bytes")


@wire.message(tag=_SUBMISSION_TBS_TAG, version=1)
class _SubmissionTBS:
    """What the operator signs (after :data:`SUBMISSION_CONTEXT`)."""

    namespace: Annotated[str, Text(max_len=MAX_NAMESPACE_BYTES, min_len=1)]
    epoch: U64
    digest: Annotated[bytes, Fixed(SHA256_SIZE)]
    evidence_digest: Annotated[bytes, Bytes(max_len=SHA256_SIZE)]
    submitted_at_ms: U64

    def __post_init__(self) -> None:
        _check_evidence_digest(self.evidence_digest)


def submission_signing_bytes(
    namespace: str,
    epoch: int,
    digest: bytes,
    evidence_digest: bytes,
    submitted_at_ms: int,
) -> bytes:
    """The exact bytes an operator signs to submit (namespace, epoch, digest, evidence).

    ``evidence_digest`` is SHA-256 of the deployment evidence, or ``b""`` if none.
    The artifact itself is covered through ``digest``, which the witness checks is
    its SHA-256.
    """
    tbs = _SubmissionTBS(
        namespace=check_namespace_name(namespace),
        epoch=epoch,
        digest=digest,
        evidence_digest=evidence_digest,
        submitted_at_ms=submitted_at_ms,
    )
    return SUBMISSION_CONTEXT + wire.encode(tbs)


def _evidence_digest(evidence: bytes | None) -> bytes:
    return b"" if evidence is None else hashlib.sha256(evidence).digest()


@dataclass(frozen=True)
class Submission:
    """An operator's request to witness one epoch of a namespace."""

    namespace: str
    epoch: int
    digest: bytes
    artifact: bytes = field(repr=False)
    submitted_at_ms: int
    operator_signature: bytes
    evidence: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_namespace_name(self.namespace)
        _check_uint64("epoch", self.epoch)
        _check_uint64("submitted_at_ms", self.submitted_at_ms)
        for name, value in (
            ("digest", self.digest),
            ("artifact", self.artifact),
            ("operator_signature", self.operator_signature),
        ):
            if not isinstance(value, bytes):
                raise TypeError(f"{name} must be bytes")
        if self.evidence is not None and not isinstance(self.evidence, bytes):
            raise TypeError("evidence must be bytes or None")

    @property
    def evidence_digest(self) -> bytes:
        return _evidence_digest(self.evidence)

    def signing_bytes(self) -> bytes:
        return submission_signing_bytes(
            self.namespace, self.epoch, self.digest, self.evidence_digest, self.submitted_at_ms
        )


def sign_submission(
    signer: plexi.Ed25519Signer,
    namespace: str,
    epoch: int,
    artifact: bytes,
    *,
    submitted_at_ms: int,
    evidence: bytes | None = None,
) -> Submission:
    """Operator side: build and sign a submission (the digest is computed here)."""
    digest = hashlib.sha256(artifact).digest()
    tbs = submission_signing_bytes(
        namespace, epoch, digest, _evidence_digest(evidence), submitted_at_ms
    )
    return Submission(
        namespace=namespace,
        epoch=epoch,
        digest=digest,
        artifact=artifact,
        submitted_at_ms=submitted_at_ms,
        operator_signature=signer.sign(tbs),
        evidence=evidence,
    )


def verify_submission_signature(submission: Submission, operator_public_key: bytes) -> None:
    """Raise :class:`SubmissionSignatureError` unless the operator signed this submission."""
    key = _check_public_key(operator_public_key)
    if len(submission.operator_signature) != plexi.ED25519_SIGNATURE_SIZE:
        raise SubmissionSignatureError("operator submission signature is not 64 bytes")
    try:
        tbs = submission.signing_bytes()
    except ValueError:
        # Fields that cannot be encoded (e.g. a digest of the wrong size) were never signed.
        raise SubmissionSignatureError("submission fields cannot have been signed") from None
    try:
        key.verify(submission.operator_signature, tbs)
    except InvalidSignature:
        raise SubmissionSignatureError(
            f"operator signature over the submission for {submission.namespace} "
            f"epoch {submission.epoch} does not verify"
        ) from None


# --- the audit log entry ------------------------------------------------------------


@wire.message(tag=AUDIT_ENTRY_TAG, version=1)
class AuditEntry:
    """One leaf of the witness's Merkle log: a statement it signed, and why.

    It holds every field of the Plexi statement (the ``SignatureMessage`` bytes are
    re-derived with :meth:`message_bytes`), the witness signature and key id, and the
    operator's authorisation: its submission signature over
    (namespace, epoch, digest, evidence digest, submitted_at). Anyone holding the
    operator's public key can re-check that the witness only signed what the
    operator asked for.
    """

    namespace: Annotated[str, Text(max_len=MAX_NAMESPACE_BYTES, min_len=1)]
    epoch: U64
    timestamp_ms: U64
    digest: Annotated[bytes, Fixed(SHA256_SIZE)]
    key_id: U8
    witness_signature: Annotated[bytes, Fixed(ED25519_SIGNATURE_SIZE)]
    evidence_digest: Annotated[bytes, Bytes(max_len=SHA256_SIZE)]
    submitted_at_ms: U64
    operator_signature: Annotated[bytes, Fixed(ED25519_SIGNATURE_SIZE)]

    def __post_init__(self) -> None:
        check_namespace_name(self.namespace)
        if self.epoch == 0:
            raise ValueError("epoch 0 is never signed")
        _check_evidence_digest(self.evidence_digest)

    def to_bytes(self) -> bytes:
        return wire.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditEntry:
        """Strict decode; raises :class:`bkv.errors.CodecError` subclasses."""
        return wire.decode(cls, data)

    def message_bytes(self) -> bytes:
        """The exact Plexi ``SignatureMessage`` bytes this entry's signature covers."""
        return plexi.encode_signature_message(
            self.namespace, self.timestamp_ms, self.epoch, self.digest
        )

    def check_statement(self, statement: plexi.SignedStatement) -> None:
        """Raise :class:`BundleError` unless this entry logs exactly ``statement``."""
        if not (
            hmac.compare_digest(self.message_bytes(), statement.message_bytes)
            and hmac.compare_digest(self.witness_signature, statement.signature)
            and self.key_id == statement.key_id
        ):
            raise BundleError("the log entry does not record this witness statement")

    def check_operator_signature(self, operator_public_key: bytes) -> None:
        """Re-check the operator's submission signature recorded in this entry."""
        tbs = submission_signing_bytes(
            self.namespace, self.epoch, self.digest, self.evidence_digest, self.submitted_at_ms
        )
        try:
            _check_public_key(operator_public_key).verify(self.operator_signature, tbs)
        except InvalidSignature:
            raise SubmissionSignatureError(
                f"logged operator signature for epoch {self.epoch} does not verify"
            ) from None


# --- state -----------------------------------------------------------------------


@dataclass(frozen=True)
class NamespaceRecord:
    """A registered namespace and the operator key allowed to submit to it."""

    name: str
    operator_public_key: bytes
    created_ms: int


@dataclass(frozen=True)
class SignedEpoch:
    """Everything the witness keeps about one signed epoch."""

    namespace: str
    epoch: int
    timestamp_ms: int
    digest: bytes
    message_bytes: bytes
    signature: bytes
    key_id: int
    log_index: int
    artifact: bytes = field(repr=False)
    evidence: bytes | None = field(repr=False)
    submitted_at_ms: int
    operator_signature: bytes


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
    _check_public_key(operator_public_key)
    _check_uint64("now_ms", now_ms)
    if state.namespace(name) is not None:
        raise NamespaceExistsError(f"namespace {name} is already registered")
    record = NamespaceRecord(name=name, operator_public_key=operator_public_key, created_ms=now_ms)
    state.add_namespace(record)
    return record


def _check_sizes(submission: Submission) -> None:
    if not 0 < len(submission.artifact) <= MAX_ARTIFACT_BYTES:
        raise SizeLimitError(f"artifact must be 1..{MAX_ARTIFACT_BYTES} bytes")
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
    _check_uint64("now_ms", now_ms)
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
    expected = 1 if last is None else last.epoch + 1
    if submission.epoch != expected:
        raise EpochConflictError(
            f"namespace {submission.namespace}: epoch {submission.epoch} refused, "
            f"the next epoch is {expected}"
        )
    if state.digest_signed(submission.namespace, submission.digest):
        raise DigestReusedError(
            f"namespace {submission.namespace}: digest {submission.digest.hex()} was already signed"
        )
    if last is not None and now_ms < last.timestamp_ms:
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
            namespace=submission.namespace,
            epoch=submission.epoch,
            timestamp_ms=now_ms,
            digest=submission.digest,
            message_bytes=statement.message_bytes,
            signature=statement.signature,
            key_id=statement.key_id,
            log_index=index,
            artifact=submission.artifact,
            evidence=submission.evidence,
            submitted_at_ms=submission.submitted_at_ms,
            operator_signature=submission.operator_signature,
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
       :func:`bkv.witness.countersign.countersignature_message` of the witness
       signature of that epoch (:class:`CounterSignatureError`);
    3. it is immutable once stored: the same bytes again are accepted (a retried
       request), other bytes are refused (:class:`CountersignatureExistsError`).
       Ed25519 signing is deterministic, so an honest operator never has two.
    """
    record = state.namespace(namespace)
    if record is None:
        raise UnknownNamespaceError(f"namespace {namespace} is not registered")
    _check_uint64("epoch", epoch)
    signed = state.signed_epoch(namespace, epoch)
    if signed is None:
        raise UnknownEpochError(f"epoch {epoch} of {namespace} was never signed")
    verify_countersignature(record.operator_public_key, signed.signature, counter_signature)
    existing = state.countersignature(namespace, epoch)
    if existing is not None:
        if hmac.compare_digest(existing, counter_signature):
            return False
        raise CountersignatureExistsError(
            f"epoch {epoch} of {namespace} already has another counter-signature"
        )
    state.add_countersignature(namespace, epoch, counter_signature)
    return True
