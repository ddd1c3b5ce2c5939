"""The client's persisted trust state: the newest accepted epoch and the last seen checkpoint.

Pure data and a strict JSON mapping; the file I/O is in :mod:`bkv.client.store_json`.
The state only ever moves forward (:func:`bkv.client.validation.validate_bundle`
returns a new value, never mutates), so a store that loses a write can only
make the client forget progress, never accept something older than it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

from bkv.errors import StorageError

STATE_VERSION: Final = 1
_HASH_SIZE: Final = 32
_MAX_UINT63: Final = (1 << 63) - 1
_MAX_UINT64: Final = (1 << 64) - 1
_FIELDS: Final = frozenset({"version", "epoch", "digest", "checkpoint_size", "checkpoint_root"})


@dataclass(frozen=True)
class ClientState:
    """Newest accepted (epoch, digest) and last seen checkpoint (size, root).

    ``epoch == 0`` means nothing was accepted yet (Plexi's first epoch is 1);
    ``checkpoint_size == 0`` means no checkpoint was seen yet.
    """

    epoch: int = 0
    digest: bytes | None = None
    checkpoint_size: int = 0
    checkpoint_root: bytes | None = None

    def __post_init__(self) -> None:
        # Plexi epochs are uint64; C2SP tree sizes stay below 2**63.
        if not 0 <= self.epoch <= _MAX_UINT64 or not 0 <= self.checkpoint_size <= _MAX_UINT63:
            raise ValueError("epoch or checkpoint_size out of range")
        if (self.epoch == 0) != (self.digest is None):
            raise ValueError("digest is set exactly when an epoch was accepted")
        if self.digest is not None and len(self.digest) != _HASH_SIZE:
            raise ValueError("digest must be 32 bytes")
        if (self.checkpoint_size == 0) != (self.checkpoint_root is None):
            raise ValueError("checkpoint_root is set exactly when a checkpoint was seen")
        if self.checkpoint_root is not None and len(self.checkpoint_root) != _HASH_SIZE:
            raise ValueError("checkpoint_root must be 32 bytes")

    def to_json_value(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "digest": None if self.digest is None else self.digest.hex(),
            "checkpoint_size": self.checkpoint_size,
            "checkpoint_root": None if self.checkpoint_root is None else self.checkpoint_root.hex(),
        }

    @classmethod
    def from_json_value(cls, value: Any) -> ClientState:
        """Strict inverse of :meth:`to_json_value`; :class:`StorageError` on anything else."""
        if not isinstance(value, dict) or set(value) != _FIELDS:
            raise StorageError("client state has missing or unknown fields")
        if value["version"] != STATE_VERSION:
            raise StorageError("unsupported client state version")
        try:
            return cls(
                epoch=_int(value["epoch"]),
                digest=_opt_hex(value["digest"]),
                checkpoint_size=_int(value["checkpoint_size"]),
                checkpoint_root=_opt_hex(value["checkpoint_root"]),
            )
        except ValueError as exc:
            raise StorageError(f"client state is inconsistent: {exc}") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StorageError("client state: integer expected")
    return int(value)


def _opt_hex(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * _HASH_SIZE:
        raise StorageError("client state: 64 hex digits expected")
    if any(c not in "0123456789abcdef" for c in value):
        raise StorageError("client state: lowercase hex expected")
    return bytes.fromhex(value)


class ClientStateStore(Protocol):
    """Where a client keeps its :class:`ClientState` (injected; see ``store_json``)."""

    def load(self) -> ClientState:
        """The saved state, or ``ClientState()`` if none was ever saved."""
        ...

    def save(self, state: ClientState) -> None:
        """Durably replace the saved state."""
        ...
