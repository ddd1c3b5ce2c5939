"""Encrypted backups of files and folders (an adapter: file I/O).

:func:`create_backup` writes the named files and folders as a tar stream
(stdlib :mod:`tarfile`, streaming mode, PAX format, no compression) through
:class:`bkv.backup.stream.Encryptor` into a temporary file next to the output;
only once the final chunk is written and ``fsync``-ed is it linked to its name,
so a failed or interrupted backup leaves nothing (and an existing file is never
overwritten). :func:`restore_backup` decrypts as it reads and extracts into a
temporary directory beside the destination, applying the rules of tarfile's
``data`` filter (PEP 706: no absolute paths, no ``..``, no links leading
outside, no devices or pipes, nothing written outside the directory); it
renames the directory into place only after the final chunk authenticated, so
a wrong key, a modified backup or an unsafe entry leaves nothing behind.
Memory stays flat whatever the size: at most one chunk of each is held, plus
the tar module's block buffer. docs/backup.md describes the whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, cast

from bkv.backup.stream import CHUNK_SIZE, Decryptor, Encryptor
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import BackupError, BackupFormatError, BackupUnsafeEntryError

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: bytes of file content read so far (create) or bytes
of the backup read so far (restore), out of the total expected."""

READ_SIZE: Final = CHUNK_SIZE
"""Bytes of the backup file read at a time while restoring: what the decryptor then
returns is at most about one chunk, which keeps every allocation small (see
bkv.backup.stream.CHUNK_SIZE)."""
TAR_BUFFER_SIZE: Final = CHUNK_SIZE
"""tarfile's stream buffer: one push per this many tar bytes, in and out."""
RESTORE_DIR_MODE: Final = 0o700
"""The restored directory's own mode (it is created private; its entries keep theirs)."""


@dataclass
class BackupSummary:
    """What :func:`create_backup` wrote."""

    files: int = 0
    directories: int = 0
    links: int = 0
    content_bytes: int = 0
    backup_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    """Entries not backed up: devices, pipes and sockets (tar names)."""


@dataclass
class RestoreSummary:
    """What :func:`restore_backup` restored."""

    files: int = 0
    directories: int = 0
    links: int = 0
    content_bytes: int = 0


# --- create -----------------------------------------------------------------


class _EncryptingSink:
    """The file object tarfile writes to: encrypts and writes to the temporary file."""

    def __init__(self, out: BinaryIO, encryptor: Encryptor) -> None:
        self._out = out
        self._encryptor = encryptor
        self.written = 0

    def write(self, data: bytes) -> int:
        self._emit(self._encryptor.push(data))
        return len(data)

    def finish(self) -> None:
        self._emit(self._encryptor.finish())

    def _emit(self, ciphertext: bytes) -> None:
        if ciphertext:
            self._out.write(ciphertext)
            self.written += len(ciphertext)


class _CountingReader:
    """A source file as tarfile reads it, reporting progress."""

    def __init__(self, source: BinaryIO, report: Callable[[int], None]) -> None:
        self._source = source
        self._report = report

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._report(len(data))
        return data


def _raise(error: OSError) -> None:
    raise error


def _walk(path: str) -> Iterator[str]:
    """``path`` and, for a directory (not a link to one), everything under it, parents first."""
    yield path
    if not os.path.isdir(path) or os.path.islink(path):
        return
    for directory, subdirectories, files in os.walk(path, onerror=_raise):
        subdirectories.sort()
        # os.walk lists links to directories with the directories and does not follow them.
        for name in sorted(subdirectories + files):
            yield os.path.join(directory, name)


