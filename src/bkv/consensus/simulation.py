"""A deterministic simulator of a fleet under a malicious host, and its invariant checks (sans-IO).

Everything is drawn from ``random.Random`` streams seeded by one integer, and
time is simulated: a seed replays exactly. The world
(docs/architecture.md, "The fleet"):

- **The fleet**: 5 members (or 3; the seed picks one run in four), each in its
  own datacenter, running :class:`~bkv.consensus.replica.Replica`. Each member
  has its own clock: ``now = sim time * (1 + drift) + offset``.
- **The host** carries every message: inter-datacenter latency from a seeded
  matrix (20-80 ms) plus jitter. Until the faults stop it also drops,
  duplicates, delays (which reorders), cuts links (partitions that heal:
  one member, one datacenter with its clients, a minority/majority split, a
  one-way cut) and *replays* any envelope it ever carried. It cannot forge:
  the few forgeries it tries (edited bytes) must raise
  :class:`~bkv.errors.ConsensusAuthError` or :class:`~bkv.errors.CodecError`
  and change nothing.
- **Members** crash and restart: with their disk (the :class:`Output` persist
  is stored before its sends leave), without it, or from an old copy of it.
  At most one member per run (the *amnesiac*, chosen by the seed) is ever
  restarted without its latest disk: the guarantee holds while the rest of
  the majority is intact.
- **Clients** run operations on a replicated model of the vault's guess limit
  (:class:`VaultModel`, after docs/protocol.md, "Sealed requests and
  responses": numbered attempts, ``forgiven_through``): the leader proposes
  ``sha256(op)``, the simulated host keeps the op by that digest (as the real
  host keeps batches), and the answer is released only once the entry shows
  in that leader's ``Output.committed``. The answer is the model applied, in
  log order, to the committed chain up to the entry (every header ever made
  is recorded by mac, so any chain can be rebuilt). A client retries a lost
  or refused op **with the same op id**; an op id already applied on the chain
  changes nothing and answers its first result, so an op that commits twice
  counts once.

Checked after every event: election safety (one leader per term, ever), log
agreement (one mac per committed index, chained; a member's committed prefix
never changes; every authentic envelope is accepted without error). Checked
at the end: no acknowledged op lost, the guess limit over the answers,
linearizability of the client history against :class:`VaultModel`, and
liveness: once faults stop (links healed, every member restarted with its
disk), a leader exists, every member's commit index reaches the leader's and
every op is answered. A failure raises :class:`InvariantError`, which
shows the last events and the command that replays the seed.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from bkv.consensus.membership import Member, Membership
from bkv.consensus.messages import (
    AppendEntries,
    AppendReply,
    Durable,
    EntryHeader,
    Envelope,
    FleetKeys,
    Position,
    Rejoin,
    VoteReply,
    VoteRequest,
)
from bkv.consensus.replica import NOOP_DIGEST, Output, Replica, Role, Timing
from bkv.errors import CodecError, ConsensusAuthError, ConsensusError, NotLeaderError
from bkv.wire import decode

DEFAULT_REPLAY: Final = ".venv/bin/python tests/consensus/soak.py --seed {seed} --trace"
"""The command that replays one seed of the default configuration."""

FLEET_ID: Final = "sim-fleet"

# --- the replicated model --------------------------------------------------------------

OpKind = Literal["attempt", "succeed", "read"]
Result = tuple[int, int]
"""attempt: (allowed 0/1, its number or the last number); succeed: (forgiven_through,
attempts_started); read: (attempts_started, forgiven_through)."""
ModelState = tuple[tuple[int, int], ...]
"""Per record: (attempts_started, forgiven_through)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation. ``arg``: attempt: 1 if the guess is correct; succeed: the attempt."""

    op_id: str
    kind: OpKind
    record: int
    arg: int = 0

    def encode(self) -> bytes:
        return f"bkv-sim-op|{self.op_id}|{self.kind}|{self.record}|{self.arg}".encode()

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def __str__(self) -> str:
        arg = {"attempt": f", correct={bool(self.arg)}", "succeed": f", {self.arg}", "read": ""}
        return f"{self.op_id}:{self.kind}(r{self.record}{arg[self.kind]})"


@dataclass(frozen=True, slots=True)
class VaultModel:
    """Records with a guess limit (docs/protocol.md, "Sealed requests and responses").

    ``attempt`` counts an attempt if fewer than ``limit`` count against the
    record (``attempts_started - forgiven_through``) and answers its number;
    ``succeed(n)`` forgives every attempt numbered up to ``n`` (never one not
    started yet); ``read`` answers the counters.
    """

    records: int
    limit: int

    def initial(self) -> ModelState:
        return ((0, 0),) * self.records

    def step(self, state: ModelState, op: Op) -> tuple[ModelState, Result]:
        started, forgiven = state[op.record]
        if op.kind == "read":
            return state, (started, forgiven)
        if op.kind == "attempt":
            if started - forgiven >= self.limit:
                return state, (0, started)
            new = (started + 1, forgiven)
            result: Result = (1, started + 1)
        else:
            new = (started, max(forgiven, min(op.arg, started)))
            result = (new[1], started)
        return (*state[: op.record], new, *state[op.record + 1 :]), result


# --- histories and their checkers --------------------------------------------------------


@dataclass(slots=True)
class HistoryOp:
    """One client op: invoked, and answered (``response`` None: never answered)."""

    client: str
    op: Op
    invoke: float
    response: float | None = None
    result: Result | None = None
    mac: bytes | None = None  # the committed entry whose commit released the answer


def check_linearizable(
    history: Sequence[HistoryOp], model: VaultModel, *, budget: int = 2_000_000
) -> list[int] | None:
    """A linearization (indexes into ``history``) of the answered ops, or None if there is none.

    Wing and Gong's search with memoization on (linearized set, model state),
    as in porcupine: an op may go next only if no op still unplaced was
    answered before it was invoked; an unanswered op may take effect anywhere
    after its invocation, or never. ValueError if the search exceeds
    ``budget`` steps (keep histories small).
    """
    ops = list(history)
    n = len(ops)
    answered = [i for i in range(n) if ops[i].response is not None]
    full = 0
    for i in answered:
        full |= 1 << i
    seen: set[tuple[int, ModelState]] = set()
    steps = 0
    order: list[int] = []

    def search(done: int, state: ModelState) -> bool:
        nonlocal steps
        if done & full == full:
            return True
        if (done, state) in seen:
            return False
        seen.add((done, state))
        steps += 1
        if steps > budget:
            raise ValueError("linearizability search budget exceeded")
        horizon = min(
            ops[i].response or 0.0 for i in answered if not done & (1 << i)
        )  # every unplaced answered op has a response
        for i in range(n):
            if done & (1 << i) or ops[i].invoke > horizon:
                continue
            new_state, result = model.step(state, ops[i].op)
            if ops[i].response is not None and result != ops[i].result:
                continue
            order.append(i)
            if search(done | (1 << i), new_state):
                return True
            order.pop()
        return False

    return order if search(0, model.initial()) else None


def check_guess_limit(history: Sequence[HistoryOp], model: VaultModel) -> str | None:
    """Over the answers alone: per record, the attempts answered as allowed since the
    last forgiveness never exceed the limit, and no two ops were given one attempt number.

    A forgiveness counts from the answer of its ``succeed`` (``attempts_started``
    when it applied); an unanswered ``succeed(n)`` may have applied at any time,
    so it is taken as applied before every attempt after ``n``. Returns a
    description of the first violation, or None.
    """
    for record in range(model.records):
        allowed: dict[int, str] = {}
        forgiveness: list[tuple[int, int]] = []  # (applied when attempts_started was, through)
        for entry in history:
            if entry.op.record != record:
                continue
            if entry.op.kind == "attempt" and entry.result is not None and entry.result[0]:
                number = entry.result[1]
                if number in allowed and allowed[number] != entry.op.op_id:
                    return (
                        f"record {record}: attempt number {number} answered to both"
                        f" {allowed[number]} and {entry.op.op_id}"
                    )
                allowed[number] = entry.op.op_id
            elif entry.op.kind == "succeed":
                if entry.result is not None:
                    forgiveness.append((entry.result[1], entry.result[0]))
                else:
                    forgiveness.append((entry.op.arg, entry.op.arg))
        for number in allowed:
            through = max((f for at, f in forgiveness if at < number), default=0)
            counted = [m for m in allowed if through < m <= number]
            if len(counted) > model.limit:
                return (
                    f"record {record}: attempts {sorted(counted)} allowed since"
                    f" forgiveness through {through}, limit {model.limit}"
                )
    return None


# --- configuration, report, failure ------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What one run simulates. The defaults are the sweep's (``soak.py`` replays them)."""

    members: int | None = None
    """3 or 5; None: the seed picks (3 in one run of four)."""
    fault_ms: float = 3000.0
    """Simulated time during which faults happen."""
    settle_ms: float = 6000.0
    """After the faults stop: the time the fleet has to recover (liveness)."""
    faults: bool = True
    clients: int = 3
    max_ops: int = 24
    records: int = 2
    guess_limit: int = 3
    latency_ms: tuple[int, int] = (20, 80)
    tick_ms: float = 10.0
    client_timeout_ms: float = 1200.0
    max_crashes: int = 4
    max_partitions: int = 3
    max_forgeries: int = 3
    traffic_per_member: int = 400
    """Messages a second, per member, above which the traffic is runaway (an invariant)."""
    timing: Timing = field(default_factory=Timing)
    trace_tail: int = 80
    """Events a failure shows."""
    keep_trace: bool = False
    """Keep every event (``SimReport.trace``)."""
    replay: str = DEFAULT_REPLAY


