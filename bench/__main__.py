"""`make bench`: run every benchmark module and print its lines.

Each module measures its own baseline in the same run and prints medians and
ratios; nothing here asserts on time (machines are shared and noisy).
Select modules with `make bench BENCH_ARGS="opaque tlog"`.
"""

from __future__ import annotations

import importlib
import sys
import time

MODULES = ("opaque", "vault", "bundle", "tlog", "records", "service", "backup", "consensus")


def main(argv: list[str]) -> int:
    selected = argv or list(MODULES)
    unknown = sorted(set(selected) - set(MODULES))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(MODULES)}")
        return 2
    for name in selected:
        started = time.perf_counter()
        print(f"== bench.{name}", flush=True)
        for line in importlib.import_module(f"bench.{name}").run():
            print(f"   {line}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
