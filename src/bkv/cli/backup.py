"""``bkv backup``: encrypted backups of files and folders (docs/backup.md).

Sub-commands::

    bkv backup create PATH... --out FILE (--key-file F | --recovery-key | --new-recovery-key)
    bkv backup restore FILE --to DIR (--key-file F | --recovery-key)

The key is 32 bytes: a bkv key file (64 hex digits and a newline, mode 0600,
e.g. made by ``bkv keystore gen-sealing-key --key-file F``), or a recovery key
typed at a prompt (``--recovery-key``; read from standard input when it is not
a terminal, one key per line, a mistyped key asked again up to
``MAX_PROMPTS`` times), or a fresh recovery key shown once on standard output
(``--new-recovery-key``). Keys never appear on the command line.

A progress bar (rich) is drawn on standard error when it is a terminal and
the input is at least ``PROGRESS_MIN_BYTES``. Exit status 0 on success; 1 with
one line on standard error otherwise (``bkv: <ErrorClass>: ...`` for a failed
check, ``bkv: backup: ...`` for a file that cannot be read or written); 2 on
usage errors.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from bkv.backup.archive import ProgressCallback, create_backup, restore_backup
from bkv.backup.recovery_key import (
    format_recovery_key,
    generate_recovery_key,
    parse_recovery_key,
)
from bkv.errors import RecoveryKeyError
from bkv.keystore.files import check_private, read_key_file

MAX_PROMPTS: Final = 3
"""A recovery key is asked at most this many times."""
PROGRESS_MIN_BYTES: Final = 64 * 1024 * 1024
"""Smaller inputs finish too fast for a progress bar to help."""
MAX_KEY_LINE: Final = 1024
"""Most characters read for one recovery key from a non-terminal standard input."""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bkv backup`` and its sub-commands."""
    parser = subparsers.add_parser("backup", help="encrypted backups of files and folders")
    commands = parser.add_subparsers(dest="backup_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="back up files and folders into one file")
    create.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    create.add_argument("--out", type=Path, required=True, help="the new backup file")
    keys = create.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path, help="a bkv key file (64 hex digits, mode 0600)")
    keys.add_argument("--recovery-key", action="store_true", help="ask for a recovery key")
    keys.add_argument(
        "--new-recovery-key",
        action="store_true",
        help="make a recovery key, show it once, and encrypt under it",
    )
    create.set_defaults(handler=_create)

    restore = commands.add_parser("restore", help="restore a backup into a new directory")
    restore.add_argument("backup", type=Path, metavar="FILE")
    restore.add_argument(
        "--to", type=Path, required=True, help="a new (or empty) directory", metavar="DIR"
    )
    keys = restore.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path, help="a bkv key file (64 hex digits, mode 0600)")
    keys.add_argument("--recovery-key", action="store_true", help="ask for the recovery key")
    restore.set_defaults(handler=_restore)


def _create(args: argparse.Namespace) -> int:
    try:
        for path in (*args.paths, args.out.parent):
            path.lstat()  # a missing path fails now, before a key is asked or shown
        if args.out.exists():
            raise FileExistsError(errno.EEXIST, "the backup file already exists", str(args.out))
        if args.new_recovery_key:
            key = generate_recovery_key()
            print(
                "Recovery key (shown only this once; without it the backup cannot be "
                f"restored):\n\n    {format_recovery_key(key)}\n",
                flush=True,
            )
        else:
            key = _key(args)
        with _progress("Backing up", _content_size(args.paths)) as progress:
            summary = create_backup(args.paths, args.out, key, progress)
    except (OSError, ValueError) as exc:
        return _fail(exc)
    skipped = f", {len(summary.skipped)} special files skipped" if summary.skipped else ""
    print(
        f"{args.out}: {summary.files} files, {summary.directories} folders, "
        f"{summary.links} links, {summary.content_bytes} bytes{skipped}",
        file=sys.stderr,
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    try:
        args.backup.stat()  # a missing backup fails now, before a key is asked
        key = _key(args)
        with _progress("Restoring", _file_size(args.backup)) as progress:
            summary = restore_backup(args.backup, args.to, key, progress)
    except (OSError, ValueError) as exc:
        return _fail(exc)
    print(
        f"{args.to}: {summary.files} files, {summary.directories} folders, "
        f"{summary.links} links, {summary.content_bytes} bytes",
        file=sys.stderr,
    )
    return 0


def _fail(exc: OSError | ValueError) -> int:
    if isinstance(exc, OSError):
        what = exc.strerror or type(exc).__name__
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bkv: backup: {where}{what}", file=sys.stderr)
    else:
        print(f"bkv: backup: {exc}", file=sys.stderr)
    return 1


def _key(args: argparse.Namespace) -> bytes:
    if args.key_file is not None:
        check_private(args.key_file, "key file", directory=False)
        return read_key_file(args.key_file)
    return _ask_recovery_key()


def _ask_recovery_key(
    read_line: Callable[[str], str] | None = None, interactive: bool | None = None
) -> bytes:
    """Ask for a recovery key until it parses (at most MAX_PROMPTS times)."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    if read_line is None:
        read_line = getpass.getpass if interactive else _read_stdin_line
    error: RecoveryKeyError | None = None
    for _ in range(MAX_PROMPTS):
        try:
            text = read_line("Recovery key: ")
        except EOFError:
            break
        if not text and not interactive:
            break  # end of input
        try:
            return parse_recovery_key(text)
        except RecoveryKeyError as exc:
            error = exc
            print(f"bkv: recovery key: {exc}; type it again", file=sys.stderr)
    raise error or RecoveryKeyError("no recovery key on standard input")


def _read_stdin_line(_prompt: str) -> str:
    return sys.stdin.readline(MAX_KEY_LINE)


def _content_size(paths: list[Path]) -> int:
    """The size of the files named (not what is under folders): enough to decide on a bar."""
    total = 0
    for path in paths:
        with suppress(OSError):
            total += path.stat().st_size if path.is_file() else PROGRESS_MIN_BYTES
    return total


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextmanager
def _progress(what: str, estimate: int) -> Iterator[ProgressCallback | None]:
    """A rich progress bar on a terminal for large inputs; otherwise no callback."""
    if estimate < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console  # noqa: PLC0415  # only when a bar is drawn
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(
        f"[progress.description]{what}", *columns, console=Console(stderr=True), transient=True
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
