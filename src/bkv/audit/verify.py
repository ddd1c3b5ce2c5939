"""Re-verify a witness's whole public record for one namespace (sans-IO core of ``bkv audit``).

The auditor trusts nothing it fetches. Given a :class:`WitnessSource` (HTTP in
:mod:`bkv.audit.http_source`) and :class:`AuditPins`, :func:`audit_namespace`:

1. opens the witness log's signed checkpoint (``GET /checkpoint``) with the log
   key (``NoteError`` / ``CheckpointError``) and, with a ``cosigner_policy``,
   requires k of its n cosigners (``CosignerPolicyError``); without one the
   auditor trusts the witness's log key alone (split-view risk: the witness could
   show clients another log);
2. authenticates the entries: it reads only the entry bundles, recomputes every
   leaf hash and the tree (RFC 9162 §2.1.1) and requires the checkpoint's root
   (``InclusionProofError``) -- hash tiles are never trusted, and every prefix
   root below is computed from these authenticated entries;
3. for each epoch ``1..last`` served by the Plexi API
   (``/namespaces/{ns}/audits/{epoch}``):
   - the ``SignatureMessage`` decodes and names this namespace and epoch
     (``CodecError`` / ``NamespaceMismatchError`` / ``AuditError``);
   - ``SHA-256(artifact) == digest`` (``DigestMismatchError``);
   - the witness signature verifies under a pinned key valid at the statement
     time (``UnknownKeyError`` / ``WitnessSignatureError``);
   - the artifact parses strictly (``ArtifactError``) and the statement was made
     inside its validity, ``not_before - skew <= timestamp <= not_after``
     (``TimestampError``; the client's own check, with the default skew);
   - the log entry at ``log_index`` (from the authenticated tiles) records
     exactly this statement (``InclusionProofError``), names the deployment
     evidence the artifact names (``BundleError``, the client's check), and its
     recorded operator submission signature verifies under a pinned operator key
     (``SubmissionSignatureError``);
   - epochs are consecutive, digests never repeat (``AuditError``), statement
     timestamps never go backwards (``TimestampError``);
4. every log entry of this namespace is one of the served epochs, at the
   served index: the witness cannot log a statement it hides from the Plexi
   API, or serve one it did not log (``AuditError``);
5. history: the checkpoint the witness signed right after each epoch's entry
   (``GET /checkpoints/<size>``, the one receipts and bundles carried) is signed
   by the pinned log key and its root is the root of the first ``size``
   authenticated entries (``ConsistencyProofError``): the log was not rewritten
   or forked since; with ``previous`` (the state a former audit saved) the
   current checkpoint must extend its checkpoint (RFC 9162 §2.1.4), and its
   newest epoch must still be served with the same digest (``EpochRollbackError``);
6. operator counter-signatures: the witness serves the counter-signature the
   operator posted for each epoch (``counter_signature`` in the audit JSON, checked
   by the witness before storing); whenever one is served it must verify under a
   pinned operator key over the epoch's witness signature
   (:mod:`bkv.protocol.countersign`; ``CounterSignatureError``). As an alternative
   source, every validation bundle given (the operator's
   published bundles) is validated like a client would
   (:func:`bkv.client.validation.validate_bundle` at the statement's time), must
   record exactly the statement the witness serves for its epoch
   (``AuditError``), and its checkpoint must be consistent with the current one
   (``ConsistencyProofError``). With ``require_countersignatures`` every epoch
   needs one, from the witness or from a bundle (``AuditError``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bkv.client.state import ClientState
from bkv.client.trust import (
    DEFAULT_MAX_CLOCK_SKEW_MS,
    TrustRoots,
    check_strong_note_keys,
    verify_with_any_key,
)
from bkv.client.validation import check_logged_evidence, check_signed_while_valid, validate_bundle
from bkv.errors import (
    AuditError,
    BundleError,
    CodecError,
    ConsistencyProofError,
    CounterSignatureError,
    DigestMismatchError,
    EpochRollbackError,
    InclusionProofError,
    NamespaceMismatchError,
    NoteError,
    SubmissionSignatureError,
    TimestampError,
)
from bkv.protocol import plexi
from bkv.protocol.artifact import MAX_ARTIFACT_BYTES, FleetKeyArtifact, parse_artifact
from bkv.protocol.bundle import decode_bundle
from bkv.protocol.countersign import ED25519_SIGNATURE_SIZE, verify_countersignature
from bkv.protocol.keycheck import check_ed25519_public_key
from bkv.protocol.submission import AuditEntry, namespace_path_segment
from bkv.protocol.witness_api import proof_from_json, statement_from_json
from bkv.tlog import tiles
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint
from bkv.tlog.cosignature import CosignerPolicy
from bkv.tlog.log import MAX_APPEND_BATCH, MemoryHashStore, MerkleLog
from bkv.tlog.merkle import verify_consistency
from bkv.tlog.note import MAX_NOTE_SIZE, parse_verifier_key
from bkv.wire.strict_json import parse_hex, parse_uint64

#: Most epochs one audit run walks (bounds the loop; a fleet changes every few years).
MAX_AUDIT_EPOCHS: Final = 100_000
#: Most log entries one audit run reads from the entry tiles.
MAX_AUDIT_LOG_SIZE: Final = 1 << 22


class WitnessSource(Protocol):
    """Where the auditor reads the witness's public record (untrusted)."""

    def get_json(self, path: str) -> Any:
        """The JSON value served at ``path`` (FetchError if unavailable)."""
        ...

    def get_bytes(self, path: str, max_size: int) -> bytes:
        """The bytes served at ``path``, at most ``max_size`` (FetchError otherwise)."""
        ...


