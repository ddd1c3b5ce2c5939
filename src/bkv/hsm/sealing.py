"""The sealed form of the HSM state at rest, and the rollback rule (pure: the Sealer is injected).

Layout: a :class:`SealedState` wire message::

    fleet_id || version (u64) || Sealer.seal(encode(Snapshot), aad)
    aad = "bkv.hsm.state.v2" || len(fleet_id) (1) || fleet_id || version (8, big-endian)
          || counter_id (16)

The clear ``version`` lets the host tell states apart without opening them;
it is bound by the AAD and repeated inside the snapshot, so a blob whose
header was edited, or whose bytes were changed in any way, fails to open
(:class:`bkv.errors.SealingError`).

Sealing alone cannot show a *rollback*: an older blob, untouched, opens fine.
The HSM therefore keeps a monotonic NV counter inside its own boundary
(:mod:`bkv.keystore.counter`): the version and SHA-256 of the newest state
whose dependent response may have left the HSM. :func:`check_freshness` is the
rule applied when a state is loaded. The AAD binds the counter's random id
(:attr:`bkv.keystore.counter.CounterValue.counter_id`): a blob opens only with
the id of the counter that guarded it, so a second counter made for the same
sealing key (fresh, at version 0) cannot make an old blob look fresh; loading
it fails with :class:`bkv.errors.SealingError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from typing import Annotated

from bkv.crypto.interfaces import COUNTER_ID_SIZE, Sealer
from bkv.errors import CodecError, SealingError, StateRollbackError, StorageError
from bkv.hsm.state import MAX_STATE_SIZE, Snapshot
from bkv.protocol.messages import MAX_FLEET_ID
from bkv.wire import U64, Bytes, Text, decode, encode, message

STATE_AAD_LABEL = b"bkv.hsm.state.v2"

UNBOUND_COUNTER_ID = bytes(COUNTER_ID_SIZE)
"""The counter id of an app run without a device (unit tests, benchmarks).

The HSM process (:mod:`bkv.hsm.node`) always passes its counter's real id."""

SEAL_OVERHEAD = 64
"""Room for the Sealer's algorithm byte, salt and tag (49 bytes today, bkv.keystore.sealed)."""

MAX_SEALED_STATE = MAX_STATE_SIZE + 1024 + SEAL_OVERHEAD

MAX_SEALED_STATE_MESSAGE = MAX_SEALED_STATE + 128
"""Largest encoded :class:`SealedState` (stored with the record tree's head)."""


@message(tag=0x0706, version=1, max_size=MAX_SEALED_STATE_MESSAGE)
class SealedState:
    """A sealed :class:`Snapshot` with its fleet and version in the clear."""

    fleet_id: Annotated[str, Text(max_len=MAX_FLEET_ID, min_len=1)]
    version: U64
    sealed: Annotated[bytes, Bytes(max_len=MAX_SEALED_STATE, min_len=1)]


def state_aad(fleet_id: str, version: int, counter_id: bytes) -> bytes:
    """The AAD that binds a sealed snapshot to its fleet, version and NV counter."""
    if len(counter_id) != COUNTER_ID_SIZE:
        raise ValueError(f"counter id must be {COUNTER_ID_SIZE} bytes")
    fleet = fleet_id.encode("utf-8")
    return (
        STATE_AAD_LABEL
        + len(fleet).to_bytes(1, "big")
        + fleet
        + version.to_bytes(8, "big")
        + counter_id
    )


def seal_snapshot(
    sealer: Sealer, snapshot: Snapshot, counter_id: bytes = UNBOUND_COUNTER_ID
) -> bytes:
    """The wire bytes of the sealed snapshot, bound to the counter ``counter_id``."""
    fleet_id = snapshot.fleet_id
    aad = state_aad(fleet_id, snapshot.version, counter_id)
    sealed = sealer.seal(encode(snapshot), aad)
    return encode(SealedState(fleet_id, snapshot.version, sealed))


def peek_version(blob: bytes) -> int:
    """The clear version of a sealed state (unauthenticated: for choosing, not trusting)."""
    try:
        return decode(SealedState, blob).version
    except CodecError:
        raise StorageError("sealed state is malformed") from None


def open_snapshot(sealer: Sealer, blob: bytes, counter_id: bytes = UNBOUND_COUNTER_ID) -> Snapshot:
    """Open and check a sealed state; :class:`SealingError` if it was tampered with.

    Also :class:`SealingError` for a blob sealed under another NV counter's id.
    """
    try:
        header = decode(SealedState, blob)
    except CodecError:
        raise StorageError("sealed state is malformed") from None
    aad = state_aad(header.fleet_id, header.version, counter_id)
    plaintext = sealer.open(header.sealed, aad)
    try:
        snapshot = decode(Snapshot, plaintext)
    except CodecError:
        # Authentic bytes that do not decode: written by an incompatible version.
        raise StorageError("sealed state does not decode as a snapshot") from None
    if snapshot.version != header.version or snapshot.fleet_id != header.fleet_id:
        raise SealingError("sealed state header does not match its contents")
    return snapshot


def blob_digest(blob: bytes) -> bytes:
    """SHA-256 of a sealed state's exact bytes: what the NV counter commits to."""
    return hashlib.sha256(blob).digest()


class Freshness(enum.Enum):
    """Outcome of :func:`check_freshness` for a state that may be used."""

    CURRENT = "current"
    """The state is the one the NV counter committed: use it as is."""

    NEXT = "next"
    """Written but never committed (crash before the counter advanced): commit, then use it."""


def check_freshness(
    version: int, digest: bytes, trusted_version: int, trusted_digest: bytes
) -> Freshness:
    """Decide whether a loaded state (authenticated ``version``, blob ``digest``) may be used.

    ``trusted_*`` is the NV counter. The persist protocol is: seal version
    ``v``, the host writes the blob, the HSM advances the counter to
    ``(v, digest)``, and only then does the response that depends on ``v``
    (KE2, RegisterFinishOk, KeyReleased, ...) leave the HSM. Hence:

    - ``version == trusted_version`` and the digest matches: the committed state.
    - ``version == trusted_version + 1``: the host wrote it but the HSM
      stopped before advancing the counter, so no response that depends on it
      ever left. Using it is safe and conservative: its change (e.g. a counted
      attempt) stays counted although nobody got the answer. The caller must
      advance the counter before serving (:attr:`Freshness.NEXT`). If several
      such blobs exist (the host crashed the HSM repeatedly at that point),
      none released anything; committing any one makes the others stale.
    - older, or same version with another digest (a sibling that was never
      committed), or further ahead (the counter cannot lag by more than one
      step: that would be a forged or foreign counter) ->
      :class:`StateRollbackError`. The HSM refuses to start: availability
      loss, never a guess given back.
    """
    if version == trusted_version:
        if hmac.compare_digest(digest, trusted_digest):
            return Freshness.CURRENT
        raise StateRollbackError(
            f"sealed state version {version} is not the one the NV counter committed"
        )
    if version == trusted_version + 1:
        return Freshness.NEXT
    if version < trusted_version:
        raise StateRollbackError(
            f"sealed state version {version} is older than the NV counter ({trusted_version}):"
            " rollback refused"
        )
    raise StateRollbackError(
        f"sealed state version {version} is ahead of the NV counter ({trusted_version}) by more"
        " than one step"
    )
