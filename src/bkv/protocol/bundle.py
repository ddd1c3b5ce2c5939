"""The validation bundle: everything a client needs to accept a fleet key over the air.

A bundle is one :mod:`bkv.wire` message (tag ``0x0301``, version 1; the
``0x03xx`` range is "fleet keys, validation bundles, deployment evidence")::

    ValidationBundle {
      artifact            opaque<1..MAX_ARTIFACT_BYTES>     canonical JSON fleet-key artifact
      namespace           utf8<1..MAX_NAMESPACE_BYTES>      must equal the statement's
      epoch               u64                               must equal the statement's
      signature_message   opaque<1..MAX_SIGNATURE_MESSAGE>  Plexi SignatureMessage, exact bytes
      witness_signature   opaque[64]                        Ed25519 over signature_message
      witness_key_id      u8                                last byte of the witness key
      counter_signature   opaque[64]                        operator, see bkv.protocol.countersign
      log_entry           opaque<1..MAX_LOG_ENTRY_SIZE>     the witness's AuditEntry leaf bytes
      log_index           u64                               leaf index of that entry
      inclusion_proof     opaque[32]<0..63>                 RFC 9162 §2.1.3 audit path
      checkpoint          opaque<1..MAX_CHECKPOINT_SIZE>    C2SP signed note (with cosignatures)
      consistency_size    u64                               tree size the proof below starts from
      consistency_proof   opaque[32]<0..63>                 RFC 9162 §2.1.4 proof
    }

The log entry is the witness's :class:`bkv.protocol.submission.AuditEntry` (wire tag
``0x0501``): the statement's fields, the witness signature and key id, and the
operator's submission signature. It is shipped as exact bytes because the leaf
hash covers fields the statement does not (evidence digest, submission time,
operator submission signature); the client checks it records exactly this
statement before hashing it.

Namespace and epoch are carried next to the statement so a host (and a
human with a hex dump) can route a bundle without parsing protobuf; the
client requires them to equal the signed values (:class:`BundleError`).

Consistency (RFC 9162 §2.1.4): the proof links the bundle's checkpoint with
the last checkpoint *this client* saw, whose size the client sends with its
request (``GET /v1/bundle?since=<size>``). The host fetches the proof from the
witness (``/log/consistency``; :mod:`bkv.host.bundle`) and attaches it with
:func:`with_consistency_proof` (``consistency_size`` is the
client's size; the proof goes from the smaller of the two tree sizes to the
larger). Keeping it in the bundle keeps the client sans-IO and lets it
verify offline; a host that omits or forges it only makes validation fail.
A client that saw no checkpoint yet (size 0) needs no proof.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Final

from bkv.protocol.artifact import MAX_ARTIFACT_BYTES
from bkv.protocol.plexi import (
    ED25519_SIGNATURE_SIZE,
    MAX_NAMESPACE_BYTES,
    MAX_SIGNATURE_MESSAGE_BYTES,
    SignedStatement,
)
from bkv.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES
from bkv.wire import U8, U64, Bytes, Fixed, ListOf, Text, decode, encode, message

BUNDLE_TAG: Final = 0x0301
BUNDLE_VERSION: Final = 1
#: Largest signed checkpoint note carried (log signature plus a few dozen cosignatures).
MAX_CHECKPOINT_SIZE: Final = 16 * 1024
#: Largest witness log entry carried (a bkv.protocol.submission.AuditEntry is under 500 bytes).
MAX_LOG_ENTRY_SIZE: Final = 1024
#: Largest encoded bundle; the declaration checks the field limits fit under it.
MAX_BUNDLE_SIZE: Final = 40 * 1024

Hash = Annotated[bytes, Fixed(HASH_SIZE)]


@message(tag=BUNDLE_TAG, version=BUNDLE_VERSION, max_size=MAX_BUNDLE_SIZE)
class ValidationBundle:
    """The fields listed in the module docstring, in that order."""

    artifact: Annotated[bytes, Bytes(max_len=MAX_ARTIFACT_BYTES, min_len=1)]
    namespace: Annotated[str, Text(max_len=MAX_NAMESPACE_BYTES, min_len=1)]
    epoch: U64
    signature_message: Annotated[bytes, Bytes(max_len=MAX_SIGNATURE_MESSAGE_BYTES, min_len=1)]
    witness_signature: Annotated[bytes, Fixed(ED25519_SIGNATURE_SIZE)]
    witness_key_id: U8
    counter_signature: Annotated[bytes, Fixed(ED25519_SIGNATURE_SIZE)]
    log_entry: Annotated[bytes, Bytes(max_len=MAX_LOG_ENTRY_SIZE, min_len=1)]
    log_index: U64
    inclusion_proof: Annotated[tuple[Hash, ...], ListOf(max_count=MAX_PROOF_HASHES)]
    checkpoint: Annotated[bytes, Bytes(max_len=MAX_CHECKPOINT_SIZE, min_len=1)]
    consistency_size: U64 = 0
    consistency_proof: Annotated[tuple[Hash, ...], ListOf(max_count=MAX_PROOF_HASHES)] = ()

    @property
    def statement(self) -> SignedStatement:
        """The witness's response as the witness module models it."""
        return SignedStatement(
            message_bytes=self.signature_message,
            signature=self.witness_signature,
            key_id=self.witness_key_id,
        )


def encode_bundle(bundle: ValidationBundle) -> bytes:
    """The canonical bytes of a bundle (what the host ships)."""
    return encode(bundle)


def decode_bundle(data: bytes) -> ValidationBundle:
    """Strictly decode bundle bytes; :class:`bkv.errors.CodecError` subclasses only."""
    bundle: ValidationBundle = decode(ValidationBundle, data)
    return bundle


def build_bundle(
    *,
    artifact: bytes,
    namespace: str,
    epoch: int,
    statement: SignedStatement,
    counter_signature: bytes,
    log_entry: bytes,
    log_index: int,
    inclusion_proof: Sequence[bytes],
    checkpoint: bytes,
) -> ValidationBundle:
    """Operator/host side: assemble a bundle from the witness's submission response.

    ``statement`` is what the witness returned (exact ``SignatureMessage`` bytes,
    signature, key id); ``counter_signature`` is the operator's
    (:func:`bkv.protocol.countersign.countersign`); ``log_entry``, ``log_index``,
    ``inclusion_proof`` and ``checkpoint`` come from the witness's receipt or log
    (:class:`bkv.witness.core.Receipt` has them all). Nothing is verified here: the
    client verifies everything, and the host is not trusted.
    """
    return ValidationBundle(
        artifact=artifact,
        namespace=namespace,
        epoch=epoch,
        signature_message=statement.message_bytes,
        witness_signature=statement.signature,
        witness_key_id=statement.key_id,
        counter_signature=counter_signature,
        log_entry=log_entry,
        log_index=log_index,
        inclusion_proof=tuple(inclusion_proof),
        checkpoint=checkpoint,
    )


def with_consistency_proof(
    bundle: ValidationBundle, client_size: int, proof: Sequence[bytes]
) -> ValidationBundle:
    """Host side: attach the consistency proof for a client whose last tree size is given."""
    return dataclasses.replace(bundle, consistency_size=client_size, consistency_proof=tuple(proof))
