"""Over-the-air validation of a fleet's keys (sans-IO).

:func:`validate_bundle` is the only way a client turns bundle bytes into
:class:`~bkv.client.trust.FleetKeys`. Like python-tuf's ngclient, the trust
roots are explicit arguments (:class:`~bkv.client.trust.TrustRoots`), the
state that must survive restarts (:class:`~bkv.client.state.ClientState`) is
passed in and a new value is returned for the caller to persist, and the
clock is an argument (``now_ms``). Nothing here does I/O.

The checks, in order (docs/threat-model.md §9, docs/properties.md §5; each raises its own
typed error from :mod:`bkv.errors`, and nothing is returned unless all pass):

 1. decode the bundle and the Plexi ``SignatureMessage``: one canonical
    encoding, size limits (``CodecError`` subclasses); the bundle's namespace
    and epoch equal the signed ones (``BundleError``);
 2. ``SHA-256(artifact bytes) == statement digest`` (``DigestMismatchError``);
 3. statement namespace == pinned namespace (``NamespaceMismatchError``);
 4. the witness key id names a pinned witness key valid at the statement's
    timestamp, ``not_before_ms <= timestamp`` (``UnknownKeyError``);
 5. the witness signature verifies over the exact ``SignatureMessage`` bytes
    (``WitnessSignatureError``);
 6. a pinned operator key counter-signed the witness signature
    (``CounterSignatureError``; format in :mod:`bkv.protocol.countersign`);
 7. only now, with the bytes authenticated by two independent parties, parse
    the artifact strictly (``ArtifactError``) -- verify before parsing, as TUF
    does, so unauthenticated JSON never reaches the schema code;
 8. epoch not older than the newest accepted; the same epoch only with the same
    digest (``EpochRollbackError``);
 9. statement timestamp not beyond ``now + max_clock_skew``; the artifact's
    validity window contains ``now`` (with the skew allowed on ``not_before``)
    and the statement was made inside it, ``not_before - skew <= timestamp <=
    not_after`` (``TimestampError``);
10. the checkpoint is a C2SP signed note by the pinned log key for the pinned
    origin (``NoteError`` / ``CheckpointError``), with at least k of the n
    pinned cosigners when a policy is set (``CosignerPolicyError``);
11. the log entry records exactly this statement (``InclusionProofError``) and
    names the same evidence digest as the artifact (``BundleError``); the
    operator's submission signature it records verifies under a pinned operator
    key (``SubmissionSignatureError``: a rogue statement needs *two* operator
    signatures, the submission and the counter-signature);
    ``leaf_hash(entry)`` is leaf ``log_index`` of the checkpoint's tree
    (RFC 9162 §2.1.3.2) (``InclusionProofError``);
12. the checkpoint is consistent with the last checkpoint this client saw
    (RFC 9162 §2.1.4.2): equal sizes need equal roots, otherwise the bundle's
    consistency proof must start from the client's size
    (``ConsistencyProofError``).

Then the fleet keys are returned with the new state: the newest (epoch,
digest) and the larger of the two checkpoints.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from bkv.client.state import ClientState
from bkv.client.trust import FleetKeys, TrustRoots, check_validity_window, verify_with_any_key
from bkv.errors import (
    BundleError,
    CodecError,
    ConsistencyProofError,
    CounterSignatureError,
    DigestMismatchError,
    EpochRollbackError,
    InclusionProofError,
    NamespaceMismatchError,
    SubmissionSignatureError,
    TimestampError,
)
from bkv.protocol import plexi
from bkv.protocol.artifact import FleetKeyArtifact, parse_artifact
from bkv.protocol.bundle import ValidationBundle, decode_bundle
from bkv.protocol.countersign import verify_countersignature
from bkv.protocol.submission import AuditEntry
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint
from bkv.tlog.merkle import leaf_hash, verify_consistency, verify_inclusion


@dataclass(frozen=True)
class _Authenticated:
    """What steps 1-6 established: the decoded bundle and its witnessed statement."""

    bundle: ValidationBundle
    statement: plexi.SignatureMessage


def validate_bundle(
    bundle_bytes: bytes, roots: TrustRoots, state: ClientState, now_ms: int
) -> tuple[FleetKeys, ClientState]:
    """Validate a bundle against pinned roots and the client's state; see the module doc.

    Returns the accepted fleet keys and the state to persist. Raises a typed error
    naming the first check that failed; ``state`` is never modified.
    """
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError("now_ms must be a non-negative int")
    authenticated = _authenticate(bundle_bytes, roots)
    bundle, statement = authenticated.bundle, authenticated.statement
    # Step 7: parse only authenticated bytes.
    artifact = parse_artifact(bundle.artifact)
    _check_epoch(statement, state)  # step 8
    _check_time(statement, artifact, roots, now_ms)  # step 9
    checkpoint = _open_checkpoint(bundle.checkpoint, roots)  # step 10
    _check_inclusion(bundle, artifact, checkpoint, roots)  # step 11
    _check_consistency(bundle, checkpoint, state)  # step 12
    keys = FleetKeys(
        artifact=artifact, digest=statement.digest, epoch=statement.epoch, source="over_the_air"
    )
    return keys, _advance(state, statement, checkpoint)


# --- steps 1-6: bytes, digest, namespace, witness, operator ----------------------


def _authenticate(bundle_bytes: bytes, roots: TrustRoots) -> _Authenticated:
    # Step 1: strict decoding; CodecError subclasses name what is malformed.
    bundle = decode_bundle(bundle_bytes)
    statement = plexi.decode_signature_message(bundle.signature_message)
    if bundle.namespace != statement.namespace or bundle.epoch != statement.epoch:
        raise BundleError("bundle namespace/epoch differ from the signed statement")
    # Step 2: the witness signs a digest; it must be the digest of these exact bytes.
    digest = hashlib.sha256(bundle.artifact).digest()
    if not hmac.compare_digest(digest, statement.digest):
        raise DigestMismatchError("SHA-256 of the artifact is not the digest the witness signed")
    # Step 3.
    if statement.namespace != roots.namespace:
        raise NamespaceMismatchError(
            f"statement is for namespace {statement.namespace!r}, expected {roots.namespace!r}"
        )
    # Steps 4 and 5: key id -> pinned key valid at the statement time, then the signature
    # (over the one encoding of the decoded statement: the bytes the bundle carries).
    plexi.verify_message_signature(
        statement, bundle.witness_signature, bundle.witness_key_id, roots.witness_keys
    )
    # Step 6: any one pinned operator key (rotation) must have counter-signed.
    _check_countersignature(bundle, roots)
    return _Authenticated(bundle=bundle, statement=statement)


def _check_countersignature(bundle: ValidationBundle, roots: TrustRoots) -> None:
    verify_with_any_key(
        roots.operator_keys,
        lambda key: verify_countersignature(
            key, bundle.witness_signature, bundle.counter_signature
        ),
        CounterSignatureError,
        "no pinned operator key counter-signed the witness signature",
    )


# --- steps 8-9: epoch and time ---------------------------------------------------


def _check_epoch(statement: plexi.SignatureMessage, state: ClientState) -> None:
    if statement.epoch < state.epoch:
        raise EpochRollbackError(
            f"epoch {statement.epoch} is older than the newest accepted epoch {state.epoch}"
        )
    # An epoch names one artifact for ever: the witness never re-signs an epoch.
    same_epoch = statement.epoch == state.epoch and state.digest is not None
    if same_epoch and not hmac.compare_digest(statement.digest, state.digest or b""):
        raise EpochRollbackError(
            f"epoch {statement.epoch} was already accepted with another digest"
        )


def _check_time(
    statement: plexi.SignatureMessage,
    artifact: FleetKeyArtifact,
    roots: TrustRoots,
    now_ms: int,
) -> None:
    check_not_future(statement.timestamp_ms, now_ms, roots.max_clock_skew_ms)
    check_validity_window(artifact, now_ms, roots.max_clock_skew_ms)
    check_signed_while_valid(statement.timestamp_ms, artifact, roots.max_clock_skew_ms)


def check_not_future(timestamp_ms: int, now_ms: int, skew_ms: int) -> None:
    """Raise :class:`TimestampError` if the witness's timestamp is beyond ``now + skew``."""
    if timestamp_ms > now_ms + skew_ms:
        raise TimestampError("witness statement is timestamped in the future")


