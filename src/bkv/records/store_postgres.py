"""PostgreSQL adapter for :class:`bkv.records.tree.TreeStore` (psycopg 3; one schema per fleet).

Schema (in the schema the store is given, ``bkv`` by default)::

    nodes(pos bytea, hash bytea, node bytea, PRIMARY KEY (pos, hash))
    records(key bytea PRIMARY KEY, blob bytea)
    head(one = 1, tree_id bytea, version bigint, root bytea, sealed_state bytea)

The same layout and the same semantics as :mod:`bkv.records.store_sqlite`:
``pos`` is :func:`bkv.records.nodes.encode_position`, so
:meth:`PostgresTreeStore.read_path` is one ``SELECT ... WHERE pos = ANY(...)``.
The tables are created on first use (the role needs CREATE on the database
for the schema, or on an existing schema for the tables).

Transactions (https://www.postgresql.org/docs/current/transaction-iso.html):
single reads run alone (autocommit: one statement, one snapshot); a commit and
a bulk load are one REPEATABLE READ transaction that first takes a lock on
the ``head`` table that only writers take (``SHARE ROW EXCLUSIVE`` conflicts
with itself, not with readers), so writers of one schema run one at a time,
each re-checks the stored head (:func:`bkv.records.tree.check_commit`) in a
snapshot taken after the lock, and a crash keeps all or nothing of an update.
:meth:`PostgresTreeStore.read_for_key` is one REPEATABLE READ transaction, so
the path and the record come from one committed version. ``synchronous_commit``
is left at the server's setting (``on`` by default: a commit returns once its
WAL is flushed).

Every database error is a :class:`bkv.errors.StorageError` naming the
operation and the error's class and SQLSTATE, never the connection string.
A lost connection is opened again by the next operation.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.errors import UniqueViolation

from bkv.errors import StorageError
from bkv.records.nodes import NodeId, check_key, encode_position, encoded_path_positions
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

SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A schema name this store accepts (lower case, so quoting never changes it; 63 bytes at most,
PostgreSQL's NAMEDATALEN - 1)."""

DEFAULT_SCHEMA = "bkv"

_TABLES = (
    "CREATE TABLE IF NOT EXISTS {s}.nodes (pos bytea NOT NULL, hash bytea NOT NULL,"
    " node bytea NOT NULL, PRIMARY KEY (pos, hash))",
    "CREATE TABLE IF NOT EXISTS {s}.records (key bytea PRIMARY KEY, blob bytea NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.head (one smallint PRIMARY KEY CHECK (one = 1),"
    " tree_id bytea NOT NULL, version bigint NOT NULL, root bytea NOT NULL,"
    " sealed_state bytea NOT NULL)",
)

_Conn = psycopg.Connection[tuple[Any, ...]]


def check_schema(schema: str) -> None:
    """Caller misuse unless ``schema`` is a name this store uses as it is."""
    if not isinstance(schema, str) or not SCHEMA_PATTERN.fullmatch(schema):
        raise ValueError("a record store schema name is [a-z_][a-z0-9_]{0,62}")
    if schema.startswith("pg_"):
        raise ValueError("schema names starting with pg_ are PostgreSQL's")


