"""The record tree: the HSM's checks and batch update, the full build, the host's reads.

Sans-IO: bytes and dataclasses in, bytes and dataclasses out; storage is the
:class:`TreeStore` the host passes in (docs/architecture.md, "Record storage (next)").

HSM side (pure; cost O(proof size); the HSM keeps only a :class:`TreeHead`):

- :func:`verify_read` — the value the tree holds for a key, or ``None`` when the
  proof shows the key absent; any other outcome is a typed
  :class:`bkv.errors.RecordProofError`;
- :func:`open_record` — the same, and the host's blob must be the record the
  tree holds (:class:`bkv.errors.RecordMismatchError` for a stale blob,
  another record's blob, or a blob for an absent record);
- :func:`apply_batch` — verifies one proof per changed key against the head,
  then computes the new head and the node changes from those proofs alone (a
  group commit: any number of records, one new root and one new version).

Host side: :class:`TreeStore` (nodes stored by position and hash, so a path is
one query; the HSM's sealed state stored with the head it seals),
:func:`read_proof`, :func:`read_record_proof`, and :func:`bulk_build`, the
streaming build every store's ``bulk_load`` shares.

:func:`build_tree` builds a whole tree from its records (the bulk loader, and
the reference a batch update must equal).
"""

from __future__ import annotations

import bisect
import hmac
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Protocol, Self

from bkv.errors import (
    CodecError,
    ProofKeyMismatchError,
    RecordMismatchError,
    RecordProofError,
    SizeLimitError,
    StaleProofError,
    StorageError,
)
from bkv.records.nodes import (
    FORMAT_VERSION,
    HASH_SIZE,
    KEY_BITS,
    MAX_RECORD_SIZE,
    Branch,
    Interior,
    Kind,
    Leaf,
    Node,
    NodeId,
    check_hash,
    check_key,
    check_tree_id,
    decode_node,
    decode_position,
    encode_interior_body,
    hash_and_encode,
    interior_hash,
    leaf_hash,
    leaf_hash_and_encode,
    node_hash,
    record_hash,
)
from bkv.records.proof import MAX_PROOF_NODES, MAX_TREE_VERSION, Proof

MAX_BATCH_KEYS = 4096
"""Records one batch (one root update) may change."""

MAX_SEALED_STATE_SIZE = 64 * 1024
"""Largest sealed HSM state a store keeps with its head (opaque to the host)."""

BULK_CHUNK_ROWS = 10_000
"""Rows a bulk load gives a store per write (read when a load starts)."""

NodeSink = Callable[[NodeId, bytes], None]
"""Receives each node a build or a batch creates, with its encoding."""


@dataclass(frozen=True, slots=True)
class TreeHead:
    """All the vault state the HSM keeps: which tree, which version, which root."""

    tree_id: bytes
    version: int
    root: bytes

    def __post_init__(self) -> None:
        check_tree_id(self.tree_id)
        if not 0 <= self.version <= MAX_TREE_VERSION:
            raise ValueError(f"tree version is 0..{MAX_TREE_VERSION}")
        check_hash(self.root, "root hash")


@dataclass(frozen=True, slots=True)
class TreeUpdate:
    """What the host must store for one new head: new nodes in, obsolete nodes out.

    ``old_head`` is ``None`` for a new tree. ``new_nodes`` and ``obsolete`` never
    share an id, and both are sorted (the update is deterministic).
    """

    old_head: TreeHead | None
    new_head: TreeHead
    new_nodes: tuple[tuple[NodeId, bytes], ...]
    obsolete: tuple[NodeId, ...]


# --- paths ----------------------------------------------------------------------


def _bit(key: int, depth: int) -> int:
    """Bit ``depth`` of a key (bit 0 is the most significant)."""
    return (key >> (KEY_BITS - 1 - depth)) & 1


def _prefix(key: int, depth: int) -> int:
    return key >> (KEY_BITS - depth)


def path_positions(key: bytes) -> list[tuple[int, int]]:
    """Every position ``(depth, prefix)`` a node on ``key``'s path can have (257 of them)."""
    check_key(key)
    value = int.from_bytes(key, "big")
    return [(depth, _prefix(value, depth)) for depth in range(KEY_BITS + 1)]