def check_signed_while_valid(timestamp_ms: int, artifact: FleetKeyArtifact, skew_ms: int) -> None:
    """Raise :class:`TimestampError` unless the witness signed inside the artifact's validity.

    ``not_before_ms - skew <= timestamp <= not_after_ms``: a statement made after
    expiry, or before the artifact's validity began, endorses keys nobody should
    have been using then. Shared by the client, the operator's receipt check
    (:func:`bkv.client.operator.verify_receipt`) and the auditor.
    """
    if timestamp_ms > artifact.not_after_ms:
        raise TimestampError("witness signed the artifact after its not_after_ms")
    if timestamp_ms + skew_ms < artifact.not_before_ms:
        raise TimestampError("witness signed the artifact before its not_before_ms")


def check_logged_evidence(entry: AuditEntry, artifact: FleetKeyArtifact) -> None:
    """Raise :class:`BundleError` unless the log entry names the artifact's evidence digest.

    The witness checked (and logged) the evidence the operator submitted; the
    artifact must name that same evidence (none: the empty digest), or the
    deployment evidence anyone can check is not the one behind these keys.
    """
    expected_evidence = artifact.evidence_digest or b""
    if not hmac.compare_digest(entry.evidence_digest, expected_evidence):
        raise BundleError("log entry and artifact name different deployment evidence")


