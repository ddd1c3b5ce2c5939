"""A hand-driven fleet for the replica's unit tests: the test decides every delivery.

Every member shares one clock (``World.now``); messages wait in ``World.pending``
until a test delivers them (all of them, or those a predicate picks) or drops
them. Each member's disk is its last ``Output.persist``, stored before its sends
are queued, as the replica asks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bkv.consensus.membership import Member, Membership
from bkv.consensus.messages import Body, Durable, EntryHeader, Envelope, FleetKeys, Position
from bkv.consensus.replica import Output, Replica, Role, Timing
from bkv.wire import decode, encode

FLEET = "test-fleet"
SECRET = bytes(range(32))


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


@dataclass
class Message:
    sender: str
    receiver: str
    data: bytes

    @property
    def envelope(self) -> Envelope:
        return decode(Envelope, self.data)

    @property
    def body(self) -> Body:
        return self.envelope.body


@dataclass
class World:
    size: int = 5
    seed: int = 0
    timing: Timing = field(default_factory=Timing)
    now: int = 1_000

    def __post_init__(self) -> None:
        self.membership = Membership(
            FLEET, tuple(Member(f"hsm-{i}", f"dc-{i}") for i in range(self.size))
        )
        self.names = self.membership.names
        self.keys = FleetKeys(FLEET, SECRET)
        self._random = random.Random(self.seed)
        self.replicas: dict[str, Replica] = {}
        self.disk: dict[str, Durable | None] = dict.fromkeys(self.names)
        self.pending: list[Message] = []
        self.committed: dict[str, list[Position]] = {name: [] for name in self.names}
        for name in self.names:
            self.start(name)

    # --- members -------------------------------------------------------------------

    def rng(self, n: int) -> bytes:
        return self._random.randbytes(n)

    def start(self, name: str, durable: Durable | str | None = "disk") -> Replica:
        """(Re)start ``name`` from its disk (default), from ``durable``, or blank (None)."""
        stored = self.disk[name] if durable == "disk" else durable
        assert not isinstance(stored, str)
        replica = Replica(
            self.membership, name, self.keys, stored, rng=self.rng, now_ms=self.now,
            timing=self.timing,
        )  # fmt: skip
        self.replicas[name] = replica
        self.committed[name] = []
        return replica

    def crash(self, name: str) -> None:
        del self.replicas[name]
        self.pending = [m for m in self.pending if m.receiver != name]

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def handle(self, name: str, out: Output) -> Output:
        if out.persist is not None:
            self.disk[name] = out.persist
        self.pending.extend(Message(name, to, data) for to, data in out.send)
        self.committed[name].extend(out.committed)
        return out

    def tick(self, name: str) -> Output:
        return self.handle(name, self.replicas[name].tick(self.now))

    def expire(self, name: str) -> Output:
        """Tick ``name`` past any election timeout it may have (the others do not tick)."""
        self.now += 2 * self.timing.election_ms + 1
        return self.tick(name)

    def propose(self, name: str, label: str) -> EntryHeader:
        out, header = self.replicas[name].propose(digest(label), self.now)
        self.handle(name, out)
        return header

    # --- the network ---------------------------------------------------------------

    def deliver(
        self, where: Callable[[Message], bool] = lambda m: True, *, rounds: int = 1000
    ) -> int:
        """Deliver the pending messages ``where`` picks, and those they cause, in order."""
        delivered = 0
        for _ in range(rounds):
            index = next((i for i, m in enumerate(self.pending) if where(m)), None)
            if index is None:
                return delivered
            message = self.pending.pop(index)
            replica = self.replicas.get(message.receiver)
            if replica is not None:
                self.handle(message.receiver, replica.receive(message.data, self.now))
                delivered += 1
        raise AssertionError("the messages never stopped")

    def drop(self, where: Callable[[Message], bool] = lambda m: True) -> int:
        before = len(self.pending)
        self.pending = [m for m in self.pending if not where(m)]
        return before - len(self.pending)

    def send(self, sender: str, receiver: str, body: Body) -> bytes:
        """An authentic envelope made with the fleet's keys (what a member could send)."""
        return self.keys.seal(sender, receiver, body)

    # --- whole steps ---------------------------------------------------------------

    def fence_all(self) -> None:
        """Every rejoining member sends its fence requests; everything is delivered."""
        for name in list(self.replicas):
            self.tick(name)
        self.deliver()
        assert all(r.role is not Role.REJOINING for r in self.replicas.values()), self.states()

    def elect(self, name: str) -> Replica:
        """``name`` times out and wins (everything delivered, nobody else ticks)."""
        self.expire(name)
        self.deliver()
        leader = self.replicas[name]
        assert leader.role is Role.LEADER, self.states()
        return leader

    def heartbeat(self, name: str, where: Callable[[Message], bool] = lambda m: True) -> None:
        self.now += self.timing.heartbeat_ms
        self.tick(name)
        self.deliver(where)

    def run(self, ms: int, step: int = 10) -> None:
        """Every member ticks every ``step`` ms; every message is delivered at once."""
        for _ in range(ms // step):
            self.now += step
            for name in list(self.replicas):
                if name in self.replicas:
                    self.tick(name)
            self.deliver()

    def leaders(self) -> list[str]:
        return [n for n, r in self.replicas.items() if r.role is Role.LEADER]

    def states(self) -> str:
        return "; ".join(repr(r) for r in self.replicas.values())


def reseal(keys: FleetKeys, envelope: Envelope, **changes: object) -> bytes:
    """The envelope with fields changed, its mac left as it was (a forgery)."""
    fields = {
        "fleet_id": envelope.fleet_id,
        "sender": envelope.sender,
        "receiver": envelope.receiver,
        "body": envelope.body,
        "mac": envelope.mac,
    }
    fields.update(changes)
    return encode(Envelope(**fields))  # type: ignore[arg-type]
