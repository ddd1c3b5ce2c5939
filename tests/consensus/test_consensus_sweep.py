"""The simulator's seed sweep (bkv.consensus.simulation), and the checkers' own tests.

``test_sweep`` runs 500 seeds of the default configuration in chunks (so pytest
shows progress). A seed that breaks an invariant fails its chunk, printing its
last events and the one command that replays it::

    .venv/bin/python tests/consensus/soak.py --seed 1234 --trace

The checkers are tested with their negatives: a history that is not
linearizable, answers over the guess limit, and replicas sabotaged so that
they commit without a majority, elect with too few votes or take forgeries;
the simulator must catch each.
"""

from __future__ import annotations

import pytest
from known_bugs import KNOWN_BUGS, KnownBug, classify

from bkv.consensus import messages, replica, simulation
from bkv.consensus.simulation import (
    HistoryOp,
    InvariantError,
    Op,
    SimConfig,
    Simulation,
    VaultModel,
    check_guess_limit,
    check_linearizable,
    run_seed,
)

SEEDS = 500
CHUNK = 50

_results: dict[int, InvariantError | None] = {}


def _run(seed: int) -> InvariantError | None:
    if seed not in _results:
        try:
            run_seed(seed)
        except InvariantError as violation:
            _results[seed] = violation
        else:
            _results[seed] = None
    return _results[seed]