class PostgresTreeStore:
    """A durable TreeStore in one PostgreSQL schema.

    ``conninfo`` is a libpq connection string or ``postgresql://`` URL (never
    echoed: not in errors, not in the repr). ``connect_timeout_s`` bounds each
    connection attempt (it replaces a ``connect_timeout`` in ``conninfo``);
    ``lock_timeout_ms`` bounds how long a writer waits for another writer of
    the same schema before failing with StorageError.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        connect_timeout_s: int = 10,
        lock_timeout_ms: int = 5000,
    ) -> None:
        check_schema(schema)
        if not 0 < connect_timeout_s <= 3600 or not 0 < lock_timeout_ms <= 3_600_000:
            raise ValueError("the store's timeouts are positive and at most an hour")
        self._conninfo = conninfo
        self._schema = schema
        self._connect_timeout_s = int(connect_timeout_s)
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._lock = threading.RLock()
        self._closed = False
        self._q = _Queries(sql.Identifier(schema))
        self._db: _Conn | None = None
        try:
            with self._transaction("open", write=False) as db:
                self._create_tables(db)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresTreeStore(schema={self._schema!r})"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> PostgresTreeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- connection and transactions ------------------------------------------------------

    def _connection(self) -> _Conn:
        """The open connection, or a new one (the first, or after one was lost)."""
        if self._closed:
            raise StorageError("the record store is closed")
        if self._db is not None and not self._db.closed and not self._db.broken:
            return self._db
        if self._db is not None:
            self._db.close()
            self._db = None
        try:
            db = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout_s
            )
        except psycopg.Error as exc:
            # libpq's messages may quote parts of the connection string: not chained.
            raise StorageError(f"record store connect failed: {_describe(exc)}") from None
        try:
            db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            db.execute(
                "SELECT set_config('lock_timeout', %s, false)", (f"{self._lock_timeout_ms}",)
            )
        except psycopg.Error as exc:
            db.close()
            raise StorageError(f"record store connect failed: {_describe(exc)}") from exc
        self._db = db
        return db

    @contextmanager
    def _statement(self, operation: str) -> Iterator[_Conn]:
        """The connection, for statements that each run alone (one snapshot each)."""
        with self._lock:
            db = self._connection()
            try:
                yield db
            except psycopg.Error as exc:
                raise StorageError(f"record store {operation} failed: {_describe(exc)}") from exc

    @contextmanager
    def _transaction(self, operation: str, *, write: bool) -> Iterator[_Conn]:
        """One REPEATABLE READ transaction; a writer's holds the schema's writer lock."""
        with self._lock:
            db = self._connection()
            try:
                with db.transaction():
                    if write:
                        # Before any query, so the snapshot follows the last writer's commit
                        # (https://www.postgresql.org/docs/current/sql-lock.html).
                        db.execute(self._q.lock_head)
                    yield db
            except psycopg.Error as exc:
                raise StorageError(f"record store {operation} failed: {_describe(exc)}") from exc

    def _create_tables(self, db: _Conn) -> None:
        row = db.execute(self._q.tables_exist, (self._schema,)).fetchone()
        if row is not None and row[0] == len(_TABLES):
            # Created before: no DDL, so a role without CREATE can use them.
            db.execute(self._q.check_columns)
            return
        exists = db.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)
        ).fetchone()
        if exists is None:
            db.execute(sql.SQL("CREATE SCHEMA {s}").format(s=self._q.schema))
        for statement in _TABLES:
            db.execute(sql.SQL(statement).format(s=self._q.schema))
        db.execute(self._q.check_columns)

    # --- reads --------------------------------------------------------------------------------

    def head(self) -> TreeHead | None:
        with self._statement("read") as db:
            return self._head(db)

    def _head(self, db: _Conn) -> TreeHead | None:
        row = db.execute(self._q.head, binary=True).fetchone()
        return None if row is None else stored_head(*row)

    def sealed_state(self) -> bytes | None:
        with self._statement("read") as db:
            row = db.execute(self._q.sealed_state, binary=True).fetchone()
        return None if row is None else stored_sealed_state(row[0])

    def read_path(self, key: bytes) -> list[tuple[NodeId, bytes]]:
        positions = encoded_path_positions(key)
        with self._statement("read") as db:
            rows = db.execute(self._q.path, (positions,), binary=True).fetchall()
        return _path(rows)

    def read_for_key(self, key: bytes) -> tuple[list[tuple[NodeId, bytes]], bytes | None]:
        positions = encoded_path_positions(key)
        with self._transaction("read", write=False) as db:
            rows = db.execute(self._q.path, (positions,), binary=True).fetchall()
            row = db.execute(self._q.record, (key,), binary=True).fetchone()
        return _path(rows), None if row is None else stored_blob(row[0], "record")

    def read_record(self, key: bytes) -> bytes | None:
        check_key(key)
        with self._statement("read") as db:
            row = db.execute(self._q.record, (key,), binary=True).fetchone()
        return None if row is None else stored_blob(row[0], "record")

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        keys = [_key_of(node_id) for node_id in ids]
        with self._statement("read") as db:
            rows = db.execute(
                self._q.nodes_by_id, ([p for p, _ in keys], [h for _, h in keys]), binary=True
            ).fetchall()
        found = {(pos, digest): node for pos, digest, node in rows}
        out = []
        for node_key in keys:
            data = found.get(node_key)
            if data is None:
                raise StorageError("a requested node is not in the store")
            out.append(stored_blob(data, "node"))
        return out

    def node_ids(self) -> set[NodeId]:
        """Every stored node's id (a full scan: for tests and audits of small stores)."""
        with self._statement("read") as db:
            rows = db.execute(self._q.all_node_ids, binary=True).fetchall()
        return {stored_node_id(pos, digest) for pos, digest in rows}

    def disk_bytes(self) -> int:
        """``pg_total_relation_size`` of the schema's tables (with their indexes and TOAST)."""
        with self._statement("size") as db:
            row = db.execute(self._q.disk_bytes, (self._schema,)).fetchone()
        return 0 if row is None else int(row[0])

    # --- writes -------------------------------------------------------------------------------

    def commit(
        self, update: TreeUpdate, records: Mapping[bytes, bytes | None], sealed_state: bytes
    ) -> None:
        check_sealed_state(sealed_state)  # caller misuse, before any lock is taken
        with self._transaction("commit", write=True) as db:
            check_commit(self._head(db), update, records, sealed_state)
            self._write_nodes(db, update)
            self._write_records(db, records)
            self._write_head(db, update.new_head, sealed_state)

    def _write_nodes(self, db: _Conn, update: TreeUpdate) -> None:
        if update.obsolete:
            gone = [_key_of(node_id) for node_id in update.obsolete]
            deleted = db.execute(
                self._q.delete_nodes, ([p for p, _ in gone], [h for _, h in gone]), binary=True
            ).rowcount
            if deleted != len(update.obsolete):
                raise StorageError("an obsolete node is not in the store")
        if update.new_nodes:
            columns = _node_columns(update.new_nodes)
            try:
                db.execute(self._q.insert_nodes, columns, binary=True)
            except UniqueViolation as exc:
                raise StorageError("a new node is already in the store") from exc

    def _write_records(self, db: _Conn, records: Mapping[bytes, bytes | None]) -> None:
        deleted = [key for key, blob in records.items() if blob is None]
        if deleted:
            db.execute(self._q.delete_records, (deleted,), binary=True)
        stored = [(key, blob) for key, blob in records.items() if blob is not None]
        if stored:
            db.execute(
                self._q.upsert_records,
                ([k for k, _ in stored], [b for _, b in stored]),
                binary=True,
            )

    def _write_head(self, db: _Conn, head: TreeHead, sealed_state: bytes) -> None:
        db.execute(self._q.write_head, (head.tree_id, head.version, head.root, sealed_state))

    def bulk_load(
        self,
        tree_id: bytes,
        entries: Iterable[tuple[bytes, bytes]],
        sealed_state_for: Callable[[TreeHead], bytes],
    ) -> TreeHead:
        """One transaction; the blobs and the nodes go in by ``COPY`` in chunks.

        COPY is PostgreSQL's fastest way in for many rows
        (https://www.postgresql.org/docs/current/populate.html#POPULATE-COPY-FROM).
        """
        with self._transaction("bulk load", write=True) as db:
            row = db.execute(self._q.is_empty).fetchone()
            if row is None or not row[0]:
                raise StorageError("a bulk load needs an empty store")

            def write_records(chunk: list[tuple[bytes, bytes]]) -> None:
                try:
                    self._copy(db, self._q.copy_records, 2, chunk)
                except UniqueViolation:
                    raise ValueError("a record id appears twice") from None

            def write_nodes(chunk: list[tuple[NodeId, bytes]]) -> None:
                rows = [(*_key_of(node_id), data) for node_id, data in chunk]
                self._copy(db, self._q.copy_nodes, 3, rows)

            head = bulk_build(tree_id, entries, write_records, write_nodes)
            sealed_state = sealed_state_for(head)
            check_sealed_state(sealed_state)
            self._write_head(db, head, sealed_state)
        return head

    @staticmethod
    def _copy(
        db: _Conn, statement: sql.Composed, columns: int, rows: Iterable[Sequence[bytes]]
    ) -> None:
        with db.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(["bytea"] * columns)
            for row in rows:
                copy.write_row(row)


