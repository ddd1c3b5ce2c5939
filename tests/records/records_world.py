"""Shared pieces of the record tree tests: both real stores, keys and blobs, a tiny vault."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bkv.records.nodes import record_hash
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import TreeHead, TreeStore, apply_batch, new_tree, read_proof

STORE_KINDS = ("memory", "sqlite")
TREE_ID = hashlib.sha256(b"records test tree").digest()
OTHER_TREE_ID = hashlib.sha256(b"another records test tree").digest()


@contextlib.contextmanager
def open_store(kind: str) -> Iterator[TreeStore]:
    """A fresh store (SQLite in its own temporary directory, so Hypothesis examples don't share)."""
    if kind == "memory":
        yield MemoryTreeStore()
        return
    with tempfile.TemporaryDirectory() as tmp, SqliteTreeStore(Path(tmp) / "t.sqlite") as store:
        yield store


def key_of(label: str | int) -> bytes:
    return hashlib.sha256(f"record {label}".encode()).digest()


def blob_of(label: str | int, generation: int = 0) -> bytes:
    return f"sealed record {label} generation {generation}".encode()


@dataclass
class Vault:
    """A host (the store) and the HSM's head, changed only through proofs and apply_batch."""

    store: TreeStore
    tree_id: bytes = TREE_ID
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    head: TreeHead = field(init=False)

    def __post_init__(self) -> None:
        update = new_tree(self.tree_id)
        self.store.commit(update, {})
        self.head = update.new_head

    def values(self) -> dict[bytes, bytes]:
        return {k: record_hash(self.tree_id, k, b) for k, b in self.blobs.items()}

    def change(self, blobs: dict[bytes, bytes | None]) -> TreeHead:
        """One group commit of ``blobs`` (None deletes), the way the HSM and host will do it."""
        proofs = [read_proof(self.store, self.head, key) for key in blobs]
        changes = {
            k: None if b is None else record_hash(self.tree_id, k, b) for k, b in blobs.items()
        }
        update = apply_batch(self.head, proofs, changes)
        self.store.commit(update, blobs)
        self.head = update.new_head
        for key, blob in blobs.items():
            if blob is None:
                self.blobs.pop(key, None)
            else:
                self.blobs[key] = blob
        return self.head
