"""Bugs of bkv.consensus.replica that the simulator finds today, told apart by their symptom.

Each bug has an ``xfail(strict=True)`` unit test in test_consensus_replica.py with
the smallest schedule found. The sweep (test_consensus_sweep.py) and soak.py
count the seeds that hit a known bug instead of failing on them, and fail on
anything else; the sweep's per-bug xfail test passes (and so fails, being
strict) once no seed hits that bug any more: then delete its entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bkv.consensus.simulation import InvariantError


@dataclass(frozen=True)
class KnownBug:
    name: str
    test: str
    """The xfail unit test that shows it."""
    reason: str
    matches: Callable[[InvariantError], bool]


KNOWN_BUGS: tuple[KnownBug, ...] = ()
"""None today. An entry looks like::

    KnownBug(
        "append-chains",
        "test_consensus_replica.py::test_traffic_stays_flat_under_a_steady_load",
        "every AppendReply below the tail started one more ping-pong",
        lambda v: v.invariant == "bounded traffic",
    )
"""


def classify(violation: InvariantError) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.matches(violation)), None)
