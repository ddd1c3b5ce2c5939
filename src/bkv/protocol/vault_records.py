"""Which record a vault request touches, and how the host hands that record to the HSM.

The vault keeps one sealed record per account, stored by the host under the
record tree (:mod:`bkv.records`, docs/architecture.md "Record storage"). The
host must find an account's record before the HSM opens the request, so the
record id is a public function of what the host already reads in the clear
(the fleet and the account id of an ``HsmRequest``)::

    tree_id   = SHA-256("bkv/vault/tree-id/v1"   || u8 len || fleet_id)
    record_id = SHA-256("bkv/vault/record-id/v1" || tree_id || u8 len || account_id)

The host learns nothing it did not know (it relays every request with its
account id in the clear). The ids are hashes, so nobody places records at
chosen positions; making two accounts share a k-bit id prefix costs about
2^k hashes, which lengthens one path by at most k nodes of about 70 bytes and
never past the proof's size limit.

With every request the host sends a :class:`RecordRead`: the record tree proof
for the request's record id at the tree version the HSM holds, and the sealed
record when the proof shows one. The HSM checks both before it uses either.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

from bkv.protocol.messages import MAX_ACCOUNT_ID, MAX_FLEET_ID
from bkv.records.nodes import MAX_RECORD_SIZE
from bkv.records.proof import MAX_PROOF_SIZE
from bkv.wire import Bytes, message

TREE_ID_LABEL: Final = b"bkv/vault/tree-id/v1"
RECORD_ID_LABEL: Final = b"bkv/vault/record-id/v1"

MAX_RECORD_READ_SIZE: Final = MAX_PROOF_SIZE + MAX_RECORD_SIZE + 64
"""Largest encoded :class:`RecordRead` (a degenerate proof and the largest sealed record)."""


def tree_id_for(fleet_id: str) -> bytes:
    """The record tree identity of a fleet (mixed into every node hash of its tree)."""
    fleet = fleet_id.encode("utf-8")
    if not 0 < len(fleet) <= MAX_FLEET_ID:
        raise ValueError(f"a fleet id is 1..{MAX_FLEET_ID} bytes")
    return hashlib.sha256(TREE_ID_LABEL + len(fleet).to_bytes(1, "big") + fleet).digest()


def record_id_for(tree_id: bytes, account_id: bytes) -> bytes:
    """The record id of ``account_id`` in the tree ``tree_id``."""
    if len(tree_id) != 32:
        raise ValueError("a tree id is 32 bytes")
    if not 0 < len(account_id) <= MAX_ACCOUNT_ID:
        raise ValueError(f"an account id is 1..{MAX_ACCOUNT_ID} bytes")
    material = RECORD_ID_LABEL + tree_id + len(account_id).to_bytes(1, "big") + account_id
    return hashlib.sha256(material).digest()


@message(tag=0x0801, version=1, max_size=MAX_RECORD_READ_SIZE)
class RecordRead:
    """Host -> HSM with a request: the record tree proof of one record id, and its sealed record.

    ``proof`` is :func:`bkv.records.proof.encode_proof`; ``sealed_record`` is
    empty when the proof shows the record absent.
    """

    proof: Annotated[bytes, Bytes(max_len=MAX_PROOF_SIZE, min_len=1)]
    sealed_record: Annotated[bytes, Bytes(max_len=MAX_RECORD_SIZE)] = b""


__all__ = [
    "MAX_RECORD_READ_SIZE",
    "RECORD_ID_LABEL",
    "TREE_ID_LABEL",
    "RecordRead",
    "record_id_for",
    "tree_id_for",
]
