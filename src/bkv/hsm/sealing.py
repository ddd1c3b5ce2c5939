"""The sealed form of the HSM state at rest (pure: the Sealer is injected).

Layout: a :class:`SealedState` wire message::

    fleet_id || version (u64) || Sealer.seal(encode(Snapshot), aad)
    aad = "bkv.hsm.state.v1" || len(fleet_id) (1) || fleet_id || version (8, big-endian)

The clear ``version`` lets the host keep the newest blob without opening it;
it is bound by the AAD and repeated inside the snapshot, so a blob whose
header was edited, or whose bytes were changed in any way, fails to open
(:class:`bkv.errors.SealingError`). What sealing cannot show on one HSM is a
*rollback*: an older blob, untouched, opens fine. Detecting that needs state
the host cannot rewind (a monotonic counter in the HSM, or a majority of the
fleet, which is what the replication issue adds).
"""

from __future__ import annotations

from typing import Annotated

from bkv.errors import CodecError, SealingError, StorageError
from bkv.hsm.messages import MAX_FLEET_ID
from bkv.hsm.state import MAX_STATE_SIZE, Snapshot
from bkv.keystore import Sealer
from bkv.wire import U64, Bytes, Text, decode, encode, message

STATE_AAD_LABEL = b"bkv.hsm.state.v1"

SEAL_OVERHEAD = 64
"""Room for the Sealer's algorithm byte, nonce and tag (29 bytes today)."""

MAX_SEALED_STATE = MAX_STATE_SIZE + 1024 + SEAL_OVERHEAD


@message(tag=0x0706, version=1, max_size=MAX_SEALED_STATE + 128)
class SealedState:
    """A sealed :class:`Snapshot` with its fleet and version in the clear."""

    fleet_id: Annotated[str, Text(max_len=MAX_FLEET_ID, min_len=1)]
    version: U64
    sealed: Annotated[bytes, Bytes(max_len=MAX_SEALED_STATE, min_len=1)]


def state_aad(fleet_id: str, version: int) -> bytes:
    """The AAD that binds a sealed snapshot to its fleet and version."""
    fleet = fleet_id.encode("utf-8")
    return STATE_AAD_LABEL + len(fleet).to_bytes(1, "big") + fleet + version.to_bytes(8, "big")


def seal_snapshot(sealer: Sealer, snapshot: Snapshot) -> bytes:
    """The wire bytes of the sealed snapshot."""
    fleet_id = snapshot.vault.fleet_id
    sealed = sealer.seal(encode(snapshot), state_aad(fleet_id, snapshot.version))
    return encode(SealedState(fleet_id, snapshot.version, sealed))


def peek_version(blob: bytes) -> int:
    """The clear version of a sealed state (unauthenticated: for choosing, not trusting)."""
    try:
        return decode(SealedState, blob).version
    except CodecError:
        raise StorageError("sealed state is malformed") from None


def open_snapshot(sealer: Sealer, blob: bytes) -> Snapshot:
    """Open and check a sealed state; :class:`SealingError` if it was tampered with."""
    try:
        header = decode(SealedState, blob)
    except CodecError:
        raise StorageError("sealed state is malformed") from None
    plaintext = sealer.open(header.sealed, state_aad(header.fleet_id, header.version))
    try:
        snapshot = decode(Snapshot, plaintext)
    except CodecError:
        # Authentic bytes that do not decode: written by an incompatible version.
        raise StorageError("sealed state does not decode as a snapshot") from None
    if snapshot.version != header.version or snapshot.vault.fleet_id != header.fleet_id:
        raise SealingError("sealed state header does not match its contents")
    return snapshot
