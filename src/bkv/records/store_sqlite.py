"""SQLite adapter for :class:`bkv.records.tree.TreeStore` (one file; the only I/O in bkv.records).

Schema::

    nodes(pos BLOB, hash BLOB, node BLOB, PRIMARY KEY (pos, hash)) WITHOUT ROWID
    records(key BLOB PRIMARY KEY, blob BLOB) WITHOUT ROWID
    head(one = 1, tree_id BLOB, version INTEGER, root BLOB)

``pos`` is :func:`bkv.records.nodes.encode_position` (u16 depth, then the key
prefix), so :meth:`SqliteTreeStore.read_path` is one ``SELECT ... WHERE pos IN
(257 positions)``: one round trip per proof, whatever the tree's depth.

WAL journal and ``synchronous=FULL``: a commit is one ``BEGIN IMMEDIATE``
transaction that re-checks the stored head first, so a crash keeps all or
nothing of an update (nodes, records and head together) and two writers
cannot interleave. Readers in other connections see one committed version per
query (WAL snapshots); a proof read across a concurrent commit fails with
StorageError (a node of the old version is gone) and is read again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from bkv.errors import CodecError, StorageError
from bkv.records.nodes import (
    HASH_SIZE,
    KEY_BITS,
    NodeId,
    check_key,
    decode_position,
    encode_position,
)
from bkv.records.tree import TreeHead, TreeUpdate, check_commit, path_positions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    pos BLOB NOT NULL, hash BLOB NOT NULL, node BLOB NOT NULL, PRIMARY KEY (pos, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, blob BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    tree_id BLOB NOT NULL, version INTEGER NOT NULL, root BLOB NOT NULL
);
"""

# One placeholder per position on a path (depths 0..256); nothing else is spliced in.
_PATH_MARKS = ",".join("?" * (KEY_BITS + 1))
_PATH_QUERY = f"SELECT pos, hash, node FROM nodes WHERE pos IN ({_PATH_MARKS})"  # noqa: S608


class SqliteTreeStore:
    """A durable TreeStore in one SQLite file.

    ``busy_timeout_ms`` bounds how long a commit waits for another process's
    write lock before failing with :class:`StorageError`.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        # One connection shared by the threads of a server, serialized by a lock.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.executescript(_SCHEMA)
        except Exception:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteTreeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StorageError(f"record store read failed: {type(exc).__name__}") from exc

    def head(self) -> TreeHead | None:
        with self._reading() as db:
            return self._head(db)

    @staticmethod
    def _head(db: sqlite3.Connection) -> TreeHead | None:
        row = db.execute("SELECT tree_id, version, root FROM head WHERE one = 1").fetchone()
        if row is None:
            return None
        tree_id, version, root = _blob(row[0], "head"), row[1], _blob(row[2], "head")
        if type(version) is not int:
            raise StorageError("the stored head is corrupt")
        try:
            return TreeHead(tree_id, version, root)
        except ValueError as exc:
            raise StorageError("the stored head is corrupt") from exc

    def read_path(self, key: bytes) -> list[tuple[NodeId, bytes]]:
        positions = [encode_position(d, p) for d, p in path_positions(key)]
        with self._reading() as db:
            rows = db.execute(_PATH_QUERY, positions).fetchall()
        return [(_node_id(pos, digest), _blob(node, "node")) for pos, digest, node in rows]

    def node_ids(self) -> set[NodeId]:
        """Every stored node's id (a full scan: for tests and audits of small stores)."""
        with self._reading() as db:
            rows = db.execute("SELECT pos, hash FROM nodes").fetchall()
        return {_node_id(pos, digest) for pos, digest in rows}

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        out = []
        with self._reading() as db:
            for node_id in ids:
                row = db.execute(
                    "SELECT node FROM nodes WHERE pos = ? AND hash = ?", _key_of(node_id)
                ).fetchone()
                if row is None:
                    raise StorageError("a requested node is not in the store")
                out.append(_blob(row[0], "node"))
        return out

    def read_record(self, key: bytes) -> bytes | None:
        check_key(key)
        with self._reading() as db:
            row = db.execute("SELECT blob FROM records WHERE key = ?", (key,)).fetchone()
        return None if row is None else _blob(row[0], "record")

    def commit(self, update: TreeUpdate, records: Mapping[bytes, bytes | None]) -> None:
        with self._lock:
            try:
                self._commit(update, records)
            except sqlite3.Error as exc:
                # e.g. SQLITE_BUSY from another process, disk full: nothing was committed.
                raise StorageError(f"record store commit failed: {type(exc).__name__}") from exc

    def _commit(self, update: TreeUpdate, records: Mapping[bytes, bytes | None]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            check_commit(self._head(self._db), update, records)
            self._write_nodes(update)
            self._write_records(records)
            head = update.new_head
            self._db.execute(
                "INSERT OR REPLACE INTO head (one, tree_id, version, root) VALUES (1, ?, ?, ?)",
                (head.tree_id, head.version, head.root),
            )
            self._db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails: a transaction left open would serve
            # uncommitted rows and block every later commit.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _write_nodes(self, update: TreeUpdate) -> None:
        deleted = self._db.executemany(
            "DELETE FROM nodes WHERE pos = ? AND hash = ?", map(_key_of, update.obsolete)
        ).rowcount
        if deleted != len(update.obsolete):
            raise StorageError("an obsolete node is not in the store")
        try:
            self._db.executemany(
                "INSERT INTO nodes (pos, hash, node) VALUES (?, ?, ?)",
                ((*_key_of(node_id), data) for node_id, data in update.new_nodes),
            )
        except sqlite3.IntegrityError as exc:
            raise StorageError("a new node is already in the store") from exc

    def _write_records(self, records: Mapping[bytes, bytes | None]) -> None:
        for key, blob in records.items():
            if blob is None:
                self._db.execute("DELETE FROM records WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO records (key, blob) VALUES (?, ?)", (key, blob)
                )


def _key_of(node_id: NodeId) -> tuple[bytes, bytes]:
    return encode_position(node_id.depth, node_id.prefix), node_id.hash


def _blob(value: object, what: str) -> bytes:
    """A column value that must be a BLOB (the tables are not STRICT: any type fits)."""
    if not isinstance(value, bytes):
        # bytes() of an INTEGER would be that many zero bytes: never convert.
        raise StorageError(f"a stored {what} is corrupt: {type(value).__name__}, not a blob")
    return value


def _node_id(pos: object, digest: object) -> NodeId:
    try:
        depth, prefix = decode_position(_blob(pos, "node position"))
    except CodecError as exc:
        raise StorageError("a stored node position is corrupt") from exc
    digest = _blob(digest, "node hash")
    if len(digest) != HASH_SIZE:
        raise StorageError("a stored node hash is corrupt")
    return NodeId(depth, prefix, digest)