@pytest.mark.parametrize("chunk", range(SEEDS // CHUNK), ids=lambda c: f"seeds {c * CHUNK}+")
def test_sweep(chunk: int) -> None:
    failures = []
    for seed in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        violation = _run(seed)
        if violation is not None and classify(violation) is None:
            failures.append(violation)
    if failures:
        seeds = ", ".join(str(v.seed) for v in failures)
        pytest.fail(
            f"{len(failures)} seed(s) failed ({seeds}); the first:\n{failures[0]}", pytrace=False
        )


if KNOWN_BUGS:  # known_bugs.py: a seed that hits one is counted here, not in test_sweep

    @pytest.mark.parametrize(
        "bug",
        [
            pytest.param(b, marks=pytest.mark.xfail(strict=True, reason=b.reason), id=b.name)
            for b in KNOWN_BUGS
        ],
    )
    def test_sweep_hits_no_known_bug(bug: KnownBug) -> None:
        hits = [s for s in range(SEEDS) if (v := _run(s)) is not None and classify(v) is bug]
        assert not hits, f"{bug.name} ({bug.test}): seeds {hits[:10]}"


def test_a_seed_replays_exactly() -> None:
    config = SimConfig(keep_trace=True)
    first = Simulation(7, config).run()
    second = Simulation(7, config).run()
    assert first.trace == second.trace
    assert first.faults == second.faults and first.events == second.events


def test_both_fleet_sizes_and_every_fault_are_swept() -> None:
    faults: set[str] = set()
    sizes: set[int] = set()
    for seed in range(40):
        simulation = Simulation(seed)
        report = simulation.run()
        sizes.add(report.members)
        faults |= set(report.faults)
    assert sizes == {3, 5}
    for fault in (
        "crash", "restart_disk", "restart_blank", "restart_old", "rollback after a vote",
        "partition_member", "partition_datacenter", "partition_split", "partition_oneway",
        "heal", "drop", "duplicate", "delay", "replay", "forgery", "cut",
    ):  # fmt: skip
        assert fault in faults, fault


def test_a_failure_shows_the_last_events_and_the_replay_command() -> None:
    violation = InvariantError(42, "liveness", "no leader", ["1.0 ms  CRASH hsm-0"], "cmd 42")
    text = str(violation)
    assert "seed 42: liveness: no leader" in text
    assert "CRASH hsm-0" in text and text.endswith("replay: cmd 42")
    default = SimConfig().replay.format(seed=1234)
    assert default == ".venv/bin/python tests/consensus/soak.py --seed 1234 --trace"


# --- the model and the checkers --------------------------------------------------------------

MODEL = VaultModel(records=1, limit=3)


def test_the_model_counts_forgives_and_refuses() -> None:
    state = MODEL.initial()
    results = []
    for op in [
        Op("a", "attempt", 0), Op("b", "attempt", 0), Op("c", "attempt", 0),
        Op("d", "attempt", 0),  # the fourth: refused
        Op("e", "succeed", 0, 2),  # forgives 1 and 2
        Op("f", "attempt", 0), Op("g", "attempt", 0),
        Op("h", "succeed", 0, 1),  # older than the last forgiven: nothing more
        Op("i", "succeed", 0, 9),  # never one not started yet
        Op("j", "read", 0),
    ]:  # fmt: skip
        state, result = MODEL.step(state, op)
        results.append(result)
    assert results == [
        (1, 1), (1, 2), (1, 3), (0, 3), (2, 3), (1, 4), (1, 5), (2, 5), (5, 5), (5, 5),
    ]  # fmt: skip


def _h(op: Op, invoke: float, response: float | None, result: tuple[int, int] | None) -> HistoryOp:
    return HistoryOp("c", op, invoke, response, result)


def test_linearizable_histories_are_found() -> None:
    a, b, r = Op("a", "attempt", 0), Op("b", "attempt", 0), Op("r", "read", 0)
    # a and b overlap: either order; the read after both sees two attempts
    history = [_h(a, 0, 10, (1, 2)), _h(b, 1, 9, (1, 1)), _h(r, 11, 12, (2, 0))]
    assert check_linearizable(history, MODEL) == [1, 0, 2]
    # an unanswered op may have applied (here it must have: the read sees it)
    history = [_h(a, 0, None, None), _h(r, 5, 6, (1, 0))]
    assert check_linearizable(history, MODEL) == [0, 1]
    # ... or not
    assert check_linearizable([_h(a, 0, None, None), _h(r, 5, 6, (0, 0))], MODEL) == [1]


def test_non_linearizable_histories_are_refused() -> None:
    a, r = Op("a", "attempt", 0), Op("r", "read", 0)
    # a read after an answered attempt that does not see it (a lost acknowledgement)
    assert check_linearizable([_h(a, 0, 5, (1, 1)), _h(r, 6, 7, (0, 0))], MODEL) is None
    # two attempts given the same number
    b = Op("b", "attempt", 0)
    assert check_linearizable([_h(a, 0, 5, (1, 1)), _h(b, 0, 5, (1, 1))], MODEL) is None
    # a read that sees an attempt invoked after it answered
    assert check_linearizable([_h(r, 0, 1, (1, 0)), _h(a, 2, 3, (1, 1))], MODEL) is None


def test_the_guess_limit_checker() -> None:
    attempts = [_h(Op(f"a{i}", "attempt", 0), i, i + 0.5, (1, i + 1)) for i in range(3)]
    assert check_guess_limit(attempts, MODEL) is None
    fourth = _h(Op("a3", "attempt", 0), 3, 3.5, (1, 4))
    assert "limit 3" in (check_guess_limit([*attempts, fourth], MODEL) or "")
    forgiven = _h(Op("s", "succeed", 0, 1), 2.7, 2.9, (1, 3))  # applied after attempt 3
    assert check_guess_limit([*attempts, forgiven, fourth], MODEL) is None
    pending = _h(Op("s", "succeed", 0, 1), 2.7, None, None)  # may have applied
    assert check_guess_limit([*attempts, pending, fourth], MODEL) is None
    twice = _h(Op("x", "attempt", 0), 0, 1, (1, 2))
    assert "answered to both" in (check_guess_limit([*attempts, twice], MODEL) or "")


# --- the checkers catch a broken replica -----------------------------------------------------


def _first_violation(seeds: range, **config: object) -> InvariantError:
    for seed in seeds:
        try:
            Simulation(seed, SimConfig(**config)).run()  # type: ignore[arg-type]
        except InvariantError as violation:
            return violation
    raise AssertionError(f"no seed of {seeds} broke an invariant")


def test_a_leader_that_commits_without_a_majority_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def advance_commit(self: replica.Replica, out: replica._Pending) -> None:
        header = self.tail
        if header.term == self.term:
            self._learn_commit(out, header.index)  # a majority of one

    monkeypatch.setattr(replica.Replica, "_advance_commit", advance_commit)
    violation = _first_violation(range(40))
    assert violation.invariant in {
        "log agreement", "committed entries kept", "no acknowledged op lost", "linearizability",
        "guess limit",
    }, violation  # fmt: skip


def test_a_leader_elected_by_a_minority_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = replica.Replica._count_votes

    def count_votes(self: replica.Replica, out: replica._Pending) -> None:
        self._votes |= {self._name, "ghost"}  # one vote too many
        original(self, out)

    monkeypatch.setattr(replica.Replica, "_count_votes", count_votes)
    violation = _first_violation(range(40))
    assert violation.invariant in {"election safety", "log agreement", "committed entries kept"}


def test_a_member_that_takes_forgeries_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def open_anything(
        self: messages.FleetKeys, envelope: messages.Envelope, receiver: str
    ) -> messages.Body:
        return envelope.body

    monkeypatch.setattr(messages.FleetKeys, "open", open_anything)
    violation = _first_violation(range(40), max_forgeries=3)
    assert violation.invariant in {"forgery refused", "authentic messages accepted"}, violation


def test_an_op_that_commits_twice_and_counts_twice_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model without its op-id check: a retried op that commits twice applies twice."""

    def applied_at(self: Simulation, mac: bytes) -> simulation._Applied:
        path = []
        cursor = mac
        while cursor not in self._applied:
            header = self.headers[cursor]
            path.append(header)
            cursor = header.prev_mac
        applied = self._applied[cursor]
        for header in reversed(path):
            op = self.ops.get(header.payload_digest)
            if op is not None and not op.op_id.startswith("load."):
                state, result = self.model.step(applied.state, op)
                applied = simulation._Applied(state, {**applied.results, op.op_id: result})
            self._applied[header.mac] = applied
        return applied

    monkeypatch.setattr(Simulation, "_applied_at", applied_at)
    violation = _first_violation(range(100))
    assert violation.invariant in {"linearizability", "guess limit"}, violation
