"""SQLite adapter of the witness: namespaces, signed epochs, the audit log, keys.

One database file holds everything the witness must never forget. Each
submission runs in one ``BEGIN IMMEDIATE`` transaction (:meth:`WitnessStore.transaction`):
the signed epoch, the artifact, the new log entry and hashes and the new checkpoint
are committed together or not at all, so a refused or failed submission leaves no
trace.

The core's rules are enforced a second time by the schema, so that no code path,
crash or restart can sign twice:

- ``PRIMARY KEY (namespace, epoch)`` and ``UNIQUE (namespace, digest)``;
- a trigger refuses an epoch that is not the namespace's last epoch + 1;
- triggers refuse every UPDATE and DELETE of signed epochs, counter-signatures, log
  entries and hashes; a counter-signature's epoch must be a signed epoch (foreign key).

The ``countersignatures`` table was added after schema version 1 shipped; it is
created by ``CREATE TABLE IF NOT EXISTS`` on open, so older databases gain it
without a migration (nothing else changed, hence the same version).

The audit log's storage implements :class:`bkv.tlog.log.LogStore` on the same
connection (tables ``log_entries`` and ``log_hashes``, append-only), so that a log
append is part of the submission's transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bkv.errors import (
    CodecError,
    CountersignatureExistsError,
    DigestReusedError,
    EpochConflictError,
    NamespaceExistsError,
    StorageError,
)
from bkv.protocol.submission import AuditEntry
from bkv.tlog.log import MerkleLog, stored_hash_count
from bkv.tlog.witness_protocol import LogState
from bkv.witness.core import NamespaceRecord, SignedEpoch

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS witness_keys (
    public_key BLOB PRIMARY KEY CHECK (length(public_key) = 32),
    not_before_ms INTEGER NOT NULL CHECK (not_before_ms >= 0)
) STRICT;

CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    operator_public_key BLOB NOT NULL CHECK (length(operator_public_key) = 32),
    created_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS signed_epochs (
    namespace TEXT NOT NULL REFERENCES namespaces (name),
    epoch INTEGER NOT NULL CHECK (epoch >= 1),
    timestamp_ms INTEGER NOT NULL,
    digest BLOB NOT NULL CHECK (length(digest) = 32),
    message BLOB NOT NULL,
    signature BLOB NOT NULL CHECK (length(signature) = 64),
    key_id INTEGER NOT NULL CHECK (key_id BETWEEN 0 AND 255),
    log_index INTEGER NOT NULL UNIQUE,
    artifact BLOB NOT NULL,
    evidence BLOB,
    submitted_at_ms INTEGER NOT NULL,
    operator_signature BLOB NOT NULL CHECK (length(operator_signature) = 64),
    PRIMARY KEY (namespace, epoch),
    UNIQUE (namespace, digest)
) STRICT;

CREATE TRIGGER IF NOT EXISTS signed_epochs_in_sequence
BEFORE INSERT ON signed_epochs
WHEN NEW.epoch != 1 + COALESCE(
    (SELECT MAX(epoch) FROM signed_epochs WHERE namespace = NEW.namespace), 0)
BEGIN
    SELECT RAISE(ABORT, 'epoch is not the last epoch + 1');
END;

CREATE TRIGGER IF NOT EXISTS signed_epochs_no_update
BEFORE UPDATE ON signed_epochs
BEGIN
    SELECT RAISE(ABORT, 'signed epochs are immutable');
END;

CREATE TRIGGER IF NOT EXISTS signed_epochs_no_delete
BEFORE DELETE ON signed_epochs
BEGIN
    SELECT RAISE(ABORT, 'signed epochs are immutable');
END;

-- Operator counter-signatures of signed epochs (bkv.protocol.countersign), checked
-- against the namespace's operator key before insert; one per epoch, never changed.
CREATE TABLE IF NOT EXISTS countersignatures (
    namespace TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    counter_signature BLOB NOT NULL CHECK (length(counter_signature) = 64),
    PRIMARY KEY (namespace, epoch),
    FOREIGN KEY (namespace, epoch) REFERENCES signed_epochs (namespace, epoch)
) STRICT;

CREATE TRIGGER IF NOT EXISTS countersignatures_no_update
BEFORE UPDATE ON countersignatures
BEGIN
    SELECT RAISE(ABORT, 'counter-signatures are immutable');
END;

CREATE TRIGGER IF NOT EXISTS countersignatures_no_delete
BEFORE DELETE ON countersignatures
BEGIN
    SELECT RAISE(ABORT, 'counter-signatures are immutable');
END;

CREATE TABLE IF NOT EXISTS log_entries (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    entry BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS log_hashes (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    hash BLOB NOT NULL CHECK (length(hash) = 32)
) STRICT;

CREATE TRIGGER IF NOT EXISTS log_entries_no_update BEFORE UPDATE ON log_entries
BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS log_entries_no_delete BEFORE DELETE ON log_entries
BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS log_hashes_no_update BEFORE UPDATE ON log_hashes
BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS log_hashes_no_delete BEFORE DELETE ON log_hashes
BEGIN SELECT RAISE(ABORT, 'the log is append-only'); END;

CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY CHECK (size >= 0),
    note BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS cosigned_logs (
    origin TEXT PRIMARY KEY,
    verifier_keys TEXT NOT NULL,
    size INTEGER CHECK (size >= 0),
    root_hash BLOB CHECK (root_hash IS NULL OR length(root_hash) = 32),
    checkpoint BLOB
) STRICT;
"""

