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

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from bkv.errors import CodecError, NonCanonicalError, SizeLimitError
from bkv.witness import core, plexi

# Hex doubles sizes; the JSON framing around the fields is small.
MAX_SUBMISSION_BODY = 2 * (core.MAX_ARTIFACT_BYTES + core.MAX_EVIDENCE_BYTES) + 4096

_SUBMISSION_KEYS = {"epoch", "digest", "artifact", "evidence", "submitted_at", "operator_signature"}
_UINT64_MAX = (1 << 64) - 1

#: Namespace UUID for Plexi's ``job_id`` of last-verified-epoch (uuid5 of ns/epoch).
_JOB_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bkv.invalid/witness/job")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise NonCanonicalError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise NonCanonicalError(f"JSON constant {name} is not allowed")


def parse_json_object(body: bytes, max_size: int) -> dict[str, Any]:
    """Parse a JSON object strictly: size limit, UTF-8, no duplicate keys, no NaN."""
    if not body:
        raise SizeLimitError("empty request body")
    if len(body) > max_size:
        raise SizeLimitError(f"request body over {max_size} bytes")
    try:
        data = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError and integers beyond Python's digit limit;
        # RecursionError a deeply nested body. Neither may escape as a server error.
        raise CodecError("request body is not UTF-8 JSON within limits") from None
    if not isinstance(data, dict):
        raise CodecError("request body is not a JSON object")
    return data


def parse_hex(value: object, field: str, *, max_bytes: int, exact: int | None = None) -> bytes:
    """Lowercase even-length hex within limits (CodecError subclasses)."""
    if not isinstance(value, str):
        raise CodecError(f"{field} must be a hex string")
    if len(value) > 2 * max_bytes:
        raise SizeLimitError(f"{field} is over {max_bytes} bytes")
    if len(value) % 2 or any(c not in "0123456789abcdef" for c in value):
        raise NonCanonicalError(f"{field} is not lowercase hex")
    raw = bytes.fromhex(value)
    if exact is not None and len(raw) != exact:
        raise SizeLimitError(f"{field} must be {exact} bytes")
    if not raw:
        raise SizeLimitError(f"{field} is empty")
    return raw


def parse_uint64(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise CodecError(f"{field} must be an integer in [0, 2**64)")
    return value


# --- submissions ------------------------------------------------------------------


def submission_to_json(submission: core.Submission) -> dict[str, Any]:
    return {
        "epoch": submission.epoch,
        "digest": submission.digest.hex(),
        "artifact": submission.artifact.hex(),
        "evidence": None if submission.evidence is None else submission.evidence.hex(),
        "submitted_at": submission.submitted_at_ms,
        "operator_signature": submission.operator_signature.hex(),
    }


def submission_from_json(namespace: str, body: bytes) -> core.Submission:
    """Strictly parse a submission body (CodecError subclasses name the bad field)."""
    data = parse_json_object(body, MAX_SUBMISSION_BODY)
    if set(data) != _SUBMISSION_KEYS:
        missing = sorted(_SUBMISSION_KEYS - set(data))
        extra = sorted(set(data) - _SUBMISSION_KEYS)
        raise CodecError(f"submission fields: missing {missing}, unknown {extra}")
    evidence = data["evidence"]
    try:
        core.check_namespace_name(namespace)
    except ValueError:
        raise CodecError("namespace name is not valid") from None
    return core.Submission(
        namespace=namespace,
        epoch=parse_uint64(data["epoch"], "epoch"),
        digest=parse_hex(data["digest"], "digest", max_bytes=32, exact=32),
        artifact=parse_hex(data["artifact"], "artifact", max_bytes=core.MAX_ARTIFACT_BYTES),
        submitted_at_ms=parse_uint64(data["submitted_at"], "submitted_at"),
        operator_signature=parse_hex(
            data["operator_signature"], "operator_signature", max_bytes=64, exact=64
        ),
        evidence=None
        if evidence is None
        else parse_hex(evidence, "evidence", max_bytes=core.MAX_EVIDENCE_BYTES),
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


def signature_response(signed: core.SignedEpoch) -> dict[str, Any]:
    """Plexi ``SignatureResponse`` JSON for a signed epoch (same key order as Plexi)."""
    return {
        "version": plexi.CIPHERSUITE_PROTOBUF_ED25519,
        "ciphersuite": plexi.CIPHERSUITE_PROTOBUF_ED25519,
        "namespace": signed.namespace,
        "timestamp": signed.timestamp_ms,
        "epoch": signed.epoch,
        "digest": signed.digest.hex(),
        "signature": signed.signature.hex(),
        "key_id": signed.key_id,
        "serialized_message": signed.message_bytes.hex(),
    }


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


def receipt_response(receipt: core.Receipt) -> dict[str, Any]:
    return statement_response(receipt.statement) | proof_fields(
        receipt.log_index,
        receipt.log_entry,
        receipt.tree_size,
        receipt.inclusion_proof,
        receipt.checkpoint,
    )


def info_response(
    keys: Sequence[tuple[bytes, int]], namespaces: Sequence[str], extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "keys": [{"public_key": pk.hex(), "not_before": nb} for pk, nb in keys],
        "logs": list(namespaces),
        **extra,
    }


def namespace_info(
    record: core.NamespaceRecord,
    first: core.SignedEpoch | None,
    last: core.SignedEpoch | None,
) -> dict[str, Any]:
    """Plexi ``NamespaceInfo``; ``root`` is Plexi's ``"<epoch>/<digest hex>"`` of epoch 1."""
    info: dict[str, Any] = {
        "name": record.name,
        "log_directory": None,
        "root": None if first is None else f"{first.epoch}/{first.digest.hex()}",
    }
    if last is not None:
        info["last_verified_epoch"] = last.epoch
    info |= {
        "status": "Initialization" if last is None else "Online",
        "reports_uri": f"/namespaces/{record.name}/reports",
        "audits_uri": f"/namespaces/{record.name}/audits",
        "signature_version": plexi.CIPHERSUITE_PROTOBUF_ED25519,
        "ciphersuite": plexi.CIPHERSUITE_PROTOBUF_ED25519,
        "operator_public_key": record.operator_public_key.hex(),
    }
    return info


def last_verified_epoch(
    last: core.SignedEpoch, previous: core.SignedEpoch | None
) -> dict[str, Any]:
    """Plexi ``LastVerifiedEpoch``: start/end hash are the previous and current digests."""
    job = uuid.uuid5(_JOB_ID_NAMESPACE, f"{last.namespace}/{last.epoch}")
    return {
        "job_id": str(job),
        "epoch": last.epoch,
        "start_hash": "" if previous is None else previous.digest.hex(),
        "end_hash": last.digest.hex(),
        "timestamp": last.timestamp_ms,
    }


def error_body(error: BaseException) -> dict[str, str]:
    """``{"error": <exception class>, "message": <what failed>}`` (messages hold no secrets)."""
    return {"error": type(error).__name__, "message": str(error)}
