"""A :class:`bkv.records.tree.TreeStore` in memory (tests, simulations, benchmarks). Not durable.

Nodes live in a dict keyed by position, each position holding its nodes by
hash, so :meth:`MemoryTreeStore.read_path` is 257 dict look-ups. A commit is
checked in full before anything changes, so a refused commit changes nothing.
It keeps nothing on disk: :meth:`MemoryTreeStore.disk_bytes` is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from bkv.errors import StorageError
from bkv.records.nodes import NodeId, check_key
from bkv.records.tree import (
    TreeHead,
    TreeUpdate,
    bulk_build,
    check_commit,
    check_sealed_state,
    path_positions,
)

_Nodes = dict[tuple[int, int], dict[bytes, bytes]]


class MemoryTreeStore:
    """Nodes, sealed records, the head and the sealed state, in dicts."""

    def __init__(self) -> None:
        self._nodes: _Nodes = {}
        self._records: dict[bytes, bytes] = {}
        self._head: TreeHead | None = None
        self._sealed_state: bytes | None = None

    def close(self) -> None:
        """Nothing to release (the contents stay readable)."""

    def __enter__(self) -> MemoryTreeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def head(self) -> TreeHead | None:
        return self._head

    def sealed_state(self) -> bytes | None:
        return self._sealed_state

    def disk_bytes(self) -> int:
        return 0

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

    def read_for_key(self, key: bytes) -> tuple[list[tuple[NodeId, bytes]], bytes | None]:
        # Nothing changes the dicts between the two reads but a commit in this thread.
        return self.read_path(key), self.read_record(key)

    def commit(
        self, update: TreeUpdate, records: Mapping[bytes, bytes | None], sealed_state: bytes
    ) -> None:
        check_commit(self._head, update, records, sealed_state)
        if any(self._get(node_id) is None for node_id in update.obsolete):
            raise StorageError("an obsolete node is not in the store")
        if any(self._get(node_id) is not None for node_id, _ in update.new_nodes):
            raise StorageError("a new node is already in the store")
        for node_id in update.obsolete:
            self._delete(node_id)
        _add_nodes(self._nodes, update.new_nodes)
        for key, blob in records.items():
            if blob is None:
                self._records.pop(key, None)
            else:
                self._records[key] = blob
        self._head = update.new_head
        self._sealed_state = sealed_state

    def bulk_load(
        self,
        tree_id: bytes,
        entries: Iterable[tuple[bytes, bytes]],
        sealed_state_for: Callable[[TreeHead], bytes],
    ) -> TreeHead:
        if self._head is not None or self._nodes or self._records:
            raise StorageError("a bulk load needs an empty store")
        # Built aside and installed at the end, so a refused load leaves the store empty.
        nodes: _Nodes = {}
        records: dict[bytes, bytes] = {}

        def write_records(chunk: list[tuple[bytes, bytes]]) -> None:
            for key, blob in chunk:
                if key in records:
                    raise ValueError("a record id appears twice")
                records[key] = blob

        head = bulk_build(tree_id, entries, write_records, lambda c: _add_nodes(nodes, c))
        sealed_state = sealed_state_for(head)
        check_sealed_state(sealed_state)
        self._nodes, self._records = nodes, records
        self._head, self._sealed_state = head, sealed_state
        return head

    def _delete(self, node_id: NodeId) -> None:
        position = (node_id.depth, node_id.prefix)
        at = self._nodes[position]
        del at[node_id.hash]
        if not at:
            del self._nodes[position]


def _add_nodes(nodes: _Nodes, new: Iterable[tuple[NodeId, bytes]]) -> None:
    for node_id, data in new:
        nodes.setdefault((node_id.depth, node_id.prefix), {})[node_id.hash] = data
