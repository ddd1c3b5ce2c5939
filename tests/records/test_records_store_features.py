"""Store operations beyond commit and read, on every store: the sealed state kept with the
head, the path and record read from one version, the bulk load, the size on disk."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from records_world import (
    DATABASE_KINDS,
    TREE_ID,
    FreshStore,
    Vault,
    blob_of,
    commit_batch,
    key_of,
    next_update,
    open_stores,
    postgres_url_for,
    sealed_state_of,
)

import bkv.records.store_sqlite
import bkv.records.tree
from bkv.errors import RecordMismatchError, StorageError
from bkv.records.nodes import NodeId, record_hash
from bkv.records.tree import (
    MAX_SEALED_STATE_SIZE,
    TreeHead,
    TreeStore,
    build_tree,
    new_tree,
    open_record,
    read_proof,
    read_record_proof,
)


@pytest.fixture
def vault(store: TreeStore) -> Vault:
    vault = Vault(store)
    vault.change({key_of(i): blob_of(i) for i in range(10)})
    return vault


def _ids(store: TreeStore) -> set[NodeId]:
    return store.node_ids()  # type: ignore[attr-defined, no-any-return]


def _contents(store: TreeStore, keys: list[bytes]) -> tuple[object, ...]:
    """Everything a store holds, compared across stores (nodes with their encodings)."""
    ids = sorted(_ids(store))
    records = [store.read_record(key) for key in keys]
    return store.head(), store.sealed_state(), ids, store.get_nodes(ids), records


# --- the sealed state ----------------------------------------------------------------------------


def test_the_sealed_state_is_kept_with_each_head(store: TreeStore) -> None:
    assert store.head() is None
    assert store.sealed_state() is None
    vault = Vault(store)
    assert store.sealed_state() == sealed_state_of(vault.head)
    vault.change({key_of(1): blob_of(1)})
    assert store.sealed_state() == sealed_state_of(vault.head)
    update = next_update(store, vault.head, {key_of(2): blob_of(2)})
    largest = bytes(range(256)) * (MAX_SEALED_STATE_SIZE // 256)
    store.commit(update, {key_of(2): blob_of(2)}, largest)
    assert store.sealed_state() == largest
    assert store.head() == update.new_head


@pytest.mark.parametrize(
    ("sealed_state", "error"),
    [
        (b"", ValueError),
        (bytes(MAX_SEALED_STATE_SIZE + 1), ValueError),
        ("text", TypeError),
        (bytearray(b"mutable"), TypeError),
    ],
    ids=["empty", "too large", "str", "bytearray"],
)
def test_a_sealed_state_of_the_wrong_size_or_type_is_caller_misuse(
    vault: Vault, sealed_state: Any, error: type[Exception]
) -> None:
    update = next_update(vault.store, vault.head, {key_of(1): blob_of(1, 1)})
    before = _contents(vault.store, [key_of(1)])
    with pytest.raises(error, match="sealed state"):
        vault.store.commit(update, {key_of(1): blob_of(1, 1)}, sealed_state)
    assert _contents(vault.store, [key_of(1)]) == before


def test_a_refused_commit_keeps_the_sealed_state(vault: Vault) -> None:
    update = next_update(vault.store, vault.head, {key_of(1): blob_of(1, 1)})
    vault.store.commit(update, {}, b"first")
    with pytest.raises(StorageError, match="head"):
        vault.store.commit(update, {}, b"second")
    assert vault.store.sealed_state() == b"first"


# --- the path and the record from one read -------------------------------------------------------


def test_read_for_key_is_read_path_and_read_record(vault: Vault) -> None:
    vault.change({key_of(3): None})
    for key in (key_of(2), key_of(3), key_of("never stored")):
        path, blob = vault.store.read_for_key(key)
        assert sorted(path) == sorted(vault.store.read_path(key))
        assert blob == vault.store.read_record(key) == vault.blobs.get(key)
        proof, also_blob = read_record_proof(vault.store, vault.head, key)
        assert proof == read_proof(vault.store, vault.head, key)
        assert also_blob == blob
        assert open_record(vault.head, key, proof, also_blob) == vault.blobs.get(key)


def test_read_record_proof_refuses_caller_misuse(vault: Vault) -> None:
    with pytest.raises(ValueError, match="record id"):
        read_record_proof(vault.store, vault.head, b"short")


class _Interleaved:
    """A store's connection that runs ``hook`` once, right after the path query executes."""

    def __init__(self, inner: Any, is_path_query: Callable[[object], bool], hook: Any) -> None:
        self._inner, self._is_path_query, self._hook = inner, is_path_query, hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def execute(self, query: object, *args: Any, **kwargs: Any) -> Any:
        result = self._inner.execute(query, *args, **kwargs)
        if self._hook is not None and self._is_path_query(query):
            hook, self._hook = self._hook, None
            hook()
        return result


