"""Files the HSM process writes into the host's ``state_dir``: its public keys, atomically.

The vault itself (sealed records, tree nodes, the sealed HSM state) lives in
the record store (:mod:`bkv.records`, opened by :mod:`bkv.hsm.node`). What is
left here is the public-keys file the operator publishes from: written to a
temporary file in the same directory, flushed with ``fsync``, renamed over the
old file (``os.replace``, atomic on POSIX), and the directory ``fsync``-ed, so
a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from bkv.keystore.files import PRIVATE_FILE_MODE, replace_file

PUBLIC_KEYS_FILE: Final = "public-keys.json"
STATE_DIR_MODE: Final = 0o700


def write_atomically(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    replace_file(path, data, mode)