@dataclass
class SimReport:
    seed: int
    members: int
    sim_ms: float = 0.0
    events: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    ops_issued: int = 0
    ops_answered: int = 0
    load_proposals: int = 0
    traffic: dict[int, int] = field(default_factory=dict)
    """Messages the members sent, per simulated second."""
    commits: int = 0
    elections: int = 0
    trace: list[str] = field(default_factory=list)


class InvariantError(AssertionError):
    """A seed broke an invariant: the message shows the last events and how to replay it."""

    def __init__(
        self, seed: int, invariant: str, detail: str, trace: Sequence[str], command: str
    ) -> None:
        self.seed = seed
        self.invariant = invariant
        self.detail = detail
        self.trace = tuple(trace)
        self.command = command
        lines = [f"seed {seed}: {invariant}: {detail}", f"the last {len(self.trace)} events:"]
        lines += [f"  {line}" for line in self.trace]
        lines.append(f"replay: {command}")
        super().__init__("\n".join(lines))


# --- events ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tick:
    member: str
    incarnation: int


@dataclass(slots=True)
class _Deliver:
    envelope: int  # index into the host's archive
    how: str  # "", "dup", "delayed", "replay"


@dataclass(slots=True)
class _Crash:
    member: str


@dataclass(slots=True)
class _Restart:
    member: str
    mode: Literal["disk", "blank", "old"]
    durable: Durable | None = None  # mode "old": this copy (else one drawn at random)


@dataclass(slots=True)
class _Partition:
    kind: str
    partition: int


@dataclass(slots=True)
class _Heal:
    partition: int


@dataclass(slots=True)
class _Replay:
    pass


@dataclass(slots=True)
class _Forge:
    pass


@dataclass(slots=True)
class _EndFaults:
    pass


@dataclass(slots=True)
class _Settle:
    pass


@dataclass(slots=True)
class _ClientIssue:
    client: str


@dataclass(slots=True)
class _ClientRequest:
    client: str
    member: str
    token: int


@dataclass(slots=True)
class _ClientReply:
    client: str
    token: int
    op_id: str
    kind: Literal["answer", "redirect", "busy"]
    leader: str | None = None
    result: Result | None = None


@dataclass(slots=True)
class _ClientTimeout:
    client: str
    token: int
    retarget: bool = True  # a timeout (maybe try another member), not a redirect or busy


