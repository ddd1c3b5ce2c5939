"""JSON-file adapter for :class:`bkv.client.state.ClientStateStore`.

Writes are atomic (write a temporary file in the same directory, fsync, then
``os.replace``), so a crash leaves either the old or the new state, never a
torn file. A corrupt or unreadable file is a :class:`StorageError`, never a
silent reset to "nothing seen" (which would re-open rollback).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from bkv.client.state import ClientState
from bkv.errors import StorageError

#: A state file is a few hundred bytes; anything much larger is not ours.
MAX_STATE_FILE_SIZE: Final = 4096


class JsonFileStateStore:
    """Keeps the client state in one JSON file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    def load(self) -> ClientState:
        try:
            with self._path.open("rb") as handle:
                data = handle.read(MAX_STATE_FILE_SIZE + 1)
        except FileNotFoundError:
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
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            with tmp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            raise StorageError(f"cannot write client state: {exc.strerror}") from None
