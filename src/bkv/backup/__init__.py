"""Encrypted backups under the backup key (docs/backup.md).

Sans-IO cores: :mod:`bkv.backup.stream` (the streaming AEAD: header, chunks,
named failures) and :mod:`bkv.backup.recovery_key` (the typed form of a key).
The adapter :mod:`bkv.backup.archive` streams files and folders through them
(tar inside, temporary file or directory, rename on success); it is not
imported here, so importing this package does no I/O.
"""

from __future__ import annotations

from bkv.backup.recovery_key import (
    format_recovery_key,
    generate_recovery_key,
    parse_recovery_key,
)
from bkv.backup.stream import CHUNK_SIZE, HEADER_SIZE, Decryptor, Encryptor, decrypt, encrypt

__all__ = [
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "Decryptor",
    "Encryptor",
    "decrypt",
    "encrypt",
    "format_recovery_key",
    "generate_recovery_key",
    "parse_recovery_key",
]
