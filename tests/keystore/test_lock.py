"""One HSM process per private directory: the exclusive lock of ``bkv.keystore.files``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from second_process import worker

from bkv.errors import ConfigError, DirectoryLockedError, KeystoreError
from bkv.keystore.files import LOCK_FILE_NAME, lock_private_directory


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hsm-private"
    directory.mkdir(mode=0o700)
    return directory


def test_a_second_process_cannot_lock_a_held_private_directory(private_dir: Path) -> None:
    with lock_private_directory(private_dir), worker("lock", str(private_dir)) as other:
        assert other.answer() == "refused DirectoryLockedError"
    with worker("lock", str(private_dir)) as other:
        assert other.answer() == "locked"  # released by the first holder
        with pytest.raises(DirectoryLockedError, match=r"another process \(pid \d+\)"):
            lock_private_directory(private_dir)
    with lock_private_directory(private_dir) as lock:  # released when the other process ended
        assert lock.held


def test_the_lock_is_held_until_released_and_refuses_a_second_holder(private_dir: Path) -> None:
    lock = lock_private_directory(private_dir)
    assert lock.held and lock.path == private_dir / LOCK_FILE_NAME
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
    with pytest.raises(DirectoryLockedError) as refused:
        lock_private_directory(private_dir)  # a second holder in this process too
    assert isinstance(refused.value, ConfigError)
    del refused
    assert repr(lock) == f"PrivateDirectoryLock({str(lock.path)!r}, held=True)"
    lock.release()
    lock.release()  # idempotent
    assert not lock.held and "held=False" in repr(lock)
    lock_private_directory(private_dir).release()
    assert lock.path.exists()  # never removed: a removed lock file could be locked twice


def test_dropping_the_lock_object_does_not_release_the_lock(private_dir: Path) -> None:
    lock_private_directory(private_dir)  # dropped at once: held for the life of the process
    with worker("lock", str(private_dir)) as other:
        assert other.answer() == "refused DirectoryLockedError"
    # Close the descriptor by hand so the test leaks nothing into the rest of the session.
    lock_file = str(private_dir / LOCK_FILE_NAME)
    fds = [fd for fd in os.listdir("/proc/self/fd") if _target(fd) == lock_file]
    assert len(fds) == 1
    os.close(int(fds[0]))


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_loose_lock_file_mode_is_tightened(private_dir: Path) -> None:
    (private_dir / LOCK_FILE_NAME).write_bytes(b"")
    (private_dir / LOCK_FILE_NAME).chmod(0o644)
    with lock_private_directory(private_dir) as lock:
        assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600


def test_unusable_directories_and_lock_files_are_refused(private_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="cannot open lock file"):
        lock_private_directory(tmp_path / "absent")
    (private_dir / LOCK_FILE_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeystoreError, match="cannot open lock file"):
        lock_private_directory(private_dir)
    assert not (tmp_path / "elsewhere").exists()  # not created through the link
    (private_dir / LOCK_FILE_NAME).unlink()
    os.mkfifo(private_dir / LOCK_FILE_NAME, 0o600)
    with pytest.raises(KeystoreError, match="not a regular file"):
        lock_private_directory(private_dir)


def test_a_lock_file_linked_to_another_file_is_refused_and_left_alone(
    private_dir: Path, tmp_path: Path
) -> None:
    # Taking the lock truncates the file to record the holder: through a planted
    # hard link that would empty the other file.
    other = tmp_path / "other"
    other.write_bytes(b"someone's data")
    os.link(other, private_dir / LOCK_FILE_NAME)
    with pytest.raises(KeystoreError, match="has other links"):
        lock_private_directory(private_dir)
    assert other.read_bytes() == b"someone's data"


def test_a_child_process_does_not_inherit_the_lock(private_dir: Path) -> None:
    # Inherited, the lock would outlive this process in its children.
    lock = lock_private_directory(private_dir)
    child = subprocess.Popen(  # close_fds=False: only O_CLOEXEC keeps the lock out
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        close_fds=False,
    )
    try:
        lock.release()
        with worker("lock", str(private_dir)) as other:
            assert other.answer() == "locked"  # the child does not hold it
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
