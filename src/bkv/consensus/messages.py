"""The consensus wire messages, the entry headers of the log, and the keys that authenticate both.

Keys (docs/architecture.md, "The fleet"): every member holds the fleet's
consensus secret ``S`` (a fleet secret: it never leaves the HSMs). From it::

    entry key        = HMAC-SHA256(S, "bkv/consensus/entry/v1")
    link key (s, r)  = HMAC-SHA256(S, "bkv/consensus/link/v1" || u8 len || s || u8 len || r)

A log entry header carries ``mac = HMAC-SHA256(entry key, encode(EntryTBS))``,
``EntryTBS`` naming the fleet, the index, the term, the previous entry's mac
and the payload's digest: entries chain, and the host that stores the log can
neither forge, edit, reorder nor splice them. Every message travels in an
:class:`Envelope` whose mac is ``HMAC-SHA256(link key (sender, receiver),
encode(LinkTBS))``: bound to the fleet, the sender, the receiver and the body
(which names the term and the log position). The host can replay a message
only to the receiver it was made for; the protocol is safe under replay.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Final

from bkv.errors import ConsensusAuthError
from bkv.wire import U64, Fixed, ListOf, Text, encode, message

MAC_SIZE: Final = 32
NONCE_SIZE: Final = 16
SECRET_SIZE: Final = 32
MAX_NAME: Final = 32
MAX_FLEET: Final = 64
WINDOW: Final = 32
"""Entry headers a member keeps of its own log (its tail and the ones before it)."""
MAX_APPEND: Final = 64
"""Entry headers one AppendEntries carries at most."""

ENTRY_LABEL: Final = b"bkv/consensus/entry/v1"
LINK_LABEL: Final = b"bkv/consensus/link/v1"
GENESIS_LABEL: Final = b"bkv/consensus/genesis/v1"

Mac = Annotated[bytes, Fixed(MAC_SIZE)]
Name = Annotated[str, Text(max_len=MAX_NAME, min_len=1)]


@message(tag=0x0901, version=1)
class Position:
    """A place in a log: index, the term of the entry there, and its mac."""

    index: U64
    term: U64
    mac: Mac


@message(tag=0x0902, version=1)
class EntryTBS:
    """What an entry's mac covers."""

    fleet_id: Annotated[str, Text(max_len=MAX_FLEET, min_len=1)]
    index: U64
    term: U64
    prev_mac: Mac
    payload_digest: Mac


@message(tag=0x0903, version=1)
class EntryHeader:
    """One log entry as the members replicate it (the payload itself is the host's to store)."""

    index: U64
    term: U64
    prev_mac: Mac
    payload_digest: Mac
    mac: Mac

    @property
    def position(self) -> Position:
        return Position(self.index, self.term, self.mac)


@message(tag=0x0904, version=1)
class VoteRequest:
    term: U64
    last: Position


@message(tag=0x0905, version=1)
class VoteReply:
    term: U64
    granted: bool


@message(tag=0x0906, version=1)
class AppendEntries:
    """Leader -> follower: entries after ``prev`` (``jump``: start over from ``prev``)."""

    term: U64
    prev: Position
    entries: Annotated[tuple[EntryHeader, ...], ListOf(max_count=MAX_APPEND)]
    commit_index: U64
    jump: bool = False


@message(tag=0x0907, version=1)
class AppendReply:
    """Follower -> leader: whether it took the entries, and the positions it now holds."""

    term: U64
    success: bool
    window: Annotated[tuple[Position, ...], ListOf(max_count=WINDOW, min_count=1)]


@message(tag=0x0908, version=1)
class Rejoin:
    """A restarted member asks the others to fence the terms it may have acted in."""

    nonce: Annotated[bytes, Fixed(NONCE_SIZE)]


@message(tag=0x0909, version=1)
class RejoinReply:
    nonce: Annotated[bytes, Fixed(NONCE_SIZE)]
    term: U64
    last: Position


Body = VoteRequest | VoteReply | AppendEntries | AppendReply | Rejoin | RejoinReply


@message(tag=0x090A, version=1)
class LinkTBS:
    """What a message's mac covers."""

    fleet_id: Annotated[str, Text(max_len=MAX_FLEET, min_len=1)]
    sender: Name
    receiver: Name
    body: Body