def _branch_toward(node: Interior, key: int, depth: int) -> Branch | None:
    """The branch of ``node`` (at ``depth``) that ``key``'s path follows; None where it ends."""
    branch = node.branch(_bit(key, depth))
    if branch is None:
        return None
    end = depth + branch.length
    if end > KEY_BITS:
        raise RecordProofError("a branch runs deeper than the leaves")
    if _prefix(key, end) & ((1 << branch.length) - 1) != branch.path:
        return None  # the branch leads to other keys only
    return branch


# --- HSM side: reads --------------------------------------------------------------


class _Step(NamedTuple):
    """One verified interior node of a path, with its exact body encoding."""

    depth: int
    prefix: int
    hash: bytes
    node: Interior
    body: bytes


@dataclass(frozen=True, slots=True)
class VerifiedPath:
    """A key's path checked against ``head`` (:func:`verify_path`): what a batch builds on.

    Only :func:`verify_path` makes one; :func:`apply_verified_batch` takes it
    instead of the proof, so a proof the HSM checked on reading is not checked again.
    """

    head: TreeHead
    key: int
    steps: tuple[_Step, ...]
    leaf: NodeId | None
    value: bytes | None

    @property
    def key_bytes(self) -> bytes:
        return self.key.to_bytes(KEY_BITS // 8, "big")


def verify_path(head: TreeHead, key: bytes, proof: Proof) -> VerifiedPath:
    """Steps 1-3 of every proof check; any failure is a RecordProofError."""
    check_key(key)
    # 1. The proof answers this key ...
    if proof.key != key:
        raise ProofKeyMismatchError("the proof is for another record id")
    # 2. ... at the head's version (a proof read at another version is refused
    #    even where its nodes did not change: the host reads at the head it has).
    if proof.version != head.version:
        raise StaleProofError(f"proof of tree version {proof.version}, head is {head.version}")
    # 3. Each node hashes to what its parent (the head, for the root) holds, and
    #    the walk along the key's bits ends exactly where the proof does.
    return _walk(head, int.from_bytes(key, "big"), proof)


def _check_node(head: TreeHead, index: int, node: Interior, body: bytes, expected: bytes) -> bytes:
    digest = interior_hash(head.tree_id, node.is_root, body)
    if not hmac.compare_digest(digest, expected):
        holder = "the head" if index == 0 else "its parent"
        raise RecordProofError(f"proof node {index} does not hash to what {holder} holds")
    return digest


def _walk(head: TreeHead, key: int, proof: Proof) -> VerifiedPath:
    expected, depth, steps = head.root, 0, []
    last = len(proof.nodes) - 1
    bodies = proof.bodies or tuple(encode_interior_body(node) for node in proof.nodes)
    for index, node in enumerate(proof.nodes):
        body = bodies[index]
        digest = _check_node(head, index, node, body, expected)
        steps.append(_Step(depth, _prefix(key, depth), digest, node, body))
        branch = _branch_toward(node, key, depth)
        if branch is None:
            _check_absent_end(index, last, proof)
            return VerifiedPath(head, key, tuple(steps), None, None)
        depth += branch.length
        if depth == KEY_BITS:
            _check_leaf_end(head, index, last, proof, branch.child)
            leaf = NodeId(depth, key, branch.child)
            return VerifiedPath(head, key, tuple(steps), leaf, proof.value)
        expected = branch.child
    raise RecordProofError("the proof ends before the key's path does")


def _check_absent_end(index: int, last: int, proof: Proof) -> None:
    if index != last:
        raise RecordProofError("the proof goes on after the key's path ended")
    if proof.value is not None:
        raise RecordProofError("the proof gives a value for a key its path shows absent")


def _check_leaf_end(head: TreeHead, index: int, last: int, proof: Proof, expected: bytes) -> None:
    if index != last:
        raise RecordProofError("the proof goes on after the key's leaf")
    if proof.value is None:
        raise RecordProofError("the proof reaches the key's leaf but omits its value")
    if not hmac.compare_digest(leaf_hash(head.tree_id, proof.key, proof.value), expected):
        raise RecordProofError("the leaf value does not hash to what its parent holds")


def verify_read(head: TreeHead, key: bytes, proof: Proof) -> bytes | None:
    """The value (record hash) the tree at ``head`` holds for ``key``; None if proven absent."""
    return verify_path(head, key, proof).value


def open_record(head: TreeHead, key: bytes, proof: Proof, blob: bytes | None) -> bytes | None:
    """Check ``proof`` and that ``blob`` is the record it proves; return the blob (None if absent).

    A stale blob, another record's blob (the record hash binds the record id),
    or a blob for an absent record raises :class:`RecordMismatchError`; a
    present record hidden behind a forged absence raises from the proof check.
    """
    return open_verified_record(head, key, proof, blob)[1]


def open_verified_record(
    head: TreeHead, key: bytes, proof: Proof, blob: bytes | None
) -> tuple[VerifiedPath, bytes | None]:
    """:func:`open_record`, and the verified path (for :func:`apply_verified_batch`)."""
    path = verify_path(head, key, proof)
    value = path.value
    if value is None:
        if blob is not None:
            raise RecordMismatchError("the host sent a blob for a record the tree does not hold")
        return path, None
    if blob is None:
        raise RecordMismatchError("the host sent no blob for a record the tree holds")
    if not 0 < len(blob) <= MAX_RECORD_SIZE:
        raise SizeLimitError(f"a sealed record is 1..{MAX_RECORD_SIZE} bytes")
    if not hmac.compare_digest(record_hash(head.tree_id, key, blob), value):
        raise RecordMismatchError("the blob is not the record the tree holds for this id")
    return path, blob


# --- building (shared by the full build and the batch update) --------------------


class _Item(NamedTuple):
    """A subtree the build joins: its key prefix (left-aligned), its depth and its hash."""

    aligned: int
    depth: int
    hash: bytes


def _aligned(item: _Item) -> int:
    return item.aligned


def _edge(parent_depth: int, child: _Item | None) -> Branch | None:
    if child is None:
        return None
    length = child.depth - parent_depth
    path = (child.aligned >> (KEY_BITS - child.depth)) & ((1 << length) - 1)
    return Branch(length, path, child.hash)


def _emit(tree_id: bytes, depth: int, prefix: int, node: Node, sink: NodeSink) -> bytes:
    digest, encoding = hash_and_encode(tree_id, node)
    sink(NodeId(depth, prefix, digest), encoding)
    return digest


class _Builder:
    """Joins items (prefix-free subtrees) into one tree; gives each node it makes to ``sink``."""

    __slots__ = ("_aligned", "_items", "_sink", "_tree_id")

    def __init__(self, tree_id: bytes, items: list[_Item], sink: NodeSink) -> None:
        items.sort(key=_aligned)
        self._tree_id, self._items, self._sink = tree_id, items, sink
        self._aligned = [item.aligned for item in items]

    def root(self) -> bytes:
        """Build the root over all items; return its hash."""
        count = len(self._items)
        split = self._first_with_bit(0, count, 0)
        left = self._join(0, split) if split > 0 else None
        right = self._join(split, count) if split < count else None
        root = Interior(_edge(0, left), _edge(0, right), is_root=True)
        return _emit(self._tree_id, 0, 0, root, self._sink)

    def _first_with_bit(self, lo: int, hi: int, depth: int) -> int:
        """Index of the first item in [lo, hi) whose bit ``depth`` is 1 (all share bits < depth)."""
        if lo == hi:
            return lo
        shift = KEY_BITS - 1 - depth
        threshold = ((self._aligned[lo] >> shift) | 1) << shift
        return bisect.bisect_left(self._aligned, threshold, lo, hi)

    def _join(self, lo: int, hi: int) -> _Item:
        """Join items[lo:hi] (sharing at least their first bit) under one subtree."""
        if hi - lo == 1:
            return self._items[lo]
        first = self._aligned[lo]
        # Sorted, so the prefix all items share is the one the first and last share;
        # prefix-free, so the first differing bit lies inside both prefixes.
        depth = KEY_BITS - (first ^ self._aligned[hi - 1]).bit_length()
        split = self._first_with_bit(lo, hi, depth)
        left, right = self._join(lo, split), self._join(split, hi)
        prefix = first >> (KEY_BITS - depth)
        node = Interior(_edge(depth, left), _edge(depth, right))
        digest = _emit(self._tree_id, depth, prefix, node, self._sink)
        return _Item(prefix << (KEY_BITS - depth), depth, digest)


def _leaf_item(tree_id: bytes, key: bytes, value: bytes, sink: NodeSink) -> _Item:
    digest, encoding = leaf_hash_and_encode(tree_id, key, value)
    key_value = int.from_bytes(key, "big")
    sink(NodeId(KEY_BITS, key_value, digest), encoding)
    return _Item(key_value, KEY_BITS, digest)


def build_nodes(tree_id: bytes, records: Iterable[tuple[bytes, bytes]], sink: NodeSink) -> bytes:
    """Build the tree of ``(key, value)`` records; give each node to ``sink``; return the root.

    O(n log n) time; ``sink`` decides what is kept (a store, or a sample). Input
    that cannot make a tree (a record id twice) is refused before ``sink`` sees
    any node, so a refused build leaves nothing half-written in a store.
    """
    check_tree_id(tree_id)
    ordered = sorted(records, key=_record_id)
    if any(a[0] == b[0] for a, b in itertools.pairwise(ordered)):
        raise ValueError("a record id appears twice")
    items = [_leaf_item(tree_id, key, value, sink) for key, value in ordered]
    del ordered  # the leaves are items now (bulk builds hold millions)
    return _Builder(tree_id, items, sink).root()


def _record_id(record: tuple[bytes, bytes]) -> bytes:
    return record[0]


def build_tree(tree_id: bytes, records: Mapping[bytes, bytes]) -> TreeUpdate:
    """The version-0 tree holding ``records`` (record id -> value), as an update from nothing."""
    nodes: dict[NodeId, bytes] = {}
    root = build_nodes(tree_id, records.items(), nodes.__setitem__)
    return TreeUpdate(None, TreeHead(tree_id, 0, root), tuple(sorted(nodes.items())), ())


def new_tree(tree_id: bytes) -> TreeUpdate:
    """The empty version-0 tree: one root node with two empty branches."""
    return build_tree(tree_id, {})


# --- HSM side: the batch update ------------------------------------------------------


def _check_changes(changes: Mapping[bytes, bytes | None]) -> None:
    if not 0 < len(changes) <= MAX_BATCH_KEYS:
        raise ValueError(f"a batch changes 1..{MAX_BATCH_KEYS} records")
    for key, value in changes.items():
        check_key(key)
        if value is not None:
            check_hash(value, "new leaf value")


def _proofs_by_key(
    proofs: Iterable[Proof], changes: Mapping[bytes, bytes | None]
) -> dict[bytes, Proof]:
    by_key: dict[bytes, Proof] = {}
    for proof in proofs:
        if proof.key not in changes:
            raise ProofKeyMismatchError("a proof is for a record id the batch does not change")
        if proof.key in by_key:
            raise RecordProofError("two proofs for one record id")
        by_key[proof.key] = proof
    if len(by_key) != len(changes):
        raise RecordProofError(f"{len(changes) - len(by_key)} changed record ids have no proof")
    return by_key


def _expanded(paths: Iterable[VerifiedPath]) -> dict[tuple[int, int], _Step]:
    """The verified interior nodes of all paths, by position (shared nodes once)."""
    return {(step.depth, step.prefix): step for path in paths for step in path.steps}


def _untouched_subtrees(
    expanded: Mapping[tuple[int, int], _Step], changed: set[int]
) -> list[_Item]:
    """Branches off the verified paths: subtrees no change reaches, kept by hash.

    A changed key's walk enters every subtree holding it (verified), so a branch
    whose child is neither a verified node nor a changed key's leaf holds no
    changed key: the new tree has that same subtree at that same position.
    """
    items = []
    for step in expanded.values():
        for branch in (step.node.left, step.node.right):
            if branch is None:
                continue
            depth = step.depth + branch.length
            prefix = (step.prefix << branch.length) | branch.path
            if (depth, prefix) in expanded or (depth == KEY_BITS and prefix in changed):
                continue
            items.append(_Item(prefix << (KEY_BITS - depth), depth, branch.child))
    return items


def _old_ids(paths: Iterable[VerifiedPath]) -> set[NodeId]:
    ids = {NodeId(s.depth, s.prefix, s.hash) for path in paths for s in path.steps}
    ids.update(path.leaf for path in paths if path.leaf is not None)
    return ids


def apply_batch(
    head: TreeHead, proofs: Iterable[Proof], changes: Mapping[bytes, bytes | None]
) -> TreeUpdate:
    """Apply ``changes`` (record id -> new value, or None to delete) to the tree at ``head``.

    Needs exactly one proof per changed key, read at ``head``; each is verified
    (a RecordProofError names the first that fails) before anything is built.
    The new tree is computed from the verified paths alone: the result equals
    :func:`build_tree` of the changed record set, at version ``head.version + 1``.
    """
    _check_changes(changes)  # caller misuse first, before any proof is looked at
    by_key = _proofs_by_key(proofs, changes)
    return apply_verified_batch(
        head, [verify_path(head, key, by_key[key]) for key in changes], changes
    )


def apply_verified_batch(
    head: TreeHead, paths: Iterable[VerifiedPath], changes: Mapping[bytes, bytes | None]
) -> TreeUpdate:
    """:func:`apply_batch` from paths already verified against ``head`` (one per changed key)."""
    _check_changes(changes)
    if head.version == MAX_TREE_VERSION:
        raise ValueError("the tree version is exhausted")
    by_key = {path.key_bytes: path for path in paths}
    if any(path.head != head for path in by_key.values()) or by_key.keys() != changes.keys():
        raise ValueError("need exactly one path per changed key, verified against this head")
    ordered = [by_key[key] for key in changes]
    values = {key: value for key, value in changes.items() if value is not None}
    if len(values) == len(changes) and all(path.leaf is not None for path in ordered):
        return _update_in_place(head, ordered, values)
    return _rebuild(head, ordered, changes)


def _rebuild(
    head: TreeHead, paths: Sequence[VerifiedPath], changes: Mapping[bytes, bytes | None]
) -> TreeUpdate:
    """Inserts and deletes: rebuild the changed region from the untouched subtrees."""
    fresh: dict[NodeId, bytes] = {}
    expanded = _expanded(paths)
    changed = {path.key for path in paths}
    items = _untouched_subtrees(expanded, changed)
    items += [
        _leaf_item(head.tree_id, key, value, fresh.__setitem__)
        for key, value in changes.items()
        if value is not None
    ]
    root = _Builder(head.tree_id, items, fresh.__setitem__).root()
    return _update(head, root, fresh, _old_ids(paths))


def _update_in_place(
    head: TreeHead, paths: Sequence[VerifiedPath], changes: Mapping[bytes, bytes]
) -> TreeUpdate:
    """Only existing keys change value: the shape stays (it depends only on the key set).

    Each changed leaf gets its new hash; then every node on the verified paths,
    deepest first, gets its body with the changed children's hashes written in
    place (a branch's child hash is its last 32 bytes) and is hashed again.
    Equal to :func:`_rebuild` (the property tests compare both with ``build_tree``).
    """
    tree_id = head.tree_id
    fresh: dict[NodeId, bytes] = {}
    new_hash: dict[tuple[int, int], bytes] = {}
    for path in paths:
        digest, encoding = leaf_hash_and_encode(tree_id, path.key_bytes, changes[path.key_bytes])
        fresh[NodeId(KEY_BITS, path.key, digest)] = encoding
        new_hash[(KEY_BITS, path.key)] = digest
    for (depth, prefix), step in sorted(_expanded(paths).items(), reverse=True):
        body = _with_children(step, new_hash)
        kind = Kind.ROOT if step.node.is_root else Kind.INNER
        digest = interior_hash(tree_id, step.node.is_root, body)
        fresh[NodeId(depth, prefix, digest)] = bytes((FORMAT_VERSION, kind)) + body
        new_hash[(depth, prefix)] = digest
    return _update(head, new_hash[(0, 0)], fresh, _old_ids(paths))


def _with_children(step: _Step, new_hash: Mapping[tuple[int, int], bytes]) -> bytes:
    """The step's body with each child that has a new hash rewritten (left, then right)."""
    body, offset = step.body, 0
    for branch in (step.node.left, step.node.right):
        if branch is None:
            offset += 2
            continue
        end = offset + 2 + (branch.length + 7) // 8 + HASH_SIZE
        child = (step.depth + branch.length, (step.prefix << branch.length) | branch.path)
        digest = new_hash.get(child)
        if digest is not None:
            body = body[: end - HASH_SIZE] + digest + body[end:]
        offset = end
    return body


def _update(
    head: TreeHead, root: bytes, fresh: Mapping[NodeId, bytes], old: set[NodeId]
) -> TreeUpdate:
    return TreeUpdate(
        old_head=head,
        new_head=TreeHead(head.tree_id, head.version + 1, root),
        new_nodes=tuple(sorted((i, e) for i, e in fresh.items() if i not in old)),
        obsolete=tuple(sorted(old.difference(fresh))),
    )


# --- host side -------------------------------------------------------------------------


class TreeStore(Protocol):
    """Where the host keeps the nodes, the sealed records, the head and the sealed state.

    Nodes are stored under their :class:`NodeId` (position, then hash), so all
    nodes on a key's path come back from one query (:meth:`read_path`) and a
    node's old and new versions can coexist. The store is untrusted: the HSM
    checks everything it reads; a store fault only denies service. Every store
    is a context manager that closes it.
    """

    def head(self) -> TreeHead | None:
        """The head of the last committed update (None before the first)."""
        ...

    def sealed_state(self) -> bytes | None:
        """The sealed state committed with the current head (None before the first commit)."""
        ...

    def read_path(self, key: bytes) -> list[tuple[NodeId, bytes]]:
        """Every stored node at a position on ``key``'s path (one query; may include others)."""
        ...

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        """The encodings of ``ids``, in order; StorageError if one is missing."""
        ...

    def read_record(self, key: bytes) -> bytes | None:
        """The sealed blob stored for ``key`` (None if there is none)."""
        ...

    def read_for_key(self, key: bytes) -> tuple[list[tuple[NodeId, bytes]], bytes | None]:
        """``(read_path(key), read_record(key))`` read from one committed version."""
        ...

    def commit(
        self, update: TreeUpdate, records: Mapping[bytes, bytes | None], sealed_state: bytes
    ) -> None:
        """Atomically: check the stored head is ``update.old_head``; delete the obsolete
        nodes (each must exist); add the new ones (none may exist); store or delete the
        sealed ``records``; make ``update.new_head`` the head and ``sealed_state`` the
        sealed state. StorageError otherwise (nothing written); ValueError for
        arguments no update can have (:func:`check_commit`)."""
        ...

    def bulk_load(
        self,
        tree_id: bytes,
        entries: Iterable[tuple[bytes, bytes]],
        sealed_state_for: Callable[[TreeHead], bytes],
    ) -> TreeHead:
        """Fill an empty store with the version-0 tree of ``entries`` (record id, sealed
        blob; any order) and ``sealed_state_for(head)``; return the head.

        The nodes and head are those :func:`build_tree` and :meth:`commit` would
        store. StorageError (nothing written) unless the store is empty;
        ValueError for a record id twice or a bad record or sealed state.
        """
        ...

    def disk_bytes(self) -> int:
        """Bytes the store occupies on disk (0 for a store that keeps nothing there)."""
        ...

    def close(self) -> None:
        """Release the store's connection; a closed store is not used again."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_sealed_state(sealed_state: bytes) -> None:
    """Caller misuse unless ``sealed_state`` is 1..MAX_SEALED_STATE_SIZE bytes."""
    if not isinstance(sealed_state, bytes):
        raise TypeError("a sealed state is bytes")
    if not 0 < len(sealed_state) <= MAX_SEALED_STATE_SIZE:
        raise ValueError(f"a sealed state is 1..{MAX_SEALED_STATE_SIZE} bytes")


def check_commit(
    current: TreeHead | None,
    update: TreeUpdate,
    records: Mapping[bytes, bytes | None],
    sealed_state: bytes,
) -> None:
    """The checks every store makes before a commit (nothing is written when one fails).

    ValueError (TypeError) for arguments no update can have: a record id or a
    sealed record or sealed state of the wrong size. StorageError when the
    update does not apply to the store: it must follow the stored head (same
    tree, next version), so two writers cannot interleave and an update is
    never applied twice.
    """
    check_sealed_state(sealed_state)
    for key, blob in records.items():
        check_key(key)
        if blob is not None and not (isinstance(blob, bytes) and 0 < len(blob) <= MAX_RECORD_SIZE):
            raise ValueError(f"a sealed record is 1..{MAX_RECORD_SIZE} bytes")
    if current != update.old_head:
        raise StorageError("the stored head is not the head the update starts from")
    old = update.old_head
    expected = 0 if old is None else old.version + 1
    if update.new_head.version != expected or (old and old.tree_id != update.new_head.tree_id):
        raise StorageError("the new head does not follow the old one")
    added = [node_id for node_id, _ in update.new_nodes]
    if len(set(added)) != len(added) or len(set(update.obsolete)) != len(update.obsolete):
        # Each obsolete node must exist and each new one must not (the commit's
        # contract, docs/architecture.md "Record storage (next)"): an entry named
        # twice breaks that half-way through a store's writes.
        raise StorageError("the update names one node twice")
    if not set(added).isdisjoint(update.obsolete):
        raise StorageError("the update both adds and removes one node")


def bulk_build(
    tree_id: bytes,
    entries: Iterable[tuple[bytes, bytes]],
    write_records: Callable[[list[tuple[bytes, bytes]]], None],
    write_nodes: Callable[[list[tuple[NodeId, bytes]]], None],
) -> TreeHead:
    """Build the version-0 tree of ``entries`` (record id, sealed blob) while a store writes it.

    The blobs go to ``write_records`` and then the nodes to ``write_nodes``, in
    chunks of at most :data:`BULK_CHUNK_ROWS` (each chunk a new list); only the
    (record id, record hash) pairs stay in memory. The nodes and the returned
    head equal :func:`build_tree`'s for ``{id: record_hash(tree_id, id, blob)}``.
    A bad record id or blob, or an id given twice, raises ValueError (TypeError
    for a blob that is not bytes), possibly after some chunks were written: a
    store loads in one transaction and rolls it back.
    """
    check_tree_id(tree_id)
    chunk_rows = BULK_CHUNK_ROWS
    if chunk_rows < 1:
        raise ValueError("a bulk load writes at least one row at a time")
    pairs: list[tuple[bytes, bytes]] = []
    blobs: list[tuple[bytes, bytes]] = []
    for key, blob in entries:
        if not isinstance(blob, bytes):
            raise TypeError("a sealed record is bytes")
        pairs.append((key, record_hash(tree_id, key, blob)))
        blobs.append((key, blob))
        if len(blobs) >= chunk_rows:
            write_records(blobs)
            blobs = []
    if blobs:
        write_records(blobs)
    del blobs
    nodes: list[tuple[NodeId, bytes]] = []

    def sink(node_id: NodeId, data: bytes) -> None:
        nodes.append((node_id, data))
        if len(nodes) >= chunk_rows:
            write_nodes(nodes.copy())
            nodes.clear()

    root = build_nodes(tree_id, pairs, sink)
    if nodes:
        write_nodes(nodes)
    return TreeHead(tree_id, 0, root)


# --- host side: what a store reads back (shared by the database stores) -----------------


def stored_blob(value: object, what: str) -> bytes:
    """A column value that must be bytes (a database may hand back any type)."""
    if not isinstance(value, bytes):
        # bytes() of an integer would be that many zero bytes: never convert.
        raise StorageError(f"a stored {what} is corrupt: {type(value).__name__}, not a blob")
    return value


def stored_node_id(pos: object, digest: object) -> NodeId:
    """The id of a stored node from its position and hash columns (StorageError if corrupt)."""
    try:
        depth, prefix = decode_position(stored_blob(pos, "node position"))
    except CodecError as exc:
        raise StorageError("a stored node position is corrupt") from exc
    digest = stored_blob(digest, "node hash")
    if len(digest) != HASH_SIZE:
        raise StorageError("a stored node hash is corrupt")
    return NodeId(depth, prefix, digest)


def stored_head(tree_id: object, version: object, root: object) -> TreeHead:
    """The head from its columns (StorageError if corrupt)."""
    tree_id, root = stored_blob(tree_id, "head"), stored_blob(root, "head")
    if type(version) is not int:
        raise StorageError("the stored head is corrupt")
    try:
        return TreeHead(tree_id, version, root)
    except ValueError as exc:
        raise StorageError("the stored head is corrupt") from exc


def stored_sealed_state(value: object) -> bytes:
    """The sealed state from its column (StorageError if corrupt)."""
    sealed_state = stored_blob(value, "sealed state")
    if not 0 < len(sealed_state) <= MAX_SEALED_STATE_SIZE:
        raise StorageError("the stored sealed state is corrupt: wrong size")
    return sealed_state


def _stored_node(
    found: Mapping[tuple[int, bytes], bytes], head: TreeHead, depth: int, digest: bytes
) -> Node:
    data = found.get((depth, digest))
    if data is None:
        raise StorageError(f"the node at depth {depth} of the path is not in the store")
    try:
        node = decode_node(data)
    except CodecError as exc:
        raise StorageError(f"the stored node at depth {depth} does not decode") from exc
    if not hmac.compare_digest(node_hash(head.tree_id, node), digest):
        raise StorageError(f"the stored node at depth {depth} does not match its hash")
    return node


def _stored_interior(
    found: Mapping[tuple[int, bytes], bytes], head: TreeHead, depth: int, digest: bytes
) -> Interior:
    node = _stored_node(found, head, depth, digest)
    if not isinstance(node, Interior) or node.is_root != (depth == 0):
        raise StorageError(f"the stored node at depth {depth} is of the wrong kind")
    return node


def _stored_value(
    found: Mapping[tuple[int, bytes], bytes], head: TreeHead, key: bytes, digest: bytes
) -> bytes:
    node = _stored_node(found, head, KEY_BITS, digest)
    if not isinstance(node, Leaf) or node.key != key:
        raise StorageError("the stored leaf is not the key's")
    return node.value


def read_proof(store: TreeStore, head: TreeHead, key: bytes) -> Proof:
    """The proof of ``key`` at ``head`` from the nodes the store holds (one ``read_path``).

    Raises StorageError if a node on the path is missing or corrupt (for
    example when ``head`` is not the store's: read again at the current head).
    """
    check_key(key)
    return _proof_from_path(head, key, store.read_path(key))


def read_record_proof(store: TreeStore, head: TreeHead, key: bytes) -> tuple[Proof, bytes | None]:
    """The proof of ``key`` at ``head`` and the sealed blob stored for it, read together.

    One ``read_for_key``: the path and the blob come from one committed version,
    so a commit between them cannot pair an old proof with a new blob. Raises
    like :func:`read_proof`; the HSM checks the pair with :func:`open_record`.
    """
    check_key(key)
    path, blob = store.read_for_key(key)
    return _proof_from_path(head, key, path), blob


def _proof_from_path(head: TreeHead, key: bytes, path: Iterable[tuple[NodeId, bytes]]) -> Proof:
    found = {(node_id.depth, node_id.hash): data for node_id, data in path}
    key_value = int.from_bytes(key, "big")
    nodes: list[Interior] = []
    depth, digest = 0, head.root
    # Depth grows by at least one bit per node, so a path has at most MAX_PROOF_NODES.
    for _ in range(MAX_PROOF_NODES):
        node = _stored_interior(found, head, depth, digest)
        nodes.append(node)
        branch = _branch_toward(node, key_value, depth)
        if branch is None:
            return Proof(head.version, key, tuple(nodes), None)
        depth, digest = depth + branch.length, branch.child
        if depth == KEY_BITS:
            return Proof(head.version, key, tuple(nodes), _stored_value(found, head, key, digest))
    raise StorageError("the stored path is deeper than a key")