@dataclass(frozen=True)
class AuditPins:
    """What the auditor trusts: the same roots a client pins (plus operator submissions)."""

    witness_keys: tuple[plexi.WitnessKey, ...]
    operator_keys: tuple[bytes, ...]
    log_origin: str
    log_verifier_key: str
    bundles: tuple[bytes, ...] = ()
    require_countersignatures: bool = False
    previous: ClientState | None = None
    #: k-of-n cosigners required on the current checkpoint. Without one, the auditor
    #: trusts the witness's log key alone and cannot rule out a split view (the witness
    #: showing clients another log than the one audited).
    cosigner_policy: CosignerPolicy | None = None

    def __post_init__(self) -> None:
        if not self.witness_keys or not self.operator_keys:
            raise ValueError("pin at least one witness key and one operator key")
        for key in self.operator_keys:
            check_ed25519_public_key(key, "operator key")
        try:
            log_key = parse_verifier_key(self.log_verifier_key)
        except NoteError as exc:
            raise ValueError(f"log_verifier_key is not a note verifier key: {exc}") from None
        check_strong_note_keys(log_key, self.cosigner_policy)


@dataclass(frozen=True)
class AuditedEpoch:
    """One epoch that passed every check."""

    epoch: int
    timestamp_ms: int
    digest: bytes
    log_index: int
    artifact: FleetKeyArtifact
    countersigned: bool


@dataclass(frozen=True)
class AuditReport:
    """Everything an audit verified; ``checkpoint`` is the verified current tree head."""

    namespace: str
    epochs: tuple[AuditedEpoch, ...]
    checkpoint_size: int
    checkpoint_root: bytes
    countersigned_epochs: frozenset[int] = field(default_factory=frozenset)

    def state(self) -> ClientState:
        """The newest epoch and checkpoint, for the next audit's ``previous``."""
        last = self.epochs[-1] if self.epochs else None
        return ClientState(
            epoch=0 if last is None else last.epoch,
            digest=None if last is None else last.digest,
            checkpoint_size=self.checkpoint_size,
            checkpoint_root=self.checkpoint_root if self.checkpoint_size else None,
        )


@dataclass(frozen=True)
class _Served:
    """One epoch as served by the Plexi API, decoded but not yet verified."""

    statement: plexi.SignedStatement
    message: plexi.SignatureMessage
    artifact: bytes
    log_index: int
    log_entry: bytes
    counter_signature: bytes | None


def audit_namespace(source: WitnessSource, namespace: str, pins: AuditPins) -> AuditReport:
    """Run every check in the module docstring; raise the first failure's typed error."""
    checkpoint = _open_checkpoint(source, pins)
    log = _AuthenticatedLog(source, checkpoint)
    if pins.previous is not None:
        log.check_extends(pins.previous)
    last_epoch = _last_epoch(source, namespace)
    audited: list[AuditedEpoch] = []
    # Digests are public (they are in every statement): a set, not compare_digest.
    seen_digests: set[bytes] = set()
    for epoch in range(1, last_epoch + 1):
        served = _fetch_epoch(source, namespace, epoch)
        verified = _verify_epoch(
            served, namespace=namespace, epoch=epoch, pins=pins, log=log, before=audited
        )
        if verified.digest in seen_digests:
            raise AuditError(f"epoch {epoch} re-signs a digest of an earlier epoch")
        seen_digests.add(verified.digest)
        audited.append(verified)
    _check_against_previous(pins.previous, audited)
    _check_no_hidden_entries(log, namespace, audited)
    _check_historical_checkpoints(source, pins, log, audited)
    countersigned = _check_bundles(pins, namespace, audited, log)
    return AuditReport(
        namespace=namespace,
        epochs=tuple(
            AuditedEpoch(
                a.epoch, a.timestamp_ms, a.digest, a.log_index, a.artifact, a.epoch in countersigned
            )
            for a in audited
        ),
        checkpoint_size=checkpoint.size,
        checkpoint_root=checkpoint.root_hash,
        countersigned_epochs=frozenset(countersigned),
    )