@message(tag=0x090B, version=1)
class Envelope:
    fleet_id: Annotated[str, Text(max_len=MAX_FLEET, min_len=1)]
    sender: Name
    receiver: Name
    body: Body
    mac: Mac


@message(tag=0x090C, version=1)
class Durable:
    """What a member keeps in its NV storage: small, whatever the length of the log.

    ``window``: the last entry headers of its log, consecutive and chained, the
    tail last (the genesis header of index 0 stands for the empty log).
    """

    term: U64
    voted_for: Annotated[str, Text(max_len=MAX_NAME)]
    window: Annotated[tuple[EntryHeader, ...], ListOf(max_count=WINDOW, min_count=1)]

    def __post_init__(self) -> None:
        for before, after in zip(self.window, self.window[1:], strict=False):
            if after.index != before.index + 1 or after.prev_mac != before.mac:
                raise ValueError("a window holds consecutive, chained entries")
            if after.term < before.term:
                raise ValueError("terms never decrease along a log")

    @property
    def tail(self) -> EntryHeader:
        return self.window[-1]


class FleetKeys:
    """The entry key and the link keys of one fleet, derived from its consensus secret."""

    __slots__ = ("_entry", "_fleet_id", "_links", "_secret")

    def __init__(self, fleet_id: str, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
            raise ValueError(f"a consensus secret is {SECRET_SIZE} bytes")
        self._fleet_id = fleet_id
        self._secret = secret
        self._entry = hmac.digest(secret, ENTRY_LABEL, hashlib.sha256)
        self._links: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"FleetKeys(fleet_id={self._fleet_id!r})"

    @property
    def fleet_id(self) -> str:
        return self._fleet_id

    def genesis(self) -> EntryHeader:
        """The header before the first entry (index 0), the same for every member."""
        fleet = self._fleet_id.encode("utf-8")
        mac = hmac.digest(self._entry, GENESIS_LABEL + fleet, hashlib.sha256)
        return EntryHeader(0, 0, bytes(MAC_SIZE), bytes(MAC_SIZE), mac)

    def entry(self, index: int, term: int, prev_mac: bytes, payload_digest: bytes) -> EntryHeader:
        """A new entry header, MAC'd."""
        tbs = EntryTBS(self._fleet_id, index, term, prev_mac, payload_digest)
        mac = hmac.digest(self._entry, encode(tbs), hashlib.sha256)
        return EntryHeader(index, term, prev_mac, payload_digest, mac)

    def check_entry(self, header: EntryHeader) -> None:
        """ConsensusAuthError unless ``header`` was made by a member of this fleet."""
        expected = self.entry(header.index, header.term, header.prev_mac, header.payload_digest)
        if not hmac.compare_digest(expected.mac, header.mac):
            raise ConsensusAuthError(f"log entry {header.index}: mac does not verify")

    def _link(self, sender: str, receiver: str) -> bytes:
        key = self._links.get((sender, receiver))
        if key is None:
            s, r = sender.encode("utf-8"), receiver.encode("utf-8")
            info = LINK_LABEL + bytes([len(s)]) + s + bytes([len(r)]) + r
            key = self._links[(sender, receiver)] = hmac.digest(self._secret, info, hashlib.sha256)
        return key

    def seal(self, sender: str, receiver: str, body: Body) -> bytes:
        """The envelope bytes of ``body`` from ``sender`` to ``receiver``."""
        tbs = encode(LinkTBS(self._fleet_id, sender, receiver, body))
        mac = hmac.digest(self._link(sender, receiver), tbs, hashlib.sha256)
        return encode(Envelope(self._fleet_id, sender, receiver, body, mac))

    def open(self, envelope: Envelope, receiver: str) -> Body:
        """The body of an envelope for ``receiver``; ConsensusAuthError if it is not authentic."""
        if envelope.fleet_id != self._fleet_id or envelope.receiver != receiver:
            raise ConsensusAuthError("a message for another fleet or another member")
        tbs = encode(LinkTBS(envelope.fleet_id, envelope.sender, envelope.receiver, envelope.body))
        expected = hmac.digest(self._link(envelope.sender, receiver), tbs, hashlib.sha256)
        if not hmac.compare_digest(expected, envelope.mac):
            raise ConsensusAuthError(f"a message from {envelope.sender!r} does not verify")
        return envelope.body
