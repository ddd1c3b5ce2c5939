"""One fleet member's consensus state machine: Raft over authenticated entry headers (sans-IO).

Bytes and the clock in, an :class:`Output` out; randomness injected::

    replica = Replica(membership, "hsm-1", keys, durable, rng=rng, now_ms=now)
    out = replica.tick(now)                  # timers: rejoin, elections, heartbeats
    out = replica.receive(envelope, now)     # a message another member sent
    out, header = replica.propose(digest, now)   # the leader appends an entry
    # for every Output: store out.persist durably FIRST, then deliver out.send,
    # then act on out.committed (positions now known committed, in order)

Raft (Ongaro and Ousterhout 2014), as it applies here:

- **Terms and votes.** A member votes at most once per term, for a candidate
  whose log is at least as up to date as its own (last term, then last
  index), and stores its vote before answering. A leader needs a majority of
  votes, so a term has at most one leader.
- **Log matching.** Every entry header names its predecessor's mac and is
  MAC'd under the fleet's entry key, so two logs that hold the same entry at
  the same index are equal up to it. A follower takes entries only after an
  entry of its own log (``prev``), and drops its entries only where the
  leader's differ (they were never committed: the leader holds every
  committed entry).
- **Commit.** A leader commits an entry of its own term once a majority holds
  it (itself included), and with it every entry before; at election it
  appends a no-op entry so the entries of earlier terms commit too.
- **What a member keeps** (:class:`~bkv.consensus.messages.Durable`): its
  term, its vote and the last :data:`~bkv.consensus.messages.WINDOW` entry
  headers of its log; the host stores the whole log. A follower that shares
  no entry with the leader's window (it is behind it, or holds only entries
  an old leader never committed) *jumps*: it restarts at the leader's commit
  point, dropping only entries that differ from the leader's log.

**The rejoin fence.** Every replica starts in the REJOINING role, because a
restarted member cannot tell whether its stored state is its latest: the
host can restore an old copy of its private directory. Before it votes or
stands for election, a rejoining member asks the others to *fence*: each
member that answers first moves to a new term (so no leader of an earlier
term can commit anything more with its help), then reports its term and last
log position. With answers from a majority of the fleet *other than itself*,
the member knows a term and a log position at least as recent as anything
committed before it restarted; it takes the term, votes only for candidates
whose log is at least as recent as that position (such a log holds everything
committed before the restart), and stands for election only once its own log
has caught up to it. Why this is enough, with one
member rolled back and every other member intact: anything committed was held
by a majority, so by at least a majority-minus-one of the others, and any
majority of the others includes one of them (docs/architecture.md, "The fleet").
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from bkv.consensus.membership import Membership
from bkv.consensus.messages import (
    MAX_APPEND,
    NONCE_SIZE,
    WINDOW,
    AppendEntries,
    AppendReply,
    Body,
    Durable,
    EntryHeader,
    Envelope,
    FleetKeys,
    Position,
    Rejoin,
    RejoinReply,
    VoteReply,
    VoteRequest,
)
from bkv.crypto.rng import Rng, draw
from bkv.errors import CodecError, ConsensusAuthError, ConsensusError, NotLeaderError
from bkv.wire import decode

NOOP_DIGEST: Final = hashlib.sha256(b"bkv/consensus/noop/v1").digest()
"""The payload digest of the entry a new leader appends to commit its predecessors' entries."""

MAX_ENVELOPE_SIZE: Final = 16 * 1024
"""Largest consensus message a member reads (an AppendEntries of MAX_APPEND headers fits)."""


class Role(enum.Enum):
    REJOINING = "rejoining"
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class Timing:
    """Timers, in milliseconds of the member's own clock."""

    election_ms: int = 300
    """An election timeout is drawn from [election_ms, 2 * election_ms)."""
    heartbeat_ms: int = 50
    rejoin_retry_ms: int = 100
    max_inflight: int = 8
    """Entries a leader may have appended beyond its commit point."""

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ms < self.election_ms:
            raise ValueError("heartbeats must come faster than elections")
        if not 1 <= self.max_inflight <= WINDOW // 2:
            raise ValueError(f"max_inflight is 1..{WINDOW // 2}")


@dataclass(frozen=True)
class Output:
    """Store ``persist`` durably, then send ``send``, then act on ``committed``."""

    persist: Durable | None = None
    send: tuple[tuple[str, bytes], ...] = ()
    committed: tuple[Position, ...] = ()


