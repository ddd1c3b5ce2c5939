"""The HSM's monotonic NV counter: a version that only moves forward, kept where the host cannot.

Real HSMs defend sealed state against rollback with a monotonic counter in
their own non-volatile storage: the host can keep and restore old ciphertext,
but it cannot rewind the counter. bkv emulates that with two backends behind
:class:`MonotonicCounter`:

- :class:`FileCounter` (software backend): a small file in the HSM process's
  private key directory (never in the host-owned state directory), replaced
  atomically (temp file + fsync + rename + directory fsync).
- :class:`bkv.keystore.pkcs11.Pkcs11Counter` (PKCS#11 backend): a private
  token data object, next to the sealing key inside the token.

An advance is a compare-and-swap: :meth:`MonotonicCounter.advance` names the
exact value it moves from (version, digest and id) and refuses with
:class:`bkv.errors.NvCounterConflictError` if the stored value is any other,
checked and written under an exclusive lock. Two writers that read the same
value therefore cannot both move on from it: if they could, each would release
a response for the same state version, and a record with guess limit 1 would
answer two password checks (docs/threat-model.md, "Rollback on one HSM").
One HSM process per private directory is enforced separately, for
the life of the process (:func:`bkv.keystore.files.lock_private_directory`).

What the counter holds (:class:`CounterValue`): its own random 16-byte id,
drawn once when the counter is created, the version of the newest
sealed state whose dependent response may have left the HSM, and the SHA-256
of that exact sealed blob. The digest matters: after a crash between "blob
written" and "counter advanced", the host can make the HSM stage several
different blobs with the same next version; only one of them is ever
committed, and the digest tells it apart from its unreleased siblings. The
comparison rules live in :func:`bkv.hsm.sealing.check_freshness` (pure).
The id matters too: the HSM binds it into the AAD of every state it seals, so a
blob sealed while this counter guarded it opens only next to this counter. A
second, fresh counter made later for the same sealing key (at version 0, so
every old blob would look fresh to it) cannot vouch for any existing blob.

Stored layout (:data:`COUNTER_SIZE` bytes): ``MAGIC (8) || counter_id (16) ||
version (u64 BE) || digest (32)``, read strictly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import NvCounterConflictError, NvCounterError, StorageError
from bkv.keystore import COUNTER_ID_SIZE
from bkv.keystore.files import fsync_directory, read_small_file, replace_file

COUNTER_MAGIC: Final = b"bkvnvc02"
"""Domain and format tag of a stored counter value (02: with the counter id)."""

DIGEST_SIZE: Final = 32
MAX_COUNTER_VERSION: Final = 2**64 - 1
COUNTER_SIZE: Final = len(COUNTER_MAGIC) + COUNTER_ID_SIZE + 8 + DIGEST_SIZE
EMPTY_DIGEST: Final = bytes(DIGEST_SIZE)
"""The digest of a counter that has committed no state yet (version 0)."""


@dataclass(frozen=True)
class CounterValue:
    """A committed state version, the SHA-256 of its exact sealed blob, and the counter's id."""

    version: int
    digest: bytes
    counter_id: bytes = field(kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.counter_id, bytes) or len(self.counter_id) != COUNTER_ID_SIZE:
            raise ValueError(f"counter id must be {COUNTER_ID_SIZE} bytes")
        if type(self.version) is not int or not 0 <= self.version <= MAX_COUNTER_VERSION:
            raise ValueError("counter version must be an int in 0..2^64-1")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise ValueError("counter digest must be 32 bytes")

    def to_bytes(self) -> bytes:
        """The stored layout: magic, counter id, version, digest."""
        return COUNTER_MAGIC + self.counter_id + self.version.to_bytes(8, "big") + self.digest

    @classmethod
    def from_bytes(cls, data: bytes) -> CounterValue:
        """Strict inverse of :meth:`to_bytes`; anything else is :class:`NvCounterError`."""
        if len(data) != COUNTER_SIZE or not data.startswith(COUNTER_MAGIC):
            raise NvCounterError("NV counter value is malformed")
        start = len(COUNTER_MAGIC)
        counter_id = data[start : start + COUNTER_ID_SIZE]
        start += COUNTER_ID_SIZE
        version = int.from_bytes(data[start : start + 8], "big")
        return cls(version, data[start + 8 :], counter_id=counter_id)

    def next(self, version: int, digest: bytes) -> CounterValue:
        """The value of this counter (same id) at ``version`` / ``digest``."""
        return CounterValue(version, digest, counter_id=self.counter_id)


def initial_value(rng: Rng = default_rng) -> CounterValue:
    """A new counter's value: version 0, no digest, a fresh random id."""
    return CounterValue(0, EMPTY_DIGEST, counter_id=draw(rng, COUNTER_ID_SIZE))


