"""Key files for the software backends (an adapter: file I/O).

A key file holds one 32-byte key (an Ed25519 seed or an AEAD key) as 64
lowercase hex digits and a newline. It is created with mode 0600 and never
overwritten. Reading is strict: anything else is a :class:`bkv.errors.KeystoreError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from bkv.errors import KeyExistsError, KeyNotFoundError, KeystoreError

KEY_SIZE = 32
_FILE_SIZE = 2 * KEY_SIZE + 1
_HEX_DIGITS = frozenset("0123456789abcdef")


def write_key_file(path: Path, key: bytes) -> None:
    """Create ``path`` (mode 0600, exclusive) holding ``key``; refuse to overwrite."""
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError("a key file holds exactly 32 bytes")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyExistsError(f"key file {path} already exists") from None
    except OSError as exc:
        raise KeystoreError(f"cannot create key file {path}: {type(exc).__name__}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in ``path``, which must be exactly 64 lowercase hex digits and a newline."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyNotFoundError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"cannot read key file {path}: {type(exc).__name__}") from None
    body = text[:-1]
    if len(text) != _FILE_SIZE or text[-1] != "\n" or not set(body) <= _HEX_DIGITS:
        # Do not echo the content: it is a key.
        raise KeystoreError(f"key file {path} is not 64 lowercase hex digits and a newline")
    return bytes.fromhex(body)
