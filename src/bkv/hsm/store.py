"""Storage adapter: the host-side file that holds the HSM's sealed state, written atomically.

One file, ``state.sealed``, always holds one complete sealed state. A write
goes to a temporary file in the same directory, is flushed with ``fsync``,
renamed over the old file (``os.replace``, atomic on POSIX), and the directory
is ``fsync``-ed so the rename itself is durable. A crash at any point leaves
either the old or the new state, never a torn one, and :meth:`StateStore.write`
returns only once the new state is on disk: that is when the HSM may release
the response that depended on it.

The store keeps only the newest state: an older blob would still hold records
that were destroyed since (sealed, but a rollback candidate), so it is
replaced rather than kept. The store refuses to replace a state with one whose
(clear) version is not newer, which catches adapter bugs; it is not a
security boundary (the host owns this directory and can put anything there).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bkv.errors import StorageError
from bkv.hsm.sealing import peek_version

STATE_FILE = "state.sealed"
PUBLIC_KEYS_FILE = "public-keys.json"
_FILE_MODE = 0o600


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
        """The newest sealed state; :class:`StorageError` if there is none."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"no sealed HSM state in {self.directory}") from None
        except OSError as exc:
            raise StorageError(f"cannot read sealed HSM state: {type(exc).__name__}") from None

    def write(self, blob: bytes) -> None:
        """Replace the state with ``blob`` durably; returns only after fsync of file and dir."""
        version = peek_version(blob)
        if self.exists() and peek_version(self.read()) >= version:
            raise ValueError("refusing to replace the sealed state with one that is not newer")
        write_atomically(self.path, blob)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:  # bounded: each write makes progress or raises
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
