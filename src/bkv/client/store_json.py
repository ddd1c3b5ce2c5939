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
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Final

from bkv.client.state import ClientState
from bkv.errors import StorageError

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
        data = json.dumps(state.to_json_value(), sort_keys=True).encode("utf-8")
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
        # From now on the file exists: a later disappearance is not a first run.
        self._must_exist = True


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