class _Queries:
    """Every statement of a store, with its schema quoted in (psycopg.sql.Identifier)."""

    def __init__(self, schema: sql.Identifier) -> None:
        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(s=schema)

        self.schema = schema
        self.tables_exist = sql.SQL(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s"
            " AND tablename IN ('nodes', 'records', 'head')"
        )
        self.check_columns = q(
            "SELECT n.pos, n.hash, n.node, r.key, r.blob, h.tree_id, h.version, h.root,"
            " h.sealed_state FROM {s}.nodes n, {s}.records r, {s}.head h LIMIT 0"
        )
        self.lock_head = q("LOCK TABLE {s}.head IN SHARE ROW EXCLUSIVE MODE")
        self.head = q("SELECT tree_id, version, root FROM {s}.head WHERE one = 1")
        self.sealed_state = q("SELECT sealed_state FROM {s}.head WHERE one = 1")
        self.path = q("SELECT pos, hash, node FROM {s}.nodes WHERE pos = ANY(%s::bytea[])")
        self.record = q("SELECT blob FROM {s}.records WHERE key = %s")
        self.nodes_by_id = q(
            "SELECT n.pos, n.hash, n.node FROM {s}.nodes n"
            " JOIN unnest(%s::bytea[], %s::bytea[]) AS i(pos, hash)"
            " ON n.pos = i.pos AND n.hash = i.hash"
        )
        self.all_node_ids = q("SELECT pos, hash FROM {s}.nodes")
        self.disk_bytes = sql.SQL(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r'"
        )
        self.delete_nodes = q(
            "DELETE FROM {s}.nodes n USING unnest(%s::bytea[], %s::bytea[]) AS o(pos, hash)"
            " WHERE n.pos = o.pos AND n.hash = o.hash"
        )
        self.insert_nodes = q(
            "INSERT INTO {s}.nodes (pos, hash, node)"
            " SELECT * FROM unnest(%s::bytea[], %s::bytea[], %s::bytea[])"
        )
        self.delete_records = q("DELETE FROM {s}.records WHERE key = ANY(%s::bytea[])")
        self.upsert_records = q(
            "INSERT INTO {s}.records (key, blob) SELECT * FROM unnest(%s::bytea[], %s::bytea[])"
            " ON CONFLICT (key) DO UPDATE SET blob = EXCLUDED.blob"
        )
        self.write_head = q(
            "INSERT INTO {s}.head (one, tree_id, version, root, sealed_state)"
            " VALUES (1, %s, %s, %s, %s) ON CONFLICT (one) DO UPDATE SET"
            " tree_id = EXCLUDED.tree_id, version = EXCLUDED.version, root = EXCLUDED.root,"
            " sealed_state = EXCLUDED.sealed_state"
        )
        self.is_empty = q(
            "SELECT NOT (EXISTS (SELECT 1 FROM {s}.head) OR EXISTS (SELECT 1 FROM {s}.nodes)"
            " OR EXISTS (SELECT 1 FROM {s}.records))"
        )
        self.copy_records = q("COPY {s}.records (key, blob) FROM STDIN (FORMAT BINARY)")
        self.copy_nodes = q("COPY {s}.nodes (pos, hash, node) FROM STDIN (FORMAT BINARY)")


def _describe(exc: psycopg.Error) -> str:
    """The error's class and SQLSTATE: nothing from the connection string or the data."""
    state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}"


def _key_of(node_id: NodeId) -> tuple[bytes, bytes]:
    return encode_position(node_id.depth, node_id.prefix), node_id.hash


def _node_columns(nodes: Iterable[tuple[NodeId, bytes]]) -> tuple[list[bytes], ...]:
    positions, hashes, encodings = [], [], []
    for node_id, data in nodes:
        pos, digest = _key_of(node_id)
        positions.append(pos)
        hashes.append(digest)
        encodings.append(data)
    return positions, hashes, encodings


def _path(rows: Iterable[tuple[object, object, object]]) -> list[tuple[NodeId, bytes]]:
    return [(stored_node_id(pos, digest), stored_blob(node, "node")) for pos, digest, node in rows]