_EPOCH_COLUMNS = (
    "namespace, epoch, timestamp_ms, digest, message, signature, key_id, log_index, "
    "artifact, evidence, submitted_at_ms, operator_signature"
)
#: A signed epoch with its log entry: what is served comes from the logged leaf itself.
_SELECT_EPOCHS = (
    "SELECT s.namespace, s.epoch, s.log_index, s.artifact, s.evidence, e.entry "
    "FROM signed_epochs s JOIN log_entries e ON e.idx = s.log_index "
)
#: Only the logged leaf of a signed epoch: what listings serve. The artifact (16 KiB) and
#: evidence (1 MiB) stay on disk, so that a page of epochs costs kilobytes, not megabytes.
_SELECT_ENTRIES = (
    "SELECT s.namespace, s.epoch, s.log_index, e.entry "
    "FROM signed_epochs s JOIN log_entries e ON e.idx = s.log_index "
)
#: SQLite integers are signed 64-bit: no epoch above this was ever stored.
_MAX_STORED_EPOCH = (1 << 63) - 1


def _logged_entry(row: Sequence[object]) -> AuditEntry:
    """The audit entry of a (namespace, epoch, log index, entry bytes) row, checked."""
    ns, epoch, index, entry_bytes = row
    try:
        entry = AuditEntry.from_bytes(bytes(entry_bytes))  # type: ignore[call-overload]
    except CodecError:
        raise StorageError(f"log entry {index} is not an audit entry") from None
    if (entry.namespace, entry.epoch) != (ns, epoch):
        raise StorageError(f"log entry {index} does not record epoch {epoch} of {ns}")
    return entry


def _signed_epoch(row: Sequence[object]) -> SignedEpoch:
    ns, epoch, index, artifact, evidence, entry_bytes = row
    entry = _logged_entry((ns, epoch, index, entry_bytes))
    return SignedEpoch(
        entry=entry,
        log_index=int(index),  # type: ignore[call-overload]
        artifact=bytes(artifact),  # type: ignore[call-overload]
        evidence=None if evidence is None else bytes(evidence),  # type: ignore[call-overload]
    )


