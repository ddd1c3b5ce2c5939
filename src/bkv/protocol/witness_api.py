"""JSON shapes of the witness HTTP API (sans-IO): Plexi's auditor shape plus ours.

Plexi (cloudflare/plexi at 0108f7d2, ``plexi_core``) serializes with serde:

- ``GET /info`` -> ``auditor::Configuration``: ``{"keys": [{"public_key": hex,
  "not_before": u64}], "logs": [string]}``. Plexi does not say the unit of
  ``not_before``; we use milliseconds, like the statement timestamp.
- ``GET /namespaces`` -> ``{"namespaces": [NamespaceInfo]}``; ``NamespaceInfo`` is
  ``{"name", "log_directory", "root", "last_verified_epoch" (omitted when none),
  "status" ("Online" | "Initialization" | "Disabled"), "reports_uri", "audits_uri",
  "signature_version", "ciphersuite"}``.
- ``GET /namespaces/{ns}/audits/{epoch}`` -> ``SignatureResponse``: ``{"version",
  "ciphersuite", "namespace", "timestamp", "epoch", "digest": hex, "signature": hex,
  "key_id", "serialized_message": hex}`` (field order as Plexi's serializer emits it).
- ``GET /namespaces/{ns}/last-verified-epoch`` -> ``LastVerifiedEpoch``:
  ``{"job_id": uuid, "epoch", "start_hash": hex, "end_hash": hex, "timestamp"}``.
- ``NamespaceInfo`` advertises ``audits_uri`` (``/namespaces/{ns}/audits``) and
  ``reports_uri`` (``/namespaces/{ns}/reports``) without defining what they list.
  We list there, a page at a time (:func:`listing_query`), every signed epoch as a
  ``SignatureResponse`` and every verification as a ``LastVerifiedEpoch`` (one per
  epoch: the step from the previous digest to this one), ``{"namespace", "audits" |
  "reports": [...], "next": uri | null}``.

Plexi epochs are ``u64`` (``Epoch(u64)`` in lib.rs): a path or query epoch is any
canonical decimal up to ``2**64 - 1`` (:func:`parse_epoch`).

Our additions are extra keys (serde ignores unknown fields): see
docs/protocol.md. Hex is lowercase (Rust ``hex::encode``); the decoder here
accepts lowercase only, so each value has one encoding.

Submission request body (``POST /namespaces/{ns}/submissions``)::

    {"epoch": 1, "digest": hex32, "artifact": hex, "evidence": hex | null,
     "submitted_at": ms, "operator_signature": hex64}

Counter-signature body (``POST /namespaces/{ns}/audits/{epoch}/countersignature``)::

    {"counter_signature": hex64}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bkv.errors import CodecError, SizeLimitError
from bkv.protocol import plexi
from bkv.protocol.artifact import MAX_ARTIFACT_BYTES
from bkv.protocol.bundle import MAX_CHECKPOINT_SIZE, MAX_LOG_ENTRY_SIZE
from bkv.protocol.submission import (
    MAX_EVIDENCE_BYTES,
    Submission,
    check_namespace_name,
    namespace_path_segment,
)
from bkv.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES
from bkv.wire.strict_json import UINT64_MAX, parse_hex, parse_json_object, parse_uint64

# Hex doubles sizes; the JSON framing around the fields is small.
MAX_SUBMISSION_BODY = 2 * (MAX_ARTIFACT_BYTES + MAX_EVIDENCE_BYTES) + 4096

_SUBMISSION_KEYS = {"epoch", "digest", "artifact", "evidence", "submitted_at", "operator_signature"}


# --- submissions ------------------------------------------------------------------


def submission_to_json(submission: Submission) -> dict[str, Any]:
    return {
        "epoch": submission.epoch,
        "digest": submission.digest.hex(),
        "artifact": submission.artifact.hex(),
        "evidence": None if submission.evidence is None else submission.evidence.hex(),
        "submitted_at": submission.submitted_at_ms,
        "operator_signature": submission.operator_signature.hex(),
    }


def submission_from_json(namespace: str, body: bytes) -> Submission:
    """Strictly parse a submission body (CodecError subclasses name the bad field)."""
    data = parse_json_object(body, MAX_SUBMISSION_BODY)
    if set(data) != _SUBMISSION_KEYS:
        missing = sorted(_SUBMISSION_KEYS - set(data))
        extra = sorted(set(data) - _SUBMISSION_KEYS)
        raise CodecError(f"submission fields: missing {missing}, unknown {extra}")
    evidence = data["evidence"]
    try:
        check_namespace_name(namespace)
    except ValueError:
        raise CodecError("namespace name is not valid") from None
    return Submission(
        namespace=namespace,
        epoch=parse_uint64(data["epoch"], "epoch"),
        digest=parse_hex(data["digest"], "digest", max_bytes=32, exact=32),
        artifact=parse_hex(data["artifact"], "artifact", max_bytes=MAX_ARTIFACT_BYTES),
        submitted_at_ms=parse_uint64(data["submitted_at"], "submitted_at"),
        operator_signature=parse_hex(
            data["operator_signature"], "operator_signature", max_bytes=64, exact=64
        ),
        evidence=None
        if evidence is None
        else parse_hex(evidence, "evidence", max_bytes=MAX_EVIDENCE_BYTES),
    )


# --- operator counter-signatures ------------------------------------------------------

#: ``{"counter_signature": "<128 hex>"}`` and a little framing.
MAX_COUNTERSIGNATURE_BODY = 256


def countersignature_from_json(body: bytes) -> bytes:
    """The 64-byte counter-signature of a ``POST .../countersignature`` body (CodecError)."""
    data = parse_json_object(body, MAX_COUNTERSIGNATURE_BODY)
    if set(data) != {"counter_signature"}:
        raise CodecError('countersignature body must be exactly {"counter_signature": hex}')
    return parse_hex(data["counter_signature"], "counter_signature", max_bytes=64, exact=64)


def countersignature_to_json(counter_signature: bytes) -> dict[str, Any]:
    return {"counter_signature": counter_signature.hex()}


# --- Plexi shapes -------------------------------------------------------------------


def statement_response(statement: plexi.SignedStatement) -> dict[str, Any]:
    """Plexi ``SignatureResponse`` JSON for a freshly signed statement."""
    message = statement.message
    return {
        "version": plexi.CIPHERSUITE_PROTOBUF_ED25519,
        "ciphersuite": plexi.CIPHERSUITE_PROTOBUF_ED25519,
        "namespace": message.namespace,
        "timestamp": message.timestamp_ms,
        "epoch": message.epoch,
        "digest": message.digest.hex(),
        "signature": statement.signature.hex(),
        "key_id": statement.key_id,
        "serialized_message": statement.message_bytes.hex(),
    }


def proof_fields(
    log_index: int, log_entry: bytes, tree_size: int, proof: Sequence[bytes], checkpoint: bytes
) -> dict[str, Any]:
    """Our additions: where the statement is in the audit log, and the proof of it."""
    return {
        "log_index": log_index,
        "log_entry": log_entry.hex(),
        "tree_size": tree_size,
        "inclusion_proof": [h.hex() for h in proof],
        "checkpoint": checkpoint.decode("utf-8"),
    }


def info_response(
    keys: Sequence[tuple[bytes, int]], namespaces: Sequence[str], extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "keys": [{"public_key": pk.hex(), "not_before": nb} for pk, nb in keys],
        "logs": list(namespaces),
        **extra,
    }


def error_body(error: BaseException) -> dict[str, str]:
    """``{"error": <exception class>, "message": <what failed>}`` (messages hold no secrets)."""
    return {"error": type(error).__name__, "message": str(error)}


# --- epochs in paths and listings ----------------------------------------------------

#: Most epochs (or reports) one listing page holds; also the default page size.
MAX_LISTED_EPOCHS = 100
_UINT64_DIGITS = len(str(UINT64_MAX))


def parse_epoch(text: str, what: str = "epoch") -> int:
    """A Plexi epoch (``u64``) written as a canonical ASCII decimal (CodecError otherwise).

    No sign, no leading zeros, no other digits than ASCII (``int()`` would take
    ``"\u0661"``), at most ``2**64 - 1``.
    """
    if not text or len(text) > _UINT64_DIGITS or not text.isascii() or not text.isdigit():
        raise CodecError(f"{what} is not an ASCII decimal")
    if text != "0" and text.startswith("0"):
        raise CodecError(f"{what} has leading zeros")
    value = int(text)
    if value > UINT64_MAX:
        raise CodecError(f"{what} is above 2**64 - 1")
    return value


def listing_query(params: Mapping[str, str]) -> tuple[int, int]:
    """``(start, limit)`` of ``?start=<epoch>&limit=<count>`` (both optional; CodecError).

    ``start`` is the first epoch listed (default 1, at least 1), ``limit`` the most
    entries on the page (1..:data:`MAX_LISTED_EPOCHS`, default the maximum).
    """
    unknown = set(params) - {"start", "limit"}
    if unknown:
        raise CodecError(f"unknown query parameter(s) {sorted(unknown)}; use start and limit")
    start = parse_epoch(params.get("start", "1"), "start")
    limit = parse_epoch(params.get("limit", str(MAX_LISTED_EPOCHS)), "limit")
    if start < 1:
        raise CodecError("start must be an epoch, at least 1")
    if not 1 <= limit <= MAX_LISTED_EPOCHS:
        raise CodecError(f"limit must be 1..{MAX_LISTED_EPOCHS}")
    return start, limit


def listing_page(
    namespace: str,
    kind: str,
    items: Sequence[Mapping[str, Any]],
    *,
    next_start: int | None,
    limit: int,
) -> dict[str, Any]:
    """One page of ``/namespaces/{ns}/{kind}``; ``next`` is the next page's path or null."""
    path = f"/namespaces/{namespace_path_segment(namespace)}/{kind}"
    return {
        "namespace": namespace,
        kind: list(items),
        "next": None if next_start is None else f"{path}?start={next_start}&limit={limit}",
    }


