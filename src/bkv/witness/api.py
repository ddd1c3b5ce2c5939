"""The witness's own Plexi response shapes, built from what its store keeps.

The JSON shapes the witness shares with operators and auditors are in
:mod:`bkv.protocol.witness_api`; the ones here render the witness's records.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from bkv.protocol import plexi
from bkv.protocol.submission import AuditEntry, namespace_path_segment
from bkv.protocol.witness_api import listing_page, proof_fields, statement_response
from bkv.witness import core

__all__ = [
    "audits_page",
    "last_verified_epoch",
    "namespace_info",
    "receipt_response",
    "reports_page",
    "signature_response",
]

#: Namespace UUID for Plexi's ``job_id`` of last-verified-epoch (uuid5 of ns/epoch).
_JOB_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bkv.invalid/witness/job")


def signature_response(entry: AuditEntry) -> dict[str, Any]:
    """Plexi ``SignatureResponse`` JSON for a signed epoch's log entry (Plexi's key order)."""
    return statement_response(
        plexi.SignedStatement(
            message_bytes=entry.message_bytes(),
            signature=entry.witness_signature,
            key_id=entry.key_id,
        )
    )


def receipt_response(receipt: core.Receipt) -> dict[str, Any]:
    return statement_response(receipt.statement) | proof_fields(
        receipt.log_index,
        receipt.log_entry,
        receipt.tree_size,
        receipt.inclusion_proof,
        receipt.checkpoint,
    )


def namespace_info(
    record: core.NamespaceRecord,
    first: AuditEntry | None,
    last: AuditEntry | None,
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


def last_verified_epoch(entry: AuditEntry, previous: AuditEntry | None) -> dict[str, Any]:
    """Plexi ``LastVerifiedEpoch``: start/end hash are the previous and current digests."""
    job = uuid.uuid5(_JOB_ID_NAMESPACE, f"{entry.namespace}/{entry.epoch}")
    return {
        "job_id": str(job),
        "epoch": entry.epoch,
        "start_hash": "" if previous is None else previous.digest.hex(),
        "end_hash": entry.digest.hex(),
        "timestamp": entry.timestamp_ms,
    }


def audits_page(
    namespace: str, page: Sequence[AuditEntry], *, more: bool, limit: int
) -> dict[str, Any]:
    """``GET /namespaces/{ns}/audits``: each epoch's ``SignatureResponse`` and its URI."""
    items = [
        signature_response(entry) | {"audit_uri": _audit_uri(namespace, entry.epoch)}
        for entry in page
    ]
    return listing_page(namespace, "audits", items, next_start=_next(page, more), limit=limit)


def reports_page(
    namespace: str,
    before: AuditEntry | None,
    page: Sequence[AuditEntry],
    *,
    more: bool,
    limit: int,
) -> dict[str, Any]:
    """``GET /namespaces/{ns}/reports``: a ``LastVerifiedEpoch`` for each epoch of ``page``.

    ``before`` is the entry of the epoch just before the page (None for epoch 1): its
    digest is the first report's ``start_hash``.
    """
    items = []
    previous = before
    for entry in page:
        items.append(last_verified_epoch(entry, previous))
        previous = entry
    return listing_page(namespace, "reports", items, next_start=_next(page, more), limit=limit)


def _next(page: Sequence[AuditEntry], more: bool) -> int | None:
    # Epochs are consecutive from 1 (core rule 5), so the next page starts right after.
    return page[-1].epoch + 1 if more and page else None


def _audit_uri(namespace: str, epoch: int) -> str:
    return f"/namespaces/{namespace_path_segment(namespace)}/audits/{epoch}"
