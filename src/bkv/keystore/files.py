"""Key files and durable small-file writes for the software backends (an adapter: file I/O).

The one key-file format of bkv: one 32-byte key (an Ed25519 seed or an AEAD
key) as 64 lowercase hex digits and a newline. ``bkv keystore gen-*-key
--key-file``, ``bkv operator``, ``bkv witness`` and ``bkv hsm init`` all write
it with :func:`write_key_file`, and everything that loads a key reads it with
:func:`read_key_file`, so a key made by one command loads in every other.

Creation is exclusive (``O_CREAT | O_EXCL``, mode 0600): an existing file is
never overwritten or truncated, and there is no check-then-write race. The
file is ``fsync``-ed and so is its directory, so once :func:`write_key_file`
returns the key survives a crash (a sealing key that was lost after the state
sealed under it was written would make that state unreadable). Reading is
strict and bounded: anything but the exact format is a
:class:`bkv.errors.KeystoreError`, and the error never echoes the content.

:func:`replace_file` is the atomic replace used for small files that change
(the HSM's NV counter, the public-key file): temporary file + ``fsync`` +
``rename`` + directory ``fsync``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from bkv.errors import KeyExistsError, KeyNotFoundError, KeystoreError, StorageError

KEY_SIZE = 32
KEY_FILE_SIZE = 2 * KEY_SIZE + 1
"""64 hex digits and a newline."""

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_HEX_DIGITS = frozenset(b"0123456789abcdef")


def write_key_file(path: Path, key: bytes) -> None:
    """Create ``path`` (mode 0600, exclusive) holding ``key`` durably; refuse to overwrite."""
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError("a key file holds exactly 32 bytes")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        raise KeyExistsError(f"key file {path} already exists") from None
    except OSError as exc:
        raise KeystoreError(f"cannot create key file {path}: {type(exc).__name__}") from None
    try:
        _write_all(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # never leave a half-written key behind
        raise KeystoreError(f"cannot write key file {path}: {type(exc).__name__}") from None
    os.close(fd)
    fsync_directory(path.parent)


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in ``path``, which must be exactly 64 lowercase hex digits and a newline."""
    try:
        data = read_small_file(path, KEY_FILE_SIZE)
    except FileNotFoundError:
        raise KeyNotFoundError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read key file {path}: {type(exc).__name__}") from None
    except StorageError as exc:
        raise KeystoreError(f"key file {path}: {exc}") from None
    body = data[:-1]
    if len(data) != KEY_FILE_SIZE or data[-1:] != b"\n" or not set(body) <= _HEX_DIGITS:
        # Do not echo the content: it is a key.
        raise KeystoreError(f"key file {path} is not 64 lowercase hex digits and a newline")
    return bytes.fromhex(body.decode("ascii"))


def read_small_file(path: Path, max_size: int) -> bytes:
    """Read a regular file of at most ``max_size`` bytes (stat first, then a bounded read).

    Raises :class:`OSError` (e.g. ``FileNotFoundError``) from the OS and
    :class:`StorageError` when the file is not regular or too large, so a
    planted huge file or FIFO never makes the caller read without bound.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(f"{path} is not a regular file")
        if info.st_size > max_size:
            raise StorageError(f"{path} is larger than {max_size} bytes")
        data = b""
        for _ in range(max_size + 1):  # bounded: each read returns >= 1 byte or ends
            chunk = os.read(fd, max_size + 1 - len(data))
            if not chunk:
                break
            data += chunk
            if len(data) > max_size:
                raise StorageError(f"{path} grew beyond {max_size} bytes while being read")
        return data
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Atomically replace ``path`` with ``data``: temp file + fsync + rename + directory fsync.

    A crash at any point leaves either the old or the new content, never a
    torn file, and the call returns only once the new content is durable.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a create/rename in ``directory`` durable (POSIX: fsync the directory itself)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) with mode 0700, or tighten an existing one to 0700."""
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # bounded: each write makes progress or raises
        written = os.write(fd, view)
        view = view[written:]
