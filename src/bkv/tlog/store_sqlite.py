"""SQLite storage adapter for :class:`bkv.tlog.log.MerkleLog` (the only I/O in bkv.tlog).

Schema: ``entries(idx INTEGER PRIMARY KEY, data BLOB)`` and
``hashes(idx INTEGER PRIMARY KEY, hash BLOB)`` keyed by the stored-hash index
of :mod:`bkv.tlog.log`. WAL journal, ``synchronous=FULL``: an append batch is
one ``BEGIN IMMEDIATE`` transaction that first re-checks the stored size, so a
crash leaves either the whole batch or none of it, and two writers cannot
interleave.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from bkv.errors import StorageError
from bkv.tlog.log import stored_hash_count
from bkv.tlog.merkle import HASH_SIZE

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS hashes (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);
"""

_READ_CHUNK = 500
"""Bound on the number of SQL parameters per query."""


class SqliteLogStore:
    """A durable :class:`bkv.tlog.log.LogStore` in one SQLite file.

    ``busy_timeout_ms`` bounds how long an append waits for another process's
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
            self._check_consistent()
        except Exception:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteLogStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _next_index(self, table: str) -> int:
        # MAX over an INTEGER PRIMARY KEY is a B-tree lookup, not a scan. Rows
        # are only ever inserted contiguously by append(), so MAX + 1 is the count.
        query = {
            "entries": "SELECT COALESCE(MAX(idx) + 1, 0) FROM entries",
            "hashes": "SELECT COALESCE(MAX(idx) + 1, 0) FROM hashes",
        }[table]
        return int(self._db.execute(query).fetchone()[0])

    def _check_consistent(self) -> None:
        size = self._next_index("entries")
        if self._next_index("hashes") != stored_hash_count(size):
            raise StorageError("stored hashes do not match the number of entries")

    def size(self) -> int:
        with self._lock:
            return self._next_index("entries")

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        with self._lock:
            return self._read_hashes(indexes)

    def _read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        found: dict[int, bytes] = {}
        unique = sorted(set(indexes))
        for i in range(0, len(unique), _READ_CHUNK):
            chunk = unique[i : i + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT idx, hash FROM hashes WHERE idx IN ({marks})", chunk)  # noqa: S608
            found.update((int(idx), bytes(h)) for idx, h in rows)
        try:
            out = [found[i] for i in indexes]
        except KeyError:
            raise StorageError("stored hash missing") from None
        if any(len(h) != HASH_SIZE for h in out):
            raise StorageError("stored hash has the wrong length")
        return out

    def read_entries(self, start: int, stop: int) -> list[bytes]:
        with self._lock:
            return self._read_entries(start, stop)

    def _read_entries(self, start: int, stop: int) -> list[bytes]:
        rows = self._db.execute(
            "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
        ).fetchall()
        if len(rows) != stop - start or (rows and rows[0][0] != start):
            raise StorageError("entry range outside the log")
        return [bytes(data) for _, data in rows]

    def append(self, old_size: int, entries: Sequence[bytes], hashes: Sequence[bytes]) -> None:
        with self._lock:
            try:
                self._append(old_size, entries, hashes)
            except sqlite3.Error as exc:
                # e.g. SQLITE_BUSY from another process, disk full: nothing was committed.
                raise StorageError(f"log append failed: {type(exc).__name__}") from exc

    def _append(self, old_size: int, entries: Sequence[bytes], hashes: Sequence[bytes]) -> None:
        first_hash = stored_hash_count(old_size)
        if first_hash + len(hashes) != stored_hash_count(old_size + len(entries)):
            raise StorageError("append batch has the wrong number of hashes")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._next_index("entries") != old_size:
                raise StorageError("log store is not at the expected size")
            self._db.executemany(
                "INSERT INTO entries (idx, data) VALUES (?, ?)",
                ((old_size + i, e) for i, e in enumerate(entries)),
            )
            self._db.executemany(
                "INSERT INTO hashes (idx, hash) VALUES (?, ?)",
                ((first_hash + i, h) for i, h in enumerate(hashes)),
            )
            self._db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails (I/O error, disk full): a transaction
            # left open would serve uncommitted rows and block every later append.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
