"""bkv.tlog.log and bkv.tlog.store_sqlite: stored-hash layout, proofs, durability, misuse."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import StorageError
from bkv.tlog.log import (
    MAX_ENTRY_SIZE,
    LogStore,
    MemoryHashStore,
    MerkleLog,
    stored_hash_count,
    stored_hash_index,
)
from bkv.tlog.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from bkv.tlog.store_sqlite import SqliteLogStore


def entries_of(n: int, start: int = 0) -> list[bytes]:
    return [b"entry-%d" % i for i in range(start, start + n)]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStore]:
    if request.param == "memory":
        yield MemoryHashStore()
    else:
        with SqliteLogStore(tmp_path / "log.sqlite") as s:
            yield s


def test_stored_hash_layout_matches_append_order() -> None:
    # Enumerate (level, index) in the order appends produce them and compare.
    order: list[tuple[int, int]] = []
    for n in range(64):
        order.append((0, n))
        level = 0
        while (n + 1) % (1 << (level + 1)) == 0:
            level += 1
            order.append((level, (n + 1) // (1 << level) - 1))
        assert len(order) == stored_hash_count(n + 1)
    for position, (level, index) in enumerate(order):
        assert stored_hash_index(level, index) == position


def test_stored_hash_helpers_reject_negative() -> None:
    with pytest.raises(ValueError):
        stored_hash_count(-1)
    with pytest.raises(ValueError):
        stored_hash_index(-1, 0)
    with pytest.raises(ValueError):
        stored_hash_index(0, -1)


def test_log_roots_and_proofs(store: LogStore) -> None:
    log = MerkleLog(store)
    assert log.size == 0
    assert log.root() == EMPTY_ROOT
    data = entries_of(40)
    hashes = [leaf_hash(e) for e in data]
    for n, entry in enumerate(data, start=1):
        assert log.append(entry) == n - 1
        assert log.root() == root_hash(hashes[:n])
    for n in range(1, 41):
        root = log.root(n)
        assert root == root_hash(hashes[:n])
        for i in range(n):
            verify_inclusion(hashes[i], i, n, log.inclusion_proof(i, n), root)
        for m in range(1, n + 1):
            verify_consistency(m, n, log.consistency_proof(m, n), log.root(m), root)
    assert log.entries(3, 6) == data[3:6]
    assert log.leaf_hash_at(7) == hashes[7]


def test_append_many_equals_single_appends(store: LogStore) -> None:
    one = MerkleLog(MemoryHashStore())
    for e in entries_of(300):
        one.append(e)
    batched = MerkleLog(store)
    assert batched.append_many(entries_of(100)) == 0
    assert batched.append_many(entries_of(200, 100)) == 100
    assert batched.size == 300
    assert batched.root() == one.root()
    assert batched.inclusion_proof(123, 300) == one.inclusion_proof(123, 300)
    assert batched.consistency_proof(77, 300) == one.consistency_proof(77, 300)


def test_sqlite_reopen_keeps_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with SqliteLogStore(path) as s:
        log = MerkleLog(s)
        log.append_many(entries_of(37))
        root = log.root()
    with SqliteLogStore(path) as s:
        log = MerkleLog(s)
        assert log.size == 37
        assert log.root() == root
        log.append(b"after restart")
        ref = MerkleLog(MemoryHashStore())
        ref.append_many([*entries_of(37), b"after restart"])
        assert log.root() == ref.root()


def test_sqlite_detects_missing_hashes(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with SqliteLogStore(path) as s:
        MerkleLog(s).append_many(entries_of(5))
    db = sqlite3.connect(path)
    db.execute("DELETE FROM hashes WHERE idx = (SELECT MAX(idx) FROM hashes)")
    db.commit()
    db.close()
    with pytest.raises(StorageError):
        SqliteLogStore(path)


def test_second_writer_is_refused_and_nothing_changes(store: LogStore) -> None:
    first = MerkleLog(store)
    second = MerkleLog(store)
    first.append(b"a")
    with pytest.raises(StorageError):
        second.append(b"b")
    assert store.size() == 1
    assert second.size == 0
    assert MerkleLog(store).root() == first.root()
    second.reload()
    assert second.size == 1
    second.append(b"b")
    first.reload()
    assert first.root() == second.root()


def test_store_rejects_wrong_hash_count(store: LogStore) -> None:
    with pytest.raises(StorageError):
        store.append(0, [b"a"], [])
    assert store.size() == 0


def test_store_missing_reads(store: LogStore) -> None:
    MerkleLog(store).append_many(entries_of(3))
    with pytest.raises(StorageError):
        store.read_hashes([stored_hash_count(3)])
    with pytest.raises(StorageError):
        store.read_entries(2, 4)


def test_append_misuse(store: LogStore) -> None:
    log = MerkleLog(store)
    with pytest.raises(ValueError):
        log.append_many([])
    with pytest.raises(ValueError):
        log.append(b"x" * (MAX_ENTRY_SIZE + 1))
    with pytest.raises(TypeError):
        log.append("text")  # type: ignore[arg-type]
    assert log.size == 0
    log.append(b"x" * MAX_ENTRY_SIZE)
    assert log.entries(0, 1) == [b"x" * MAX_ENTRY_SIZE]


def test_read_misuse() -> None:
    log = MerkleLog(MemoryHashStore())
    log.append_many(entries_of(4))
    for call in (
        lambda: log.root(5),
        lambda: log.root(-1),
        lambda: log.inclusion_proof(4, 4),
        lambda: log.inclusion_proof(0, 0),
        lambda: log.consistency_proof(0, 4),
        lambda: log.consistency_proof(3, 2),
        lambda: log.entries(3, 5),
        lambda: log.leaf_hash_at(4),
        lambda: log.subtree_hash(2, 1),
        lambda: log.subtree_hashes(1, 0, 3),
    ):
        with pytest.raises(ValueError):
            call()


class CountingStore(MemoryHashStore):
    """A real memory store that also counts how many hashes each read asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        self.reads.append(len(indexes))
        return super().read_hashes(indexes)