class _LogTables:
    """:class:`bkv.tlog.log.LogStore` over the witness connection (same transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def size(self) -> int:
        # idx is the rowid and contiguous from 0 (append checks old_size), so MAX + 1 is
        # the size, read from the b-tree's last page instead of a COUNT(*) scan.
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries").fetchone()
        return int(row[0])

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        wanted = sorted(set(indexes))
        found: dict[int, bytes] = {}
        # Bounded batches keep under SQLite's host-parameter limit.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for idx, value in self._conn.execute(
                f"SELECT idx, hash FROM log_hashes WHERE idx IN ({marks})",  # noqa: S608
                chunk,
            ):
                found[int(idx)] = bytes(value)
        try:
            return [found[i] for i in indexes]
        except KeyError:
            raise StorageError("stored log hash missing") from None

    def read_entries(self, start: int, stop: int) -> list[bytes]:
        rows = self._conn.execute(
            "SELECT idx, entry FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, stop),
        ).fetchall()
        if len(rows) != stop - start or any(int(r[0]) != start + i for i, r in enumerate(rows)):
            raise StorageError("log entry missing")
        return [bytes(r[1]) for r in rows]

    def append(self, old_size: int, entries: Sequence[bytes], hashes: Sequence[bytes]) -> None:
        if self.size() != old_size:
            raise StorageError("log store is not at the expected size")
        first_hash = stored_hash_count(old_size)
        if first_hash + len(hashes) != stored_hash_count(old_size + len(entries)):
            raise StorageError("append batch has the wrong number of hashes")
        self._conn.executemany(
            "INSERT INTO log_entries (idx, entry) VALUES (?, ?)",
            [(old_size + i, e) for i, e in enumerate(entries)],
        )
        self._conn.executemany(
            "INSERT INTO log_hashes (idx, hash) VALUES (?, ?)",
            [(first_hash + i, h) for i, h in enumerate(hashes)],
        )


class _Transaction:
    """:class:`bkv.witness.core.WitnessState` for one open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._log: MerkleLog | None = None

    def namespace(self, name: str) -> NamespaceRecord | None:
        return _read_namespace(self._conn, name)

    def add_namespace(self, record: NamespaceRecord) -> None:
        try:
            self._conn.execute(
                "INSERT INTO namespaces (name, operator_public_key, created_ms) VALUES (?, ?, ?)",
                (record.name, record.operator_public_key, record.created_ms),
            )
        except sqlite3.IntegrityError:
            raise NamespaceExistsError(f"namespace {record.name} is already registered") from None

    def last_signed(self, name: str) -> SignedEpoch | None:
        return _read_last(self._conn, name)

    def digest_signed(self, name: str, digest: bytes) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM signed_epochs WHERE namespace = ? AND digest = ?", (name, digest)
        ).fetchone()
        return row is not None

    def record_signed(self, signed: SignedEpoch) -> None:
        entry = signed.entry
        try:
            self._conn.execute(
                f"INSERT INTO signed_epochs ({_EPOCH_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.namespace,
                    entry.epoch,
                    entry.timestamp_ms,
                    entry.digest,
                    entry.message_bytes(),
                    entry.witness_signature,
                    entry.key_id,
                    signed.log_index,
                    signed.artifact,
                    signed.evidence,
                    entry.submitted_at_ms,
                    entry.operator_signature,
                ),
            )
        except (sqlite3.IntegrityError, OverflowError) as exc:
            # The schema is the last line of defence; name what it caught. OverflowError:
            # an epoch beyond SQLite's signed 64 bits (never the next epoch of a namespace).
            text = str(exc)
            if "digest" in text:
                raise DigestReusedError(f"digest already signed in {entry.namespace}") from None
            raise EpochConflictError(
                f"epoch {entry.epoch} of {entry.namespace} refused by the store ({text})"
            ) from None

    def record_checkpoint(self, size: int, note: bytes) -> None:
        self._conn.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, note))

    def signed_epoch(self, name: str, epoch: int) -> SignedEpoch | None:
        return _read_epoch(self._conn, name, epoch)

    def countersignature(self, name: str, epoch: int) -> bytes | None:
        return _read_countersignature(self._conn, name, epoch)

    def add_countersignature(self, name: str, epoch: int, counter_signature: bytes) -> None:
        try:
            self._conn.execute(
                "INSERT INTO countersignatures (namespace, epoch, counter_signature) "
                "VALUES (?, ?, ?)",
                (name, epoch, counter_signature),
            )
        except sqlite3.IntegrityError as exc:
            raise CountersignatureExistsError(
                f"counter-signature of epoch {epoch} of {name} refused by the store ({exc})"
            ) from None

    @property
    def audit_log(self) -> MerkleLog:
        if self._log is None:
            self._log = MerkleLog(_LogTables(self._conn))
        return self._log


