"""The host-to-HSM link key on disk (an adapter: file I/O).

One 32-byte key in bkv's key-file format (:mod:`bkv.keystore.files`: 64 hex
digits and a newline, created exclusively with mode 0600). ``bkv hsm init``
creates it; the HSM reads it from ``[hsm] link_key_file`` and the host from
``[host] hsm_link_key_file``. Whoever reads this file can talk to the HSM as
its host (:mod:`bkv.protocol.hsm_link`), so reading refuses a file that group
or others may read or write, or that another user owns (it could change the
mode back and forth).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from bkv.keystore.files import check_private, read_key_file, write_key_file
from bkv.protocol.hsm_link import LINK_KEY_SIZE


def create_link_key(path: Path) -> None:
    """Create ``path`` holding a fresh random link key; :class:`KeyExistsError` if it exists."""
    write_key_file(path, secrets.token_bytes(LINK_KEY_SIZE))


def read_link_key(path: Path) -> bytes:
    """The link key in ``path``, a private key file of this user (:class:`KeystoreError`)."""
    check_private(path, "link key file", directory=False)
    return read_key_file(path)
