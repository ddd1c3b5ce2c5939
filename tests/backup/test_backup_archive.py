"""bkv.backup.archive: files and folders in, encrypted file out, and back (docs/backup.md).

Every failure leaves nothing behind: no partial backup file, no restored
directory, no temporary file or directory beside them.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from bkv.backup.archive import create_backup, restore_backup
from bkv.backup.stream import HEADER_SIZE, MIN_CHUNK_SIZE, TAG_SIZE, encrypt
from bkv.errors import (
    BackupError,
    BackupFormatError,
    BackupKeyError,
    BackupTamperedError,
    BackupTrailingDataError,
    BackupTruncatedError,
    BackupUnsafeEntryError,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
CS = MIN_CHUNK_SIZE
ENC = CS + TAG_SIZE


def _tree(root: Path) -> Path:
    """A small tree with every kind of entry bkv backs up."""
    top = root / "photos"
    (top / "2024" / "empty").mkdir(parents=True)
    (top / "a.txt").write_text("hello\n")
    (top / "2024" / "big.bin").write_bytes(os.urandom(5 * CS + 17))
    (top / "2024" / "zero.bin").write_bytes(b"")
    (top / "ünïcödé name.txt").write_text("x")
    script = top / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (top / "link").symlink_to("a.txt")
    (top / "2024" / "dirlink").symlink_to("../2024")
    os.link(top / "a.txt", top / "hard.txt")
    return top


def _snapshot(root: Path) -> dict[str, tuple[str, bytes | str | None, int]]:
    """Relative path -> (kind, content or link target, permission bits)."""
    out: dict[str, tuple[str, bytes | str | None, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            out[relative] = ("link", os.readlink(path), 0)
        elif stat.S_ISDIR(info.st_mode):
            out[relative] = ("dir", None, 0)
        else:
            out[relative] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode) & 0o100)
    return out


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_round_trip_of_a_tree_and_a_single_file(tmp_path: Path) -> None:
    top = _tree(tmp_path / "src")
    single = tmp_path / "src" / "notes.md"
    single.write_text("# notes\n")
    out = tmp_path / "out" / "b.bkv"
    out.parent.mkdir()
    seen: list[tuple[int, int]] = []
    summary = create_backup(
        [top, str(single)], out, KEY, lambda d, t: seen.append((d, t)), chunk_size=CS
    )
    assert (summary.files, summary.links) == (6, 3)  # hard.txt is a link in tar
    assert summary.content_bytes == seen[-1][0] == seen[-1][1]
    assert summary.backup_bytes == out.stat().st_size
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert _listing(out.parent) == ["b.bkv"]

    restored = tmp_path / "restored"
    result = restore_backup(out, restored, KEY)
    assert _listing(restored) == ["notes.md", "photos"]
    assert _snapshot(restored / "photos") == _snapshot(top)
    assert (restored / "notes.md").read_text() == "# notes\n"
    assert (
        os.stat(restored / "photos" / "hard.txt").st_ino
        == os.stat(restored / "photos" / "a.txt").st_ino
    )
    assert result.content_bytes == summary.content_bytes
    assert _listing(tmp_path) == ["out", "restored", "src"]


def test_restore_into_an_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data")
    create_backup([tmp_path / "f"], tmp_path / "b.bkv", KEY)
    (tmp_path / "to").mkdir()
    restore_backup(tmp_path / "b.bkv", tmp_path / "to", KEY)
    assert (tmp_path / "to" / "f").read_text() == "data"


def test_restore_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data")
    create_backup([tmp_path / "f"], tmp_path / "b.bkv", KEY)
    (tmp_path / "to").mkdir()
    (tmp_path / "to" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        restore_backup(tmp_path / "b.bkv", tmp_path / "to", KEY)
    assert _listing(tmp_path / "to") == ["keep"]
    assert _listing(tmp_path) == ["b.bkv", "f", "to"]


# --- create: refusals leave nothing ---------------------------------------------


def test_create_refuses_an_existing_output(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data")
    (tmp_path / "b.bkv").write_text("older backup")
    with pytest.raises(FileExistsError):
        create_backup([tmp_path / "f"], tmp_path / "b.bkv", KEY)
    assert (tmp_path / "b.bkv").read_text() == "older backup"
    assert _listing(tmp_path) == ["b.bkv", "f"]


def test_create_refuses_impossible_arguments(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a").mkdir()
    with pytest.raises(FileNotFoundError):
        create_backup([tmp_path / "missing"], tmp_path / "x.bkv", KEY)
    with pytest.raises(ValueError, match="both named 'a'"):
        create_backup([tmp_path / "a", tmp_path / "b" / "a"], tmp_path / "x.bkv", KEY)
    with pytest.raises(ValueError, match="inside"):
        create_backup([tmp_path / "a"], tmp_path / "a" / "x.bkv", KEY)
    with pytest.raises(ValueError, match="nothing"):
        create_backup([], tmp_path / "x.bkv", KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        create_backup([tmp_path / "a"], tmp_path / "x.bkv", KEY[:5])
    assert _listing(tmp_path) == ["a", "b"]
    assert _listing(tmp_path / "a") == []


def test_a_failure_halfway_leaves_no_partial_backup(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(20 * CS))

    def stop(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_backup([source], tmp_path / "b.bkv", KEY, stop, chunk_size=CS)
    assert _listing(tmp_path) == ["big"]


def test_special_files_are_skipped_and_listed(tmp_path: Path) -> None:
    top = tmp_path / "dir"
    top.mkdir()
    os.mkfifo(top / "pipe")
    (top / "f").write_text("x")
    summary = create_backup([top], tmp_path / "b.bkv", KEY)
    assert summary.skipped == ["dir/pipe"]
    restore_backup(tmp_path / "b.bkv", tmp_path / "to", KEY)
    assert _listing(tmp_path / "to" / "dir") == ["f"]


# --- restore: authentication failures write nothing --------------------------------


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    top = _tree(tmp_path / "src")
    out = tmp_path / "b.bkv"
    create_backup([top], out, KEY, chunk_size=CS)
    assert out.stat().st_size > HEADER_SIZE + 4 * ENC
    return out


def _assert_refused(
    backup: Path, data: bytes, error: type[BackupError], key: bytes = KEY
) -> BackupError:
    backup.write_bytes(data)
    before = _listing(backup.parent)
    with pytest.raises(error) as caught:
        restore_backup(backup, backup.parent / "restored", key)
    assert _listing(backup.parent) == before  # no restored/ and no temporary directory
    return caught.value


def test_wrong_key_writes_nothing(backup: Path) -> None:
    _assert_refused(backup, backup.read_bytes(), BackupKeyError, key=OTHER_KEY)


def test_flipped_byte_in_the_last_chunk_writes_nothing(backup: Path) -> None:
    # Everything before it authenticated and was extracted into the temporary directory;
    # the failure of the final chunk removes it all.
    data = bytearray(backup.read_bytes())
    data[-3] ^= 0x01
    _assert_refused(backup, bytes(data), BackupTamperedError)


def test_flipped_byte_in_a_middle_chunk_writes_nothing(backup: Path) -> None:
    data = bytearray(backup.read_bytes())
    data[HEADER_SIZE + 2 * ENC + 100] ^= 0x01
    _assert_refused(backup, bytes(data), BackupTamperedError)


def test_truncation_writes_nothing(backup: Path) -> None:
    data = backup.read_bytes()
    last_boundary = HEADER_SIZE + (len(data) - HEADER_SIZE - 1) // ENC * ENC
    _assert_refused(backup, data[:last_boundary], BackupTruncatedError)
    _assert_refused(backup, data[: last_boundary + 100], BackupTamperedError)
    _assert_refused(backup, data[:HEADER_SIZE], BackupTruncatedError)
    _assert_refused(backup, b"", BackupTruncatedError)


def test_reordered_and_extended_backups_write_nothing(backup: Path) -> None:
    data = backup.read_bytes()
    first, second = (
        data[HEADER_SIZE : HEADER_SIZE + ENC],
        data[HEADER_SIZE + ENC : HEADER_SIZE + 2 * ENC],
    )
    swapped = data[:HEADER_SIZE] + second + first + data[HEADER_SIZE + 2 * ENC :]
    _assert_refused(backup, swapped, BackupTamperedError)
    _assert_refused(backup, data + b"\x00" * 10, BackupTamperedError)


def test_bytes_after_a_full_final_chunk_write_nothing(tmp_path: Path) -> None:
    # tarfile pads its stream to 10240-byte records: 512 (header) + 10240 (data) + 1024
    # (end of archive) pad to 20480 bytes, 5 chunks of 4 KiB, the final one full.
    source = tmp_path / "f"
    source.write_bytes(bytes(10240))
    out = tmp_path / "b.bkv"
    create_backup([source], out, KEY, chunk_size=CS)
    data = out.read_bytes()
    assert len(data) == HEADER_SIZE + 5 * ENC
    _assert_refused(out, data + b"x", BackupTrailingDataError)


def test_not_a_backup_writes_nothing(backup: Path) -> None:
    _assert_refused(backup, b"PK\x03\x04 not a backup at all", BackupFormatError)


# --- crafted archives inside validly encrypted backups ---------------------------------


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _restore_crafted(tmp_path: Path, archive: bytes) -> None:
    out = tmp_path / "crafted.bkv"
    out.write_bytes(encrypt(KEY, archive, chunk_size=CS))
    before = _listing(tmp_path)
    try:
        restore_backup(out, tmp_path / "restored", KEY)
    finally:
        assert _listing(tmp_path) == before
        assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([(_entry("../evil"), b"x")], "outside the restore directory"),
        ([(_entry("ok/../../evil"), b"x")], "outside the restore directory"),
        ([(_entry("/tmp/evil-abs"), b"x")], "an absolute path"),
        ([(_entry("link", tarfile.SYMTYPE, "/etc/passwd"), None)], "absolute"),
        ([(_entry("link", tarfile.SYMTYPE, "../../evil"), None)], "link leading outside"),
        (
            [(_entry("up", tarfile.SYMTYPE, ".."), None), (_entry("up/evil"), b"x")],
            "link leading outside",
        ),
        ([(_entry("hard", tarfile.LNKTYPE, "../evil"), None)], "link leading outside"),
        ([(_entry("dev", tarfile.CHRTYPE), None)], "device"),
        ([(_entry("fifo", tarfile.FIFOTYPE), None)], "device or pipe"),
    ],
)
def test_unsafe_entries_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    with pytest.raises(BackupUnsafeEntryError, match=reason):
        _restore_crafted(tmp_path, _tar((_entry("fine.txt"), b"fine"), *members))


def test_nothing_is_written_through_a_link_even_inside(tmp_path: Path) -> None:
    # The data filter allows both entries (the link stays inside); bkv still refuses
    # to write through a link, so a realpath that resolves wrongly cannot be exploited.
    archive = _tar(
        (_entry("sub", tarfile.DIRTYPE), None),
        (_entry("alias", tarfile.SYMTYPE, "sub"), None),
        (_entry("alias/file"), b"x"),
    )
    with pytest.raises(BackupUnsafeEntryError, match="through a link"):
        _restore_crafted(tmp_path, archive)


def test_an_entry_may_not_replace_an_earlier_one(tmp_path: Path) -> None:
    archive = _tar(
        (_entry("target"), b"first"),
        (_entry("name", tarfile.SYMTYPE, "target"), None),
        (_entry("name"), b"written through the link"),
    )
    with pytest.raises(BackupUnsafeEntryError, match="earlier entry"):
        _restore_crafted(tmp_path, archive)


def test_a_valid_crafted_archive_restores(tmp_path: Path) -> None:
    archive = _tar(
        (_entry("dir", tarfile.DIRTYPE), None),
        (_entry("dir/file"), b"content"),
        (_entry("dir/link", tarfile.SYMTYPE, "file"), None),
        (_entry("dir/hard", tarfile.LNKTYPE, "dir/file"), None),
    )
    _restore_crafted_ok = tmp_path / "ok.bkv"
    _restore_crafted_ok.write_bytes(encrypt(KEY, archive, chunk_size=CS))
    restore_backup(_restore_crafted_ok, tmp_path / "restored", KEY)
    assert (tmp_path / "restored" / "dir" / "hard").read_bytes() == b"content"
    assert os.readlink(tmp_path / "restored" / "dir" / "link") == "file"


def test_plaintext_that_is_not_a_tar_archive(tmp_path: Path) -> None:
    with pytest.raises(BackupFormatError, match="valid archive"):
        _restore_crafted(tmp_path, b"\x01" * 2000)


def test_zero_padding_after_the_end_of_the_archive_is_read_and_dropped(tmp_path: Path) -> None:
    out = tmp_path / "padded.bkv"
    out.write_bytes(encrypt(KEY, _tar((_entry("f"), b"x")) + bytes(3 * CS), chunk_size=CS))
    restore_backup(out, tmp_path / "restored", KEY)
    assert (tmp_path / "restored" / "f").read_bytes() == b"x"


# --- memory ------------------------------------------------------------------------------


def test_memory_stays_flat_for_a_large_file(tmp_path: Path) -> None:
    size = 48 * 1024 * 1024
    source = tmp_path / "large"
    with source.open("wb") as out:
        block = os.urandom(1024 * 1024)
        for _ in range(size // len(block)):
            out.write(block)
    tracemalloc.start()
    try:
        create_backup([source], tmp_path / "b.bkv", KEY)
        _, create_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        restore_backup(tmp_path / "b.bkv", tmp_path / "to", KEY)
        _, restore_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "to" / "large").stat().st_size == size
    assert create_peak < 8 * 1024 * 1024
    assert restore_peak < 8 * 1024 * 1024
