"""SQLite adapter for :class:`bkv.records.tree.TreeStore` (one file).

Schema::

    nodes(pos BLOB, hash BLOB, node BLOB, PRIMARY KEY (pos, hash)) WITHOUT ROWID
    records(key BLOB PRIMARY KEY, blob BLOB) WITHOUT ROWID
    head(one = 1, tree_id BLOB, version INTEGER, root BLOB, sealed_state BLOB)

``pos`` is :func:`bkv.records.nodes.encode_position` (u16 depth, then the key
prefix), so :meth:`SqliteTreeStore.read_path` is one ``SELECT ... WHERE pos IN
(257 positions)``: one round trip per proof, whatever the tree's depth.

WAL journal and ``synchronous=FULL``: a commit is one ``BEGIN IMMEDIATE``
transaction that re-checks the stored head first, so a crash keeps all or
nothing of an update (nodes, records, head and sealed state together) and two
writers cannot interleave. Readers in other connections see one committed
version per query or read transaction (WAL snapshots,
https://www.sqlite.org/wal.html#concurrency): :meth:`SqliteTreeStore.read_for_key`
reads the path and the record in one read transaction; a proof read across a
concurrent commit with separate queries fails with StorageError (a node of
the old version is gone) and is read again.

A bulk load is one ``BEGIN IMMEDIATE`` transaction too: the blobs and then the
nodes go in with ``executemany`` in chunks, nothing is visible to other
connections before its ``COMMIT``, and a checkpoint then truncates the WAL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from bkv.errors import StorageError
from bkv.records.nodes import KEY_BITS, NodeId, check_key, encode_position, encoded_path_positions
from bkv.records.tree import (
    TreeHead,
    TreeUpdate,
    bulk_build,
    check_commit,
    check_sealed_state,
    stored_blob,
    stored_head,
    stored_node_id,
    stored_sealed_state,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    pos BLOB NOT NULL, hash BLOB NOT NULL, node BLOB NOT NULL, PRIMARY KEY (pos, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, blob BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    tree_id BLOB NOT NULL, version INTEGER NOT NULL, root BLOB NOT NULL,
    sealed_state BLOB NOT NULL
);
"""

# One placeholder per position on a path (depths 0..256); nothing else is spliced in.
_PATH_MARKS = ",".join("?" * (KEY_BITS + 1))
_PATH_QUERY = f"SELECT pos, hash, node FROM nodes WHERE pos IN ({_PATH_MARKS})"  # noqa: S608
_RECORD_QUERY = "SELECT blob FROM records WHERE key = ?"
_INSERT_NODE = "INSERT INTO nodes (pos, hash, node) VALUES (?, ?, ?)"
_WRITE_HEAD = (
    "INSERT OR REPLACE INTO head (one, tree_id, version, root, sealed_state) VALUES (1, ?, ?, ?, ?)"
)


