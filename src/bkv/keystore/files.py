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

:func:`lock_private_directory` makes one process the only user of an HSM's
private directory: an exclusive ``flock`` on a lock file inside it, held for
the life of the process. Two HSM processes on one directory would each trust
the same NV counter and each release a response for the same state version,
multiplying every record's guess limit (docs/threat-model.md, "Rollback on
one HSM"); a *copy* of the directory stands for keys extracted from an HSM
(docs/threat-model.md, "What is emulated").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bkv.errors import (
    DirectoryLockedError,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    StorageError,
)

KEY_SIZE = 32
KEY_FILE_SIZE = 2 * KEY_SIZE + 1
"""64 hex digits and a newline."""

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_HEX_DIGITS = frozenset(b"0123456789abcdef")


def check_private(path: Path, what: str, *, directory: bool) -> None:
    """Refuse (:class:`KeystoreError`) a key file or directory another user could touch.

    ``path`` must exist (else :class:`KeyNotFoundError`), be a regular file or a
    directory as asked (never a symlink), give group and others no access, and
    belong to this user: an owner could change the mode back and forth, or
    replace what is inside.
    """
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise KeyNotFoundError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeystoreError(f"cannot stat {what} {path}: {type(exc).__name__}") from None
    if directory and not stat.S_ISDIR(info.st_mode):
        raise KeystoreError(f"{what} {path} is not a directory")
    if not directory and not stat.S_ISREG(info.st_mode):
        raise KeystoreError(f"{what} {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeystoreError(f"{what} {path} is accessible to other users")
    if info.st_uid != os.getuid():
        raise KeystoreError(f"{what} {path} is not owned by this user")


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
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # never leave a half-written key behind
        if isinstance(exc, OSError):
            raise KeystoreError(f"cannot write key file {path}: {type(exc).__name__}") from None
        raise
    os.close(fd)
    try:
        fsync_directory(path.parent)
    except OSError as exc:
        raise KeystoreError(f"cannot make key file {path} durable: {type(exc).__name__}") from None


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
    torn file, and the call returns only once the new content is durable. The
    temporary file is always a new one (see :func:`_create_new`), so a name
    planted in ``path``'s directory is never written through.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    fd = _create_new(tmp, mode)
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


def _create_new(path: Path, mode: int) -> int:
    """Open a file created by this call at ``path`` (write-only), whatever held the name.

    The directory may belong to someone else (the HSM's state directory is the
    host's). A stale temporary, a symbolic link or a hard link to another file
    of this user planted at ``path`` is unlinked, never opened: opening it with
    ``O_TRUNC`` would overwrite the file it names (e.g. the sealing key). Should
    the name be planted again in between, ``O_EXCL`` refuses (``FileExistsError``).
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)


def fsync_directory(directory: Path) -> None:
    """Make a create/rename in ``directory`` durable (POSIX: fsync the directory itself)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) with mode 0700, or tighten an existing one to 0700.

    Each directory created is made durable in its parent (POSIX: fsync the
    parent), so that a key written and fsynced inside it later cannot vanish
    with the directory's own entry in a crash. :class:`KeystoreError` if it
    cannot be made.
    """
    directory = Path(directory)
    missing: list[Path] = []
    for candidate in (directory, *directory.parents):  # bounded: the path's components
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    try:
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile: fsync its entry anyway
                new.mkdir(mode=PRIVATE_DIR_MODE if new == directory else 0o777)
            fsync_directory(new.parent)
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise KeystoreError(
            f"cannot make private directory {directory}: {type(exc).__name__}"
        ) from None


LOCK_FILE_NAME: Final = "bkv.lock"
"""The lock file :func:`lock_private_directory` creates inside the directory it locks."""

_MAX_LOCK_FILE_SIZE: Final = 32
"""The lock file holds the holder's pid in decimal (informative only, never trusted)."""


class PrivateDirectoryLock:
    """An exclusive ``flock`` on a lock file (a private directory's), held until :meth:`release`.

    Dropping the object does not release the lock: the descriptor stays open,
    and so the lock held, until :meth:`release` or the end of the process.
    """

    __slots__ = ("_fd", "_path")

    def __init__(self, path: Path, fd: int) -> None:
        self._path = path
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        """The lock file."""
        return self._path

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (idempotent); the lock file stays for the next holder."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PrivateDirectoryLock({str(self._path)!r}, held={self.held})"


def lock_private_directory(directory: Path) -> PrivateDirectoryLock:
    """Take the exclusive, non-blocking lock on ``directory`` for the life of this process.

    The lock file (``LOCK_FILE_NAME``, mode 0600) is created if missing and
    never removed: removing it while held would let a second process lock a
    new file of the same name. Raises :class:`DirectoryLockedError` if another
    process (or another lock object of this process) holds it, and
    :class:`KeystoreError` if the directory or lock file is unusable.
    """
    directory = Path(directory)
    return hold_lock_file(directory / LOCK_FILE_NAME, f"the private directory {directory}")


def hold_lock_file(path: Path, what: str) -> PrivateDirectoryLock:
    """The exclusive, non-blocking ``flock`` on ``path`` (created 0600), standing for ``what``.

    :func:`lock_private_directory` for a directory; the PKCS#11 NV counter for
    a lock file next to its token. Same errors as :func:`lock_private_directory`.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise KeystoreError(f"cannot open lock file {path}: {type(exc).__name__}") from None
    try:
        _check_lock_file(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _lock_holder(path)
        raise DirectoryLockedError(
            f"another process{holder} holds {what} (lock file {path.name});"
            " only one HSM process may use it"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise KeystoreError(f"cannot lock {path}: {type(exc).__name__}") from None
    except BaseException:
        os.close(fd)
        raise
    _record_holder(fd)
    return PrivateDirectoryLock(path, fd)


def _check_lock_file(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise KeystoreError(f"lock file {path} is not a regular file")
    if info.st_uid != os.getuid():
        raise KeystoreError(f"lock file {path} is not owned by this user")
    if info.st_nlink != 1:
        # Taking the lock truncates the file: through a hard link, another file.
        raise KeystoreError(f"lock file {path} has other links")
    if stat.S_IMODE(info.st_mode) != PRIVATE_FILE_MODE:
        os.fchmod(fd, PRIVATE_FILE_MODE)


def _record_holder(fd: int) -> None:
    # Informative only (error messages name the holder); the flock is the lock.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)


def _lock_holder(path: Path) -> str:
    try:
        text = read_small_file(path, _MAX_LOCK_FILE_SIZE).decode("ascii").strip()
    except (OSError, StorageError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdecimal() and len(text) <= 10 else ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # bounded: each write makes progress or raises
        written = os.write(fd, view)
        view = view[written:]
