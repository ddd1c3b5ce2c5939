"""Benchmark of the audit log (bkv.tlog): append throughput, proofs at 1M entries.

Baselines are measured in the same run: the raw SHA-256 cost of the hashes an
append must compute (one leaf hash plus ~one node hash per entry), and of the
~log2(n) node hashes a proof verification computes.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bkv.tlog.log import MemoryHashStore, MerkleLog, stored_hash_count
from bkv.tlog.merkle import leaf_hash, verify_consistency, verify_inclusion
from bkv.tlog.store_sqlite import SqliteLogStore

BIG = 1_000_000
SQLITE_ENTRIES = 100_000
BATCH = 65_536
PROOF_SAMPLES = 500
ENTRY_SIZE = 64


def _entries(start: int, count: int) -> list[bytes]:
    return [i.to_bytes(8, "big") * (ENTRY_SIZE // 8) for i in range(start, start + count)]


def _fill(log: MerkleLog, total: int) -> float:
    """Append ``total`` entries in batches; return seconds spent in append_many."""
    spent = 0.0
    done = 0
    while done < total:
        batch = _entries(done, min(BATCH, total - done))
        t0 = time.perf_counter()
        log.append_many(batch)
        spent += time.perf_counter() - t0
        done += len(batch)
    return spent


def _raw_hash_seconds(entries: int) -> float:
    """Raw SHA-256 over the same inputs an append computes: leaves and interior nodes."""
    nodes = stored_hash_count(entries) - entries
    leaf_input = b"\x00" + bytes(ENTRY_SIZE)
    node_input = b"\x01" + bytes(64)
    sha = hashlib.sha256
    t0 = time.perf_counter()
    for _ in range(entries):
        sha(leaf_input).digest()
    for _ in range(nodes):
        sha(node_input).digest()
    return time.perf_counter() - t0


def _median_us(fn: Callable[[int], object], samples: int) -> float:
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def run() -> list[str]:
    """Run the benchmark; return the lines to print."""
    lines: list[str] = []
    rng = random.Random(6962)

    mem_log = MerkleLog(MemoryHashStore())
    mem_s = _fill(mem_log, BIG)
    raw_s = _raw_hash_seconds(BIG)
    lines.append(
        f"tlog append (memory, {BIG:,} x {ENTRY_SIZE} B, batches of {BATCH:,}): "
        f"{BIG / mem_s:,.0f} entries/s; raw SHA-256 of the same hashes: "
        f"{BIG / raw_s:,.0f} entries/s (ratio {mem_s / raw_s:.1f}x)"
    )

    with (
        tempfile.TemporaryDirectory() as tmp,
        SqliteLogStore(Path(tmp) / "bench.sqlite") as store,
    ):
        sql_log = MerkleLog(store)
        sql_s = _fill(sql_log, SQLITE_ENTRIES)

        def append_one(i: int) -> None:
            sql_log.append(_entries(SQLITE_ENTRIES + i, 1)[0])

        single_us = _median_us(append_one, 200)
        sql_index = rng.randrange(SQLITE_ENTRIES)
        sql_proof_us = _median_us(lambda _: sql_log.inclusion_proof(sql_index), PROOF_SAMPLES // 5)
    lines.append(
        f"tlog append (SQLite WAL, {SQLITE_ENTRIES:,} entries, batches of {BATCH:,}): "
        f"{SQLITE_ENTRIES / sql_s:,.0f} entries/s; single-entry durable append: "
        f"median {single_us / 1e3:.2f} ms (one transaction, synchronous=FULL)"
    )

    size = mem_log.size
    root = mem_log.root()
    indexes = [rng.randrange(size) for _ in range(PROOF_SAMPLES)]
    proofs = [mem_log.inclusion_proof(i) for i in indexes]
    leaves = [leaf_hash(e) for i in indexes for e in _entries(i, 1)]
    olds = [rng.randrange(1, size) for _ in range(PROOF_SAMPLES)]
    old_roots = [mem_log.root(o) for o in olds]
    cproofs = [mem_log.consistency_proof(o) for o in olds]

    gen_incl = _median_us(lambda k: mem_log.inclusion_proof(indexes[k]), PROOF_SAMPLES)
    ver_incl = _median_us(
        lambda k: verify_inclusion(leaves[k], indexes[k], size, proofs[k], root), PROOF_SAMPLES
    )
    gen_cons = _median_us(lambda k: mem_log.consistency_proof(olds[k]), PROOF_SAMPLES)
    ver_cons = _median_us(
        lambda k: verify_consistency(olds[k], size, cproofs[k], old_roots[k], root),
        PROOF_SAMPLES,
    )
    depth = (size - 1).bit_length()
    node_input = b"\x01" + bytes(64)
    raw_path_us = _median_us(
        lambda _: [hashlib.sha256(node_input).digest() for _ in range(depth)], PROOF_SAMPLES
    )
    lines.append(
        f"tlog inclusion proof at {size:,} entries (median of {PROOF_SAMPLES}): "
        f"generate {gen_incl:.1f} us, verify {ver_incl:.1f} us; "
        f"raw {depth} x SHA-256 baseline {raw_path_us:.1f} us "
        f"(verify ratio {ver_incl / raw_path_us:.1f}x)"
    )
    lines.append(
        f"tlog consistency proof at {size:,} entries (median of {PROOF_SAMPLES}): "
        f"generate {gen_cons:.1f} us, verify {ver_cons:.1f} us "
        f"(verify ratio {ver_cons / raw_path_us:.1f}x vs {depth} x SHA-256)"
    )
    lines.append(
        f"tlog inclusion proof from SQLite at {SQLITE_ENTRIES:,} entries: "
        f"generate {sql_proof_us:.1f} us (median)"
    )
    return lines


if __name__ == "__main__":
    for line in run():
        print(line)