@contextlib.contextmanager
def _interleave(store: Any, hook: Callable[[], None]) -> Iterator[None]:
    if hasattr(store, "_q"):  # PostgreSQL: the schema's path statement
        path_query = store._q.path
        is_path = lambda query: query is path_query  # noqa: E731
    else:
        is_path = lambda query: query == bkv.records.store_sqlite._PATH_QUERY  # noqa: E731
    real = store._db
    store._db = _Interleaved(real, is_path, hook)
    try:
        yield
    finally:
        store._db = real


@pytest.mark.parametrize("kind", DATABASE_KINDS)
def test_read_for_key_reads_one_version_across_a_concurrent_commit(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Another writer commits between the path query and the record query: the pair still
    comes from one version (the old one), so the HSM accepts it; two separate reads do not."""
    key = key_of(4)
    with open_stores(kind, postgres_url_for(kind, request), count=2) as (reader, writer):
        vault = Vault(reader)
        vault.change({key_of(i): blob_of(i) for i in range(10)})
        old = vault.head
        heads = [old]

        def other_writer_commits() -> None:
            generation = len(heads)
            heads.append(commit_batch(writer, heads[-1], {key: blob_of(4, generation)}))

        with _interleave(reader, other_writer_commits):
            proof, blob = read_record_proof(reader, old, key)
        assert reader.head() == heads[1]  # the commit did happen in between
        assert open_record(old, key, proof, blob) == blob_of(4)

        # The same interleaving with two separate reads pairs an old proof with a new blob.
        with _interleave(reader, other_writer_commits):
            proof = read_proof(reader, heads[1], key)
            blob = reader.read_record(key)
        assert reader.head() == heads[2]
        with pytest.raises(RecordMismatchError):
            open_record(heads[1], key, proof, blob)


# --- the bulk load -------------------------------------------------------------------------------


def _entries(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    entries = [(key_of(i), blob_of(i) * (1 + i % 3)) for i in range(count)]
    random.Random(seed).shuffle(entries)  # any order
    return entries


class _SealedStates:
    """A ``sealed_state_for`` that records the heads it was asked for."""

    def __init__(self) -> None:
        self.heads: list[TreeHead] = []

    def __call__(self, head: TreeHead) -> bytes:
        self.heads.append(head)
        return sealed_state_of(head)


@pytest.mark.parametrize("count", [0, 1, 2, 57])
def test_a_bulk_load_stores_what_build_tree_and_commit_store(
    store: TreeStore, fresh_store: FreshStore, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    monkeypatch.setattr(bkv.records.tree, "BULK_CHUNK_ROWS", 7)  # many chunks, a partial last
    entries = _entries(count, seed=count)
    sealed = _SealedStates()
    head = store.bulk_load(TREE_ID, iter(entries), sealed)  # a one-pass iterator is enough

    blobs = dict(entries)
    update = build_tree(TREE_ID, {k: record_hash(TREE_ID, k, b) for k, b in blobs.items()})
    assert head == update.new_head
    assert head.version == 0
    assert sealed.heads == [head]
    keys = [*blobs, key_of("absent")]
    with fresh_store() as reference:
        reference.commit(update, blobs, sealed_state_of(update.new_head))
        assert _contents(store, keys) == _contents(reference, keys)
    assert _ids(store) == {node_id for node_id, _ in update.new_nodes}

    # The loaded tree is an ordinary one: proofs verify, and batches apply to it.
    for key in keys:
        proof, blob = read_record_proof(store, head, key)
        assert open_record(head, key, proof, blob) == blobs.get(key)
    changes: dict[bytes, bytes | None] = {key_of("new"): b"new blob"}
    if entries:
        changes[entries[0][0]] = None
    after = commit_batch(store, head, changes)
    assert store.head() == after
    assert store.sealed_state() == sealed_state_of(after)


def test_a_bulk_load_of_the_empty_set_is_the_new_tree(store: TreeStore) -> None:
    head = store.bulk_load(TREE_ID, [], sealed_state_of)
    assert head == new_tree(TREE_ID).new_head


def test_a_bulk_load_needs_an_empty_store(vault: Vault) -> None:
    before = _contents(vault.store, [key_of(1), key_of("x")])
    with pytest.raises(StorageError, match="empty"):
        vault.store.bulk_load(TREE_ID, [(key_of("x"), b"blob")], sealed_state_of)
    assert _contents(vault.store, [key_of(1), key_of("x")]) == before


def _bulk_keys(count: int) -> list[bytes]:
    return [key for key, _ in _entries(count, seed=1)]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("twice", ValueError, "twice"),
        ("empty blob", ValueError, "sealed record"),
        ("huge blob", ValueError, "sealed record"),
        ("short key", ValueError, "record id"),
        ("str blob", TypeError, "bytes"),
        ("empty sealed state", ValueError, "sealed state"),
        ("callback fails", RuntimeError, "HSM gone"),
    ],
)
def test_a_refused_bulk_load_leaves_the_store_empty(
    store: TreeStore, monkeypatch: pytest.MonkeyPatch, bad: str, error: type, message: str
) -> None:
    monkeypatch.setattr(bkv.records.tree, "BULK_CHUNK_ROWS", 7)
    entries: list[tuple[Any, Any]] = _entries(30, seed=1)
    sealed_state_for: Callable[[TreeHead], bytes] = sealed_state_of
    if bad == "twice":
        entries.append((entries[3][0], b"another blob"))  # in a later chunk than the first
    elif bad == "empty blob":
        entries.insert(20, (key_of("x"), b""))
    elif bad == "huge blob":
        entries.insert(20, (key_of("x"), bytes(bkv.records.tree.MAX_RECORD_SIZE + 1)))
    elif bad == "short key":
        entries.insert(20, (b"short", b"blob"))
    elif bad == "str blob":
        entries.insert(20, (key_of("x"), "blob"))
    elif bad == "empty sealed state":
        sealed_state_for = lambda head: b""  # noqa: E731
    else:

        def sealed_state_for(head: TreeHead) -> bytes:
            raise RuntimeError("HSM gone")

    with pytest.raises(error, match=message):
        store.bulk_load(TREE_ID, entries, sealed_state_for)
    assert store.head() is None
    assert store.sealed_state() is None
    assert _ids(store) == set()
    assert all(store.read_record(key) is None for key in _bulk_keys(30))
    # Still empty: an honest load goes through.
    head = store.bulk_load(TREE_ID, _entries(30, seed=1), sealed_state_of)
    assert store.head() == head


# --- size on disk --------------------------------------------------------------------------------


def test_disk_bytes(store_kind: str, vault: Vault) -> None:
    size = vault.store.disk_bytes()
    assert isinstance(size, int)
    if store_kind == "memory":
        assert size == 0  # documented: a memory store keeps nothing on disk
    else:
        assert size > 0
        vault.change({key_of(100 + i): bytes(2000) + bytes([i]) for i in range(200)})
        assert vault.store.disk_bytes() > size