@dataclass(slots=True)
class _Propose:
    pass


_Event = (
    _Tick
    | _Deliver
    | _Crash
    | _Restart
    | _Partition
    | _Heal
    | _Replay
    | _Forge
    | _EndFaults
    | _Settle
    | _ClientIssue
    | _ClientRequest
    | _ClientReply
    | _ClientTimeout
    | _Propose
)


@dataclass(slots=True)
class _Client:
    name: str
    dc: int
    target: str
    op: Op | None = None
    entry: HistoryOp | None = None
    token: int = 0
    issued: int = 0
    next_ops: list[tuple[int, int]] = field(default_factory=list)  # (record, attempt) to succeed


@dataclass(slots=True)
class _Applied:
    """The model after a prefix of a chain, with the first result of every op id on it."""

    state: ModelState
    results: dict[str, Result]


@dataclass
class BenchResult:
    """What :meth:`Simulation.measure` saw (simulated milliseconds)."""

    latencies_ms: list[float] = field(default_factory=list)
    busy: int = 0
    failover_ms: float | None = None
    committed: int = 0
    events: int = 0
    traffic: dict[int, int] = field(default_factory=dict)


def describe_envelope(data: bytes) -> str:
    """One line for a trace: sender, receiver and the body's fields that matter."""
    try:
        envelope = decode(Envelope, data)
    except CodecError:
        return f"<{len(data)} undecodable bytes>"
    body = envelope.body
    if isinstance(body, AppendEntries):
        entries = (
            f" entries {body.entries[0].index}..{body.entries[-1].index}" if body.entries else ""
        )
        jump = " JUMP" if body.jump else ""
        text = (
            f"Append(t{body.term} prev {body.prev.index}/t{body.prev.term}{entries}"
            f" commit {body.commit_index}{jump})"
        )
    elif isinstance(body, AppendReply):
        tail = body.window[-1]
        answer = "ok" if body.success else "no"
        text = f"AppendReply(t{body.term} {answer} tail {tail.index}/t{tail.term})"
    elif isinstance(body, VoteRequest):
        text = f"VoteRequest(t{body.term} last {body.last.index}/t{body.last.term})"
    elif isinstance(body, VoteReply):
        text = f"VoteReply(t{body.term} {'granted' if body.granted else 'refused'})"
    elif isinstance(body, Rejoin):
        text = f"Rejoin({body.nonce.hex()[:8]})"
    else:
        last = f"{body.last.index}/t{body.last.term}"
        text = f"RejoinReply({body.nonce.hex()[:8]} t{body.term} last {last})"
    return f"{envelope.sender}->{envelope.receiver} {text}"


# --- the simulation ----------------------------------------------------------------------------


