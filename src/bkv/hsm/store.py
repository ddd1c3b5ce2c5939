"""Storage adapter: the host-side file that holds the HSM's sealed state, written atomically.

One file, ``state.sealed``, always holds one complete sealed state. A write
goes to a temporary file in the same directory, is flushed with ``fsync``,
renamed over the old file (``os.replace``, atomic on POSIX), and the directory
is ``fsync``-ed so the rename itself is durable. A crash at any point leaves
either the old or the new state, never a torn one, and :meth:`StateStore.write`
returns only once the new state is on disk: that is when the HSM may advance
its NV counter and then release the response that depended on it.

The store keeps only the newest state: an older blob would still hold records
that were destroyed since (sealed, but a rollback candidate), so it is
replaced rather than kept. The store refuses to replace a state with one whose
(clear) version is not newer, which catches adapter bugs; it is not a
security boundary (the host owns this directory and can put anything there).
Rollback is caught by the HSM's NV counter (:func:`bkv.hsm.sealing.check_freshness`).

Reads are bounded: the file's size is checked (``fstat``) against
:data:`MAX_STATE_SIZE` before anything is read, so a planted huge file (or a
FIFO, or a symbolic link) is refused instead of read into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from bkv.errors import StorageError
from bkv.hsm.sealing import MAX_SEALED_STATE_MESSAGE, peek_version
from bkv.keystore.files import PRIVATE_FILE_MODE, read_small_file, replace_file

STATE_FILE: Final = "state.sealed"
PUBLIC_KEYS_FILE: Final = "public-keys.json"
MAX_STATE_SIZE: Final = MAX_SEALED_STATE_MESSAGE
"""Largest state file the store reads (the largest encoded ``SealedState``)."""

STATE_DIR_MODE: Final = 0o700


class StateStore:
    """The sealed-state file in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def __repr__(self) -> str:
        return f"StateStore({str(self.directory)!r})"

    def exists(self) -> bool:
        """Whether a state was ever written here."""
        return self.path.is_file()

    def read(self) -> bytes:
        """The newest sealed state; :class:`StorageError` if there is none or it is oversized."""
        try:
            return read_small_file(self.path, MAX_STATE_SIZE)
        except FileNotFoundError:
            raise StorageError(f"no sealed HSM state in {self.directory}") from None
        except OSError as exc:
            raise StorageError(f"cannot read sealed HSM state: {type(exc).__name__}") from None

    def write(self, blob: bytes) -> None:
        """Replace the state with ``blob`` durably; returns only after fsync of file and dir."""
        if len(blob) > MAX_STATE_SIZE:
            raise ValueError("sealed state exceeds MAX_STATE_SIZE")
        version = peek_version(blob)
        if self.exists() and peek_version(self.read()) >= version:
            raise ValueError("refusing to replace the sealed state with one that is not newer")
        write_atomically(self.path, blob)


def write_atomically(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    replace_file(path, data, mode)
