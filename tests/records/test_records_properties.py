"""Hypothesis: random batches of inserts, updates and deletes against a dict model, on every store.

After every group commit: the head equals the naive reference's root of the
model and a full rebuild's; the store holds exactly the rebuilt tree's nodes
(no obsolete node left, none missing); every key of the pool (present or not)
and a fresh key read back through a proof the HSM accepts, with the right
blob; and every proof survives an encode/decode round trip byte for byte.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records_reference import node_count, root_hash
from records_world import TREE_ID, Vault, open_store, sealed_state_of

from bkv.records.nodes import KEY_SIZE, NodeId, record_hash
from bkv.records.proof import decode_proof, encode_proof
from bkv.records.tree import (
    TreeStore,
    _rebuild,
    apply_verified_batch,
    build_tree,
    open_record,
    read_proof,
    verify_path,
)

BASE_KEY = hashlib.sha256(b"base key").digest()


def _flip(key: bytes, bits: tuple[int, ...]) -> bytes:
    value = int.from_bytes(key, "big")
    for bit in bits:
        value ^= 1 << (8 * KEY_SIZE - 1 - bit)
    return value.to_bytes(KEY_SIZE, "big")


# Random keys give short shared prefixes; keys a few bit flips from one base
# give long shared prefixes, deep inner nodes and branches of every length
# (bit 255 flipped: two leaves under a node at depth 255).
keys = st.one_of(
    st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE),
    st.lists(st.integers(0, 8 * KEY_SIZE - 1), min_size=1, max_size=3).map(
        lambda bits: _flip(BASE_KEY, tuple(bits))
    ),
)
pools = st.lists(keys, min_size=1, max_size=10, unique=True)
blobs = st.one_of(st.none(), st.binary(min_size=1, max_size=40))


def _stored_ids(store: TreeStore) -> set[NodeId]:
    return store.node_ids()  # type: ignore[attr-defined, no-any-return]


def _check_tree(vault: Vault, pool: list[bytes]) -> None:
    model = vault.values()
    assert vault.store.head() == vault.head
    assert vault.store.sealed_state() == sealed_state_of(vault.head)
    assert vault.head.root == root_hash(TREE_ID, model)
    rebuilt = build_tree(TREE_ID, model)
    assert rebuilt.new_head.root == vault.head.root
    assert _stored_ids(vault.store) == {node_id for node_id, _ in rebuilt.new_nodes}
    assert len(rebuilt.new_nodes) == node_count(model)
    for key in [*pool, hashlib.sha256(b"never stored").digest()]:
        proof = read_proof(vault.store, vault.head, key)
        assert decode_proof(encode_proof(proof)) == proof
        blob = vault.store.read_record(key)
        assert open_record(vault.head, key, proof, blob) == vault.blobs.get(key)


def _run_batches(kind: str, data: st.DataObject, postgres_url: str | None = None) -> None:
    pool = data.draw(pools)
    batch = st.dictionaries(st.sampled_from(pool), blobs, min_size=1)
    with open_store(kind, postgres_url) as store:
        vault = Vault(store)
        for _ in range(data.draw(st.integers(1, 4))):
            vault.change(data.draw(batch))
            _check_tree(vault, pool)


@settings(max_examples=60)
@given(data=st.data())
def test_group_commits_match_the_model_and_a_rebuild_in_memory(data: st.DataObject) -> None:
    _run_batches("memory", data)


# Fewer examples on SQLite: every commit is a synchronous=FULL transaction.
@settings(max_examples=25)
@given(data=st.data())
def test_group_commits_match_the_model_and_a_rebuild_in_sqlite(data: st.DataObject) -> None:
    _run_batches("sqlite", data)


# A new schema per example, and every commit a fsync'd transaction.
@settings(max_examples=25)
@given(data=st.data())
def test_group_commits_match_the_model_and_a_rebuild_in_postgres(
    postgres_url: str, data: st.DataObject
) -> None:
    _run_batches("postgres", data, postgres_url)


@settings(max_examples=30)
@given(pool=pools, data=st.data())
def test_one_batch_equals_the_same_changes_one_by_one(
    pool: list[bytes], data: st.DataObject
) -> None:
    # Group commit: the batch's proofs share nodes (the root at least) and the
    # result is the same tree as applying the changes one at a time.
    changes = data.draw(st.dictionaries(st.sampled_from(pool), blobs, min_size=1))
    with open_store("memory") as one, open_store("memory") as many:
        batched, single = Vault(one), Vault(many)
        initial = {key: b"initial" for key in pool[::2]}
        batched.change(dict(initial))
        single.change(dict(initial))
        batched.change(dict(changes))
        for key, blob in changes.items():
            single.change({key: blob})
        assert batched.head.root == single.head.root
        assert batched.head.version == 2
        assert _stored_ids(one) == _stored_ids(many)


@settings(max_examples=60)
@given(pool=pools, data=st.data())
def test_value_updates_in_place_equal_a_rebuild(pool: list[bytes], data: st.DataObject) -> None:
    # Updates of existing keys only take the in-place path (bodies rewritten, no
    # rebuild); the result must be exactly what the general rebuild gives.
    changed = data.draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    new = {key: data.draw(st.binary(min_size=1, max_size=40)) for key in changed}
    with open_store("memory") as store:
        vault = Vault(store)
        vault.change({key: b"initial" for key in pool})
        head = vault.head
        proofs = {key: decode_proof(encode_proof(read_proof(store, head, key))) for key in new}
        paths = [verify_path(head, key, proofs[key]) for key in new]
        values = {key: record_hash(TREE_ID, key, blob) for key, blob in new.items()}
        in_place = apply_verified_batch(head, paths, values)
        assert in_place == _rebuild(head, paths, values)
        vault.change(new)
        assert in_place.new_head == vault.head
        _check_tree(vault, pool)


def test_verified_paths_must_match_the_head_and_the_changes() -> None:
    keys = [hashlib.sha256(b"k%d" % i).digest() for i in range(3)]
    with open_store("memory") as store:
        vault = Vault(store)
        vault.change({key: b"v" for key in keys})
        old_head = vault.head
        old_path = verify_path(old_head, keys[0], read_proof(store, old_head, keys[0]))
        vault.change({keys[1]: b"w"})
        head = vault.head
        path = verify_path(head, keys[0], read_proof(store, head, keys[0]))
        value = record_hash(TREE_ID, keys[0], b"x")
        with pytest.raises(ValueError, match="verified against this head"):
            apply_verified_batch(head, [old_path], {keys[0]: value})
        with pytest.raises(ValueError, match="one path per changed key"):
            apply_verified_batch(head, [path], {keys[0]: value, keys[2]: value})
        with pytest.raises(ValueError, match="one path per changed key"):
            apply_verified_batch(head, [], {keys[0]: value})