class SqliteTreeStore:
    """A durable TreeStore in one SQLite file.

    ``busy_timeout_ms`` bounds how long a commit waits for another process's
    write lock before failing with :class:`StorageError`.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        # One connection shared by the threads of a server, serialized by a lock.
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"record store open failed: {type(exc).__name__}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._db.executescript(_SCHEMA)
            # A file made by an older version has no sealed state column.
            self._db.execute("SELECT sealed_state FROM head LIMIT 0")
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(f"record store open failed: {type(exc).__name__}") from exc

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
        return None if row is None else stored_head(*row)

    def sealed_state(self) -> bytes | None:
        with self._reading() as db:
            row = db.execute("SELECT sealed_state FROM head WHERE one = 1").fetchone()
        return None if row is None else stored_sealed_state(row[0])

    def read_path(self, key: bytes) -> list[tuple[NodeId, bytes]]:
        positions = encoded_path_positions(key)
        with self._reading() as db:
            rows = db.execute(_PATH_QUERY, positions).fetchall()
        return _path(rows)

    def read_for_key(self, key: bytes) -> tuple[list[tuple[NodeId, bytes]], bytes | None]:
        positions = encoded_path_positions(key)
        with self._reading() as db:
            # One read transaction: both queries see the snapshot its first read takes,
            # whatever another connection commits meanwhile.
            db.execute("BEGIN")
            try:
                rows = db.execute(_PATH_QUERY, positions).fetchall()
                row = db.execute(_RECORD_QUERY, (key,)).fetchone()
            finally:
                db.execute("COMMIT")  # ends the read; nothing was written
        return _path(rows), None if row is None else stored_blob(row[0], "record")

    def node_ids(self) -> set[NodeId]:
        """Every stored node's id (a full scan: for tests and audits of small stores)."""
        with self._reading() as db:
            rows = db.execute("SELECT pos, hash FROM nodes").fetchall()
        return {stored_node_id(pos, digest) for pos, digest in rows}

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        out = []
        with self._reading() as db:
            for node_id in ids:
                row = db.execute(
                    "SELECT node FROM nodes WHERE pos = ? AND hash = ?", _key_of(node_id)
                ).fetchone()
                if row is None:
                    raise StorageError("a requested node is not in the store")
                out.append(stored_blob(row[0], "node"))
        return out

    def read_record(self, key: bytes) -> bytes | None:
        check_key(key)
        with self._reading() as db:
            row = db.execute(_RECORD_QUERY, (key,)).fetchone()
        return None if row is None else stored_blob(row[0], "record")

    def disk_bytes(self) -> int:
        """The database file and its WAL file, as the file system reports them."""
        with self._reading() as db:
            file = db.execute("PRAGMA database_list").fetchone()[2]
            if not file:  # an in-memory or temporary database: its pages
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])
        total = 0
        for name in (file, file + "-wal"):
            try:
                total += os.stat(name).st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"record store size failed: {type(exc).__name__}") from exc
        return total

    @contextmanager
    def _writing(self, operation: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed if the block returns."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself fails: a transaction left open would serve
                    # uncommitted rows and block every later commit.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                # e.g. SQLITE_BUSY from another process, disk full: nothing was committed.
                raise StorageError(
                    f"record store {operation} failed: {type(exc).__name__}"
                ) from exc

    def commit(
        self, update: TreeUpdate, records: Mapping[bytes, bytes | None], sealed_state: bytes
    ) -> None:
        check_sealed_state(sealed_state)  # caller misuse, before any lock is taken
        with self._writing("commit") as db:
            check_commit(self._head(db), update, records, sealed_state)
            _write_nodes(db, update)
            _write_records(db, records)
            head = update.new_head
            db.execute(_WRITE_HEAD, (head.tree_id, head.version, head.root, sealed_state))

    def bulk_load(
        self,
        tree_id: bytes,
        entries: Iterable[tuple[bytes, bytes]],
        sealed_state_for: Callable[[TreeHead], bytes],
    ) -> TreeHead:
        with self._writing("bulk load") as db:
            if db.execute(
                "SELECT EXISTS (SELECT 1 FROM head) OR EXISTS (SELECT 1 FROM nodes)"
                " OR EXISTS (SELECT 1 FROM records)"
            ).fetchone()[0]:
                raise StorageError("a bulk load needs an empty store")

            def write_records(chunk: list[tuple[bytes, bytes]]) -> None:
                chunk.sort()  # fewer B-tree pages touched per chunk than in arrival order
                try:
                    db.executemany("INSERT INTO records (key, blob) VALUES (?, ?)", chunk)
                except sqlite3.IntegrityError:
                    raise ValueError("a record id appears twice") from None

            def write_nodes(chunk: list[tuple[NodeId, bytes]]) -> None:
                db.executemany(_INSERT_NODE, ((*_key_of(i), data) for i, data in chunk))

            head = bulk_build(tree_id, entries, write_records, write_nodes)
            sealed_state = sealed_state_for(head)
            check_sealed_state(sealed_state)
            db.execute(_WRITE_HEAD, (head.tree_id, head.version, head.root, sealed_state))
        # The load's WAL is as large as the database it wrote: copy it in and give the
        # space back (https://www.sqlite.org/pragma.html#pragma_wal_checkpoint).
        # Best effort: the load is committed whatever this does.
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return head


def _write_nodes(db: sqlite3.Connection, update: TreeUpdate) -> None:
    deleted = db.executemany(
        "DELETE FROM nodes WHERE pos = ? AND hash = ?", map(_key_of, update.obsolete)
    ).rowcount
    if deleted != len(update.obsolete):
        raise StorageError("an obsolete node is not in the store")
    try:
        db.executemany(
            _INSERT_NODE, ((*_key_of(node_id), data) for node_id, data in update.new_nodes)
        )
    except sqlite3.IntegrityError as exc:
        raise StorageError("a new node is already in the store") from exc


def _write_records(db: sqlite3.Connection, records: Mapping[bytes, bytes | None]) -> None:
    db.executemany(
        "DELETE FROM records WHERE key = ?", ((k,) for k, b in records.items() if b is None)
    )
    db.executemany(
        "INSERT OR REPLACE INTO records (key, blob) VALUES (?, ?)",
        ((k, b) for k, b in records.items() if b is not None),
    )


def _key_of(node_id: NodeId) -> tuple[bytes, bytes]:
    return encode_position(node_id.depth, node_id.prefix), node_id.hash


def _path(rows: Iterable[tuple[object, object, object]]) -> list[tuple[NodeId, bytes]]:
    return [(stored_node_id(pos, digest), stored_blob(node, "node")) for pos, digest, node in rows]