# --- the log ------------------------------------------------------------------------


def _open_checkpoint(source: WitnessSource, pins: AuditPins) -> Checkpoint:
    data = source.get_bytes("/checkpoint", MAX_NOTE_SIZE)
    checkpoint = open_checkpoint(data, pins.log_origin, [parse_verifier_key(pins.log_verifier_key)])
    if pins.cosigner_policy is not None:
        # Split view: k independent cosigners saw this same tree head.
        pins.cosigner_policy.verify_checkpoint(checkpoint)
    return checkpoint


class _AuthenticatedLog:
    """The witness log's entries, authenticated against a verified checkpoint.

    Only the entry bundles are read from the witness. Every leaf hash is
    recomputed here from its entry, and the tree of those leaves must have the
    signed checkpoint's root (RFC 9162 §2.1.1); every prefix root and
    consistency proof below is then computed from this local tree. Hash tiles
    served by the witness are never trusted: a tile the root does not commit to
    (e.g. a forged level-0 tile agreeing with a forged entry bundle) cannot
    change what the auditor sees.
    """

    def __init__(self, source: WitnessSource, checkpoint: Checkpoint) -> None:
        if checkpoint.size > MAX_AUDIT_LOG_SIZE:
            raise AuditError(f"log of {checkpoint.size} entries exceeds this auditor's limit")
        self.size = checkpoint.size
        self.root = checkpoint.root_hash
        self._source = source
        self._local = MerkleLog(MemoryHashStore())
        self.entries: list[bytes] = self._read_entries() if self.size else []
        for start in range(0, len(self.entries), MAX_APPEND_BATCH):
            self._local.append_many(self.entries[start : start + MAX_APPEND_BATCH])
        computed = self._local.root()
        if not hmac.compare_digest(computed, self.root):
            raise InclusionProofError(
                "the entries the witness serves do not hash to the checkpoint root"
            )

    def _read_entries(self) -> list[bytes]:
        entries: list[bytes] = []
        for start in range(0, self.size, tiles.TILE_WIDTH):
            tile = tiles.entry_tile_for_index(start, self.size)
            data = self._source.get_bytes("/" + tile.path(), tiles.MAX_ENTRY_BUNDLE_SIZE)
            entries += tiles.decode_entry_bundle(data, tile.width)
        if len(entries) != self.size:
            raise CodecError(f"entry bundles hold {len(entries)} entries, not {self.size}")
        return entries

    def root_at(self, size: int) -> bytes:
        """MTH of the first ``size`` authenticated entries (computed locally)."""
        return self._local.root(size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4 proof between two prefixes of the authenticated entries."""
        return self._local.consistency_proof(old_size, new_size)

    def check_consistent(self, old_size: int, old_root: bytes) -> None:
        """``(old_size, old_root)`` is a prefix of the current tree (RFC 9162 §2.1.4)."""
        if old_size > self.size:
            raise ConsistencyProofError(
                f"a checkpoint of size {old_size} is newer than the witness's {self.size}"
            )
        if old_size == self.size:
            if not hmac.compare_digest(old_root, self.root):
                raise ConsistencyProofError("same tree size, different root: the log forked")
            return
        proof = self.consistency_proof(old_size, self.size)
        verify_consistency(old_size, self.size, proof, old_root, self.root)

    def check_extends(self, previous: ClientState) -> None:
        if previous.checkpoint_root is not None:
            self.check_consistent(previous.checkpoint_size, previous.checkpoint_root)


# --- epochs -----------------------------------------------------------------------


def _quoted(namespace: str) -> str:
    """The namespace as one URL path segment; a name the witness cannot hold is refused."""
    try:
        return namespace_path_segment(namespace)
    except ValueError:
        raise AuditError(f"{namespace!r} is not a namespace name a witness can hold") from None


def _last_epoch(source: WitnessSource, namespace: str) -> int:
    info = source.get_json(f"/namespaces/{_quoted(namespace)}")
    if not isinstance(info, Mapping) or info.get("name") != namespace:
        raise AuditError(f"the witness does not describe namespace {namespace}")
    last = info.get("last_verified_epoch", 0)
    epoch = parse_uint64(last, "last_verified_epoch")
    if epoch > MAX_AUDIT_EPOCHS:
        raise AuditError(f"{epoch} epochs exceed this auditor's limit")
    return epoch


def _fetch_epoch(source: WitnessSource, namespace: str, epoch: int) -> _Served:
    data = source.get_json(f"/namespaces/{_quoted(namespace)}/audits/{epoch}")
    if not isinstance(data, Mapping):
        raise CodecError(f"audit of epoch {epoch} is not a JSON object")
    statement = statement_from_json(data)
    entry, index, _, _ = proof_from_json(data)
    artifact = parse_hex(data.get("artifact"), "artifact", max_bytes=MAX_ARTIFACT_BYTES)
    served_counter = data.get("counter_signature")
    counter_signature = (
        None
        if served_counter is None
        else parse_hex(
            served_counter,
            "counter_signature",
            max_bytes=ED25519_SIGNATURE_SIZE,
            exact=ED25519_SIGNATURE_SIZE,
        )
    )
    message = plexi.decode_signature_message(statement.message_bytes)
    # The JSON convenience fields must agree with the signed bytes.
    for name, value in (
        ("namespace", message.namespace),
        ("epoch", message.epoch),
        ("timestamp", message.timestamp_ms),
        ("digest", message.digest.hex()),
    ):
        if data.get(name) != value:
            raise AuditError(f"epoch {epoch}: JSON field {name} differs from the signed message")
    return _Served(statement, message, artifact, index, entry, counter_signature)


def _verify_epoch(
    served: _Served,
    *,
    namespace: str,
    epoch: int,
    pins: AuditPins,
    log: _AuthenticatedLog,
    before: Sequence[AuditedEpoch],
) -> AuditedEpoch:
    message = served.message
    if message.namespace != namespace:
        raise NamespaceMismatchError(f"epoch {epoch} is signed for namespace {message.namespace}")
    if message.epoch != epoch:
        raise AuditError(f"the witness served epoch {message.epoch} as epoch {epoch}")
    digest = hashlib.sha256(served.artifact).digest()
    if not hmac.compare_digest(digest, message.digest):
        raise DigestMismatchError(
            f"epoch {epoch}: SHA-256 of the artifact is not the signed digest"
        )
    plexi.verify_statement(
        served.statement.message_bytes,
        served.statement.signature,
        served.statement.key_id,
        pins.witness_keys,
    )
    artifact = parse_artifact(served.artifact)
    # What a client checks of the artifact, the auditor checks too (same functions).
    check_signed_while_valid(message.timestamp_ms, artifact, DEFAULT_MAX_CLOCK_SKEW_MS)
    _check_logged(served, epoch, pins, log, artifact)
    countersigned = served.counter_signature is not None
    if served.counter_signature is not None:
        _check_served_countersignature(
            served.statement.signature, served.counter_signature, epoch, pins.operator_keys
        )
    if before:
        previous = before[-1]
        if message.timestamp_ms < previous.timestamp_ms:
            raise TimestampError(f"epoch {epoch} is timestamped before epoch {previous.epoch}")
        if served.log_index <= previous.log_index:
            raise AuditError(f"epoch {epoch} sits before epoch {previous.epoch} in the log")
    return AuditedEpoch(
        epoch=epoch,
        timestamp_ms=message.timestamp_ms,
        digest=digest,
        log_index=served.log_index,
        artifact=artifact,
        countersigned=countersigned,
    )


def _check_logged(
    served: _Served,
    epoch: int,
    pins: AuditPins,
    log: _AuthenticatedLog,
    artifact: FleetKeyArtifact,
) -> None:
    if not served.log_index < log.size:
        raise InclusionProofError(f"epoch {epoch}: log index {served.log_index} is not in the log")
    entry_bytes = log.entries[served.log_index]
    if not hmac.compare_digest(entry_bytes, served.log_entry):
        raise InclusionProofError(f"epoch {epoch}: served log entry differs from the tiles")
    entry = AuditEntry.from_bytes(entry_bytes)
    try:
        entry.check_statement(served.statement)
    except BundleError:
        raise InclusionProofError(f"epoch {epoch}: log entry records another statement") from None
    check_logged_evidence(entry, artifact)
    _check_operator_submission(entry, epoch, pins.operator_keys)


def _check_served_countersignature(
    witness_signature: bytes, counter_signature: bytes, epoch: int, operator_keys: Sequence[bytes]
) -> None:
    verify_with_any_key(
        operator_keys,
        lambda key: verify_countersignature(key, witness_signature, counter_signature),
        CounterSignatureError,
        f"epoch {epoch}: the counter-signature the witness serves is by no pinned operator key",
    )


def _check_operator_submission(
    entry: AuditEntry, epoch: int, operator_keys: Sequence[bytes]
) -> None:
    verify_with_any_key(
        operator_keys,
        entry.check_operator_signature,
        SubmissionSignatureError,
        f"epoch {epoch}: no pinned operator key authorised it",
    )


def _check_against_previous(previous: ClientState | None, audited: Sequence[AuditedEpoch]) -> None:
    """A former audit's newest epoch must still be served, with the same digest."""
    if previous is None or previous.digest is None:
        return
    if previous.epoch > len(audited):
        raise EpochRollbackError(
            f"the witness now serves {len(audited)} epoch(s); a former audit saw {previous.epoch}"
        )
    if not hmac.compare_digest(audited[previous.epoch - 1].digest, previous.digest):
        raise EpochRollbackError(f"epoch {previous.epoch} now has another digest than before")


def _check_no_hidden_entries(
    log: _AuthenticatedLog, namespace: str, audited: Sequence[AuditedEpoch]
) -> None:
    served = {a.log_index: a.epoch for a in audited}
    for index, data in enumerate(log.entries):
        try:
            entry = AuditEntry.from_bytes(data)
        except CodecError:
            raise AuditError(f"log entry {index} is not an audit entry") from None
        if entry.namespace != namespace:
            continue
        if served.get(index) != entry.epoch:
            raise AuditError(
                f"log entry {index} records epoch {entry.epoch} of {namespace}, "
                "which the witness does not serve at that index"
            )


def _check_historical_checkpoints(
    source: WitnessSource, pins: AuditPins, log: _AuthenticatedLog, audited: Sequence[AuditedEpoch]
) -> None:
    """Each tree head the witness signed right after an epoch is a prefix of today's log.

    Receipts and bundles carried the checkpoint signed with each epoch (size =
    log index + 1); the witness keeps them all (``GET /checkpoints/<size>``). Each
    must be signed by the pinned log key and have the root of the first ``size``
    authenticated entries (computed here, RFC 9162 §2.1.1): a log rewritten after
    an epoch was published, or a fork shown to clients, fails here.
    """
    verifier = parse_verifier_key(pins.log_verifier_key)
    for size in sorted({a.log_index + 1 for a in audited}):
        note = source.get_bytes(f"/checkpoints/{size}", MAX_NOTE_SIZE)
        signed = open_checkpoint(note, pins.log_origin, [verifier])
        if signed.size != size:
            raise ConsistencyProofError(
                f"the witness served a size-{signed.size} checkpoint as {size}"
            )
        if not hmac.compare_digest(signed.root_hash, log.root_at(size)):
            raise ConsistencyProofError(
                f"the checkpoint the witness signed at size {size} is not a prefix of its "
                "current log: the log was rewritten or forked"
            )


# --- operator counter-signatures ----------------------------------------------------


def _check_bundles(
    pins: AuditPins, namespace: str, audited: Sequence[AuditedEpoch], log: _AuthenticatedLog
) -> set[int]:
    by_epoch = {a.epoch: a for a in audited}
    countersigned = {a.epoch for a in audited if a.countersigned}
    for data in pins.bundles:
        bundle = decode_bundle(data)
        epoch = by_epoch.get(bundle.epoch)
        if epoch is None:
            raise AuditError(f"a bundle names epoch {bundle.epoch}, which the witness never served")
        roots = TrustRoots(
            witness_keys=pins.witness_keys,
            operator_keys=pins.operator_keys,
            namespace=namespace,
            log_origin=pins.log_origin,
            log_verifier_key=pins.log_verifier_key,
            cosigner_policy=None,  # bundles are checked against the audited checkpoint
        )
        message = plexi.decode_signature_message(bundle.signature_message)
        # Validate as a client would have when the statement was made.
        keys, state = validate_bundle(data, roots, ClientState(), message.timestamp_ms)
        if (
            not hmac.compare_digest(keys.digest, epoch.digest)
            or bundle.log_index != epoch.log_index
        ):
            raise AuditError(
                f"the bundle for epoch {bundle.epoch} differs from the witness's record"
            )
        if state.checkpoint_root is None:
            raise AuditError(f"the bundle for epoch {bundle.epoch} has no checkpoint")
        log.check_consistent(state.checkpoint_size, state.checkpoint_root)
        countersigned.add(bundle.epoch)
    if pins.require_countersignatures:
        missing = sorted(set(by_epoch) - countersigned)
        if missing:
            raise AuditError(
                f"no operator counter-signature (from the witness or a bundle) for "
                f"epoch(s) {missing}"
            )
    return countersigned
