"""JSON-file adapter for :class:`bkv.client.state.ClientStateStore`.

Writes are atomic: the state goes to a uniquely named temporary file in the
same directory (so concurrent writers never share one), which is fsynced, then
``os.replace``\\ d over the state file, and the directory is fsynced so the
rename itself survives a crash. A crash leaves either the old or the new state,
never a torn file. A corrupt or unreadable file is a :class:`StorageError`,
never a silent reset to "nothing seen" (which would re-open rollback).

A *missing* file means "nothing seen yet" -- the first run. A caller that knows
it has saved state before (an app after its first successful validation, an
auditor given ``--state``) passes ``must_exist=True``: then a deleted file is a
:class:`StorageError` too, instead of a silent reset that would let an old
bundle or a forked log be accepted again.

Saving is monotone. Two processes (or two store objects) may each load the same
state, validate different bundles and save: without a check the later save
would overwrite a newer epoch with an older one (a lost update that re-opens
rollback). So :meth:`JsonFileStateStore.save` takes an exclusive
``fcntl.flock`` on a sibling lock file (``<name>.lock``; the state file itself
is replaced, so it cannot carry the lock), re-reads the stored state under the
lock and refuses to replace it with an older one:

- a lower epoch, or the same epoch with another digest: :class:`EpochRollbackError`;
- a smaller checkpoint, or the same checkpoint size with another root:
  :class:`ConsistencyProofError` (the state would forget a checkpoint already seen).

Saving the stored state again, or a state that moves both forward, succeeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from bkv.client.state import ClientState
from bkv.errors import ConsistencyProofError, EpochRollbackError, StorageError

#: A state file is a few hundred bytes; anything much larger is not ours.
MAX_STATE_FILE_SIZE: Final = 4096


class JsonFileStateStore:
    """Keeps the client state in one JSON file.

    ``must_exist``: the caller has saved state before, so a missing file is an error
    (:class:`StorageError`), not a fresh start.
    """

    def __init__(self, path: str | os.PathLike[str], *, must_exist: bool = False) -> None:
        self._path = Path(path)
        self._must_exist = must_exist

    def load(self) -> ClientState:
        try:
            with self._path.open("rb") as handle:
                data = handle.read(MAX_STATE_FILE_SIZE + 1)
        except FileNotFoundError:
            if self._must_exist:
                raise StorageError(
                    "client state file is missing; refusing to forget what was seen "
                    "(rollback protection)"
                ) from None
            return ClientState()
        except OSError as exc:
            raise StorageError(f"cannot read client state: {exc.strerror}") from None
        if len(data) > MAX_STATE_FILE_SIZE:
            raise StorageError("client state file is too large")
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise StorageError("client state file is not valid JSON") from None
        return ClientState.from_json_value(value)

    def save(self, state: ClientState) -> None:
        """Persist ``state`` atomically, refusing to go back from what is stored.

        Raises :class:`EpochRollbackError` / :class:`ConsistencyProofError` when the
        stored state (re-read under an exclusive lock) is newer, :class:`StorageError`
        when the file cannot be read or written.
        """
        data = json.dumps(state.to_json_value(), sort_keys=True).encode("utf-8")
        with self._exclusive_lock():
            check_not_older(state, self.load())
            self._replace(data)
        # From now on the file exists: a later disappearance is not a first run.
        self._must_exist = True

    @contextlib.contextmanager
    def _exclusive_lock(self) -> Iterator[None]:
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot lock client state: {exc.strerror}") from None
        try:
            # Blocks until other writers are done; released when fd is closed.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _replace(self, data: bytes) -> None:
        directory = self._path.parent
        try:
            fd, tmp_name = tempfile.mkstemp(
                dir=directory, prefix=f".{self._path.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise StorageError(f"cannot write client state: {exc.strerror}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
            _fsync_directory(directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write client state: {exc.strerror}") from None


def check_not_older(new: ClientState, stored: ClientState) -> None:
    """Raise unless ``new`` is at least as far along as ``stored`` in epoch and checkpoint."""
    if new.epoch < stored.epoch:
        raise EpochRollbackError(
            f"refusing to save epoch {new.epoch}: epoch {stored.epoch} is already stored"
        )
    if new.epoch == stored.epoch and not _same(new.digest, stored.digest):
        raise EpochRollbackError(f"epoch {new.epoch} is already stored with another digest")
    if new.checkpoint_size < stored.checkpoint_size:
        raise ConsistencyProofError(
            f"refusing to save checkpoint size {new.checkpoint_size}: size "
            f"{stored.checkpoint_size} is already stored"
        )
    if new.checkpoint_size == stored.checkpoint_size and not _same(
        new.checkpoint_root, stored.checkpoint_root
    ):
        raise ConsistencyProofError(
            f"checkpoint size {new.checkpoint_size} is already stored with another root (fork)"
        )


def _same(a: bytes | None, b: bytes | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a, b)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
