"""Soak the consensus replica in the deterministic simulator (bkv.consensus.simulation).

    .venv/bin/python tests/consensus/soak.py --seeds 10000          # seeds 0..9999
    .venv/bin/python tests/consensus/soak.py --seeds 500 --start 7000
    .venv/bin/python tests/consensus/soak.py --seed 1234 --trace    # replay one seed, every event

Prints a summary: faults injected, invariant checks passed, ops, commits. Exits
1 on the first seed that breaks an invariant, printing its last events and the
command that replays it. A seed that hits one of the known bugs (known_bugs.py)
is counted and reported, and fails the run only with ``--strict``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from known_bugs import classify

from bkv.consensus.simulation import (
    DEFAULT_REPLAY,
    InvariantError,
    SimConfig,
    SimReport,
    Simulation,
)


def _config(args: argparse.Namespace, *, trace: bool) -> SimConfig:
    replay = DEFAULT_REPLAY + (f" --members {args.members}" if args.members else "")
    return SimConfig(members=args.members, keep_trace=trace, replay=replay)


def _one(args: argparse.Namespace) -> int:
    simulation = Simulation(args.seed, _config(args, trace=args.trace))
    try:
        report = simulation.run()
    except InvariantError as violation:
        for line in simulation.full_trace():
            print(line)
        print(violation)
        bug = classify(violation)
        if bug is not None:
            print(f"known bug {bug.name}: {bug.reason} ({bug.test})")
        return 1
    if args.trace:
        for line in report.trace:
            print(line)
    _summary([report], 0.0, Counter(), {})
    return 0


def _summary(
    reports: list[SimReport],
    seconds: float,
    known: Counter[str],
    known_seeds: dict[str, list[int]],
) -> None:
    faults: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    for report in reports:
        faults.update(report.faults)
        checks.update(report.checks)
    sizes = Counter(report.members for report in reports)
    passed = len(reports)
    print(
        f"{passed} seeds passed"
        + (
            f" in {seconds:.1f} s ({seconds / max(passed, 1) * 1000:.0f} ms each)"
            if seconds
            else ""
        )
        + f"; fleets: {', '.join(f'{n} x {k} members' for k, n in sorted(sizes.items()))}"
    )
    total = {
        key: sum(getattr(r, key) for r in reports)
        for key in (
            "events",
            "ops_issued",
            "ops_answered",
            "load_proposals",
            "commits",
            "elections",
        )
    }
    print(
        f"  simulated {sum(r.sim_ms for r in reports) / 1000:.0f} s, {total['events']} events,"
        f" {total['ops_issued']} client ops ({total['ops_answered']} answered),"
        f" {total['load_proposals']} load proposals, {total['commits']} commits reported,"
        f" {total['elections']} elections"
    )
    print("  faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    print("  invariant checks passed: " + ", ".join(f"{k} {v}" for k, v in sorted(checks.items())))
    for name, count in known.items():
        seeds = known_seeds[name]
        print(f"  KNOWN BUG {name}: {count} seeds, e.g. {seeds[:8]}")


def _many(args: argparse.Namespace) -> int:
    reports: list[SimReport] = []
    known: Counter[str] = Counter()
    known_seeds: dict[str, list[int]] = {}
    started = time.perf_counter()
    config = _config(args, trace=False)
    for seed in range(args.start, args.start + args.seeds):
        try:
            reports.append(Simulation(seed, config).run())
        except InvariantError as violation:
            bug = classify(violation)
            if bug is None or args.strict:
                _summary(reports, time.perf_counter() - started, known, known_seeds)
                print(violation)
                if bug is not None:
                    print(f"known bug {bug.name}: {bug.reason} ({bug.test})")
                return 1
            known[bug.name] += 1
            known_seeds.setdefault(bug.name, []).append(seed)
        done = seed - args.start + 1
        if done % 500 == 0:
            elapsed = time.perf_counter() - started
            print(
                f"... {done} seeds, {elapsed:.0f} s, known-bug seeds {sum(known.values())}",
                flush=True,
            )
    _summary(reports, time.perf_counter() - started, known, known_seeds)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds (default 1000)")
    parser.add_argument("--start", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--trace", action="store_true", help="with --seed: print every event")
    parser.add_argument("--members", type=int, choices=(3, 5), help="fleet size (default: by seed)")
    parser.add_argument("--strict", action="store_true", help="fail on known bugs too")
    args = parser.parse_args(argv)
    if args.seed is not None:
        return _one(args)
    return _many(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
