"""Benchmark of fleet consensus (bkv.consensus) in the deterministic simulator.

Simulated time (bkv.consensus.simulation, no faults): a fleet of 5 members, one
per datacenter, 20-80 ms one-way between datacenters (seeded matrix, plus up
to 10 ms jitter). Commit latency is the time from the leader's proposal to the
leader's commit, at a steady proposal rate; its baseline, measured on the same
matrix, is the round trip to the nearest majority (the leader's
(quorum - 1)-th nearest follower), which no majority protocol can beat.
Failover is the time from killing the leader to the first commit of the next
one (election timeouts are 300-600 ms, docs/architecture.md, "The fleet").

Real time: the CPU cost per committed entry of the replica code (with the
simulator around it: wall time of the run / entries committed), next to the
cost of the HMAC-SHA256 computations an entry needs at least (one entry mac,
one link mac per append and per reply to each follower).
"""

from __future__ import annotations

import hashlib
import hmac
import statistics
import time

from bkv.consensus.replica import Role
from bkv.consensus.simulation import SimConfig, Simulation

SEEDS = (1, 2, 3)
RATE_PER_S = 50
DURATION_MS = 10_000.0
FAILOVER_SEEDS = tuple(range(1, 9))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _majority_rtt(simulation: Simulation) -> float:
    """The round trip from the leader to its (quorum - 1)-th nearest follower."""
    leader = next(n for n, r in simulation.replicas.items() if r.role is Role.LEADER)
    row = simulation._latency[simulation.names.index(leader)]  # the bench's view
    others = sorted(row[i] for i, name in enumerate(simulation.names) if name != leader)
    return 2 * others[simulation.membership.quorum - 2]


def _hmac_floor_us(followers: int) -> float:
    """HMAC-SHA256 over an entry (1) and over an append and a reply per follower."""
    key, data = bytes(32), bytes(160)
    count = 20_000
    t0 = time.perf_counter()
    for _ in range(count):
        hmac.digest(key, data, hashlib.sha256)
    per_mac = (time.perf_counter() - t0) / count
    # the leader seals an append and opens a reply; the follower opens the append,
    # checks the entry and seals the reply
    return per_mac * (1 + 5 * followers) * 1e6


def run() -> list[str]:
    """Run the benchmark; return the lines to print."""
    lines: list[str] = []
    latencies: list[float] = []
    bounds: list[float] = []
    committed = 0
    messages = 0
    wall = 0.0
    for seed in SEEDS:
        simulation = Simulation(seed, SimConfig(members=5, faults=False, clients=0))
        t0 = time.perf_counter()
        result = simulation.measure(DURATION_MS, 1000.0 / RATE_PER_S)
        wall += time.perf_counter() - t0
        latencies += result.latencies_ms
        committed += result.committed
        messages += sum(result.traffic.values())
        bounds.append(_majority_rtt(simulation))
    lines.append(
        f"commit latency (5 datacenters, 20-80 ms apart, {RATE_PER_S} proposals/s,"
        f" {len(latencies)} entries over {len(SEEDS)} latency matrices): median"
        f" {statistics.median(latencies):.0f} ms, p99 {_percentile(latencies, 0.99):.0f} ms"
        f" (simulated); baseline, the round trip to the nearest majority: median"
        f" {statistics.median(bounds):.0f} ms"
    )
    failovers: list[float] = []
    for seed in FAILOVER_SEEDS:
        simulation = Simulation(seed, SimConfig(members=5, faults=False, clients=0))
        result = simulation.measure(8000.0, 100.0, kill_leader_at_ms=3000.0)
        if result.failover_ms is not None:
            failovers.append(result.failover_ms)
    lines.append(
        f"failover after killing the leader ({len(failovers)}/{len(FAILOVER_SEEDS)} runs"
        f" recovered): median {statistics.median(failovers):.0f} ms, max {max(failovers):.0f} ms"
        " (simulated; election timeout 300-600 ms)"
    )
    per_entry_us = wall / committed * 1e6
    floor_us = _hmac_floor_us(4)
    lines.append(
        f"CPU per committed entry (replica code + simulator, 5 members in one process):"
        f" {per_entry_us:,.0f} us, {messages / committed:.1f} messages/entry; baseline,"
        f" the HMAC-SHA256 work an entry needs: {floor_us:.0f} us"
        f" (ratio {per_entry_us / floor_us:.0f}x)"
    )
    return lines


if __name__ == "__main__":
    for line in run():
        print(line)
