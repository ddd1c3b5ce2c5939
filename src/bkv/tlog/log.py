"""An append-only RFC 9162 Merkle log over pluggable storage (sans-IO core).

Layout of stored hashes
-----------------------
Every complete subtree of the log has exactly one stored hash, written once and
never changed. Hashes are numbered in the order they are produced, as in Go's
``golang.org/x/mod/sumdb/tlog``: appending leaf ``n`` stores its leaf hash and
then the hash of every subtree that leaf completes, bottom-up. So

- a log of ``n`` leaves holds ``stored_hash_count(n) = 2n - popcount(n)`` hashes;
- subtree ``(level, k)`` (leaves ``[k << level, (k + 1) << level)``) is completed
  by leaf ``m = ((k + 1) << level) - 1`` and sits at
  ``stored_hash_index(level, k) = stored_hash_count(m) + level``.

Because every tree hash the RFC needs is a fold of O(log n) complete subtrees,
:meth:`MerkleLog.root`, :meth:`MerkleLog.inclusion_proof` and
:meth:`MerkleLog.consistency_proof` read O(log n) stored hashes, in one batch.

Storage
-------
:class:`LogStore` (= :class:`HashStore` + :class:`EntryStore` + an atomic
``append``) is the only thing a backend implements. :class:`MemoryHashStore`
keeps everything in lists; :mod:`bkv.tlog.store_sqlite` is the durable adapter.
An append batch (entries and all new hashes) is handed to the store in one
call, which must apply it atomically and only if the store is still at the
size the log expects (so two writers cannot interleave).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from bkv.errors import StorageError
from bkv.tlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MAX_TREE_SIZE,
    consistency_proof_ranges,
    fold_subtrees,
    inclusion_proof_ranges,
    leaf_hash,
    node_hash,
    subtree_decomposition,
)

MAX_ENTRY_SIZE = 65535
"""Largest entry the log accepts: C2SP tlog-tiles entry bundles use a uint16 length prefix."""

MAX_APPEND_BATCH = 1 << 20
"""Largest number of entries one append_many call takes (bounds one transaction)."""


def stored_hash_count(n: int) -> int:
    """Number of stored hashes in a log of ``n`` leaves: 2n - popcount(n)."""
    if n < 0:
        raise ValueError("negative size")
    return 2 * n - n.bit_count()


def stored_hash_index(level: int, index: int) -> int:
    """Position of the hash of complete subtree ``(level, index)`` in the stored-hash order."""
    if level < 0 or index < 0:
        raise ValueError("negative level or index")
    last_leaf = ((index + 1) << level) - 1
    return stored_hash_count(last_leaf) + level


@runtime_checkable
class HashStore(Protocol):
    """Read access to the stored hashes of a log."""

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        """Return the stored hashes at ``indexes`` (same order); StorageError if any is missing."""
        ...


@runtime_checkable
class EntryStore(Protocol):
    """Read access to the entries of a log."""

    def read_entries(self, start: int, stop: int) -> list[bytes]:
        """Return entries ``[start, stop)``; StorageError if any is missing."""
        ...


@runtime_checkable
class LogStore(HashStore, EntryStore, Protocol):
    """Everything :class:`MerkleLog` needs from a storage backend."""

    def size(self) -> int:
        """Number of entries durably stored."""
        ...

    def append(self, old_size: int, entries: Sequence[bytes], hashes: Sequence[bytes]) -> None:
        """Atomically append ``entries`` and their new stored ``hashes``.

        ``hashes`` are the stored hashes from index ``stored_hash_count(old_size)``
        on. Must raise :class:`StorageError` and change nothing if the store is
        not at ``old_size`` (another writer got there first).
        """
        ...


class MemoryHashStore:
    """In-memory :class:`LogStore` (tests, benchmarks, ephemeral logs)."""

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._entries: list[bytes] = []

    def size(self) -> int:
        return len(self._entries)

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        count = len(self._hashes)
        if any(not 0 <= i < count for i in indexes):
            raise StorageError("stored hash missing")
        return [self._hashes[i] for i in indexes]

    def read_entries(self, start: int, stop: int) -> list[bytes]:
        if not 0 <= start <= stop <= len(self._entries):
            raise StorageError("entry range outside the log")
        return self._entries[start:stop]

    def append(self, old_size: int, entries: Sequence[bytes], hashes: Sequence[bytes]) -> None:
        if old_size != len(self._entries) or len(self._hashes) != stored_hash_count(old_size):
            raise StorageError("log store is not at the expected size")
        if len(self._hashes) + len(hashes) != stored_hash_count(old_size + len(entries)):
            raise StorageError("append batch has the wrong number of hashes")
        self._entries.extend(entries)
        self._hashes.extend(hashes)


class MerkleLog:
    """An append-only Merkle log (RFC 9162) over a :class:`LogStore`.

    Not thread-safe; one writer per store. Reads (roots, proofs) only need the
    :class:`HashStore` part and may be served for any size up to :attr:`size`.
    If another writer appended to the same store, :meth:`append_many` raises
    :class:`StorageError` and changes nothing; call :meth:`reload` to catch up.
    """

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._size = 0
        self._frontier: list[bytes] = []
        self.reload()

    def reload(self) -> None:
        """Re-read the size from the store (after another writer appended)."""
        size = self._store.size()
        # Right frontier: hashes of the maximal complete subtrees of the current
        # tree, left to right. Appending only ever needs these.
        self._frontier = self._read_subtrees(subtree_decomposition(0, size)) if size else []
        self._size = size

    @property
    def store(self) -> LogStore:
        """The backing store."""
        return self._store

    @property
    def size(self) -> int:
        """Number of entries in the log."""
        return self._size

    def append(self, entry: bytes) -> int:
        """Append one entry; return its index."""
        return self.append_many([entry])

    def append_many(self, entries: Iterable[bytes]) -> int:
        """Append entries in one storage batch; return the index of the first one."""
        batch = list(entries)
        if not batch:
            raise ValueError("append_many needs at least one entry")
        if len(batch) > MAX_APPEND_BATCH:
            raise ValueError(f"at most {MAX_APPEND_BATCH} entries per batch")
        for entry in batch:
            if not isinstance(entry, bytes):
                raise TypeError("entries are bytes")
            if len(entry) > MAX_ENTRY_SIZE:
                raise ValueError(f"entry longer than {MAX_ENTRY_SIZE} bytes")
        if self._size + len(batch) > MAX_TREE_SIZE:
            raise ValueError("log is full")
        first = self._size
        frontier = list(self._frontier)
        new_hashes: list[bytes] = []
        for offset, entry in enumerate(batch):
            n = first + offset
            h = leaf_hash(entry)
            new_hashes.append(h)
            # Each trailing 1 bit of n is a left sibling waiting on the frontier.
            bits = n
            while bits & 1:
                h = node_hash(frontier.pop(), h)
                new_hashes.append(h)
                bits >>= 1
            frontier.append(h)
        self._store.append(first, batch, new_hashes)
        self._size = first + len(batch)
        self._frontier = frontier
        return first

    def entries(self, start: int, stop: int) -> list[bytes]:
        """Entries ``[start, stop)``."""
        if not 0 <= start <= stop <= self._size:
            raise ValueError("entry range outside the log")
        return self._store.read_entries(start, stop)

    def leaf_hash_at(self, index: int) -> bytes:
        """The leaf hash of entry ``index``."""
        if not 0 <= index < self._size:
            raise ValueError("index outside the log")
        return self._read_subtrees([(0, index)])[0]

    def root(self, size: int | None = None) -> bytes:
        """The tree hash of the first ``size`` entries (default: all)."""
        size = self._size if size is None else self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return fold_subtrees(self._read_subtrees(subtree_decomposition(0, size)))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 9162 section 2.1.3.1)."""
        size = self._size if size is None else self._check_size(size)
        if not 0 <= index < size:
            raise ValueError("index must be in [0, size)")
        return self._range_hashes(inclusion_proof_ranges(index, size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) (RFC 9162 section 2.1.4.1)."""
        new_size = self._size if new_size is None else self._check_size(new_size)
        if not 0 < old_size <= new_size:
            raise ValueError("need 0 < old_size <= new_size")
        return self._range_hashes(consistency_proof_ranges(old_size, new_size))

    def subtree_hash(self, level: int, index: int) -> bytes:
        """Stored hash of the complete subtree ``(level, index)`` (used for tiles)."""
        if level < 0 or index < 0 or ((index + 1) << level) > self._size:
            raise ValueError("subtree is not complete in this log")
        return self._read_subtrees([(level, index)])[0]

    def subtree_hashes(self, level: int, start: int, stop: int) -> list[bytes]:
        """Stored hashes of complete subtrees ``(level, start) .. (level, stop - 1)``."""
        if level < 0 or not 0 <= start <= stop or (stop << level) > self._size:
            raise ValueError("subtrees are not complete in this log")
        return self._read_subtrees([(level, k) for k in range(start, stop)])

    def _check_size(self, size: int) -> int:
        if not 0 <= size <= self._size:
            raise ValueError(f"size {size} is not in [0, {self._size}]")
        return size

    def _read_subtrees(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        hashes = self._store.read_hashes([stored_hash_index(lv, k) for lv, k in nodes])
        if len(hashes) != len(nodes) or any(len(h) != HASH_SIZE for h in hashes):
            raise StorageError("store returned malformed hashes")
        return hashes

    def _range_hashes(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """MTH of each leaf range, reading each needed stored hash once (one batch)."""
        plans = [subtree_decomposition(lo, hi) for lo, hi in ranges]
        unique = sorted({node for plan in plans for node in plan})
        by_node = dict(zip(unique, self._read_subtrees(unique), strict=True))
        return [fold_subtrees([by_node[node] for node in plan]) for plan in plans]
