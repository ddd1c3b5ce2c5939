"""A :class:`bkv.records.tree.TreeStore` in memory (tests, simulations, benchmarks). Not durable.

Nodes live in a dict keyed by position, each position holding its nodes by
hash, so :meth:`MemoryTreeStore.read_path` is 257 dict look-ups. A commit is
checked in full before anything changes, so a refused commit changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bkv.errors import StorageError
from bkv.records.nodes import NodeId, check_key
from bkv.records.tree import TreeHead, TreeUpdate, check_commit, path_positions


class MemoryTreeStore:
    """Nodes, sealed records and the head, in dicts."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], dict[bytes, bytes]] = {}
        self._records: dict[bytes, bytes] = {}
        self._head: TreeHead | None = None

    def head(self) -> TreeHead | None:
        return self._head

    def node_ids(self) -> set[NodeId]:
        """Every stored node's id (a full scan: for tests and audits of small stores)."""
        return {NodeId(d, p, h) for (d, p), at in self._nodes.items() for h in at}

    def read_path(self, key: bytes) -> list[tuple[NodeId, bytes]]:
        found = []
        for depth, prefix in path_positions(key):
            for digest, data in self._nodes.get((depth, prefix), {}).items():
                found.append((NodeId(depth, prefix, digest), data))
        return found

    def _get(self, node_id: NodeId) -> bytes | None:
        return self._nodes.get((node_id.depth, node_id.prefix), {}).get(node_id.hash)

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        out = []
        for node_id in ids:
            data = self._get(node_id)
            if data is None:
                raise StorageError("a requested node is not in the store")
            out.append(data)
        return out

    def read_record(self, key: bytes) -> bytes | None:
        check_key(key)
        return self._records.get(key)

    def commit(self, update: TreeUpdate, records: Mapping[bytes, bytes | None]) -> None:
        check_commit(self._head, update, records)
        if any(self._get(node_id) is None for node_id in update.obsolete):
            raise StorageError("an obsolete node is not in the store")
        if any(self._get(node_id) is not None for node_id, _ in update.new_nodes):
            raise StorageError("a new node is already in the store")
        for node_id in update.obsolete:
            self._delete(node_id)
        for node_id, data in update.new_nodes:
            self._nodes.setdefault((node_id.depth, node_id.prefix), {})[node_id.hash] = data
        for key, blob in records.items():
            if blob is None:
                self._records.pop(key, None)
            else:
                self._records[key] = blob
        self._head = update.new_head

    def _delete(self, node_id: NodeId) -> None:
        position = (node_id.depth, node_id.prefix)
        at = self._nodes[position]
        del at[node_id.hash]
        if not at:
            del self._nodes[position]