# --- reading the witness's answers ------------------------------------------------


def statement_from_json(data: Mapping[str, Any]) -> plexi.SignedStatement:
    """The witness statement from a Plexi ``SignatureResponse`` JSON object (CodecError)."""
    _require(data, {"serialized_message", "signature", "key_id"})
    message = parse_hex(
        data["serialized_message"],
        "serialized_message",
        max_bytes=plexi.MAX_SIGNATURE_MESSAGE_BYTES,
    )
    signature = parse_hex(
        data["signature"], "signature", max_bytes=64, exact=plexi.ED25519_SIGNATURE_SIZE
    )
    key_id = parse_uint64(data["key_id"], "key_id")
    if key_id > 0xFF:
        raise CodecError("key_id must be one byte")
    return plexi.SignedStatement(message_bytes=message, signature=signature, key_id=key_id)


def proof_from_json(data: Mapping[str, Any]) -> tuple[bytes, int, tuple[bytes, ...], bytes]:
    """(log entry, log index, inclusion proof, checkpoint note) from receipt/audit JSON."""
    _require(data, {"log_index", "log_entry", "inclusion_proof", "checkpoint"})
    entry = parse_hex(data["log_entry"], "log_entry", max_bytes=MAX_LOG_ENTRY_SIZE)
    index = parse_uint64(data["log_index"], "log_index")
    hashes = data["inclusion_proof"]
    if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
        raise SizeLimitError(f"inclusion_proof must be a list of at most {MAX_PROOF_HASHES}")
    proof = tuple(
        parse_hex(h, "inclusion_proof[]", max_bytes=HASH_SIZE, exact=HASH_SIZE) for h in hashes
    )
    note = data["checkpoint"]
    if not isinstance(note, str) or not 0 < len(note) <= MAX_CHECKPOINT_SIZE:
        raise SizeLimitError(f"checkpoint must be a note of 1..{MAX_CHECKPOINT_SIZE} characters")
    checkpoint = note.encode("utf-8")
    if len(checkpoint) > MAX_CHECKPOINT_SIZE:
        raise SizeLimitError(f"checkpoint over {MAX_CHECKPOINT_SIZE} bytes")
    return entry, index, proof, checkpoint


def _require(data: Mapping[str, Any], fields: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise CodecError("witness response is not a JSON object")
    missing = fields - set(data)
    if missing:
        raise CodecError(f"witness response lacks {sorted(missing)}")
