"""The host's stores: commits are checked and atomic, reads fail typed, SQLite is durable.

(New store operations: test_records_store_features.py; PostgreSQL only:
test_records_postgres.py.)

The store is untrusted, so these are availability properties (a bad store
denies service, the HSM's checks catch the rest), plus the durability
settings the design relies on.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from records_world import Vault, blob_of, key_of, sealed_state_of

from bkv.errors import StorageError
from bkv.records.nodes import Branch, Interior, NodeId, encode_node, encode_position, record_hash
from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import TreeStore, TreeUpdate, apply_batch, read_proof, verify_read


@pytest.fixture
def vault(store: TreeStore) -> Vault:
    vault = Vault(store)
    vault.change({key_of(i): blob_of(i) for i in range(10)})
    return vault


def _snapshot(store: TreeStore) -> tuple[object, ...]:
    ids = store.node_ids()  # type: ignore[attr-defined]
    return store.head(), store.sealed_state(), ids, store.read_record(key_of(1))


def _sealed(update: TreeUpdate) -> bytes:
    return sealed_state_of(update.new_head)


def _next_update(vault: Vault, blobs: dict[bytes, bytes | None]) -> TreeUpdate:
    """The update of a batch, computed but not committed."""
    proofs = [read_proof(vault.store, vault.head, key) for key in blobs]
    changes = {k: None if b is None else record_hash(vault.tree_id, k, b) for k, b in blobs.items()}
    return apply_batch(vault.head, proofs, changes)


def test_a_commit_records_nodes_records_and_head(vault: Vault) -> None:
    assert vault.store.head() == vault.head
    assert vault.store.read_record(key_of(3)) == blob_of(3)
    vault.change({key_of(3): None})
    assert vault.store.read_record(key_of(3)) is None
    assert (
        verify_read(vault.head, key_of(3), read_proof(vault.store, vault.head, key_of(3))) is None
    )


def test_get_nodes_by_id(vault: Vault) -> None:
    ids = sorted(vault.store.node_ids())[:5]  # type: ignore[attr-defined]
    assert len(vault.store.get_nodes(ids)) == 5
    missing = NodeId(ids[0].depth, ids[0].prefix, bytes(32))
    with pytest.raises(StorageError):
        vault.store.get_nodes([*ids, missing])


def test_an_update_is_applied_once_and_only_on_its_head(vault: Vault) -> None:
    update = _next_update(vault, {key_of(1): blob_of(1, 1)})
    vault.store.commit(update, {}, _sealed(update))
    before = _snapshot(vault.store)
    with pytest.raises(StorageError, match="head"):
        vault.store.commit(update, {}, _sealed(update))
    assert _snapshot(vault.store) == before


def test_a_commit_that_skips_a_version_is_refused(vault: Vault) -> None:
    update = _next_update(vault, {key_of(1): blob_of(1, 1)})
    skipping = dataclasses.replace(
        update,
        new_head=dataclasses.replace(update.new_head, version=vault.head.version + 2),
    )
    before = _snapshot(vault.store)
    with pytest.raises(StorageError, match="follow"):
        vault.store.commit(skipping, {}, _sealed(skipping))
    assert _snapshot(vault.store) == before


def test_a_commit_with_an_unknown_obsolete_node_changes_nothing(vault: Vault) -> None:
    update = _next_update(vault, {key_of(1): blob_of(1, 1)})
    bogus = dataclasses.replace(
        update,
        obsolete=(*update.obsolete, NodeId(7, 3, bytes(32))),
    )
    before = _snapshot(vault.store)
    with pytest.raises(StorageError, match="obsolete"):
        vault.store.commit(bogus, {key_of(1): blob_of(1, 1)}, _sealed(bogus))
    assert _snapshot(vault.store) == before


def test_a_commit_that_adds_an_existing_node_changes_nothing(vault: Vault) -> None:
    update = _next_update(vault, {key_of(1): blob_of(1, 1)})
    stored = vault.store.node_ids()  # type: ignore[attr-defined]
    existing = min(stored - set(update.obsolete))  # a node the update keeps
    (data,) = vault.store.get_nodes([existing])
    bogus = dataclasses.replace(
        update,
        new_nodes=(*update.new_nodes, (existing, data)),
    )
    before = _snapshot(vault.store)
    with pytest.raises(StorageError, match="already"):
        vault.store.commit(bogus, {key_of(1): blob_of(1, 1)}, _sealed(bogus))
    assert _snapshot(vault.store) == before


def test_a_commit_that_adds_and_removes_one_node_changes_nothing(vault: Vault) -> None:
    update = _next_update(vault, {key_of(1): blob_of(1, 1)})
    removed = update.obsolete[0]
    (data,) = vault.store.get_nodes([removed])
    bogus = dataclasses.replace(update, new_nodes=(*update.new_nodes, (removed, data)))
    before = _snapshot(vault.store)
    with pytest.raises(StorageError, match="both adds and removes"):
        vault.store.commit(bogus, {key_of(1): blob_of(1, 1)}, _sealed(bogus))
    assert _snapshot(vault.store) == before


def test_a_proof_read_at_an_old_head_fails_typed(vault: Vault) -> None:
    old = vault.head
    vault.change({key_of(2): blob_of(2, 1)})
    with pytest.raises(StorageError, match="not in the store"):
        read_proof(vault.store, old, key_of(5))


# --- SQLite: durability, settings and a corrupt file ---------------------------------------------


def _sqlite_vault(path: Path) -> Vault:
    vault = Vault(SqliteTreeStore(path))
    vault.change({key_of(i): blob_of(i) for i in range(10)})
    return vault


def test_sqlite_settings(tmp_path: Path) -> None:
    with SqliteTreeStore(tmp_path / "t.sqlite") as store:
        db = store._db  # the settings themselves are what this test checks
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sqlite_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    head, ids = vault.head, vault.store.node_ids()  # type: ignore[attr-defined]
    vault.store.close()  # type: ignore[attr-defined]
    with SqliteTreeStore(path) as reopened:
        assert reopened.head() == head
        assert reopened.node_ids() == ids
        assert reopened.read_record(key_of(4)) == blob_of(4)
        proof = read_proof(reopened, head, key_of(4))
        assert verify_read(head, key_of(4), proof) == vault.values()[key_of(4)]


def _corrupt(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()


def _root_key(vault: Vault) -> tuple[bytes, bytes]:
    return encode_position(0, 0), vault.head.root


# A well-formed root that is not the stored root (so its hash does not match).
OTHER_ROOT = encode_node(Interior(Branch(1, 0, bytes(32)), None, is_root=True))


@pytest.mark.parametrize(
    ("sql", "args", "message"),
    [
        ("UPDATE nodes SET node = x'0104' WHERE pos = ? AND hash = ?", (), "does not decode"),
        ("UPDATE nodes SET node = ? WHERE pos = ? AND hash = ?", (OTHER_ROOT,), "does not match"),
        ("DELETE FROM nodes WHERE pos = ? AND hash = ?", (), "not in the store"),
        ("UPDATE nodes SET node = 'text' WHERE pos = ? AND hash = ?", (), "not a blob"),
        ("UPDATE nodes SET hash = 7 WHERE pos = ? AND hash = ?", (), "not a blob"),
    ],
    ids=["garbage", "other node", "missing", "text node", "integer hash"],
)
def test_sqlite_corrupt_nodes_fail_typed(
    tmp_path: Path, sql: str, args: tuple[bytes, ...], message: str
) -> None:
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    _corrupt(path, sql, *args, *_root_key(vault))
    with pytest.raises(StorageError, match=message):
        read_proof(vault.store, vault.head, key_of(1))
    vault.store.close()  # type: ignore[attr-defined]


def test_sqlite_corrupt_position_fails_typed(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    _corrupt(path, "UPDATE nodes SET pos = x'0101' WHERE pos = ? AND hash = ?", *_root_key(vault))
    with pytest.raises(StorageError, match="position is corrupt"):
        vault.store.node_ids()  # type: ignore[attr-defined]
    vault.store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE head SET root = x'00'",
        "UPDATE head SET root = 'text'",
        "UPDATE head SET tree_id = 3",
        "UPDATE head SET version = 'one'",
        "UPDATE head SET version = 1.5",
    ],
)
def test_sqlite_corrupt_head_fails_typed(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    _corrupt(path, sql)
    with pytest.raises(StorageError, match="head"):
        vault.store.head()
    vault.store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["'text'", "5"])
def test_sqlite_corrupt_record_fails_typed(tmp_path: Path, value: str) -> None:
    """A record column that is not a BLOB is refused (an INTEGER is never made into zeros)."""
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    _corrupt(path, f"UPDATE records SET blob = {value} WHERE key = ?", key_of(1))
    with pytest.raises(StorageError, match="record is corrupt"):
        vault.store.read_record(key_of(1))
    assert vault.store.read_record(key_of(2)) == blob_of(2)
    vault.store.close()  # type: ignore[attr-defined]


def test_sqlite_busy_writer_fails_typed_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    vault.store.close()  # type: ignore[attr-defined]
    with SqliteTreeStore(path, busy_timeout_ms=50) as store:
        vault.store = store
        update = _next_update(vault, {key_of(1): blob_of(1, 1)})
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StorageError, match="commit failed"):
                store.commit(update, {}, _sealed(update))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.head() == vault.head
        store.commit(update, {}, _sealed(update))
        assert store.head() == update.new_head


@pytest.mark.parametrize("twice", ["obsolete", "new"])
def test_a_commit_naming_one_node_twice_changes_nothing(vault: Vault, twice: str) -> None:
    """Refused by the shared checks before any write (the memory store used to half-apply it)."""
    update = _next_update(vault, {key_of(1): blob_of(1, 1)})
    if twice == "obsolete":
        bogus = dataclasses.replace(update, obsolete=(*update.obsolete, update.obsolete[0]))
    else:
        bogus = dataclasses.replace(update, new_nodes=(*update.new_nodes, update.new_nodes[0]))
    before = _snapshot(vault.store)
    with pytest.raises(StorageError, match="twice"):
        vault.store.commit(bogus, {key_of(1): blob_of(1, 1)}, _sealed(bogus))
    assert _snapshot(vault.store) == before
    vault.store.commit(
        update, {key_of(1): blob_of(1, 1)}, _sealed(update)
    )  # the honest update still applies
    assert vault.store.head() == update.new_head


@pytest.mark.parametrize("value", ["'text'", "5", "x''", "zeroblob(65537)"])
def test_sqlite_corrupt_sealed_state_fails_typed(tmp_path: Path, value: str) -> None:
    path = tmp_path / "t.sqlite"
    vault = _sqlite_vault(path)
    _corrupt(path, f"UPDATE head SET sealed_state = {value}")
    with pytest.raises(StorageError, match="sealed state is corrupt"):
        vault.store.sealed_state()
    assert vault.store.head() == vault.head
    vault.store.close()  # type: ignore[attr-defined]


def test_sqlite_file_of_an_older_version_is_refused(tmp_path: Path) -> None:
    """A head table without the sealed state column: refused at open, not at first commit."""
    path = tmp_path / "t.sqlite"
    _corrupt(path, "CREATE TABLE head (one INTEGER PRIMARY KEY, tree_id BLOB)")
    with pytest.raises(StorageError, match="open failed"):
        SqliteTreeStore(path)