@dataclass
class _Peer:
    """What a leader knows of one follower."""

    match: int = -1  # the highest index known to be on both logs (-1: none found)
    known: bool = False  # whether the follower has reported its log this term


@dataclass
class _Pending:
    """What a step of the state machine produces, gathered then frozen into an Output."""

    persist: bool = False
    send: list[tuple[str, bytes]] = field(default_factory=list)
    committed: list[Position] = field(default_factory=list)


def _newer(a: Position | EntryHeader, b: Position | EntryHeader) -> bool:
    """Whether log tail ``a`` is at least as up to date as ``b`` (Raft section 5.4.1)."""
    return (a.term, a.index) >= (b.term, b.index)


class Replica:
    """One member of a fleet. Not thread-safe: the adapter feeds it one event at a time."""

    def __init__(
        self,
        membership: Membership,
        name: str,
        keys: FleetKeys,
        durable: Durable | None,
        *,
        rng: Rng,
        now_ms: int,
        timing: Timing | None = None,
    ) -> None:
        if keys.fleet_id != membership.fleet_id:
            raise ValueError("the keys are another fleet's")
        self._peers_names = membership.others(name)
        self._membership = membership
        self._name = name
        self._keys = keys
        self._rng = rng
        self._timing = timing or Timing()
        self._durable = durable or Durable(0, "", (keys.genesis(),))
        self._role = Role.REJOINING
        self._leader: str | None = None
        # Nothing is known committed after a start: even the oldest entry of the
        # window may be one an old leader never got committed.
        self._commit = 0
        self._deadline = 0
        self._votes: set[str] = set()
        self._peers: dict[str, _Peer] = {}
        self._next_heartbeat = 0
        self._nonce = draw(rng, NONCE_SIZE)
        self._fences: dict[str, RejoinReply] = {}
        self._catch_up_to: Position | None = None
        self._next_rejoin = now_ms
        self._reset_election(now_ms)

    def __repr__(self) -> str:
        return (
            f"Replica({self._name!r}, {self._role.value}, term={self.term},"
            f" tail={self.tail.index}, commit={self._commit})"
        )

    # --- what the adapter reads -------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._durable.term

    @property
    def leader(self) -> str | None:
        """The leader of the current term, if this member knows it."""
        return self._name if self._role is Role.LEADER else self._leader

    @property
    def durable(self) -> Durable:
        return self._durable

    @property
    def tail(self) -> EntryHeader:
        return self._durable.tail

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def can_vote(self) -> bool:
        """May stand for election: not rejoining, and caught up with what the fence reported."""
        if self._role is Role.REJOINING:
            return False
        target = self._catch_up_to
        return target is None or _newer(self.tail, target)

    # --- events -----------------------------------------------------------------------

    def tick(self, now_ms: int) -> Output:
        """Timers: resend the rejoin request, start an election, send heartbeats."""
        out = _Pending()
        if self._role is Role.REJOINING:
            if now_ms >= self._next_rejoin:
                self._next_rejoin = now_ms + self._timing.rejoin_retry_ms
                for peer in self._peers_names:
                    if peer not in self._fences:
                        self._send(out, peer, Rejoin(self._nonce))
        elif self._role is Role.LEADER:
            if now_ms >= self._next_heartbeat:
                self._next_heartbeat = now_ms + self._timing.heartbeat_ms
                for peer in self._peers_names:
                    self._send_append(out, peer)
        elif now_ms >= self._deadline and self.can_vote:
            self._start_election(out, now_ms)
        return self._output(out)

    def receive(self, data: bytes, now_ms: int) -> Output:
        """One message from another member; an unauthentic one raises, changing nothing.

        Raises :class:`bkv.errors.CodecError` (not a message) or
        :class:`bkv.errors.ConsensusAuthError` (not from a member of this fleet
        to this member, or a log entry that does not verify).
        """
        if not isinstance(data, bytes) or len(data) > MAX_ENVELOPE_SIZE:
            raise CodecError("a consensus message is at most MAX_ENVELOPE_SIZE bytes")
        envelope = decode(Envelope, data)
        if not self._membership.is_member(envelope.sender) or envelope.sender == self._name:
            raise ConsensusAuthError("a message from a non-member")
        body = self._keys.open(envelope, self._name)
        out = _Pending()
        self._dispatch(out, envelope.sender, body, now_ms)
        return self._output(out)

    def propose(self, payload_digest: bytes, now_ms: int) -> tuple[Output, EntryHeader]:
        """Append an entry for ``payload_digest`` (the leader only); it commits later.

        NotLeaderError on any other member; ConsensusError when
        ``Timing.max_inflight`` entries already wait for their commit.
        """
        del now_ms  # the leader's timers do not move on a proposal
        if self._role is not Role.LEADER:
            raise NotLeaderError(self._leader)
        if self.tail.index - self._commit >= self._timing.max_inflight:
            raise ConsensusError("too many entries wait for their commit")
        out = _Pending()
        header = self._append_own(out, payload_digest)
        for peer in self._peers_names:
            self._send_append(out, peer)
        self._advance_commit(out)  # a fleet of one majority-of-one never waits
        return self._output(out), header

    # --- dispatch ---------------------------------------------------------------------

    def _dispatch(self, out: _Pending, sender: str, body: Body, now_ms: int) -> None:
        if isinstance(body, AppendEntries) and body.term >= self.term:
            # Check every entry before anything changes: a refused append
            # changes nothing (not even the term), as receive() promises. (A
            # stale one is answered with a refusal and changes nothing anyway.)
            self._check_chain(body)
        if isinstance(body, Rejoin):
            self._on_rejoin(out, sender, body)
            return
        if body.term > self.term:
            self._adopt_term(out, body.term)
        if isinstance(body, RejoinReply):
            self._on_rejoin_reply(out, sender, body)
        elif isinstance(body, VoteRequest):
            self._on_vote_request(out, sender, body, now_ms)
        elif isinstance(body, VoteReply):
            self._on_vote_reply(out, sender, body)
        elif isinstance(body, AppendEntries):
            self._on_append(out, sender, body, now_ms)
        else:
            self._on_append_reply(out, sender, body)

    def _adopt_term(self, out: _Pending, term: int) -> None:
        """A newer term: forget the vote; a leader or candidate steps down."""
        self._durable = dataclasses.replace(self._durable, term=term, voted_for="")
        out.persist = True
        self._leader = None
        if self._role in (Role.LEADER, Role.CANDIDATE):
            self._role = Role.FOLLOWER

    # --- the rejoin fence ------------------------------------------------------------

    def _on_rejoin(self, out: _Pending, sender: str, request: Rejoin) -> None:
        # Fence: move to a new term before answering, so that no leader of any
        # term up to now can commit with this member's help any more.
        self._adopt_term(out, self.term + 1)
        self._send(out, sender, RejoinReply(request.nonce, self.term, self.tail.position))

    def _on_rejoin_reply(self, out: _Pending, sender: str, reply: RejoinReply) -> None:
        if self._role is not Role.REJOINING or reply.nonce != self._nonce:
            return  # late, duplicated or replayed: the fence is per start
        self._fences[sender] = reply
        if len(self._fences) < self._membership.quorum:
            return
        # A majority of the others fenced their terms: take the highest term
        # and wait, before voting, for a log as recent as the most recent one.
        term = max(fence.term for fence in self._fences.values())
        if term > self.term:
            self._adopt_term(out, term)
        target = max((fence.last for fence in self._fences.values()), key=_position_order)
        self._catch_up_to = None if _newer(self.tail, target) else target
        self._role = Role.FOLLOWER

    # --- elections ----------------------------------------------------------------------

    def _reset_election(self, now_ms: int) -> None:
        spread = int.from_bytes(draw(self._rng, 4), "big") % self._timing.election_ms
        self._deadline = now_ms + self._timing.election_ms + spread

    def _start_election(self, out: _Pending, now_ms: int) -> None:
        self._durable = dataclasses.replace(self._durable, term=self.term + 1, voted_for=self._name)
        out.persist = True
        self._role, self._leader, self._votes = Role.CANDIDATE, None, {self._name}
        self._reset_election(now_ms)
        request = VoteRequest(self.term, self.tail.position)
        for peer in self._peers_names:
            self._send(out, peer, request)
        self._count_votes(out)

    def _on_vote_request(
        self, out: _Pending, sender: str, request: VoteRequest, now_ms: int
    ) -> None:
        target = self._catch_up_to
        granted = (
            request.term == self.term
            and self._durable.voted_for in ("", sender)
            and self._role not in (Role.LEADER, Role.REJOINING)
            and _newer(request.last, self.tail)
            # Fenced but not caught up: vote only for a log at least as recent
            # as the most recent one the fence reported (it holds everything
            # committed before this member restarted, as that log does).
            and (target is None or _newer(request.last, target))
        )
        if granted:
            if self._durable.voted_for != sender:
                self._durable = dataclasses.replace(self._durable, voted_for=sender)
                out.persist = True
            self._reset_election(now_ms)
        self._send(out, sender, VoteReply(self.term, granted))

    def _on_vote_reply(self, out: _Pending, sender: str, reply: VoteReply) -> None:
        if self._role is Role.CANDIDATE and reply.term == self.term and reply.granted:
            self._votes.add(sender)
            self._count_votes(out)

    def _count_votes(self, out: _Pending) -> None:
        if len(self._votes) < self._membership.quorum:
            return
        self._role, self._leader = Role.LEADER, self._name
        self._peers = {peer: _Peer() for peer in self._peers_names}
        self._next_heartbeat = 0
        # Raft section 5.4.2: entries of earlier terms commit only under one of
        # this term, so a new leader appends a no-op at once.
        self._append_own(out, NOOP_DIGEST)
        for peer in self._peers_names:
            self._send_append(out, peer)
        self._advance_commit(out)

    # --- replication: follower ----------------------------------------------------------

    def _on_append(self, out: _Pending, sender: str, append: AppendEntries, now_ms: int) -> None:
        if append.term < self.term:
            self._send(out, sender, AppendReply(self.term, False, self._positions()))
            return
        if self._role is not Role.REJOINING:
            self._role = Role.FOLLOWER
        self._leader = sender
        self._reset_election(now_ms)
        window = self._merged(append)
        if window is None:
            self._send(out, sender, AppendReply(self.term, False, self._positions()))
            return
        if window != self._durable.window:
            self._durable = dataclasses.replace(self._durable, window=window[-WINDOW:])
            out.persist = True
        last_sent = append.entries[-1].index if append.entries else append.prev.index
        self._learn_commit(out, min(append.commit_index, last_sent))
        self._send(out, sender, AppendReply(self.term, True, self._positions()))

    def _check_chain(self, append: AppendEntries) -> None:
        """Every entry authentic, consecutive and chained from ``prev`` (else the leader lies)."""
        before: Position | EntryHeader = append.prev
        for header in append.entries:
            self._keys.check_entry(header)
            if (
                header.index != before.index + 1
                or header.prev_mac != before.mac
                or not before.term <= header.term <= append.term
            ):
                raise ConsensusAuthError(
                    f"log entry {header.index} does not follow its predecessor"
                )
            before = header

    def _merged(self, append: AppendEntries) -> tuple[EntryHeader, ...] | None:
        """The window after taking ``append``, or None if ``prev`` is not on this log."""
        window = self._durable.window
        if append.jump:
            return self._jumped(append)
        at = {header.index: pos for pos, header in enumerate(window)}
        start = at.get(append.prev.index)
        if start is None or window[start].mac != append.prev.mac:
            return None
        merged = list(window[: start + 1])
        kept_tail = list(window[start + 1 :])
        for offset, header in enumerate(append.entries):
            if offset < len(kept_tail) and kept_tail[offset].mac == header.mac:
                merged.append(header)
                continue
            if offset < len(kept_tail) and kept_tail[offset].index <= self._commit:
                return None  # would drop a committed entry: never from an honest leader
            merged.extend(append.entries[offset:])
            return tuple(merged)
        # Every entry sent is already here: keep what follows (a replayed append).
        merged.extend(kept_tail[len(append.entries) :])
        return tuple(merged)

    def _jumped(self, append: AppendEntries) -> tuple[EntryHeader, ...] | None:
        """A jump: the leader restarts this log at its commit point (the first entry sent).

        - This log holds that very entry: an ordinary append after it (nothing
          that matches the leader's log is dropped, so a replayed, stale jump
          never moves the log back);
        - it holds another entry at that index: everything from there differs
          from the leader's log, which holds every committed entry, so none of
          it was committed: start over from the leader's entries;
        - its tail is below that index: it is behind; start over likewise;
        - otherwise (its window starts above that index) the jump is stale: refuse.
        """
        genesis = self._keys.genesis()
        if not append.entries:
            return None
        first = append.entries[0]
        window = self._durable.window
        at = {header.index: pos for pos, header in enumerate(window)}
        pos = at.get(first.index)
        if pos is not None and window[pos].mac == first.mac:
            rest = dataclasses.replace(append, prev=first.position, entries=append.entries[1:])
            return self._merged(dataclasses.replace(rest, jump=False))
        if pos is not None and first.index <= self._commit:
            return None  # would replace a committed entry: never from an honest leader
        if pos is None and self.tail.index >= first.index:
            return None
        if append.prev.index == 0:
            if append.prev.mac != genesis.mac:
                return None
            return (genesis, *append.entries)
        return tuple(append.entries)

    def _learn_commit(self, out: _Pending, index: int) -> None:
        if index <= self._commit:
            return
        known = {header.index: header for header in self._durable.window}
        for i in range(self._commit + 1, index + 1):
            if i in known:
                out.committed.append(known[i].position)
        self._commit = index

    # --- replication: leader ------------------------------------------------------------

    def _append_own(self, out: _Pending, payload_digest: bytes) -> EntryHeader:
        tail = self.tail
        header = self._keys.entry(tail.index + 1, self.term, tail.mac, payload_digest)
        window = (*self._durable.window, header)[-WINDOW:]
        self._durable = dataclasses.replace(self._durable, window=window)
        out.persist = True
        return header

    def _send_append(self, out: _Pending, peer: str) -> None:
        window = self._durable.window
        state = self._peers[peer]
        if not state.known:
            start = len(window) - 1  # optimistic: a heartbeat from the tail
        elif state.match < window[0].index:
            # No common entry in this window: the follower is behind it, or holds
            # only entries that differ from this log (never committed: a leader
            # holds every committed entry). Start it over from the commit point.
            self._send_jump(out, peer)
            return
        else:
            start = state.match - window[0].index
        prev = window[start]
        entries = window[start + 1 : start + 1 + MAX_APPEND]
        commit = self._commit
        self._send(out, peer, AppendEntries(self.term, prev.position, tuple(entries), commit))

    def _send_jump(self, out: _Pending, peer: str) -> None:
        """The follower shares no entry of this window: start it over from the commit point.

        The first entry sent is the committed one itself (its mac the follower
        checks, and it is on this leader's log); it names its predecessor as ``prev``.
        """
        window = self._durable.window
        at = {header.index: pos for pos, header in enumerate(window)}
        start = at.get(self._commit)
        if start is None:
            return  # the commit point left the window: the follower stays behind
        first = window[start]
        if first.index == 0:
            entries = window[start + 1 : start + 1 + MAX_APPEND]
            prev = first.position
        else:
            entries = window[start : start + MAX_APPEND]
            prev = Position(first.index - 1, 0, first.prev_mac)
        self._send(out, peer, AppendEntries(self.term, prev, tuple(entries), self._commit, True))

    def _on_append_reply(self, out: _Pending, sender: str, reply: AppendReply) -> None:
        if self._role is not Role.LEADER or reply.term != self.term:
            return
        state = self._peers[sender]
        before = (state.match, state.known)
        state.match, state.known = self._common_index(reply.window), True
        if reply.success:
            self._advance_commit(out)
        # Follow up only on news (the follower moved, or where to resume changed):
        # a duplicated or replayed reply sends nothing, so traffic never feeds on
        # itself; heartbeats resend whatever a dropped message lost.
        if state.match < self.tail.index and (state.match, state.known) != before:
            self._send_append(out, sender)

    def _common_index(self, positions: Sequence[Position]) -> int:
        """The highest index where the follower's log and this one agree (-1: none seen)."""
        mine = {header.index: header.mac for header in self._durable.window}
        for position in reversed(positions):
            if mine.get(position.index) == position.mac:
                return position.index
        return -1

    def _advance_commit(self, out: _Pending) -> None:
        matches = sorted(
            [self.tail.index, *(self._peers[p].match for p in self._peers_names)], reverse=True
        )
        candidate = matches[self._membership.quorum - 1]
        known = {header.index: header for header in self._durable.window}
        header = known.get(candidate)
        # Only an entry of this term commits by counting (Raft section 5.4.2).
        if header is not None and header.term == self.term:
            self._learn_commit(out, candidate)

    # --- helpers -------------------------------------------------------------------------

    def _positions(self) -> tuple[Position, ...]:
        return tuple(header.position for header in self._durable.window)

    def _send(self, out: _Pending, peer: str, body: Body) -> None:
        out.send.append((peer, self._keys.seal(self._name, peer, body)))

    def _output(self, out: _Pending) -> Output:
        return Output(
            persist=self._durable if out.persist else None,
            send=tuple(out.send),
            committed=tuple(out.committed),
        )


def _position_order(position: Position) -> tuple[int, int]:
    return position.term, position.index
