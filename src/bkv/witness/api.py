"""The witness's own Plexi response shapes, built from what its store keeps.

The JSON shapes the witness shares with operators and auditors are in
:mod:`bkv.protocol.witness_api`; the ones here render the witness's records.
"""

from __future__ import annotations

import uuid
from typing import Any

from bkv.protocol import plexi
from bkv.protocol.witness_api import proof_fields, statement_response
from bkv.witness import core

__all__ = ["last_verified_epoch", "namespace_info", "receipt_response", "signature_response"]

#: Namespace UUID for Plexi's ``job_id`` of last-verified-epoch (uuid5 of ns/epoch).
_JOB_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bkv.invalid/witness/job")


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
