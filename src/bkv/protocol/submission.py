"""Operator submissions and the witness's audit-log entry: formats the roles share.

An operator *submission* asks the witness to sign one epoch of a namespace: the
namespace, the epoch, the fleet-key artifact and its SHA-256 digest, optional
deployment evidence and a time of submission, authenticated by the operator's
Ed25519 signature over :func:`submission_signing_bytes`. The witness checks it
(:mod:`bkv.witness.core`); every accepted submission becomes an
:class:`AuditEntry`, one leaf of the witness's RFC 9162 Merkle log, which clients
and auditors re-check (docs/protocol.md, "Witness submissions and the audit log").
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv import wire
from bkv.errors import BundleError, SubmissionSignatureError
from bkv.protocol import artifact as artifact_format
from bkv.protocol import plexi
from bkv.protocol.keycheck import check_ed25519_public_key
from bkv.wire import U8, U64, Bytes, Fixed, Text

__all__ = [
    "AUDIT_ENTRY_TAG",
    "FLEET_KEYS_NAMESPACE",
    "MAX_ARTIFACT_BYTES",
    "MAX_EVIDENCE_BYTES",
    "MAX_NAMESPACE_BYTES",
    "SUBMISSION_CONTEXT",
    "SUBMISSION_MAX_AGE_MS",
    "SUBMISSION_MAX_SKEW_MS",
    "AuditEntry",
    "Submission",
    "check_namespace_name",
    "check_operator_key",
    "check_uint64",
    "namespace_path_segment",
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
#: operator's counter-signature context (bkv.protocol.countersign), so that neither
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


def namespace_path_segment(name: str) -> str:
    """The namespace as one URL path segment (``/namespaces/{ns}/...``); ValueError if invalid.

    A valid name holds only RFC 3986 section 2.3 unreserved characters and starts
    with a letter or digit (so it is never a "." or ".." dot-segment, section 3.3):
    it is its own percent-encoding, with nothing to escape.
    """
    return check_namespace_name(name)


def check_operator_key(public_key: bytes) -> Ed25519PublicKey:
    # Operator keys: registered, and used to verify submissions; a small-order key
    # would accept one forged signature for every submission (bkv.protocol.keycheck).
    check_ed25519_public_key(public_key, "operator public key")
    return Ed25519PublicKey.from_public_bytes(public_key)


def check_uint64(name: str, value: int) -> None:
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
        check_uint64("epoch", self.epoch)
        check_uint64("submitted_at_ms", self.submitted_at_ms)
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
    key = check_operator_key(operator_public_key)
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
            check_operator_key(operator_public_key).verify(self.operator_signature, tbs)
        except InvalidSignature:
            raise SubmissionSignatureError(
                f"logged operator signature for epoch {self.epoch} does not verify"
            ) from None