class Simulation:
    """One seeded run: ``Simulation(seed).run()`` returns a report or raises InvariantError."""

    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.config = config = config or SimConfig()
        # Seeded, deterministic streams on purpose: a simulation draws no key.
        plan = random.Random(f"bkv-sim/{seed}/plan")  # noqa: S311
        self._net = random.Random(f"bkv-sim/{seed}/net")  # noqa: S311
        self._crowd = random.Random(f"bkv-sim/{seed}/clients")  # noqa: S311
        self._rng = random.Random(f"bkv-sim/{seed}/replicas").randbytes  # noqa: S311
        size = config.members or (3 if plan.random() < 0.25 else 5)
        self.membership = Membership(
            FLEET_ID, tuple(Member(f"hsm-{i}", f"dc-{i}") for i in range(size))
        )
        self.names = self.membership.names
        self.keys = FleetKeys(FLEET_ID, plan.randbytes(32))
        self.model = VaultModel(config.records, config.guess_limit)
        self.report = SimReport(seed, size)
        self._trace: deque[tuple[float, object]] = deque(maxlen=config.trace_tail)
        self._full_trace: list[tuple[float, object]] | None = [] if config.keep_trace else None
        self._init_world(plan)
        self._init_checkers()
        self._init_faults(plan)
        self.clients = {
            f"c{i}": _Client(f"c{i}", i % size, plan.choice(self.names))
            for i in range(config.clients)
        }
        self._ops_issued = 0
        self._stop_issuing = config.fault_ms + config.settle_ms / 2
        self._bench: BenchResult | None = None
        self._bench_pending: dict[bytes, float] = {}
        self._killed: str | None = None
        self._killed_at = 0.0
        self._done = False

    def _init_world(self, plan: random.Random) -> None:
        config, size = self.config, len(self.names)
        self._dc = {name: i for i, name in enumerate(self.names)}
        low, high = config.latency_ms
        self._latency = [[1.0] * size for _ in range(size)]
        for i in range(size):
            for j in range(i + 1, size):
                self._latency[i][j] = self._latency[j][i] = float(plan.randint(low, high))
        self._jitter = plan.uniform(0.0, 10.0)
        self._clock = {
            name: (1.0 + plan.uniform(-0.02, 0.02), plan.randint(0, 10**7)) for name in self.names
        }
        self.now = 0.0
        self._queue: list[tuple[float, int, _Event]] = []
        self._seq = 0
        self.replicas: dict[str, Replica] = {}
        self.disk: dict[str, Durable | None] = dict.fromkeys(self.names)
        self._incarnation = dict.fromkeys(self.names, 0)
        self._roles: dict[str, Role | None] = dict.fromkeys(self.names)
        self.archive: list[tuple[str, str, bytes]] = []
        self._faulty = config.faults
        self._cut_members: set[tuple[int, int]] = set()
        self._cut_clients: set[tuple[int, int]] = set()
        self._partition_id = 0
        self._partitions = 0
        self._second = 0
        self._sent_this_second = 0
        self._traffic_limit = config.traffic_per_member * size

    def _init_checkers(self) -> None:
        genesis = self.keys.genesis()
        self.headers: dict[bytes, EntryHeader] = {genesis.mac: genesis}
        self.committed: dict[int, bytes] = {0: genesis.mac}
        self._reported: dict[str, int] = dict.fromkeys(self.names, 0)
        self.leaders: dict[int, tuple[str, int]] = {}
        self._applied: dict[bytes, _Applied] = {genesis.mac: _Applied(self.model.initial(), {})}
        self.ops: dict[bytes, Op] = {}
        self.history: list[HistoryOp] = []
        self._waiting: dict[str, dict[bytes, str]] = {name: {} for name in self.names}
        self._acked: dict[str, bytes] = {}  # op id -> the entry whose commit answered it

    def _init_faults(self, plan: random.Random) -> None:
        """The plan of faults (bounded counts), drawn from the seed."""
        config = self.config
        self._amnesiac = plan.choice(self.names)
        self._old_disks: list[Durable] = []
        self._rollbacks_after_vote = 0
        quiet = not config.faults or plan.random() < 0.1
        self._p_drop = 0.0 if quiet else plan.choice((0.0, 0.01, 0.05, 0.15))
        self._p_dup = 0.0 if quiet else plan.choice((0.0, 0.02, 0.1))
        self._p_delay = 0.0 if quiet else plan.choice((0.0, 0.02, 0.05))
        self._replay_every = None if quiet else plan.choice((None, 1000.0, 300.0, 100.0))
        # the host's own load (a read at the leader every few ms, outside the
        # history): longer logs, so windows slide and followers jump
        self._interval = plan.uniform(40.0, 250.0) if plan.random() < 0.3 else 0.0
        self._plan: list[tuple[float, _Event]] = []
        if not quiet:
            self._plan_faults(plan)
            self._rollbacks_after_vote = plan.choice((0, 0, 1, 2))

    # --- the plan ------------------------------------------------------------------------

    def _plan_faults(self, plan: random.Random) -> None:
        cfg = self.config
        for _ in range(plan.randint(0, cfg.max_crashes)):
            member = self._amnesiac if plan.random() < 0.4 else plan.choice(self.names)
            at = plan.uniform(200.0, cfg.fault_ms)
            down = plan.uniform(30.0, 1500.0)
            mode: Literal["disk", "blank", "old"] = "disk"
            if member == self._amnesiac and plan.random() < 0.7:
                mode = plan.choice(("blank", "old", "old"))
            self._plan.append((at, _Crash(member)))
            self._plan.append((at + down, _Restart(member, mode)))
        for _ in range(plan.randint(0, cfg.max_partitions)):
            at = plan.uniform(0.0, cfg.fault_ms)
            kind = plan.choice(("member", "datacenter", "split", "oneway"))
            self._partitions += 1
            self._plan.append((at, _Partition(kind, self._partitions)))
            self._plan.append((at + plan.uniform(100.0, 2000.0), _Heal(self._partitions)))
        for _ in range(plan.randint(0, cfg.max_forgeries)):
            self._plan.append((plan.uniform(100.0, cfg.fault_ms), _Forge()))

    # --- the queue and the trace ---------------------------------------------------------

    def _at(self, time: float, event: _Event) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, event))

    def _log(self, text: object) -> None:
        self._trace.append((self.now, text))
        if self._full_trace is not None:
            self._full_trace.append((self.now, text))

    def _fail(self, invariant: str, detail: str) -> InvariantError:
        lines = [f"{t:10.1f} ms  {text}" for t, text in self._trace]
        return InvariantError(
            self.seed, invariant, detail, lines, self.config.replay.format(seed=self.seed)
        )

    def _clock_of(self, member: str) -> int:
        rate, offset = self._clock[member]
        return int(self.now * rate) + offset

    def state_of(self, member: str) -> str:
        replica = self.replicas.get(member)
        if replica is None:
            return f"{member} down"
        mute = "" if replica.can_vote or replica.role is Role.REJOINING else " (behind its fence)"
        return (
            f"{member} {replica.role.value}{mute} t{replica.term} tail {replica.tail.index}"
            f" commit {replica.commit_index} leader {replica.leader}"
        )

    # --- running -------------------------------------------------------------------------

    def run(self) -> SimReport:
        """The whole run: faults, then recovery, then the checks at the end."""
        cfg = self.config
        self._boot()
        for at, event in self._plan:
            self._at(at, event)
        if self._replay_every is not None:
            self._at(self._net.expovariate(1.0 / self._replay_every), _Replay())
        for client in self.clients.values():
            self._at(self._crowd.uniform(0.0, 300.0), _ClientIssue(client.name))
        if self._interval:
            self._at(self._interval, _Propose())
        self._at(cfg.fault_ms, _EndFaults())
        self._loop(cfg.fault_ms + cfg.settle_ms)
        if not self._done:
            raise self._fail("liveness", self._why_not_settled())
        self._final_checks()
        self.report.sim_ms = self.now
        self.report.trace = self.full_trace()
        return self.report

    def full_trace(self) -> list[str]:
        """Every event so far (with ``SimConfig.keep_trace``; else empty)."""
        return [f"{t:10.1f} ms  {text}" for t, text in self._full_trace or ()]

    def _boot(self) -> None:
        for name in self.names:
            self._start(name, None)

    def _loop(self, until: float) -> None:
        queue = self._queue
        while queue and not self._done:
            time, _, event = heapq.heappop(queue)
            if time > until:
                heapq.heappush(queue, (time, 0, event))
                break
            self.now = time
            self.report.events += 1
            try:
                self._dispatch(event)
            except InvariantError:
                raise
            except Exception as exc:  # a replica (or this simulator) broke: show where
                raise self._fail(
                    "no unexpected error", f"{type(exc).__name__}: {exc} (handling {event})"
                ) from exc

    def _dispatch(self, event: _Event) -> None:
        if isinstance(event, _Tick):
            self._on_tick(event)
        elif isinstance(event, _Deliver):
            self._on_deliver(event)
        elif isinstance(event, _ClientRequest):
            self._on_client_request(event)
        elif isinstance(event, _ClientReply):
            self._on_client_reply(event)
        elif isinstance(event, _ClientTimeout):
            self._on_client_timeout(event)
        elif isinstance(event, _ClientIssue):
            self._on_client_issue(event)
        elif isinstance(event, _Replay):
            self._on_replay()
        elif isinstance(event, _Crash):
            self._crash(event.member)
        elif isinstance(event, _Restart):
            self._on_restart(event)
        elif isinstance(event, _Partition):
            self._on_partition(event)
        elif isinstance(event, _Heal):
            if event.partition == self._partition_id:
                self._heal()
        elif isinstance(event, _Forge):
            self._on_forge()
        elif isinstance(event, _EndFaults):
            self._on_end_faults()
        elif isinstance(event, _Settle):
            self._on_settle()
        else:
            self._on_propose()

    # --- members -----------------------------------------------------------------------

    def _start(self, member: str, durable: Durable | None) -> None:
        self._incarnation[member] += 1
        replica = Replica(
            self.membership,
            member,
            self.keys,
            durable,
            rng=self._rng,
            now_ms=self._clock_of(member),
            timing=self.config.timing,
        )
        self.replicas[member] = replica
        self.disk[member] = replica.durable
        self._reported[member] = replica.commit_index
        self._roles[member] = replica.role
        self._check_window(member, replica)
        self._at(
            self.now + self._net.uniform(0.0, self.config.tick_ms),
            _Tick(member, self._incarnation[member]),
        )

    def _crash(self, member: str) -> None:
        if member not in self.replicas:
            return
        del self.replicas[member]
        self._roles[member] = None
        self._waiting[member] = {}
        self.report.faults["crash"] += 1
        self._log(f"CRASH {member}")

    def _on_restart(self, event: _Restart) -> None:
        member = event.member
        if member in self.replicas:
            return
        durable = self.disk[member]
        mode = event.mode
        if mode == "blank":
            durable = None
        elif mode == "old":
            if event.durable is not None:
                durable = event.durable
            elif self._old_disks:
                # half the time one of the last few copies: the freshest forgotten votes
                count = len(self._old_disks)
                low = max(0, count - 5) if self._net.random() < 0.5 else 0
                durable = self._old_disks[self._net.randrange(low, count)]
            else:
                mode = "disk"
        self.report.faults[f"restart_{mode}"] += 1
        where = {"disk": "its disk", "blank": "a blank disk", "old": "an old copy of its disk"}
        tail = "" if durable is None else f": t{durable.term} tail {durable.tail.index}"
        self._log(f"RESTART {member} from {where[mode]}{tail}")
        self._start(member, durable)

    def _on_tick(self, event: _Tick) -> None:
        member = event.member
        replica = self.replicas.get(member)
        if replica is None or self._incarnation[member] != event.incarnation:
            return
        self._handle(member, replica, replica.tick(self._clock_of(member)))
        self._at(
            self.now + self.config.tick_ms + self._net.uniform(0.0, 2.0),
            _Tick(member, event.incarnation),
        )

    def _handle(self, member: str, replica: Replica, out: Output) -> None:
        """Persist first, then release the sends, then act on the commits; then check."""
        if out.persist is not None:
            before = self.disk[member]
            self.disk[member] = out.persist
            if member == self._amnesiac:
                self._old_disks.append(out.persist)
                if (
                    self._rollbacks_after_vote
                    and self._faulty
                    and before is not None
                    and out.persist.voted_for not in ("", member, before.voted_for)
                ):
                    # the host saw the vote leave: crash the member and restore its disk
                    # from just before the vote
                    self._rollbacks_after_vote -= 1
                    self.report.faults["rollback after a vote"] += 1
                    self._at(self.now, _Crash(member))
                    down = self._net.uniform(1.0, 300.0)
                    self._at(self.now + down, _Restart(member, "old", before))
            window = out.persist.window
            for header in reversed(window):
                if header.mac in self.headers:
                    break
                self.headers[header.mac] = header
            self._check_window(member, replica)
        for receiver, data in out.send:
            self._carry(member, receiver, data)
        if out.committed:
            self._on_committed(member, replica, out.committed)
        role = replica.role
        if role is not self._roles[member]:
            self._roles[member] = role
            self._log(f"{member} is {role.value} in term {replica.term}")
            if role is Role.LEADER:
                self._check_leader(member, replica)

    # --- the host ----------------------------------------------------------------------

    def _carry(self, sender: str, receiver: str, data: bytes) -> None:
        index = len(self.archive)
        second = int(self.now // 1000.0)
        if second != self._second:
            self._second, self._sent_this_second = second, 0
        self._sent_this_second += 1
        self.report.traffic[second] = self._sent_this_second
        if self._sent_this_second > self._traffic_limit:
            raise self._fail(
                "bounded traffic",
                f"the members sent over {self._traffic_limit} messages in simulated second"
                f" {second} (a fleet of {len(self.names)} sends a few hundred)",
            )
        self.archive.append((sender, receiver, data))
        latency = self._latency[self._dc[sender]][self._dc[receiver]]
        net = self._net
        at = self.now + latency + net.uniform(0.0, self._jitter)
        if self._faulty:
            if self._p_drop and net.random() < self._p_drop:
                self.report.faults["drop"] += 1
                self._log(f"drop #{index} {sender}->{receiver}")
                return
            if self._p_delay and net.random() < self._p_delay:
                self.report.faults["delay"] += 1
                self._at(at + net.uniform(100.0, 1500.0), _Deliver(index, "delayed"))
                return
            if self._p_dup and net.random() < self._p_dup:
                self.report.faults["duplicate"] += 1
                self._at(at + net.uniform(0.0, 200.0), _Deliver(index, "dup"))
        self._at(at, _Deliver(index, ""))

    def _on_deliver(self, event: _Deliver) -> None:
        sender, receiver, data = self.archive[event.envelope]
        if event.how != "replay" and (self._dc[sender], self._dc[receiver]) in self._cut_members:
            self.report.faults["cut"] += 1
            return
        self._receive(receiver, data, event.envelope, event.how)

    def _receive(self, receiver: str, data: bytes, index: int, how: str) -> None:
        replica = self.replicas.get(receiver)
        if replica is None:
            return
        self._log(_Lazy(index, how, data))
        try:
            out = replica.receive(data, self._clock_of(receiver))
        except (CodecError, ConsensusAuthError, ValueError) as exc:
            raise self._fail(
                "authentic messages accepted",
                f"{receiver} refused envelope #{index} that a member made:"
                f" {type(exc).__name__}: {exc} ({describe_envelope(data)})",
            ) from exc
        self.report.checks["authentic message accepted"] += 1
        self._handle(receiver, replica, out)

    def _on_replay(self) -> None:
        if not self._faulty or not self.archive:
            return
        index = self._net.randrange(len(self.archive))
        self.report.faults["replay"] += 1
        self._receive(self.archive[index][1], self.archive[index][2], index, "replay")
        assert self._replay_every is not None
        self._at(self.now + self._net.expovariate(1.0 / self._replay_every), _Replay())

    def _on_forge(self) -> None:
        if not self._faulty or not self.archive:
            return
        net = self._net
        _, receiver, data = self.archive[net.randrange(len(self.archive))]
        replica = self.replicas.get(receiver)
        if replica is None:
            return
        how = net.choice(("flip", "flip", "truncate", "extend"))
        if how == "flip":
            at = net.randrange(len(data))
            forged = data[:at] + bytes([data[at] ^ (1 << net.randrange(8))]) + data[at + 1 :]
        elif how == "truncate":
            forged = data[: net.randrange(len(data))]
        else:
            forged = data + net.randbytes(net.randint(1, 8))
        before = _snapshot(replica)
        try:
            replica.receive(forged, self._clock_of(receiver))
        except (ConsensusAuthError, CodecError):
            pass
        else:
            raise self._fail("forgery refused", f"{receiver} accepted a forged envelope ({how})")
        if _snapshot(replica) != before:
            raise self._fail("forgery refused", f"a forged envelope changed {receiver}'s state")
        self.report.faults["forgery"] += 1
        self.report.checks["forgery refused, nothing changed"] += 1
        self._log(f"FORGERY ({how}) to {receiver}: refused")

    def _on_partition(self, event: _Partition) -> None:
        if not self._faulty:
            return
        self._heal()
        net = self._net
        size = len(self.names)
        dcs = list(range(size))
        self._partition_id = event.partition
        members: set[tuple[int, int]] = set()
        clients: set[tuple[int, int]] = set()
        if event.kind in ("member", "datacenter"):
            alone = net.randrange(size)
            for other in dcs:
                if other != alone:
                    members |= {(alone, other), (other, alone)}
            if event.kind == "datacenter":
                clients = set(members)
            text = f"{event.kind} dc-{alone} cut off"
        elif event.kind == "split":
            net.shuffle(dcs)
            minority = dcs[: net.randint(1, size // 2)]
            rest = dcs[len(minority) :]
            for a in minority:
                for b in rest:
                    members |= {(a, b), (b, a)}
            clients = set(members)
            text = f"split {sorted(minority)} | {sorted(rest)}"
        else:
            alone = net.randrange(size)
            outgoing = net.random() < 0.5
            for other in dcs:
                if other != alone:
                    members.add((alone, other) if outgoing else (other, alone))
            text = f"one-way: dc-{alone} can{'not send' if outgoing else 'not receive'}"
        self._cut_members, self._cut_clients = members, clients
        self.report.faults[f"partition_{event.kind}"] += 1
        self._log(f"PARTITION {text}")

    def _heal(self) -> None:
        if self._cut_members or self._cut_clients:
            self._cut_members, self._cut_clients = set(), set()
            self.report.faults["heal"] += 1
            self._log("HEAL")

    def _on_end_faults(self) -> None:
        self._heal()
        self._faulty = False
        self._log("FAULTS END: links healed, every member restarted with its disk")
        for member in self.names:
            if member not in self.replicas:
                self.report.faults["restart_disk"] += 1
                self._start(member, self.disk[member])
        self._at(self.now + 100.0, _Settle())

    # --- clients -----------------------------------------------------------------------

    def _client_latency(self, client: _Client, member: str) -> float | None:
        dc = self._dc[member]
        if (client.dc, dc) in self._cut_clients:
            return None
        if self._faulty and self._p_drop and self._net.random() < self._p_drop:
            return None
        return self._latency[client.dc][dc] + self._net.uniform(0.0, self._jitter)

    def _on_client_issue(self, event: _ClientIssue) -> None:
        client = self.clients[event.client]
        if client.op is not None:
            return
        if self._ops_issued >= self.config.max_ops or self.now >= self._stop_issuing:
            return
        crowd = self._crowd
        op_id = f"{client.name}.{client.issued}"
        if client.next_ops:  # the success that follows a correct guess
            record, attempt = client.next_ops.pop(0)
            op = Op(op_id, "succeed", record, attempt)
        else:
            record = crowd.randrange(self.config.records)
            roll = crowd.random()
            if roll < 0.7:
                op = Op(op_id, "attempt", record, int(crowd.random() < 0.4))
            elif roll < 0.8:
                op = Op(op_id, "succeed", record, crowd.randint(0, 4))
            else:
                op = Op(op_id, "read", record)
        client.issued += 1
        self._ops_issued += 1
        self.report.ops_issued += 1
        self.ops[op.digest] = op
        client.op = op
        client.entry = HistoryOp(client.name, op, self.now)
        self.history.append(client.entry)
        self._log(f"{client.name} invokes {op}")
        self._client_send(client)

    def _client_send(self, client: _Client) -> None:
        client.token += 1
        latency = self._client_latency(client, client.target)
        if latency is not None:
            self._at(self.now + latency, _ClientRequest(client.name, client.target, client.token))
        self._at(
            self.now + self.config.client_timeout_ms, _ClientTimeout(client.name, client.token)
        )

    def _on_client_request(self, event: _ClientRequest) -> None:
        client = self.clients[event.client]
        op = client.op
        replica = self.replicas.get(event.member)
        if op is None or replica is None or event.token != client.token:
            return
        member = event.member
        reply: _ClientReply
        try:
            out, header = replica.propose(op.digest, self._clock_of(member))
        except NotLeaderError as exc:
            reply = _ClientReply(client.name, event.token, op.op_id, "redirect", leader=exc.leader)
        except ConsensusError:
            reply = _ClientReply(client.name, event.token, op.op_id, "busy")
        else:
            self._waiting[member][header.mac] = op.op_id
            self._log(f"{member} proposes {op} at {header.index}")
            self._handle(member, replica, out)
            return
        self._reply(client, member, reply)

    def _reply(self, client: _Client, member: str, reply: _ClientReply) -> None:
        latency = self._client_latency(client, member)
        if latency is not None:
            self._at(self.now + latency, reply)

    def _on_client_reply(self, event: _ClientReply) -> None:
        client = self.clients[event.client]
        op = client.op
        if op is None or op.op_id != event.op_id:
            return
        if event.kind == "answer":
            entry = client.entry
            assert entry is not None and event.result is not None
            entry.response, entry.result = self.now, event.result
            entry.mac = self._acked[op.op_id]
            self.report.ops_answered += 1
            self._log(f"{client.name} gets {op} -> {event.result}")
            client.op = client.entry = None
            if op.kind == "attempt" and op.arg and event.result[0]:
                client.next_ops.append((op.record, event.result[1]))
            self._at(self.now + self._crowd.uniform(0.0, 200.0), _ClientIssue(client.name))
            return
        if event.token != client.token:
            return
        if event.kind == "redirect":
            client.target = event.leader or self._crowd.choice(self.names)
            delay = (
                self._crowd.uniform(5.0, 30.0) if event.leader else self._crowd.uniform(50.0, 150.0)
            )
        else:
            delay = self._crowd.uniform(50.0, 150.0)
        client.token += 1  # the timeout of the last send is void
        self._at(self.now + delay, _ClientTimeout(client.name, client.token, retarget=False))

    def _on_client_timeout(self, event: _ClientTimeout) -> None:
        client = self.clients[event.client]
        if client.op is None or event.token != client.token:
            return
        # a retry: the same op id (see the module docstring)
        if event.retarget and self._crowd.random() < 0.5:
            client.target = self._crowd.choice(self.names)
        self._client_send(client)

    # --- commits and the answers they release ------------------------------------------

    def _on_committed(self, member: str, replica: Replica, positions: tuple[Position, ...]) -> None:
        self.report.commits += len(positions)
        first = positions[0].index
        for position in positions:
            self._check_committed(member, position)
        self._log(f"{member} commits {first}..{positions[-1].index}")
        self._check_window(member, replica)
        waiting = self._waiting[member]
        bench = self._bench_pending
        for position in positions:
            if bench:
                started = bench.pop(position.mac, None)
                if started is not None and self._bench is not None:
                    self._bench.latencies_ms.append(self.now - started)
                    self._bench.committed += 1
            if (
                self._killed is not None
                and replica.role is Role.LEADER
                and member != self._killed
                and self._bench is not None
                and self._bench.failover_ms is None
            ):
                self._bench.failover_ms = self.now - self._killed_at
            op_id = waiting.pop(position.mac, None)
            if op_id is None:
                continue
            applied = self._applied_at(position.mac)
            result = applied.results[op_id]
            client = self.clients[op_id.split(".")[0]]
            self._acked.setdefault(op_id, position.mac)
            self._log(f"{member} answers {op_id} -> {result} (entry {position.index})")
            self._reply(
                client, member, _ClientReply(client.name, 0, op_id, "answer", result=result)
            )

    def _applied_at(self, mac: bytes) -> _Applied:
        """The model after the chain that ends at ``mac`` (memoized by mac)."""
        path: list[EntryHeader] = []
        cursor = mac
        while cursor not in self._applied:
            header = self.headers.get(cursor)
            if header is None:
                raise self._fail("log agreement", f"an entry {cursor.hex()[:12]} nobody made")
            path.append(header)
            cursor = header.prev_mac
        applied = self._applied[cursor]
        for header in reversed(path):
            if header.payload_digest != NOOP_DIGEST:
                op = self.ops.get(header.payload_digest)
                if op is None:
                    raise self._fail(
                        "log agreement", f"entry {header.index} holds a payload nobody proposed"
                    )
                if op.op_id not in applied.results and not op.op_id.startswith("load."):
                    state, result = self.model.step(applied.state, op)
                    applied = _Applied(state, {**applied.results, op.op_id: result})
            self._applied[header.mac] = applied
        return applied

    # --- invariants checked as the run goes ----------------------------------------------

    def _check_leader(self, member: str, replica: Replica) -> None:
        me = (member, self._incarnation[member])
        known = self.leaders.setdefault(replica.term, me)
        self.report.elections += 1
        if known != me:
            raise self._fail(
                "election safety",
                f"two leaders in term {replica.term}: {known[0]} (start {known[1]})"
                f" and {member} (start {me[1]})",
            )
        self.report.checks["election safety"] += 1

    def _check_committed(self, member: str, position: Position) -> None:
        index = position.index
        if index <= self._reported[member]:
            raise self._fail(
                "log agreement",
                f"{member} reported index {index} committed again (had reported"
                f" {self._reported[member]})",
            )
        self._reported[member] = index
        known = self.committed.setdefault(index, position.mac)
        if known != position.mac:
            raise self._fail(
                "log agreement",
                f"{member} committed index {index} as {position.mac.hex()[:12]}, another member"
                f" as {known.hex()[:12]}",
            )
        header = self.headers.get(position.mac)
        if header is None or header.term != position.term:
            raise self._fail("log agreement", f"{member} committed an entry nobody made at {index}")
        before = self.committed.get(index - 1)
        if before is not None and header.prev_mac != before:
            raise self._fail(
                "log agreement",
                f"committed entry {index} does not follow committed entry {index - 1}",
            )
        after = self.committed.get(index + 1)
        if after is not None and self.headers[after].prev_mac != position.mac:
            raise self._fail(
                "log agreement",
                f"committed entry {index + 1} does not follow committed entry {index}",
            )
        self.report.checks["log agreement"] += 1

    def _check_window(self, member: str, replica: Replica) -> None:
        """A member holds, at or below its commit index, only the entries committed there."""
        commit = replica.commit_index
        committed = self.committed
        for header in replica.durable.window:
            if header.index > commit:
                break
            known = committed.get(header.index)
            if known is not None and known != header.mac:
                raise self._fail(
                    "committed entries kept",
                    f"{member} holds entry {header.index} (t{header.term}) at or below its commit"
                    f" index {commit}, but {header.index} committed as another entry",
                )
        self.report.checks["committed entries kept"] += 1

    # --- the end -------------------------------------------------------------------------

    def _settled(self) -> bool:
        if any(client.op is not None for client in self.clients.values()):
            return False
        if self._ops_issued < self.config.max_ops and self.now < self._stop_issuing:
            return False
        if len(self.replicas) != len(self.names):
            return False
        leaders = [r for r in self.replicas.values() if r.role is Role.LEADER]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        if leader.commit_index != leader.tail.index:
            return False
        return all(
            r.term == leader.term
            and r.commit_index == leader.commit_index
            and (r is leader or r.role is Role.FOLLOWER)
            for r in self.replicas.values()
        )

    def _on_settle(self) -> None:
        if self._settled():
            self._done = True
            self.report.checks["liveness"] += 1
            self._log("SETTLED: " + "; ".join(self.state_of(m) for m in self.names))
        else:
            self._at(self.now + 100.0, _Settle())

    def _why_not_settled(self) -> str:
        pending = [str(c.op) for c in self.clients.values() if c.op is not None]
        states = "; ".join(self.state_of(m) for m in self.names)
        return (
            f"{self.config.settle_ms:.0f} ms after the faults stopped the fleet has not settled:"
            f" {states}; unanswered ops: {pending or 'none'}"
        )

    def _final_checks(self) -> None:
        top = max(self.committed)
        chain: dict[int, bytes] = {}
        cursor: bytes | None = self.committed[top]
        while cursor is not None:
            header = self.headers[cursor]
            chain[header.index] = cursor
            cursor = header.prev_mac if header.index > 0 else None
        for index, mac in self.committed.items():
            if chain.get(index) != mac:
                raise self._fail("log agreement", f"committed entry {index} is off the final chain")
        for op_id, mac in self._acked.items():
            header = self.headers[mac]
            if chain.get(header.index) != mac:
                raise self._fail(
                    "no acknowledged op lost",
                    f"{op_id} was answered from entry {header.index}, which left the chain",
                )
            self.report.checks["no acknowledged op lost"] += 1
        problem = check_guess_limit(self.history, self.model)
        if problem is not None:
            raise self._fail("guess limit", problem)
        self.report.checks["guess limit"] += 1
        if check_linearizable(self.history, self.model) is None:
            ops = "; ".join(
                f"{h.client} {h.op} [{h.invoke:.0f}, "
                f"{'-' if h.response is None else f'{h.response:.0f}'}] -> {h.result}"
                for h in self.history
            )
            raise self._fail("linearizability", f"no linearization of: {ops}")
        self.report.checks["linearizability"] += 1

    # --- the bench -----------------------------------------------------------------------

    def measure(
        self, duration_ms: float, interval_ms: float, kill_leader_at_ms: float | None = None
    ) -> BenchResult:
        """No faults, no clients: propose at the leader every ``interval_ms``; optionally
        crash the leader once and time the failover (until a new leader commits)."""
        self._faulty = False
        self._traffic_limit = 1 << 62  # measured (BenchResult.traffic), not judged
        self._bench = BenchResult()
        self._boot()
        self._at(interval_ms, _Propose())
        self._interval = interval_ms
        if kill_leader_at_ms is None:
            self._loop(duration_ms)
        else:
            self._loop(kill_leader_at_ms)
            leader = next((n for n, r in self.replicas.items() if r.role is Role.LEADER), None)
            if leader is not None:
                self._killed, self._killed_at = leader, self.now
                self._crash(leader)
            self._loop(duration_ms)
        self._bench.events = self.report.events
        self._bench.traffic = dict(self.report.traffic)
        return self._bench

    def _on_propose(self) -> None:
        """The host's load (until the faults stop) or the bench's steady proposals."""
        if self._bench is None and not self._faulty:
            return
        self._at(self.now + self._interval, _Propose())
        leader = next(
            (r for n, r in self.replicas.items() if r.role is Role.LEADER and n != self._killed),
            None,
        )
        if leader is None:
            return
        op = Op(f"load.{self._seq}", "read", 0)
        self.ops[op.digest] = op
        try:
            out, header = leader.propose(op.digest, self._clock_of(leader.name))
        except ConsensusError:
            if self._bench is not None:
                self._bench.busy += 1
            return
        self.report.load_proposals += 1
        if self._bench is not None:
            self._bench_pending[header.mac] = self.now
        self._handle(leader.name, leader, out)


@dataclass(frozen=True, slots=True)
class _Lazy:
    """A delivery in the trace, described only if the trace is shown."""

    index: int
    how: str
    data: bytes

    def __str__(self) -> str:
        how = f" ({self.how})" if self.how else ""
        return f"deliver #{self.index}{how} {describe_envelope(self.data)}"


def _snapshot(replica: Replica) -> tuple[object, ...]:
    return (
        replica.role,
        replica.term,
        replica.durable,
        replica.commit_index,
        replica.leader,
        replica.can_vote,
    )


def run_seed(seed: int, config: SimConfig | None = None) -> SimReport:
    """Run one seed; InvariantError if it breaks an invariant."""
    return Simulation(seed, config).run()


__all__ = [
    "DEFAULT_REPLAY",
    "BenchResult",
    "HistoryOp",
    "InvariantError",
    "Op",
    "SimConfig",
    "SimReport",
    "Simulation",
    "VaultModel",
    "check_guess_limit",
    "check_linearizable",
    "describe_envelope",
    "run_seed",
]
