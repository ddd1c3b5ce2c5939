"""Key files and durable small-file writes (bkv.keystore.files) on a real file system.

The directory a file is replaced in may belong to someone else (the HSM's
state directory is the host's): what that someone plants there must not turn
a write into a write to another file of the writer's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bkv.errors import KeyExistsError, KeystoreError
from bkv.keystore.files import (
    make_private_directory,
    read_key_file,
    replace_file,
    write_key_file,
)

KEY = bytes(range(32))


def _temporary_name(path: Path) -> Path:
    # The name replace_file writes first (a planted file may already hold it).
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def test_replace_file_writes_durably_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "state"
    replace_file(target, b"one")
    replace_file(target, b"two", mode=0o644)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]  # no temporary left


def test_a_planted_hard_link_at_the_temporary_name_is_not_written_through(
    tmp_path: Path,
) -> None:
    # The host links the temporary name to a file of the HSM's (its sealing key):
    # the write must make a new file, not truncate and fill the linked one.
    private = tmp_path / "hsm-private"
    private.mkdir(mode=0o700)
    write_key_file(private / "sealing.key", KEY)
    state = tmp_path / "state"
    os.link(private / "sealing.key", _temporary_name(state))
    replace_file(state, b"sealed state")
    assert read_key_file(private / "sealing.key") == KEY
    assert state.read_bytes() == b"sealed state"
    assert (private / "sealing.key").stat().st_nlink == 1


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    state = tmp_path / "state"
    _temporary_name(state).symlink_to(victim)
    replace_file(state, b"sealed state")
    assert victim.read_bytes() == b"untouched"
    assert state.read_bytes() == b"sealed state"
    assert not state.is_symlink()


def test_key_files_are_exclusive_private_and_strict(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_key_file(path, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == KEY
    with pytest.raises(KeyExistsError):
        write_key_file(path, bytes(32))
    assert read_key_file(path) == KEY
    with pytest.raises(KeystoreError, match="cannot create key file"):
        write_key_file(tmp_path / "absent" / "k.key", KEY)


def test_a_new_private_directory_is_made_durable_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key fsynced inside a directory whose own entry never reached the disk is
    # lost with it after a crash: every directory created is fsynced in its parent.
    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    make_private_directory(tmp_path / "a" / "hsm-private")
    assert str(tmp_path) in synced  # the entry of "a"
    assert str(tmp_path / "a") in synced  # the entry of "hsm-private"
    assert stat.S_IMODE((tmp_path / "a" / "hsm-private").stat().st_mode) == 0o700
    synced.clear()
    make_private_directory(tmp_path / "a" / "hsm-private")  # exists: tightened only
    assert synced == []
