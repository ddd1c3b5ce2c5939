"""Benchmark of the record tree (bkv.records): proof size and the HSM's cost at 1k, 100k and 1M.

For each size the tree is bulk-built (``build_nodes``) from random 32-byte
record ids. Up to 100k records every node is kept (in memory and, at 100k, in
SQLite); at 1M the memory store keeps only the nodes on the sampled paths
(about 2M nodes otherwise): a proof, its check and a batch update touch only
those paths, so their cost is the same as in the full store.

Timed, medians: the HSM's ``decode_proof`` + ``verify_read`` of a proof; its
``apply_batch`` of one change and of a group commit of 64 (32 updates, 32
inserts) with their proofs; the host's ``read_proof``; and at 100k a durable
SQLite group commit (one synchronous=FULL transaction).

Baselines, measured in the same run: raw SHA-256 of as many hashes as the
operation computes, over inputs of the same size (a proof check hashes each
node on the path and the leaf; a batch update also hashes each rebuilt node).
Samples are interleaved with nothing else; GC is paused while timing.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bkv.records.nodes import NodeId
from bkv.records.proof import Proof, decode_proof, encode_proof
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import (
    TreeHead,
    TreeStore,
    TreeUpdate,
    apply_batch,
    build_nodes,
    path_positions,
    read_proof,
    verify_read,
)

SIZES = (1_000, 100_000, 1_000_000)
KEEP_ALL_UP_TO = 100_000
SQLITE_SIZE = 100_000
SAMPLES = 100
BATCH = 64
BATCH_ROUNDS = 10
SQLITE_ROUNDS = 5
RAW_BUILD_HASHES = 200_000
TREE_ID = hashlib.sha256(b"bench records tree").digest()
VALUE = hashlib.sha256(b"bench record value").digest()
SEALED_STATE = b"bench: a stand-in for the HSM's sealed state"
NEW_VALUE = hashlib.sha256(b"bench new record value").digest()
NODE_INPUT = bytes(16 + 2 + 32 + 2 * (2 + 1 + 32))
"""The size of the hash input of an inner node with 1-bit branches (the usual one)."""


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _median_us(fn: Callable[[int], object], samples: int) -> float:
    times = []
    with _gc_paused():
        for i in range(samples):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _raw_us(hashes: int, samples: int = 200) -> float:
    """Median time of ``hashes`` raw SHA-256 calls over node-sized inputs."""
    sha = hashlib.sha256
    return _median_us(lambda _: [sha(NODE_INPUT).digest() for _ in range(hashes)], samples)


def _key(label: bytes, i: int) -> bytes:
    return hashlib.sha256(label + i.to_bytes(8, "big")).digest()


class _Sample:
    """One tree size: the records, the sampled keys, and a store holding their paths."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.keys = [_key(b"record", i) for i in range(size)]
        self.members = rng.sample(self.keys, SAMPLES)
        self.absent = [_key(b"absent", i) for i in range(SAMPLES)]
        self.nodes: list[tuple[NodeId, bytes]] = []
        self.build_s, root = self._build(size <= KEEP_ALL_UP_TO)
        self.head = TreeHead(TREE_ID, 0, root)
        self.store = MemoryTreeStore()
        self.store.commit(TreeUpdate(None, self.head, tuple(self.nodes), ()), {}, SEALED_STATE)

    def _build(self, keep_all: bool) -> tuple[float, bytes]:
        keep = {p for key in self.members + self.absent for p in path_positions(key)}

        def sink(node_id: NodeId, data: bytes) -> None:
            if keep_all or (node_id.depth, node_id.prefix) in keep:
                self.nodes.append((node_id, data))

        t0 = time.perf_counter()
        root = build_nodes(TREE_ID, ((key, VALUE) for key in self.keys), sink)
        return time.perf_counter() - t0, root

    def proofs(self, store: TreeStore, keys: list[bytes]) -> list[Proof]:
        return [read_proof(store, self.head, key) for key in keys]


def _build_line(s: _Sample) -> str:
    hashes = 2 * s.size - 1
    measured = min(hashes, RAW_BUILD_HASHES)  # timed on a slice, scaled linearly
    raw_s = _raw_us(measured, samples=3) / 1e6 * hashes / measured
    return (
        f"records build {s.size:,}: {s.size / s.build_s:,.0f} records/s "
        f"(raw SHA-256 of the same {hashes:,} hashes: {s.size / raw_s:,.0f}/s, "
        f"ratio {s.build_s / raw_s:.1f}x)"
    )