def _content_size(paths: Iterable[str]) -> int:
    """The bytes of file content a backup of ``paths`` reads (hard links read once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for top in paths:
        for path in _walk(top):
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue  # tarfile stores it as a hard link to the first one
                seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def _check_sources(paths: Iterable[str | os.PathLike[str]], out: Path) -> list[tuple[str, str]]:
    """(absolute path, name in the archive) of each source; refuse what cannot work."""
    sources: list[tuple[str, str]] = []
    names: set[str] = set()
    out_path = os.path.realpath(out)
    for given in paths:
        absolute = os.path.abspath(os.fspath(given))
        os.lstat(absolute)  # FileNotFoundError now, not halfway through
        name = os.path.basename(absolute)
        if not name:
            raise ValueError(f"{given}: cannot back up a file system root; name its entries")
        if name in names:
            raise ValueError(f"two paths are both named {name!r} in the backup")
        names.add(name)
        real = os.path.realpath(absolute)
        inside = os.path.commonpath([real, out_path]) == real
        if inside and os.path.isdir(real) and not os.path.islink(absolute):
            raise ValueError(f"the output {out} is inside {given}, which is being backed up")
        sources.append((absolute, name))
    if not sources:
        raise ValueError("nothing to back up")
    return sources


def create_backup(
    paths: Iterable[str | os.PathLike[str]],
    out_file: str | os.PathLike[str],
    key: bytes,
    progress: ProgressCallback | None = None,
    *,
    rng: Rng = default_rng,
    chunk_size: int = CHUNK_SIZE,
) -> BackupSummary:
    """Back up ``paths`` (files, folders, symlinks as links) into a new file ``out_file``.

    Each path is stored under its own name; folders with everything under them.
    Devices, pipes and sockets are skipped and listed in the summary. Raises
    ``FileExistsError`` if ``out_file`` exists, ``ValueError`` for impossible
    arguments and ``OSError`` for a source that cannot be read; in every case
    nothing is left behind.
    """
    out = Path(out_file)
    sources = _check_sources(paths, out)
    if os.path.lexists(out):
        raise FileExistsError(errno.EEXIST, "the backup file already exists", str(out))
    total = _content_size(path for path, _ in sources) if progress else 0
    summary = BackupSummary()
    done = 0

    def report(count: int) -> None:
        nonlocal done
        done += count
        summary.content_bytes += count
        if progress is not None:
            progress(done, total)

    directory = out.parent
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{out.name}.", suffix=".partial", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as raw:
            sink = _EncryptingSink(raw, Encryptor(key, rng=rng, chunk_size=chunk_size))
            with tarfile.open(
                fileobj=cast(BinaryIO, sink),  # streaming mode needs only write()
                mode="w|",
                bufsize=TAR_BUFFER_SIZE,
                format=tarfile.PAX_FORMAT,
            ) as tar:
                for source, name in sources:
                    _add_tree(tar, source, name, summary, report)
            sink.finish()
            raw.flush()
            os.fsync(raw.fileno())
        summary.backup_bytes = sink.written
        _publish(temporary, out)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return summary


def _publish(temporary: str, out: Path) -> None:
    """Give the finished backup its name, never replacing a file made meanwhile."""
    try:
        os.link(temporary, out)  # atomic, and fails if ``out`` exists
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links: check, then rename (a narrow race).
        if os.path.lexists(out):
            raise FileExistsError(
                errno.EEXIST, "the backup file already exists", str(out)
            ) from None
        os.rename(temporary, out)
        return
    os.unlink(temporary)


def _add_tree(
    tar: tarfile.TarFile,
    top: str,
    name: str,
    summary: BackupSummary,
    report: Callable[[int], None],
) -> None:
    for path in _walk(top):
        arcname = name if path == top else os.path.join(name, os.path.relpath(path, top))
        info = tar.gettarinfo(name=path, arcname=arcname)
        if info is None:  # a socket
            summary.skipped.append(arcname)
        elif info.isreg():
            with open(path, "rb") as source:
                tar.addfile(info, cast(BinaryIO, _CountingReader(source, report)))
            summary.files += 1
        elif info.isdir():
            tar.addfile(info)
            summary.directories += 1
        elif info.issym() or info.islnk():
            tar.addfile(info)
            summary.links += 1
        else:  # character and block devices, pipes
            summary.skipped.append(arcname)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- restore ----------------------------------------------------------------


class _DecryptingReader:
    """The file object tarfile reads from: the backup's authenticated plaintext.

    Reads the backup ``READ_SIZE`` bytes at a time and holds at most about that
    much plaintext beyond what tarfile asked for, as the decryptor's own pieces
    (tarfile asks for as much as a chunk holds, so they are handed over without a
    copy). At the end of the file it calls :meth:`Decryptor.finish`, so the final
    chunk is checked before ``read`` reports the end.
    """

    def __init__(self, source: BinaryIO, key: bytes, progress: ProgressCallback | None) -> None:
        self._source = source
        self._decryptor = Decryptor(key)
        self._progress = progress
        self._total = os.fstat(source.fileno()).st_size
        self._read = 0
        self._pieces: deque[bytes] = deque()
        self._held = 0
        self._at_end = False

    def _fill(self) -> None:
        block = self._source.read(READ_SIZE)
        if block:
            self._read += len(block)
            plaintext = self._decryptor.push(block)
            if self._progress is not None:
                self._progress(self._read, self._total)
        else:
            plaintext = self._decryptor.finish()
            self._at_end = True
        if plaintext:
            self._pieces.append(plaintext)
            self._held += len(plaintext)

    def open_header(self) -> None:
        """Read until the header is checked (a wrong key fails here, before any write)."""
        while self._decryptor.header is None and not self._at_end:
            self._fill()

    def read(self, size: int = -1) -> bytes:
        while not self._at_end and (size < 0 or self._held < size):
            self._fill()
        pieces = self._pieces
        if size < 0 or size >= self._held:
            data = b"".join(pieces)
            pieces.clear()
        elif len(pieces[0]) >= size:
            first = pieces.popleft()
            data = first if len(first) == size else first[:size]
            if len(first) > size:
                pieces.appendleft(first[size:])
        else:
            parts = []
            wanted = size
            while wanted:
                piece = pieces.popleft()
                if len(piece) > wanted:
                    pieces.appendleft(piece[wanted:])
                    piece = piece[:wanted]
                parts.append(piece)
                wanted -= len(piece)
            data = b"".join(parts)
        self._held -= len(data)
        return data

    def drain(self) -> None:
        """Read to the end, which checks the final chunk.

        What follows the archive's end-of-archive block (tar's zero padding) is
        read and dropped; it authenticated like the rest.
        """
        while self.read(READ_SIZE):
            pass


def restore_backup(
    backup_file: str | os.PathLike[str],
    to_dir: str | os.PathLike[str],
    key: bytes,
    progress: ProgressCallback | None = None,
) -> RestoreSummary:
    """Restore the backup ``backup_file`` into the new directory ``to_dir``.

    ``to_dir`` must not exist, or be an empty directory; it appears (mode 0700)
    only when the whole backup authenticated and every entry was written. Raises
    a :class:`BackupError` for a wrong key, a modified, truncated or extended
    backup, or an unsafe entry, ``FileExistsError`` if ``to_dir`` is not empty
    and ``OSError`` for I/O failures; in every case nothing is left behind.
    """
    destination = Path(os.path.abspath(to_dir))
    if os.path.lexists(destination) and (
        not destination.is_dir() or destination.is_symlink() or any(destination.iterdir())
    ):
        raise FileExistsError(errno.EEXIST, "not an empty directory", str(destination))
    summary = RestoreSummary()
    with open(backup_file, "rb") as source:
        reader = _DecryptingReader(source, key, progress)
        reader.open_header()
        temporary = tempfile.mkdtemp(prefix=f".{destination.name}.restore-", dir=destination.parent)
        try:
            directories = _extract(reader, temporary, summary)
            reader.drain()
            for path, mtime in reversed(directories):
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            os.chmod(temporary, RESTORE_DIR_MODE)
            os.rename(temporary, destination)  # replaces an empty directory atomically
            _fsync_directory(destination.parent)
        except BaseException:
            _remove_tree(temporary)
            raise
    return summary


def _extract(
    reader: _DecryptingReader, into: str, summary: RestoreSummary
) -> list[tuple[str, int]]:
    """Extract every entry under ``into``; return the directories' (path, mtime).

    Directories get their time at the end, as ``TarFile.extractall`` does, since
    creating their entries changes it.
    """
    directories: list[tuple[str, int]] = []
    try:
        with tarfile.open(
            fileobj=cast(BinaryIO, reader),  # streaming mode needs only read()
            mode="r|",
            bufsize=TAR_BUFFER_SIZE,
            errorlevel=2,
        ) as tar:
            for index, member in enumerate(tar):
                if member.name.startswith("/") or os.path.isabs(member.name):
                    # The data filter would strip the slash; bkv never writes one.
                    raise BackupUnsafeEntryError(
                        f"archive entry {index} is refused: an absolute path"
                    )
                try:
                    safe = tarfile.data_filter(member, into)
                except tarfile.FilterError as exc:
                    reason = _FILTER_REASONS.get(type(exc), "unsafe")
                    raise BackupUnsafeEntryError(
                        f"archive entry {index} is refused: {reason}"
                    ) from None
                _refuse_writes_through_links(into, safe, index)
                tar.extract(safe, into, set_attrs=True, filter="fully_trusted")
                if safe.isreg():
                    summary.files += 1
                    summary.content_bytes += safe.size
                elif safe.isdir():
                    summary.directories += 1
                    directories.append((os.path.join(into, safe.name), int(safe.mtime)))
                else:
                    summary.links += 1
    except BackupError:
        raise
    except (tarfile.TarError, KeyError) as exc:
        raise BackupFormatError(
            f"the backup does not hold a valid archive ({type(exc).__name__})"
        ) from None
    return directories


_FILTER_REASONS: Final[dict[type[Exception], str]] = {
    tarfile.AbsolutePathError: "an absolute path",
    tarfile.OutsideDestinationError: "a path outside the restore directory",
    tarfile.SpecialFileError: "a device or pipe",
    tarfile.AbsoluteLinkError: "a link to an absolute path",
    tarfile.LinkOutsideDestinationError: "a link leading outside the restore directory",
}


def _parts(name: str) -> list[str]:
    return [part for part in name.split("/") if part not in ("", ".")]


def _refuse_writes_through_links(into: str, member: tarfile.TarInfo, index: int) -> None:
    """Defence in depth behind the data filter, which resolves paths with ``realpath``.

    Nothing is ever written through a link on disk: no parent of an entry may be
    a symlink (or a file), an entry may not replace an earlier one (bkv writes
    each path once), a hard link must name a regular file reached the same way,
    and a symlink's target may not climb out of the restore directory even
    lexically. So a ``realpath`` that stops resolving early (a very long path, a
    loop) cannot open a way out.
    """

    def refuse(reason: str) -> BackupUnsafeEntryError:
        return BackupUnsafeEntryError(f"archive entry {index} is refused: {reason}")

    def walk(parts: list[str]) -> str:
        if ".." in parts:
            raise refuse("a path that climbs with ..")
        path = into
        for depth, part in enumerate(parts[:-1]):
            path = os.path.join(path, part)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                return os.path.join(path, *parts[depth + 1 :])
            if not stat.S_ISDIR(info.st_mode):
                raise refuse("a path through a link or a file")
        return os.path.join(into, *parts)

    target = walk(_parts(member.name))
    if os.path.lexists(target) and not (
        member.isdir() and os.path.isdir(target) and not os.path.islink(target)
    ):
        raise refuse("a path that an earlier entry already holds")
    if member.islnk():
        source = walk(_parts(member.linkname))
        if not os.path.lexists(source) or not stat.S_ISREG(os.lstat(source).st_mode):
            raise refuse("a hard link to something other than an earlier file")
    elif member.issym():
        climb = 0
        for part in _parts(member.name)[:-1] + member.linkname.split("/"):
            if part == "..":
                climb -= 1
                if climb < 0:
                    raise refuse("a link leading outside the restore directory")
            elif part not in ("", "."):
                climb += 1


def _remove_tree(path: str) -> None:
    """Remove a partial restore, making read-only directories writable first if needed."""

    def retry(function: Callable[..., object], target: str, _: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            function(target)

    shutil.rmtree(path, onerror=retry)