def test_proofs_read_logarithmically_many_hashes() -> None:
    store = CountingStore()
    log = MerkleLog(store)
    log.append_many(entries_of(5000))
    for index, size in [(0, 5000), (4999, 5000), (1234, 4097), (2047, 2049)]:
        store.reads.clear()
        log.inclusion_proof(index, size)
        assert store.reads == [store.reads[0]]  # one batch
        assert store.reads[0] <= 2 * size.bit_length()
    for old, new in [(1, 5000), (4097, 5000), (3333, 4999)]:
        store.reads.clear()
        log.consistency_proof(old, new)
        assert len(store.reads) == 1
        assert store.reads[0] <= 2 * new.bit_length()


@given(st.integers(min_value=1, max_value=300), st.data())
def test_generated_proofs_verify(size: int, data: st.DataObject) -> None:
    log = MerkleLog(MemoryHashStore())
    log.append_many(entries_of(size))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    old = data.draw(st.integers(min_value=1, max_value=size))
    root = log.root()
    verify_inclusion(
        leaf_hash(entries_of(1, index)[0]), index, size, log.inclusion_proof(index), root
    )
    verify_consistency(old, size, log.consistency_proof(old), log.root(old), root)


def test_sqlite_two_processes_worth_of_writers(tmp_path: Path) -> None:
    # Two connections to one file (as two processes would have): the second
    # writer's stale view is refused and the file stays consistent.
    path = tmp_path / "log.sqlite"
    with SqliteLogStore(path) as a, SqliteLogStore(path) as b:
        log_a, log_b = MerkleLog(a), MerkleLog(b)
        log_a.append_many(entries_of(3))
        with pytest.raises(StorageError):
            log_b.append(b"stale")
        assert MerkleLog(b).root() == log_a.root()


def test_sqlite_error_becomes_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with SqliteLogStore(path, busy_timeout_ms=0) as s:
        log = MerkleLog(s)
        log.append(b"a")
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageError, match="OperationalError"):
                log.append(b"b")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert log.size == 1
        log.append(b"b")
        assert s.size() == 2


def test_sqlite_failed_commit_rolls_back_and_store_stays_usable(tmp_path: Path) -> None:
    # A COMMIT that fails (here: denied by an authorizer, standing in for an I/O
    # error) must leave no open transaction: nothing half-written is served, and
    # the next append works.
    path = tmp_path / "log.sqlite"
    with SqliteLogStore(path) as s:
        log = MerkleLog(s)
        log.append(b"kept")

        def deny_commit(action: int, arg1: str | None, *_: object) -> int:
            if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        s._db.set_authorizer(deny_commit)
        with pytest.raises(StorageError):
            log.append(b"lost")
        s._db.set_authorizer(None)
        assert not s._db.in_transaction
        assert s.size() == 1
        log.reload()
        assert log.append(b"next") == 1
    with SqliteLogStore(path) as s:
        assert MerkleLog(s).entries(0, 2) == [b"kept", b"next"]
