"""One account slot at rest: sealed on its own, stored by the host, read back through a proof.

Sans-IO and pure (randomness injected). The HSM keeps no record; the host
stores one sealed blob per account under the record tree
(:mod:`bkv.records`), keyed by the public record id
(:func:`bkv.protocol.vault_records.record_id_for`). docs/architecture.md,
"Record storage", has the whole design; this module is its two ends:

Sealing (:func:`seal_slot`)::

    blob = FORMAT (u8) || written_version (u64) || salt (32) || ChaCha20-Poly1305(k, n, slot, aad)
    k    = HKDF-SHA256-Expand(record_key, SUBKEY_LABEL || salt, 32)   (RFC 5869 section 2.3)
    n    = 12 zero bytes
    aad  = AAD_LABEL || u8 len || fleet_id || record_id || written_version (u64)

``record_key`` is a fleet secret (:class:`bkv.hsm.state.HsmSecrets`) that never
leaves the HSM. Every blob gets its own key from a fresh 256-bit random salt
and that key encrypts exactly once, so the nonce never needs to vary: a
(key, nonce) pair repeats only if a salt does, which after 2^64 writes has
probability below 2^-128, whatever the host replays, rolls back or makes the
HSM rewrite (the nonce budget does not depend on any counter the host could
reset). The AAD binds the blob to its fleet, its record id and the tree
version it was written at.

Reading (:func:`read_slot`): the host's :class:`~bkv.protocol.vault_records.RecordRead`
is decoded strictly, its proof is checked against the head the HSM trusts
(:func:`bkv.records.tree.open_record`: the blob must be exactly the one the
tree holds for this id, or absent where the tree holds none), and only then
is the blob opened. A stale blob, another record's blob, a hidden record, a
forged or stale proof: each raises a typed error before any slot is used.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bkv.crypto.rng import Rng, draw
from bkv.errors import CodecError, RecordProofError, SealingError, StorageError
from bkv.hsm.state import RECORD_KEY_SIZE, AccountSlot, Slot
from bkv.protocol.messages import MAX_FLEET_ID
from bkv.protocol.vault_records import RecordRead
from bkv.records.nodes import KEY_SIZE
from bkv.records.proof import MAX_TREE_VERSION, decode_proof
from bkv.records.tree import TreeHead, VerifiedPath, open_verified_record
from bkv.wire import decode, encode

FORMAT: Final = 1
"""First byte of a sealed record; bump it when the layout changes."""

SUBKEY_LABEL: Final = b"bkv/vault/record-subkey/v1"
AAD_LABEL: Final = b"bkv/vault/record/v1"
SALT_SIZE: Final = 32
TAG_SIZE: Final = 16
_HEADER_SIZE: Final = 1 + 8 + SALT_SIZE
_NONCE: Final = bytes(12)


@dataclass(frozen=True, slots=True)
class ReadSlot:
    """A record read the HSM has checked: its verified path (for the batch update) and slot."""

    record_id: bytes
    path: VerifiedPath
    slot: Slot


def _aad(fleet_id: str, record_id: bytes, written_version: int) -> bytes:
    fleet = fleet_id.encode("utf-8")
    return (
        AAD_LABEL
        + len(fleet).to_bytes(1, "big")
        + fleet
        + record_id
        + written_version.to_bytes(8, "big")
    )


def _check_record_id(record_id: bytes) -> None:
    if len(record_id) != KEY_SIZE:
        raise ValueError(f"a record id is {KEY_SIZE} bytes")


class RecordCipher:
    """Seals and opens the account slots of one fleet under its record key (never shown)."""

    __slots__ = ("_fleet_id", "_record_key", "_rng")

    def __init__(self, record_key: bytes, fleet_id: str, rng: Rng) -> None:
        if len(record_key) != RECORD_KEY_SIZE:
            raise ValueError(f"a record key is {RECORD_KEY_SIZE} bytes")
        if not 0 < len(fleet_id.encode("utf-8")) <= MAX_FLEET_ID:
            raise ValueError(f"a fleet id is 1..{MAX_FLEET_ID} bytes")
        self._record_key = record_key
        self._fleet_id = fleet_id
        self._rng = rng

    def __repr__(self) -> str:
        return f"RecordCipher(fleet_id={self._fleet_id!r})"

    def _aead(self, salt: bytes) -> ChaCha20Poly1305:
        # HKDF-Expand with L = HashLen is one block: T(1) = HMAC(PRK, info || 0x01);
        # the record key is a uniformly random HashLen-byte PRK (RFC 5869 sections 2.2, 2.3).
        subkey = hmac.digest(self._record_key, SUBKEY_LABEL + salt + b"\x01", hashlib.sha256)
        return ChaCha20Poly1305(subkey)

    def seal(self, record_id: bytes, written_version: int, slot: AccountSlot) -> bytes:
        """The sealed blob of ``slot`` for ``record_id``, written at tree ``written_version``."""
        _check_record_id(record_id)
        if not 0 <= written_version <= MAX_TREE_VERSION:
            raise ValueError("tree version out of range")
        salt = draw(self._rng, SALT_SIZE)
        header = FORMAT.to_bytes(1, "big") + written_version.to_bytes(8, "big") + salt
        aad = _aad(self._fleet_id, record_id, written_version)
        return header + self._aead(salt).encrypt(_NONCE, encode(slot), aad)

    def open(self, record_id: bytes, blob: bytes) -> AccountSlot:
        """Open a sealed slot of ``record_id``; :class:`SealingError` unless it is ours, intact."""
        _check_record_id(record_id)
        if len(blob) < _HEADER_SIZE + TAG_SIZE or blob[0] != FORMAT:
            raise SealingError("a sealed record has an unknown format")
        written_version = int.from_bytes(blob[1:9], "big")
        aad = _aad(self._fleet_id, record_id, written_version)
        try:
            plaintext = self._aead(blob[9:_HEADER_SIZE]).decrypt(_NONCE, blob[_HEADER_SIZE:], aad)
        except InvalidTag:
            raise SealingError("a sealed record does not open under the record key") from None
        try:
            return decode(AccountSlot, plaintext)
        except CodecError:
            # Authentic bytes that do not decode: written by an incompatible version.
            raise StorageError("a sealed record does not decode as an account slot") from None

    def read(self, head: TreeHead, account_id: bytes, record_id: bytes, read: bytes) -> ReadSlot:
        """Check the host's read of ``record_id`` against ``head``; open the slot it proves.

        Raises :class:`bkv.errors.RecordProofError` (bad, stale or foreign
        proof), :class:`bkv.errors.RecordMismatchError` (the blob is not the one
        the tree holds), :class:`SealingError` or :class:`StorageError`; all
        before any slot is used.
        """
        try:
            message = decode(RecordRead, read)
            proof = decode_proof(message.proof)
        except CodecError as exc:
            raise RecordProofError("the host's record read does not decode") from exc
        path, blob = open_verified_record(head, record_id, proof, message.sealed_record or None)
        if blob is None:
            return ReadSlot(record_id, path, None)
        slot = self.open(record_id, blob)
        if not hmac.compare_digest(slot.account_id, account_id):
            # Unreachable without the record key (the AAD binds the record id, a
            # hash of the account id); kept so a bug cannot serve one account another's slot.
            raise SealingError("a sealed record belongs to another account")
        return ReadSlot(record_id, path, slot)