def _read_namespace(conn: sqlite3.Connection, name: str) -> NamespaceRecord | None:
    row = conn.execute(
        "SELECT name, operator_public_key, created_ms FROM namespaces WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        return None
    return NamespaceRecord(name=row[0], operator_public_key=bytes(row[1]), created_ms=int(row[2]))


def _read_epoch(conn: sqlite3.Connection, name: str, epoch: int) -> SignedEpoch | None:
    if epoch > _MAX_STORED_EPOCH:
        return None  # a valid Plexi epoch (u64) that no namespace ever reached
    row = conn.execute(
        _SELECT_EPOCHS + "WHERE s.namespace = ? AND s.epoch = ?", (name, epoch)
    ).fetchone()
    return None if row is None else _signed_epoch(row)


def _read_entries(conn: sqlite3.Connection, name: str, first: int, count: int) -> list[AuditEntry]:
    if first > _MAX_STORED_EPOCH:
        return []
    rows = conn.execute(
        _SELECT_ENTRIES + "WHERE s.namespace = ? AND s.epoch >= ? ORDER BY s.epoch LIMIT ?",
        (name, first, count),
    ).fetchall()
    return [_logged_entry(row) for row in rows]


def _read_last_entry(conn: sqlite3.Connection, name: str) -> AuditEntry | None:
    row = conn.execute(
        _SELECT_ENTRIES + "WHERE s.namespace = ? ORDER BY s.epoch DESC LIMIT 1", (name,)
    ).fetchone()
    return None if row is None else _logged_entry(row)


def _read_countersignature(conn: sqlite3.Connection, name: str, epoch: int) -> bytes | None:
    if epoch > _MAX_STORED_EPOCH:
        return None
    row = conn.execute(
        "SELECT counter_signature FROM countersignatures WHERE namespace = ? AND epoch = ?",
        (name, epoch),
    ).fetchone()
    return None if row is None else bytes(row[0])


def _read_last(conn: sqlite3.Connection, name: str) -> SignedEpoch | None:
    row = conn.execute(
        _SELECT_EPOCHS + "WHERE s.namespace = ? ORDER BY s.epoch DESC LIMIT 1", (name,)
    ).fetchone()
    return None if row is None else _signed_epoch(row)


class WitnessStore:
    """The witness database. Thread-safe: one connection behind one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (one per submission).
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._broken = False
        with self._lock:
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if row[0] != SCHEMA_VERSION:
                raise StorageError(f"witness database schema {row[0]} is not {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> WitnessStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """One all-or-nothing write transaction; any exception rolls it back.

        Also when COMMIT itself fails (I/O error, disk full): a transaction left open
        would serve the uncommitted epoch and checkpoint to readers on this connection
        and wedge every later write. If even the ROLLBACK fails, the connection is
        closed and the store refuses all further use (:class:`StorageError`); the
        witness must be restarted, and on restart it re-checks the log against its
        latest checkpoint.
        """
        with self._lock:
            self._check_usable()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Transaction(self._conn)
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise StorageError(f"commit failed: {type(exc).__name__}") from None
            except BaseException:
                self._abort()
                raise

    def _abort(self) -> None:
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._broken = True
            self._conn.close()

    def _check_usable(self) -> None:
        if self._broken:
            raise StorageError("the witness store failed to roll back and was closed")

    @contextmanager
    def _usable(self) -> Iterator[None]:
        """Hold the lock, refusing a store whose connection had to be closed."""
        with self._lock:
            self._check_usable()
            yield

    # --- reads (HTTP API) --------------------------------------------------------

    def namespaces(self) -> list[NamespaceRecord]:
        with self._usable():
            rows = self._conn.execute(
                "SELECT name, operator_public_key, created_ms FROM namespaces ORDER BY name"
            ).fetchall()
        return [NamespaceRecord(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def namespace(self, name: str) -> NamespaceRecord | None:
        with self._usable():
            return _read_namespace(self._conn, name)

    def signed_epoch(self, name: str, epoch: int) -> SignedEpoch | None:
        with self._usable():
            return _read_epoch(self._conn, name, epoch)

    def signed_entries(self, name: str, first: int, count: int) -> list[AuditEntry]:
        """The logged entries of up to ``count`` epochs of ``name`` from ``first`` on, in order.

        Statements only (no artifact, no evidence): what a listing page serves.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        with self._usable():
            return _read_entries(self._conn, name, first, count)

    def last_entry(self, name: str) -> AuditEntry | None:
        """The logged entry of the newest signed epoch of ``name``, or None."""
        with self._usable():
            return _read_last_entry(self._conn, name)

    def countersignature(self, name: str, epoch: int) -> bytes | None:
        """The operator's stored counter-signature of the epoch, or None."""
        with self._usable():
            return _read_countersignature(self._conn, name, epoch)

    def last_signed(self, name: str) -> SignedEpoch | None:
        with self._usable():
            return _read_last(self._conn, name)

    def epoch_count(self, name: str) -> int:
        with self._usable():
            row = self._conn.execute(
                "SELECT COUNT(*) FROM signed_epochs WHERE namespace = ?", (name,)
            ).fetchone()
        return int(row[0])

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        with self._usable():
            row = self._conn.execute(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def checkpoint_at(self, size: int) -> bytes | None:
        """The checkpoint note the witness signed at tree size ``size``, or None.

        Every submission signs one checkpoint (its size = the entry's index + 1) and
        they are never deleted, so auditors can check each historical tree head.
        """
        with self._usable():
            row = self._conn.execute(
                "SELECT note FROM checkpoints WHERE size = ?", (size,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    @contextmanager
    def reading_log(self) -> Iterator[MerkleLog]:
        """A consistent read view of the audit log (holds the store lock)."""
        with self._usable():
            yield MerkleLog(_LogTables(self._conn))

    # --- witness keys (for /info) ---------------------------------------------------

    def witness_keys(self) -> list[tuple[bytes, int]]:
        with self._usable():
            rows = self._conn.execute(
                "SELECT public_key, not_before_ms FROM witness_keys ORDER BY not_before_ms"
            ).fetchall()
        return [(bytes(r[0]), int(r[1])) for r in rows]

    def ensure_witness_key(self, public_key: bytes, now_ms: int) -> None:
        """Record a statement key the first time it is used (its not_before is then)."""
        with self._usable():
            self._conn.execute(
                "INSERT OR IGNORE INTO witness_keys (public_key, not_before_ms) VALUES (?, ?)",
                (public_key, now_ms),
            )

    # --- logs this witness cosigns (tlog-witness) -----------------------------------

    def add_cosigned_log(self, origin: str, verifier_keys: Sequence[str]) -> None:
        """Configure a log whose checkpoints this witness cosigns (vkeys of the log)."""
        if not verifier_keys or any("\n" in v or not v for v in verifier_keys):
            raise ValueError("need one or more single-line verifier keys")
        with self._usable():
            try:
                self._conn.execute(
                    "INSERT INTO cosigned_logs (origin, verifier_keys) VALUES (?, ?)",
                    (origin, "\n".join(verifier_keys)),
                )
            except sqlite3.IntegrityError:
                raise NamespaceExistsError(f"log {origin} is already configured") from None

    def cosigned_logs(self) -> dict[str, list[str]]:
        """Every configured origin and its verifier keys."""
        with self._usable():
            rows = self._conn.execute("SELECT origin, verifier_keys FROM cosigned_logs").fetchall()
        return {str(r[0]): str(r[1]).split("\n") for r in rows}

    @contextmanager
    def cosigning(self) -> Iterator[_CosignState]:
        """Atomic read-latest / check / persist for add-checkpoint (tlog-witness)."""
        with self.transaction():
            yield _CosignState(self._conn)


class _CosignState:
    """Latest cosigned state per origin, inside one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def latest(self, origin: str) -> LogState | None:
        row = self._conn.execute(
            "SELECT size, root_hash, checkpoint FROM cosigned_logs WHERE origin = ?", (origin,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return LogState(int(row[0]), bytes(row[1]), bytes(row[2]))

    def persist(self, origin: str, state: LogState) -> None:
        self._conn.execute(
            "UPDATE cosigned_logs SET size = ?, root_hash = ?, checkpoint = ? WHERE origin = ?",
            (state.size, state.root_hash, state.checkpoint, origin),
        )