@runtime_checkable
class MonotonicCounter(Protocol):
    """A monotonic, durable counter inside the HSM boundary."""

    def read(self) -> CounterValue:
        """The current value; :class:`NvCounterError` if it is missing or malformed."""
        ...

    def advance(self, expected: CounterValue, new: CounterValue) -> None:
        """Compare-and-swap: durably move from exactly ``expected`` to ``new``.

        ValueError if ``new`` is not a forward move from ``expected`` (a caller
        bug); :class:`NvCounterConflictError` if the stored value is not
        ``expected`` (another writer moved the counter); returns once ``new``
        is durable.
        """
        ...

    def close(self) -> None:
        """Release whatever the counter holds open (idempotent)."""
        ...


def check_advance(expected: CounterValue, new: CounterValue) -> None:
    """Refuse a move that is not strictly forward: the counter never goes back or repeats."""
    if not isinstance(expected, CounterValue) or not isinstance(new, CounterValue):
        raise TypeError("an NV counter moves between CounterValues")
    if new.counter_id != expected.counter_id:
        raise ValueError("a counter value carries another counter's id")
    if new.version <= expected.version:
        raise ValueError("an NV counter only moves to a higher version")


def check_unchanged(stored: CounterValue, expected: CounterValue) -> None:
    """The compare of compare-and-swap: the stored value must be exactly the expected one.

    Version, digest and id all count: a sibling blob committed at the same
    version by another writer (same version, other digest) is a conflict too.
    The values are not secret (the digest is of a blob the host stores).
    """
    if stored != expected:
        raise NvCounterConflictError(
            f"the NV counter holds version {stored.version}, not the expected value at version"
            f" {expected.version}: another writer moved it"
        )


COUNTER_FILE_NAME: Final = "nv-counter"


class FileCounter:
    """The software NV counter: one file in the HSM's private directory."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)

    @classmethod
    def create(cls, path: Path, rng: Rng = default_rng) -> FileCounter:
        """Create the counter at version 0 with a fresh id; refuse if one exists (a reset).

        Written to a temporary file first and then hard-linked into place:
        ``link`` fails if the name exists, so creation is exclusive *and* the
        counter never exists half-written.
        """
        path = Path(path)
        tmp = path.parent / f".{path.name}.new-{os.getpid()}"
        try:
            replace_file(tmp, initial_value(rng).to_bytes())
            try:
                os.link(tmp, path)
            finally:
                tmp.unlink()
            fsync_directory(path.parent)
        except FileExistsError:
            raise NvCounterError(f"NV counter {path} already exists") from None
        except OSError as exc:
            raise NvCounterError(f"cannot create NV counter: {type(exc).__name__}") from None
        return cls(path)

    @property
    def path(self) -> Path:
        """Where the counter lives."""
        return self._path

    def read(self) -> CounterValue:
        """The current value (bounded, strict read)."""
        try:
            data = read_small_file(self._path, COUNTER_SIZE)
        except FileNotFoundError:
            raise NvCounterError(f"NV counter {self._path} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NvCounterError("NV counter is a symbolic link") from None
            raise NvCounterError(f"cannot read NV counter: {type(exc).__name__}") from None
        except StorageError as exc:
            raise NvCounterError(f"NV counter: {exc}") from None
        return CounterValue.from_bytes(data)

    def advance(self, expected: CounterValue, new: CounterValue) -> None:
        """Compare-and-swap from ``expected`` to ``new`` (atomic replace; returns once on disk).

        The read, the compare and the write run under an exclusive ``flock`` on
        the counter's directory, so of two processes that both expect the same
        value, the second finds the first one's value and is refused.
        """
        check_advance(expected, new)
        with self._exclusive():
            check_unchanged(self.read(), expected)
            self._write(new)

    def close(self) -> None:
        """Nothing to release: every call opens and closes the file."""

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # The directory, not the file: the file is replaced by a rename, and a
        # lock on the old inode would not exclude a writer that opened the new
        # one. Blocking: a holder keeps it only for one read and one write.
        try:
            fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise NvCounterError(f"cannot open the NV counter: {type(exc).__name__}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _write(self, value: CounterValue) -> None:
        try:
            replace_file(self._path, value.to_bytes())
        except OSError as exc:
            raise NvCounterError(f"cannot advance NV counter: {type(exc).__name__}") from None

    def __repr__(self) -> str:
        return f"FileCounter({str(self._path)!r})"


__all__ = [
    "COUNTER_FILE_NAME",
    "COUNTER_ID_SIZE",
    "COUNTER_SIZE",
    "CounterValue",
    "FileCounter",
    "MonotonicCounter",
    "check_advance",
    "check_unchanged",
    "initial_value",
]