def _proof_lines(s: _Sample) -> list[str]:
    member_proofs = s.proofs(s.store, s.members)
    encoded = [encode_proof(p) for p in member_proofs]
    absent_sizes = [len(encode_proof(p)) for p in s.proofs(s.store, s.absent)]
    depth = statistics.median(len(p.nodes) for p in member_proofs)
    verify = _median_us(
        lambda i: verify_read(s.head, s.members[i], decode_proof(encoded[i])), SAMPLES
    )
    read = _median_us(lambda i: read_proof(s.store, s.head, s.members[i]), SAMPLES)
    raw = _raw_us(int(depth) + 1)
    return [
        f"records proof {s.size:,}: {depth:.0f} nodes; size median "
        f"{statistics.median(len(e) for e in encoded):,.0f} B (max {max(map(len, encoded)):,}), "
        f"absence median {statistics.median(absent_sizes):,.0f} B",
        f"records verify {s.size:,} (decode + verify_read): {verify:.0f} us; raw "
        f"{int(depth) + 1} x SHA-256 {raw:.1f} us (ratio {verify / raw:.1f}x); "
        f"host read_proof (memory) {read:.0f} us",
    ]


def _batch(s: _Sample, rng: random.Random) -> tuple[list[Proof], dict[bytes, bytes | None]]:
    keys = rng.sample(s.members, BATCH // 2) + rng.sample(s.absent, BATCH // 2)
    return s.proofs(s.store, keys), dict.fromkeys(keys, NEW_VALUE)


def _apply_lines(s: _Sample, rng: random.Random) -> list[str]:
    singles = [(p, {p.key: NEW_VALUE}) for p in s.proofs(s.store, s.members)]
    one = _median_us(lambda i: apply_batch(s.head, [singles[i][0]], singles[i][1]), SAMPLES)
    batches = [_batch(s, rng) for _ in range(BATCH_ROUNDS)]
    many = _median_us(lambda i: apply_batch(s.head, *batches[i]), BATCH_ROUNDS)
    update = apply_batch(s.head, *batches[0])
    hashes_one = 2 * len(singles[0][0].nodes) + 2
    hashes_many = sum(len(p.nodes) + 1 for p in batches[0][0]) + len(update.new_nodes)
    raw_one, raw_many = _raw_us(hashes_one), _raw_us(hashes_many, samples=50)
    return [
        f"records apply_batch {s.size:,}, 1 change: {one:.0f} us; raw {hashes_one} x SHA-256 "
        f"{raw_one:.1f} us (ratio {one / raw_one:.1f}x)",
        f"records apply_batch {s.size:,}, group commit of {BATCH}: {many / BATCH:.0f} us/record "
        f"({len(update.new_nodes)} new nodes, {len(update.obsolete)} obsolete); raw "
        f"{hashes_many} x SHA-256 {raw_many / BATCH:.1f} us/record "
        f"(ratio {many / raw_many:.1f}x)",
    ]


def _sqlite_lines(s: _Sample, rng: random.Random) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp, SqliteTreeStore(Path(tmp) / "r.sqlite") as store:
        t0 = time.perf_counter()
        store.commit(TreeUpdate(None, s.head, tuple(s.nodes), ()), {}, SEALED_STATE)
        load_s = time.perf_counter() - t0
        read = _median_us(lambda i: read_proof(store, s.head, s.members[i]), SAMPLES // 4)
        commits, head = [], s.head
        for _ in range(SQLITE_ROUNDS):
            keys = rng.sample(s.members, BATCH)
            proofs = [read_proof(store, head, key) for key in keys]
            update = apply_batch(head, proofs, dict.fromkeys(keys, _key(b"v", head.version)))
            t0 = time.perf_counter()
            store.commit(update, {}, SEALED_STATE)
            commits.append(time.perf_counter() - t0)
            head = update.new_head
    return [
        f"records SQLite {s.size:,}: bulk load {len(s.nodes):,} nodes in {load_s:.1f} s; "
        f"read_proof {read:.0f} us (one query); durable group commit of {BATCH} "
        f"{statistics.median(commits) * 1e3:.1f} ms (synchronous=FULL)"
    ]


def run() -> list[str]:
    """Run the benchmark; return the lines to print."""
    rng = random.Random(9807)
    lines: list[str] = []
    for size in SIZES:
        sample = _Sample(size, rng)
        lines.append(_build_line(sample))
        lines += _proof_lines(sample)
        lines += _apply_lines(sample, rng)
        if size == SQLITE_SIZE:
            lines += _sqlite_lines(sample, rng)
        del sample
    return lines


if __name__ == "__main__":
    for line in run():
        print(line)
