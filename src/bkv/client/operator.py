"""Operator/host side: turn the witness's submission receipt into a validation bundle.

The operator submits an artifact to the witness (:func:`bkv.witness.core.sign_submission`,
``POST /namespaces/{ns}/submissions``), receives a receipt (the Plexi
``SignatureResponse`` JSON plus ``log_index``, ``log_entry``, ``inclusion_proof``
and ``checkpoint``), counter-signs the witness signature with its operator key
(software or PKCS#11 :class:`bkv.keystore.Signer`) and builds the bundle the
host attaches to vault responses. Nothing here is trusted by clients: a wrong
receipt only yields a bundle that fails validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bkv.client.bundle import (
    MAX_CHECKPOINT_SIZE,
    MAX_LOG_ENTRY_SIZE,
    ValidationBundle,
    build_bundle,
)
from bkv.client.countersign import Ed25519Signer, countersign
from bkv.errors import CodecError, SizeLimitError
from bkv.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES
from bkv.witness import plexi
from bkv.witness.api import parse_hex, parse_uint64

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


def bundle_from_receipt(
    artifact: bytes, receipt: Mapping[str, Any], operator: Ed25519Signer
) -> ValidationBundle:
    """Counter-sign the witness signature in ``receipt`` and assemble the bundle."""
    statement = statement_from_json(receipt)
    entry, index, proof, checkpoint = proof_from_json(receipt)
    message = plexi.decode_signature_message(statement.message_bytes)
    return build_bundle(
        artifact=artifact,
        namespace=message.namespace,
        epoch=message.epoch,
        statement=statement,
        counter_signature=countersign(operator, statement.signature),
        log_entry=entry,
        log_index=index,
        inclusion_proof=proof,
        checkpoint=checkpoint,
    )


def _require(data: Mapping[str, Any], fields: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise CodecError("witness response is not a JSON object")
    missing = fields - set(data)
    if missing:
        raise CodecError(f"witness response lacks {sorted(missing)}")
