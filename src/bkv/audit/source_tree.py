"""Reads a source tree for the code measurement (an adapter: file I/O).

:func:`source_files` selects and reads exactly the files that the recipe of
:mod:`bkv.protocol.measurement` hashes, ``find bkv -name '*.py' -type f`` run in
the source directory: regular files (symbolic links are neither followed nor
measured, as ``find -P`` does) whose name ends in ``.py``, anywhere under
``bkv/``, hidden directories included. Every read is bounded. Anything that
keeps the tree from being measured (a missing directory, an unreadable file, a
path the shell recipe would not reproduce, a limit) is a :class:`ConfigError`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import bkv
from bkv.errors import ConfigError, StorageError
from bkv.keystore.files import read_small_file
from bkv.protocol.measurement import (
    MAX_SOURCE_FILE_SIZE,
    MAX_SOURCE_FILES,
    MEASURED_PACKAGE,
    is_measured,
    manifest,
    measure,
)


def default_source_dir() -> Path:
    """The directory that holds the running ``bkv`` package (``src`` in a checkout)."""
    return Path(bkv.__file__).resolve().parent.parent


def _raise(error: OSError) -> None:
    raise ConfigError(f"cannot list {error.filename}: {type(error).__name__}")


def source_files(source_dir: Path) -> list[tuple[str, bytes]]:
    """The measured files under ``source_dir``: (path relative to it, content) pairs."""
    source_dir = Path(source_dir)
    package = source_dir / MEASURED_PACKAGE
    try:
        info = os.stat(package, follow_symlinks=False)
    except OSError:
        raise ConfigError(f"{source_dir} has no {MEASURED_PACKAGE}/ directory") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{package} is not a directory (symbolic links are not measured)")
    files: list[tuple[str, bytes]] = []
    for directory, _, names in os.walk(package, onerror=_raise, followlinks=False):
        for name in names:
            path = Path(directory) / name
            relative = path.relative_to(source_dir).as_posix()
            if not is_measured(relative):
                continue
            try:
                if not stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode):
                    continue  # find -type f: symbolic links and special files are left out
                content = read_small_file(path, MAX_SOURCE_FILE_SIZE)
            except (OSError, StorageError) as exc:
                raise ConfigError(f"cannot read {relative}: {exc}") from None
            files.append((relative, content))
            if len(files) > MAX_SOURCE_FILES:
                raise ConfigError(f"more than {MAX_SOURCE_FILES} files under {package}")
    return files


def source_manifest(source_dir: Path) -> bytes:
    """The ``sha256sum`` listing of the measured files (what the measurement hashes)."""
    try:
        return manifest(source_files(source_dir))
    except ValueError as exc:
        raise ConfigError(f"{source_dir} cannot be measured: {exc}") from None


def measure_source(source_dir: Path) -> tuple[bytes, int]:
    """The measurement of ``source_dir`` and the number of files it covers."""
    files = source_files(source_dir)
    try:
        return measure(files), len(files)
    except ValueError as exc:
        raise ConfigError(f"{source_dir} cannot be measured: {exc}") from None
