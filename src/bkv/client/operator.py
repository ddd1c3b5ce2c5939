"""Operator/host side: build the fleet-key artifact, turn the witness's receipt into a bundle.

:func:`artifact_from_public_keys` makes the fleet-key artifact from the
``public-keys.json`` that ``bkv hsm init`` writes (keys by role) plus the fleet
metadata the operator declares (members, guess limit, quorum, validity).
:func:`next_epoch` reads the witness's Plexi ``last-verified-epoch`` answer.
``bkv operator publish`` (:mod:`bkv.cli.operator`) is the I/O around these.

The operator submits an artifact to the witness (:func:`bkv.protocol.submission.sign_submission`,
``POST /namespaces/{ns}/submissions``), receives a receipt (the Plexi
``SignatureResponse`` JSON plus ``log_index``, ``log_entry``, ``inclusion_proof``
and ``checkpoint``), counter-signs the witness signature with its operator key
(software or PKCS#11 :class:`bkv.keystore.Signer`) and builds the bundle the
host attaches to vault responses. The operator's counter-signature is half of
what a client trusts, so :func:`bundle_from_receipt` first checks the receipt
against roots the operator pinned (:func:`verify_receipt`): it counter-signs only
a statement, signed by the pinned witness key and logged under the pinned log
key, of the exact artifact, namespace and epoch it submitted, whose log entry
carries the operator's own submission signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bkv.client.trust import TrustRoots
from bkv.client.validation import (
    check_logged_evidence,
    check_not_future,
    check_signed_while_valid,
)
from bkv.errors import (
    ArtifactError,
    BundleError,
    CodecError,
    DigestMismatchError,
    InclusionProofError,
    NamespaceMismatchError,
    SubmissionSignatureError,
    TimestampError,
)
from bkv.protocol import plexi
from bkv.protocol.artifact import (
    DIGEST_SIZE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
    parse_artifact,
)
from bkv.protocol.bundle import (
    ValidationBundle,
    build_bundle,
)
from bkv.protocol.countersign import Ed25519Signer, countersign
from bkv.protocol.submission import AuditEntry, Submission
from bkv.protocol.witness_api import proof_from_json, statement_from_json
from bkv.tlog.checkpoint import open_checkpoint
from bkv.tlog.merkle import leaf_hash, verify_inclusion
from bkv.tlog.note import parse_verifier_key
from bkv.wire import canonical_json
from bkv.wire.strict_json import parse_uint64

#: Fields of the witness receipt this module reads (others are ignored, as serde does).
RECEIPT_FIELDS: Final = frozenset(
    {
        "serialized_message",
        "signature",
        "key_id",
        "log_index",
        "log_entry",
        "inclusion_proof",
        "checkpoint",
    }
)


def verify_receipt(
    artifact: bytes,
    receipt: Mapping[str, Any],
    roots: TrustRoots,
    *,
    operator_public_key: bytes,
    epoch: int,
    now_ms: int,
    submission: Submission | None = None,
) -> VerifiedReceipt:
    """Check a witness receipt (or audit record) before the operator counter-signs it.

    The operator's counter-signature is one of the two signatures a client needs, so
    the operator must never counter-sign what it did not submit (a lying witness
    could otherwise get a rogue artifact accepted). Against roots the *operator*
    pinned (witness statement keys, log origin and log key; never keys fetched from
    the witness), in order, first failure named:

    1. the Plexi statement decodes (``CodecError``), names ``roots.namespace``
       (``NamespaceMismatchError``) and ``epoch`` (``BundleError``);
    2. its digest is SHA-256 of ``artifact``, the bytes the operator submitted
       (``DigestMismatchError``);
    3. the witness signature verifies under a pinned witness key
       (``UnknownKeyError`` / ``WitnessSignatureError``);
    4. the log entry records exactly this statement (``InclusionProofError``) and
       carries the operator's own submission signature
       (``SubmissionSignatureError``): with ``submission`` (``publish``) the very
       signature, time and evidence digest just submitted; the evidence digest is
       the artifact's (``BundleError``);
    5. time (``TimestampError``), with the pinned ``max_clock_skew_ms``: the
       witness timestamped no earlier than the logged submission time (minus the
       skew) and no later than ``now_ms`` (plus the skew), and inside the
       artifact's validity, ``not_before_ms - skew <= timestamp <= not_after_ms``
       (the client's own checks, :mod:`bkv.client.validation`); a statement
       every client would refuse is never counter-signed;
    6. the checkpoint is signed by the pinned log key for the pinned origin (and
       the cosigner policy, if any) and the entry is included in it
       (``NoteError`` / ``CheckpointError`` / ``InclusionProofError``).
    """
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError("now_ms must be a non-negative int")
    statement = statement_from_json(receipt)
    entry_bytes, index, proof, note = proof_from_json(receipt)
    message = plexi.decode_signature_message(statement.message_bytes)
    if message.namespace != roots.namespace:
        raise NamespaceMismatchError(
            f"the witness signed namespace {message.namespace!r}, not {roots.namespace!r}"
        )
    if message.epoch != epoch:
        raise BundleError(f"the witness signed epoch {message.epoch}, not epoch {epoch}")
    if not hmac.compare_digest(hashlib.sha256(artifact).digest(), message.digest):
        raise DigestMismatchError("the witness signed another digest than the submitted artifact")
    plexi.verify_statement(
        statement.message_bytes, statement.signature, statement.key_id, roots.witness_keys
    )
    entry = _logged_entry(entry_bytes, statement)
    parsed = parse_artifact(artifact)
    _check_own_submission(entry, parsed, operator_public_key, submission)
    _check_times(message, entry, parsed, roots.max_clock_skew_ms, now_ms)
    checkpoint = open_checkpoint(
        note, roots.log_origin, [parse_verifier_key(roots.log_verifier_key)]
    )
    if roots.cosigner_policy is not None:
        roots.cosigner_policy.verify_checkpoint(checkpoint)
    verify_inclusion(leaf_hash(entry_bytes), index, checkpoint.size, proof, checkpoint.root_hash)
    return VerifiedReceipt(statement, entry_bytes, index, proof, note)


def _logged_entry(entry_bytes: bytes, statement: plexi.SignedStatement) -> AuditEntry:
    try:
        entry = AuditEntry.from_bytes(entry_bytes)
    except CodecError as exc:
        raise InclusionProofError(f"the log entry is malformed: {exc}") from None
    try:
        entry.check_statement(statement)
    except BundleError:
        raise InclusionProofError("the log entry does not record this statement") from None
    return entry


def _check_own_submission(
    entry: AuditEntry,
    artifact: FleetKeyArtifact,
    operator_public_key: bytes,
    submission: Submission | None,
) -> None:
    entry.check_operator_signature(operator_public_key)
    if submission is not None and not (
        hmac.compare_digest(entry.operator_signature, submission.operator_signature)
        and entry.submitted_at_ms == submission.submitted_at_ms
        and hmac.compare_digest(entry.evidence_digest, submission.evidence_digest)
    ):
        raise SubmissionSignatureError("the log entry does not carry the submission just made")
    check_logged_evidence(entry, artifact)


def _check_times(
    message: plexi.SignatureMessage,
    entry: AuditEntry,
    artifact: FleetKeyArtifact,
    skew_ms: int,
    now_ms: int,
) -> None:
    # The witness signs after it received the submission; the entry logs both times.
    if message.timestamp_ms + skew_ms < entry.submitted_at_ms:
        raise TimestampError("the witness timestamped its statement before the submission")
    check_not_future(message.timestamp_ms, now_ms, skew_ms)
    check_signed_while_valid(message.timestamp_ms, artifact, skew_ms)


@dataclass(frozen=True)
class VerifiedReceipt:
    """A witness receipt that passed :func:`verify_receipt`."""

    statement: plexi.SignedStatement
    log_entry: bytes
    log_index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes


def bundle_from_receipt(
    artifact: bytes,
    receipt: Mapping[str, Any],
    operator: Ed25519Signer,
    *,
    roots: TrustRoots,
    epoch: int,
    now_ms: int,
    submission: Submission | None = None,
) -> ValidationBundle:
    """Verify ``receipt`` (:func:`verify_receipt`), then counter-sign and assemble the bundle."""
    verified = verify_receipt(
        artifact,
        receipt,
        roots,
        operator_public_key=operator.public_key(),
        epoch=epoch,
        now_ms=now_ms,
        submission=submission,
    )
    return build_bundle(
        artifact=artifact,
        namespace=roots.namespace,
        epoch=epoch,
        statement=verified.statement,
        counter_signature=countersign(operator, verified.statement.signature),
        log_entry=verified.log_entry,
        log_index=verified.log_index,
        inclusion_proof=verified.inclusion_proof,
        checkpoint=verified.checkpoint,
    )


#: Largest public-keys.json read (a few keys by role).
MAX_PUBLIC_KEYS_SIZE: Final = 16 * 1024
_PUBLIC_KEYS_FIELDS: Final = frozenset({"fleet_id", "keys", "policy"})
_KEY_FIELDS: Final = frozenset({"algorithm", "public_key", "role"})


def majority(member_count: int) -> int:
    """The smallest strict majority of ``member_count`` HSMs (two quorums always intersect)."""
    if member_count < 1:
        raise ValueError("a fleet has at least one member")
    return member_count // 2 + 1


def artifact_from_public_keys(
    public_keys_json: bytes,
    *,
    fleet_id: str,
    members: tuple[str, ...],
    guess_limit: int,
    not_before_ms: int,
    not_after_ms: int,
    quorum: int | None = None,
    evidence_digest: bytes | None = None,
) -> FleetKeyArtifact:
    """The fleet-key artifact for the keys in ``public-keys.json`` (``bkv hsm init``).

    The file says which fleet the keys belong to and the guess limit the HSMs enforce
    at most; the operator's ``fleet_id`` must be that fleet (the HSMs refuse requests
    addressed to another) and its ``guess_limit`` must not exceed the HSMs' limit (the
    artifact would promise clients a policy the fleet does not keep). ``members`` are
    sorted; ``quorum`` defaults to the strict majority. Everything else is checked by
    :class:`FleetKeyArtifact` (:class:`ArtifactError`).
    """
    if not 0 < len(public_keys_json) <= MAX_PUBLIC_KEYS_SIZE:
        raise ArtifactError(f"public-keys.json must be 1..{MAX_PUBLIC_KEYS_SIZE} bytes")
    try:
        value = canonical_json.loads(public_keys_json, max_size=MAX_PUBLIC_KEYS_SIZE)
    except CodecError as exc:
        raise ArtifactError(f"public-keys.json is not canonical JSON: {exc}") from None
    if not isinstance(value, dict) or set(value) != _PUBLIC_KEYS_FIELDS:
        raise ArtifactError(f"public-keys.json must have exactly {sorted(_PUBLIC_KEYS_FIELDS)}")
    if value["fleet_id"] != fleet_id:
        raise ArtifactError(f"the public keys are of fleet {value['fleet_id']!r}, not {fleet_id!r}")
    policy = value["policy"]
    hsm_limit = policy.get("guess_limit") if isinstance(policy, dict) else None
    if not isinstance(hsm_limit, int) or isinstance(hsm_limit, bool):
        raise ArtifactError("public-keys.json has no policy.guess_limit")
    if guess_limit > hsm_limit:
        raise ArtifactError(f"guess limit {guess_limit} exceeds the HSMs' limit {hsm_limit}")
    keys = value["keys"]
    if not isinstance(keys, list) or not keys:
        raise ArtifactError("public-keys.json has no keys")
    if not members:
        raise ArtifactError("a fleet has at least one member")
    if evidence_digest is not None and len(evidence_digest) != DIGEST_SIZE:
        raise ArtifactError("evidence digest must be 32 bytes")
    return FleetKeyArtifact(
        fleet_id=fleet_id,
        keys=tuple(sorted((_public_key(k) for k in keys), key=lambda k: k.role)),
        members=tuple(sorted(members)),
        policy=FleetPolicy(
            guess_limit=guess_limit,
            quorum=majority(len(members)) if quorum is None else quorum,
        ),
        not_before_ms=not_before_ms,
        not_after_ms=not_after_ms,
        evidence_digest=evidence_digest,
    )


def _public_key(value: Any) -> PublicKey:
    if not isinstance(value, dict) or set(value) != _KEY_FIELDS:
        raise ArtifactError(f"each key must have exactly {sorted(_KEY_FIELDS)}")
    role, algorithm, key_hex = value["role"], value["algorithm"], value["public_key"]
    if not all(isinstance(v, str) for v in (role, algorithm, key_hex)):
        raise ArtifactError("key fields must be strings")
    if len(key_hex) % 2 or any(c not in "0123456789abcdef" for c in key_hex):
        raise ArtifactError(f"key {role!r} is not lowercase hex")
    return PublicKey(role=role, algorithm=algorithm, key=bytes.fromhex(key_hex))


def next_epoch(last_verified: Mapping[str, Any] | None) -> int:
    """The epoch to submit: 1 if nothing was signed yet, else Plexi's last verified + 1.

    ``last_verified`` is the witness's ``GET /namespaces/{ns}/last-verified-epoch``
    JSON, or None when the witness answered that no epoch was signed yet. The witness
    refuses any other epoch anyway (epoch = last + 1); this only avoids a refusal.
    """
    if last_verified is None:
        return 1
    if not isinstance(last_verified, Mapping):
        raise CodecError("last-verified-epoch is not a JSON object")
    epoch = parse_uint64(last_verified.get("epoch"), "epoch")
    if epoch < 1:
        raise CodecError("last-verified-epoch names epoch 0")
    return epoch + 1
