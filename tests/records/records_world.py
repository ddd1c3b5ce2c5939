"""Shared pieces of the record tree tests: every store, keys and blobs, a tiny vault."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bkv.records.nodes import record_hash
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.store_postgres import PostgresTreeStore
from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import TreeHead, TreeStore, TreeUpdate, apply_batch, new_tree, read_proof
from postgres_cluster import drop_schema, unique_schema

STORE_KINDS = ("memory", "sqlite", "postgres")
DATABASE_KINDS = ("sqlite", "postgres")
TREE_ID = hashlib.sha256(b"records test tree").digest()
OTHER_TREE_ID = hashlib.sha256(b"another records test tree").digest()


FreshStore = Callable[[], contextlib.AbstractContextManager[TreeStore]]
"""Opens another fresh store of a test's kind (the ``fresh_store`` fixture)."""


def postgres_url_for(kind: str, request: pytest.FixtureRequest) -> str | None:
    """The private cluster's URL for a PostgreSQL store (started on first use); None otherwise."""
    return request.getfixturevalue("postgres_url") if kind == "postgres" else None


@contextlib.contextmanager
def open_stores(
    kind: str, postgres_url: str | None = None, count: int = 1
) -> Iterator[list[TreeStore]]:
    """``count`` fresh stores sharing one new storage: a temporary SQLite file (so
    Hypothesis examples don't share) or a new PostgreSQL schema (dropped after)."""
    if kind == "memory":
        if count != 1:
            raise ValueError("memory stores share nothing")
        yield [MemoryTreeStore()]
        return
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "t.sqlite"
            stores: list[TreeStore] = [
                stack.enter_context(SqliteTreeStore(path)) for _ in range(count)
            ]
        elif kind == "postgres":
            if postgres_url is None:
                raise ValueError("a PostgreSQL store needs the postgres_url fixture")
            schema, url = unique_schema(), postgres_url
            stack.callback(lambda: drop_schema(url, schema))
            stores = [
                stack.enter_context(PostgresTreeStore(url, schema=schema)) for _ in range(count)
            ]
        else:
            raise ValueError(f"no store kind {kind!r}")
        yield stores


@contextlib.contextmanager
def open_store(kind: str, postgres_url: str | None = None) -> Iterator[TreeStore]:
    """A fresh store of ``kind`` (see :func:`open_stores`)."""
    with open_stores(kind, postgres_url) as (store,):
        yield store


def sealed_state_of(head: TreeHead) -> bytes:
    """A stand-in for the HSM's sealed state committed with ``head`` (opaque to the store)."""
    return b"sealed state of version %d, root " % head.version + head.root


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
        self.store.commit(update, {}, sealed_state_of(update.new_head))
        self.head = update.new_head

    def values(self) -> dict[bytes, bytes]:
        return {k: record_hash(self.tree_id, k, b) for k, b in self.blobs.items()}

    def change(self, blobs: dict[bytes, bytes | None]) -> TreeHead:
        """One group commit of ``blobs`` (None deletes), the way the HSM and host will do it."""
        self.head = commit_batch(self.store, self.head, blobs)
        for key, blob in blobs.items():
            if blob is None:
                self.blobs.pop(key, None)
            else:
                self.blobs[key] = blob
        return self.head


def next_update(store: TreeStore, head: TreeHead, blobs: dict[bytes, bytes | None]) -> TreeUpdate:
    """The update of a batch of ``blobs`` (None deletes) at ``head``, computed but not committed."""
    proofs = [read_proof(store, head, key) for key in blobs]
    changes = {k: None if b is None else record_hash(head.tree_id, k, b) for k, b in blobs.items()}
    return apply_batch(head, proofs, changes)


def commit_batch(store: TreeStore, head: TreeHead, blobs: dict[bytes, bytes | None]) -> TreeHead:
    """Compute and commit one batch at ``head`` (with its sealed state); return the new head."""
    update = next_update(store, head, blobs)
    store.commit(update, blobs, sealed_state_of(update.new_head))
    return update.new_head
