"""``bkv backup create/restore`` through the installed ``bkv`` entry point (subprocesses).

Recovery keys go in on standard input (not a terminal: one key per line), as a
script would pass them; every failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bkv.backup.recovery_key import format_recovery_key
from bkv.keystore.files import write_key_file

BKV = Path(sys.executable).parent / "bkv"
KEY = bytes(range(32))
RECOVERY_KEY_LINE = re.compile(r"^\s+([0-9A-F]{4}(?:-[0-9A-F]{4}){16})$", re.MULTILINE)


def _bkv(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BKV), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line_error(done: subprocess.CompletedProcess[str], what: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("bkv: ")
    assert re.search(what, done.stderr.strip().splitlines()[-1]), done.stderr


@pytest.fixture
def source(tmp_path: Path) -> Path:
    top = tmp_path / "documents"
    (top / "sub").mkdir(parents=True)
    (top / "letter.txt").write_text("dear bkv\n")
    (top / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    return top


def test_entry_point_is_installed() -> None:
    assert BKV.exists(), "run make setup: the bkv entry point is missing from .venv/bin"


def test_new_recovery_key_then_restore_with_a_typo_first(tmp_path: Path, source: Path) -> None:
    backup = tmp_path / "docs.bkv"
    created = _bkv("backup", "create", source, "--out", backup, "--new-recovery-key")
    assert created.returncode == 0, created.stderr
    (recovery_key,) = RECOVERY_KEY_LINE.findall(created.stdout)
    assert "shown only this once" in created.stdout
    assert backup.exists()

    groups = recovery_key.split("-")
    typo = "-".join(
        [*groups[:5], groups[5][:3] + ("0" if groups[5][3] != "0" else "1"), *groups[6:]]
    )
    restored = tmp_path / "restored"
    done = _bkv(
        "backup", "restore", backup, "--to", restored, "--recovery-key",
        stdin=f"{typo}\n{recovery_key.lower().replace('-', ' ')}\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "checksum" in done.stderr and "type it again" in done.stderr
    assert "Traceback" not in done.stderr
    assert (restored / "documents" / "letter.txt").read_text() == "dear bkv\n"
    assert (restored / "documents" / "sub" / "data.bin").read_bytes() == (
        source / "sub" / "data.bin"
    ).read_bytes()


def test_recovery_key_given_on_stdin_for_create_and_restore(tmp_path: Path, source: Path) -> None:
    text = format_recovery_key(KEY)
    backup = tmp_path / "docs.bkv"
    created = _bkv("backup", "create", source, "--out", backup, "--recovery-key", stdin=text)
    assert created.returncode == 0, created.stderr
    assert text not in created.stdout + created.stderr
    done = _bkv("backup", "restore", backup, "--to", tmp_path / "r", "--recovery-key", stdin=text)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "documents" / "letter.txt").exists()


def test_key_file(tmp_path: Path, source: Path) -> None:
    key_file = tmp_path / "backup.key"
    write_key_file(key_file, KEY)
    backup = tmp_path / "docs.bkv"
    assert _bkv("backup", "create", source, "--out", backup, "--key-file", key_file).returncode == 0
    done = _bkv("backup", "restore", backup, "--to", tmp_path / "r", "--key-file", key_file)
    assert done.returncode == 0, done.stderr
    assert "1 files" in done.stderr or "2 files" in done.stderr


def test_wrong_key_is_one_line_and_writes_nothing(tmp_path: Path, source: Path) -> None:
    backup = tmp_path / "docs.bkv"
    _bkv(
        "backup",
        "create",
        source,
        "--out",
        backup,
        "--recovery-key",
        stdin=format_recovery_key(KEY),
    )
    other = format_recovery_key(bytes(32))
    done = _bkv("backup", "restore", backup, "--to", tmp_path / "r", "--recovery-key", stdin=other)
    _one_line_error(done, r"BackupKeyError: .*wrong key")
    assert sorted(os.listdir(tmp_path)) == ["docs.bkv", "documents"]


def test_tampered_backup_is_one_line_and_writes_nothing(tmp_path: Path, source: Path) -> None:
    backup = tmp_path / "docs.bkv"
    text = format_recovery_key(KEY)
    _bkv("backup", "create", source, "--out", backup, "--recovery-key", stdin=text)
    data = bytearray(backup.read_bytes())
    data[-100] ^= 0x40
    backup.write_bytes(bytes(data))
    done = _bkv("backup", "restore", backup, "--to", tmp_path / "r", "--recovery-key", stdin=text)
    _one_line_error(done, r"BackupTamperedError: .*does not authenticate")
    assert sorted(os.listdir(tmp_path)) == ["docs.bkv", "documents"]


def test_three_typos_give_up(tmp_path: Path, source: Path) -> None:
    backup = tmp_path / "docs.bkv"
    text = format_recovery_key(KEY)
    _bkv("backup", "create", source, "--out", backup, "--recovery-key", stdin=text)
    done = _bkv(
        "backup", "restore", backup, "--to", tmp_path / "r", "--recovery-key",
        stdin="nope\n" + text[:-1] + "\n" + text[1:] + "\n" + text + "\n",
    )  # fmt: skip
    _one_line_error(done, r"RecoveryKeyError: ")
    assert done.stderr.count("type it again") == 3
    assert not (tmp_path / "r").exists()


def test_usage_and_file_errors_are_one_line(tmp_path: Path, source: Path) -> None:
    missing = _bkv(
        "backup", "restore", tmp_path / "nope.bkv", "--to", tmp_path / "r", "--recovery-key"
    )
    _one_line_error(missing, r"nope\.bkv: No such file")
    no_source = _bkv(
        "backup", "create", tmp_path / "nope", "--out", tmp_path / "x.bkv", "--new-recovery-key"
    )
    _one_line_error(no_source, r"nope: No such file")
    assert "Recovery key" not in no_source.stdout  # refused before a key is shown
    (tmp_path / "exists.bkv").write_text("")
    exists = _bkv(
        "backup", "create", source, "--out", tmp_path / "exists.bkv", "--new-recovery-key"
    )
    _one_line_error(exists, r"already exists")
    empty_stdin = _bkv("backup", "create", source, "--out", tmp_path / "x.bkv", "--recovery-key")
    _one_line_error(empty_stdin, r"RecoveryKeyError: no recovery key")
    (tmp_path / "loose.key").write_text(KEY.hex() + "\n")
    (tmp_path / "loose.key").chmod(0o644)
    loose = _bkv(
        "backup",
        "create",
        source,
        "--out",
        tmp_path / "x.bkv",
        "--key-file",
        tmp_path / "loose.key",
    )
    _one_line_error(loose, r"KeystoreError: .*other users")
    not_a_backup = tmp_path / "plain.txt"
    not_a_backup.write_text("hello")
    done = _bkv(
        "backup",
        "restore",
        not_a_backup,
        "--to",
        tmp_path / "r",
        "--recovery-key",
        stdin=format_recovery_key(KEY),
    )
    _one_line_error(done, r"BackupFormatError: not a bkv backup")
    usage = _bkv("backup", "create", source, "--out", tmp_path / "x.bkv")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert not (tmp_path / "x.bkv").exists() and not (tmp_path / "r").exists()
