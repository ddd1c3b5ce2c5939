"""The code measurement: one SHA-256 over the HSM application's source (sans-IO).

Deployment evidence (:mod:`bkv.protocol.evidence`) attests that the fleet's HSMs
run the code with this measurement. What is measured is the application as
shipped: every ``*.py`` file of the ``bkv`` package (the HSM process runs the
installed package; measuring all of it, rather than the modules one process
happens to import, leaves nothing to argue about and is what anyone can rebuild
from a release). The recipe uses standard tools only (docs/audit.md §7)::

    cd src && find bkv -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum | sha256sum

that is, the measurement is SHA-256 of the *manifest*: one line per file, the
files in byte order of their paths (``LC_ALL=C sort``), each line the file's
SHA-256 in lowercase hex, two spaces, the path relative to the directory that
holds ``bkv`` and a line feed (GNU coreutils ``sha256sum``'s output). The
adapter that reads the files is :mod:`bkv.audit.source_tree` (``bkv audit
measure``); this module only hashes what it is given.

A path the shell pipeline would not reproduce byte for byte (``xargs`` splits
on blanks and interprets quotes and backslashes; ``sha256sum`` escapes
backslashes and line feeds) is refused with ``ValueError``: such a file cannot be
measured by anyone else, so it may not be measured here either.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "MAX_SOURCE_BYTES",
    "MAX_SOURCE_FILES",
    "MAX_SOURCE_FILE_SIZE",
    "MEASURED_PACKAGE",
    "MEASURED_SUFFIX",
    "check_path",
    "is_measured",
    "manifest",
    "measure",
]

#: The directory measured, relative to the source directory (``src``).
MEASURED_PACKAGE: Final = "bkv"
#: What a measured file's name ends with (``find -name '*.py'``).
MEASURED_SUFFIX: Final = ".py"
#: Most files measured (bkv has about a hundred).
MAX_SOURCE_FILES: Final = 10_000
#: Largest single file measured.
MAX_SOURCE_FILE_SIZE: Final = 4 * 1024 * 1024
#: Largest total of all files measured.
MAX_SOURCE_BYTES: Final = 64 * 1024 * 1024

# Characters that xargs and sha256sum pass through unchanged.
_SAFE_PATH: Final = re.compile(r"[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*")


def check_path(path: str) -> str:
    """``path`` if the shell recipe reproduces it unchanged; ``ValueError`` otherwise.

    Relative, ``/``-separated, no empty, ``.`` or ``..`` component, and only
    letters, digits and ``. _ + -`` (nothing ``xargs`` splits or unquotes, nothing
    ``sha256sum`` escapes).
    """
    if not isinstance(path, str):
        raise TypeError("a measured path is a str")
    if _SAFE_PATH.fullmatch(path) is None or any(p in {".", ".."} for p in path.split("/")):
        raise ValueError(f"path {path!r} cannot be measured reproducibly")
    return path


def is_measured(path: str) -> bool:
    """Whether the file at ``path`` (relative to the source directory) is measured.

    The ``find bkv -name '*.py' -type f`` selection (the caller has already kept
    regular files only): under ``bkv/``, name ending in ``.py``.
    """
    return path.startswith(MEASURED_PACKAGE + "/") and path.endswith(MEASURED_SUFFIX)


def manifest(files: Iterable[tuple[str, bytes]]) -> bytes:
    """The ``sha256sum`` listing of ``files`` ((relative path, content) pairs), sorted by path.

    ``ValueError`` for no file, an unreproducible or repeated path, or beyond the limits.
    """
    digests: dict[bytes, str] = {}
    total = 0
    for path, content in files:
        key = check_path(path).encode("ascii")
        if not isinstance(content, bytes):
            raise TypeError("file content must be bytes")
        if key in digests:
            raise ValueError(f"path {path!r} is given twice")
        if len(digests) >= MAX_SOURCE_FILES:
            raise ValueError(f"more than {MAX_SOURCE_FILES} files")
        if len(content) > MAX_SOURCE_FILE_SIZE:
            raise ValueError(f"{path} is over {MAX_SOURCE_FILE_SIZE} bytes")
        total += len(content)
        if total > MAX_SOURCE_BYTES:
            raise ValueError(f"the files total over {MAX_SOURCE_BYTES} bytes")
        digests[key] = hashlib.sha256(content).hexdigest()
    if not digests:
        # With no file, ``xargs sha256sum`` would hash its empty stdin instead.
        raise ValueError("no file to measure")
    # LC_ALL=C sort: byte order of the lines; a path is a prefix of its line, and the
    # paths are ASCII, so byte order of the paths.
    return b"".join(
        f"{digests[key]}  {key.decode('ascii')}\n".encode("ascii") for key in sorted(digests)
    )


def measure(files: Iterable[tuple[str, bytes]]) -> bytes:
    """The 32-byte measurement: SHA-256 of :func:`manifest`."""
    return hashlib.sha256(manifest(files)).digest()