# --- steps 10-12: the witness's log ----------------------------------------------


def _open_checkpoint(data: bytes, roots: TrustRoots) -> Checkpoint:
    checkpoint = open_checkpoint(data, roots.log_origin, [roots.log_verifier])
    if roots.cosigner_policy is not None:
        roots.cosigner_policy.verify_checkpoint(checkpoint)
    return checkpoint


def _check_inclusion(
    bundle: ValidationBundle,
    artifact: FleetKeyArtifact,
    checkpoint: Checkpoint,
    roots: TrustRoots,
) -> None:
    try:
        entry = AuditEntry.from_bytes(bundle.log_entry)
    except CodecError as exc:
        raise InclusionProofError(f"log entry is malformed: {exc}") from None
    try:
        entry.check_statement(bundle.statement)
    except BundleError:
        raise InclusionProofError("the log entry does not record this witness statement") from None
    # The evidence the witness checked (entry) is the evidence the artifact names.
    check_logged_evidence(entry, artifact)
    _check_logged_submission(entry, roots)
    verify_inclusion(
        leaf_hash(bundle.log_entry),
        bundle.log_index,
        checkpoint.size,
        bundle.inclusion_proof,
        checkpoint.root_hash,
    )


def _check_logged_submission(entry: AuditEntry, roots: TrustRoots) -> None:
    # Second operator signature: the operator's submission signature, recorded by the
    # witness in the log entry. A rogue statement then needs a pinned operator key to
    # have signed both the submission and the counter-signature, so a witness that
    # tricked the operator's tool into one counter-signature still gets nothing accepted.
    verify_with_any_key(
        roots.operator_keys,
        entry.check_operator_signature,
        SubmissionSignatureError,
        "no pinned operator key signed the logged submission",
    )


def _check_consistency(
    bundle: ValidationBundle, checkpoint: Checkpoint, state: ClientState
) -> None:
    if state.checkpoint_root is None:
        return  # first checkpoint this client sees: nothing to be consistent with
    if state.checkpoint_size == checkpoint.size:
        if not hmac.compare_digest(state.checkpoint_root, checkpoint.root_hash):
            raise ConsistencyProofError("same tree size as last seen but a different root (fork)")
        return
    if bundle.consistency_size != state.checkpoint_size:
        raise ConsistencyProofError(
            f"bundle has no consistency proof from this client's tree size "
            f"{state.checkpoint_size} (it has one from {bundle.consistency_size})"
        )
    if state.checkpoint_size < checkpoint.size:
        verify_consistency(
            state.checkpoint_size,
            checkpoint.size,
            bundle.consistency_proof,
            state.checkpoint_root,
            checkpoint.root_hash,
        )
    else:
        # An older checkpoint than last seen (e.g. a cached bundle): it must be a prefix.
        verify_consistency(
            checkpoint.size,
            state.checkpoint_size,
            bundle.consistency_proof,
            checkpoint.root_hash,
            state.checkpoint_root,
        )


def _advance(
    state: ClientState, statement: plexi.SignatureMessage, checkpoint: Checkpoint
) -> ClientState:
    if checkpoint.size >= state.checkpoint_size:
        return ClientState(
            epoch=statement.epoch,
            digest=statement.digest,
            checkpoint_size=checkpoint.size,
            checkpoint_root=checkpoint.root_hash,
        )
    return ClientState(
        epoch=statement.epoch,
        digest=statement.digest,
        checkpoint_size=state.checkpoint_size,
        checkpoint_root=state.checkpoint_root,
    )
