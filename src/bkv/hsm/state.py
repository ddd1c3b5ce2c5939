"""Durable vault state, the typed commands that change it, and ``apply`` (deterministic).

The vault is one :class:`AccountSlot` per account that ever registered, each
sealed on its own and stored by the host under the record tree
(:mod:`bkv.hsm.records`, docs/architecture.md "Record storage"); the HSM keeps
only a :class:`Snapshot` (secrets, policy, the tree's head). Every change to a
slot is one of the wire-encoded commands below, applied by the pure function
:func:`apply`::

    apply(policy, slot, command) -> (new_slot, outcome)

``apply`` reads nothing but its arguments (no clock: commands carry ``now_ms``
where it matters; no randomness: random values are drawn before the command
is made and travel inside it), so replicas that apply the same commands in the
same order reach byte-identical slots. Replication (next: docs/threat-model.md
§13) puts these exact commands through majority consensus; here a single HSM
applies them, seals the changed slots and commits them as one batch before
answering (:mod:`bkv.hsm.app`).

A refused command raises a typed :class:`bkv.errors.VaultError` and leaves the
slot unchanged (``apply`` never mutates: slots are frozen).

Commands carry secrets (``InstallRecord.secret``): they exist only inside an
HSM, or sealed between HSMs of one fleet; they never cross the host in the
clear.

Registration is two-phase (SVR2's backup/expose, see docs "Re-registration
rule"): :class:`InstallRecord` (RegisterFinish) stores the new record as the
slot's *pending* record, which answers no password check; only
:class:`ExposeRecord` (RegisterExpose, sent by the client after it saw
RegisterFinishOk) makes it the live record, carrying over every attempt the
live record it replaces has spent.

Forgiveness (docs/threat-model.md, "The guess-limit argument"): every attempt
counted on a record gets a sequence number (``Record.attempts_started`` after
counting it). A valid KE3 forgives the attempts numbered up to its own
(:class:`ForgiveAttempts`), never the ones started after its KE1: those may be
the host's guesses made while the owner's login was in flight.

What is *not* here, on purpose: open login sessions and started registrations
(RegisterStart answered, RegisterFinish not yet). They are volatile, local to
the HSM that holds them, and lost on restart. Losing them is always safe: a lost
session is a counted attempt that released nothing; a lost started registration
makes the client start again.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Annotated, Any

from bkv.crypto.opaque import REGISTRATION_RECORD_SIZE, SERVER_SECRETS_SIZE
from bkv.errors import ProtocolStateError, RecordExistsError
from bkv.protocol.messages import (
    MAX_ACCOUNT_ID,
    MAX_FLEET_ID,
    MAX_GUESS_LIMIT,
    MAX_SECRET,
    REGISTRATION_ID_SIZE,
)
from bkv.records.nodes import HASH_SIZE, TREE_ID_SIZE
from bkv.records.tree import TreeHead
from bkv.wire import U8, U32, U64, Bytes, Fixed, ListOf, Text, message

MAX_STATE_SIZE = 4096
"""Ceiling on an encoded snapshot: secrets, policy and the record tree's head (~300 bytes)."""

MAX_SLOT_SIZE = 2048
"""Ceiling on one encoded account slot (a live and a pending record of at most ~400 bytes each)."""

RECORD_KEY_SIZE = 32
CHANNEL_KEY_SIZE = 32
FAKE_KEY_SIZE = 32

MAX_GENERATION = 0xFFFFFFFF
"""The highest slot generation (u32). A slot there takes no new registration, ever."""

PENDING_RECORD_TTL_MS = 10 * 60 * 1000
"""How long after RegisterFinish a pending record may still be exposed (then it is refused)."""


@message(tag=0x0703, version=2)
class Record:
    """One registration: OPAQUE record, the client's secret, the policy and the counter.

    The counter is two monotone numbers: ``attempts_started``, the sequence
    number of the latest attempt counted on the record (carried-over attempts
    included), and ``forgiven_through``, the latest attempt a valid KE3 forgave
    (every attempt up to it is forgiven). The attempts that count against the
    limit are those in between: :attr:`attempts_used`.

    The OPAQUE record (with the masking key), the secret and the registration id
    (the capability to expose a pending record) never appear in a repr.
    """

    generation: U32
    registration_id: Annotated[bytes, Fixed(REGISTRATION_ID_SIZE)] = field(repr=False)
    opaque_record: Annotated[bytes, Fixed(REGISTRATION_RECORD_SIZE)] = field(repr=False)
    secret: Annotated[bytes, Bytes(max_len=MAX_SECRET, min_len=1)] = field(repr=False)
    guess_limit: U8 = 10
    attempts_started: U64 = 0
    forgiven_through: U64 = 0
    created_ms: U64 = 0

    def __post_init__(self) -> None:
        if not 1 <= self.guess_limit <= MAX_GUESS_LIMIT:
            raise ValueError("guess limit out of range")
        if self.forgiven_through > self.attempts_started:
            raise ValueError("forgiven an attempt that was never started")
        if self.attempts_used > self.guess_limit:
            raise ValueError("attempts used over the guess limit")

    @property
    def attempts_used(self) -> int:
        """Attempts that count against the limit: those started after the last forgiven one.

        None of them has succeeded yet (a success forgives at least its own);
        each failed, was abandoned, or is a session still open.
        """
        return self.attempts_started - self.forgiven_through

    @property
    def attempts_left(self) -> int:
        """Checks this record may still answer."""
        return self.guess_limit - self.attempts_used


@message(tag=0x0702, version=2, max_size=MAX_SLOT_SIZE)
class AccountSlot:
    """An account: its live record, its pending record, and how many records it ever had.

    ``generation`` never decreases; it moves on at every install and at every
    destroy or delete (the slot stays as a tombstone), so every record an
    account ever had has a distinct generation, and a registration started
    before a destroy (it names the generation it started at) cannot finish
    after it. ``pending`` is a finished registration not
    yet exposed: it answers no password check (KE1 gets the fake-record KE2)
    and has counted no attempt (``attempts_started == 0``).
    """

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    generation: U32
    record: Record | None = None
    pending: Record | None = None

    def __post_init__(self) -> None:
        if self.pending is not None and self.pending.attempts_started != 0:
            raise ValueError("a pending record has answered no check")


@dataclasses.dataclass(frozen=True)
class VaultPolicy:
    """What every command is judged against besides its slot: the fleet and its guess-limit cap."""

    fleet_id: str
    max_guess_limit: int

    def __post_init__(self) -> None:
        if not 1 <= self.max_guess_limit <= MAX_GUESS_LIMIT:
            raise ValueError("max guess limit out of range")


@message(tag=0x0704, version=2)
class HsmSecrets:
    """Fleet secrets: OPAQUE ServerSecrets, the channel (HPKE X25519) key pair, the fake-id
    key, and the record key every account slot is sealed under (:mod:`bkv.hsm.records`)."""

    opaque: Annotated[bytes, Fixed(SERVER_SECRETS_SIZE)] = field(repr=False)
    channel_private_key: Annotated[bytes, Fixed(CHANNEL_KEY_SIZE)] = field(repr=False)
    channel_public_key: Annotated[bytes, Fixed(CHANNEL_KEY_SIZE)]
    fake_key: Annotated[bytes, Fixed(FAKE_KEY_SIZE)] = field(repr=False)
    record_key: Annotated[bytes, Fixed(RECORD_KEY_SIZE)] = field(repr=False)


@message(tag=0x0705, version=2, max_size=MAX_STATE_SIZE)
class Snapshot:
    """What is sealed at rest: the secrets, the policy and the head of the record tree.

    This is all the vault state an HSM keeps, whatever the number of records
    (docs/architecture.md, "Record storage"): the records themselves are sealed
    one by one and stored by the host under a Merkle radix tree whose head
    (``tree_id``, ``tree_version``, ``root``) is here. ``version`` is what the
    NV counter commits to; each committed batch moves both versions by one, so
    ``tree_version == version - 1`` always (the empty tree, version 0, is the
    HSM state of version 1).
    """

    version: U64
    secrets: HsmSecrets
    fleet_id: Annotated[str, Text(max_len=MAX_FLEET_ID, min_len=1)]
    max_guess_limit: U8
    tree_id: Annotated[bytes, Fixed(TREE_ID_SIZE)]
    tree_version: U64
    root: Annotated[bytes, Fixed(HASH_SIZE)]

    def __post_init__(self) -> None:
        if not 1 <= self.max_guess_limit <= MAX_GUESS_LIMIT:
            raise ValueError("max guess limit out of range")
        if self.tree_version != self.version - 1:
            raise ValueError("the tree version is not the state version minus one")

    @property
    def policy(self) -> VaultPolicy:
        """The fleet and its guess-limit cap."""
        return VaultPolicy(self.fleet_id, self.max_guess_limit)

    @property
    def head(self) -> TreeHead:
        """The record tree's head this state commits to."""
        return TreeHead(self.tree_id, self.tree_version, self.root)


# --- commands -------------------------------------------------------------------


@message(tag=0x0401, version=1)
class CountAttempt:
    """KE1 arrived for ``account_id``: count it (or destroy a record at its limit).

    The counted attempt's sequence number is the record's new ``attempts_started``
    (:class:`Counted`); the session that answers the KE1 keeps it.
    """

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]


@message(tag=0x0402, version=2)
class ForgiveAttempts:
    """A valid KE3 in the session of ``attempt`` on the record of ``generation``.

    Forgives the attempts numbered up to ``attempt`` (its own and every earlier
    one), never one started after it.
    """

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    generation: U32
    attempt: U64


@message(tag=0x0403, version=1)
class DestroyRecord:
    """The last allowed attempt failed: zeroize the record of ``generation``."""

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    generation: U32


@message(tag=0x0404, version=1)
class DeleteRecord:
    """The account owner (valid KE3 in the same session) deletes the record of ``generation``."""

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    generation: U32


@message(tag=0x0405, version=1)
class InstallRecord:
    """A finished registration, stored as the slot's *pending* record (not guessable yet).

    ``expected_generation`` is the slot's generation when the registration was started.
    """

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    expected_generation: U32
    registration_id: Annotated[bytes, Fixed(REGISTRATION_ID_SIZE)] = field(repr=False)
    opaque_record: Annotated[bytes, Fixed(REGISTRATION_RECORD_SIZE)] = field(repr=False)
    secret: Annotated[bytes, Bytes(max_len=MAX_SECRET, min_len=1)] = field(repr=False)
    guess_limit: U8 = 10
    now_ms: U64 = 0


@message(tag=0x0407, version=1)
class ExposeRecord:
    """The client saw RegisterFinishOk: the pending record of ``registration_id`` goes live."""

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    registration_id: Annotated[bytes, Fixed(REGISTRATION_ID_SIZE)] = field(repr=False)
    now_ms: U64 = 0


@message(tag=0x0408, version=1)
class ExpirePending:
    """Housekeeping: the pending record of ``account_id`` expired at ``now_ms``; zeroize it."""

    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    now_ms: U64


Command = (
    CountAttempt
    | ForgiveAttempts
    | DestroyRecord
    | DeleteRecord
    | InstallRecord
    | ExposeRecord
    | ExpirePending
)


MAX_BATCH_COMMANDS = 1024
"""Commands one batch (one new state version, one durable write) may hold."""


@message(tag=0x0406, version=2)
class CommandBatch:
    """The commands of one committed batch, in the order they were applied.

    Applied to the slots of state ``version - 1`` they give state ``version``:
    the unit a replicated fleet agrees on (one batch per version), and what a
    replica replays to reach the same slots.
    """

    version: U64
    commands: Annotated[tuple[Command, ...], ListOf(max_count=MAX_BATCH_COMMANDS, min_count=1)]


@dataclasses.dataclass(frozen=True)
class Counted:
    """Outcome of CountAttempt: the attempt was counted against ``record`` (now updated)."""

    record: Record


@dataclasses.dataclass(frozen=True)
class NoRecord:
    """Outcome of CountAttempt on an account without a live record (answer with a fake KE2)."""

    destroyed_now: bool


@dataclasses.dataclass(frozen=True)
class Forgiven:
    """Outcome of ForgiveAttempts: the record after it, and what the owner is told.

    ``failed_attempts``: the attempts that counted against the limit just before
    this KE3, other than its own; none of them had succeeded.
    """

    record: Record
    failed_attempts: int


@dataclasses.dataclass(frozen=True)
class Applied:
    """Outcome of every other command: the slot after the change."""

    slot: AccountSlot

    def live_record(self) -> Record:
        """The slot's record (for commands that leave one); ``ValueError`` if there is none."""
        if self.slot.record is None:
            raise ValueError("the command left no live record")
        return self.slot.record


def live_record_of(outcome: Outcome) -> Record:
    """The live record an ``Applied`` outcome left (caller misuse otherwise: ``ValueError``)."""
    if not isinstance(outcome, Applied):
        raise ValueError(f"expected an Applied outcome, got {type(outcome).__name__}")
    return outcome.live_record()


def applied_slot(outcome: Outcome) -> AccountSlot:
    """The slot an ``Applied`` outcome left (caller misuse otherwise: ``ValueError``)."""
    if not isinstance(outcome, Applied):
        raise ValueError(f"expected an Applied outcome, got {type(outcome).__name__}")
    return outcome.slot


def forgiven_of(outcome: Outcome) -> Forgiven:
    """A ``Forgiven`` outcome as such (caller misuse otherwise: ``ValueError``)."""
    if not isinstance(outcome, Forgiven):
        raise ValueError(f"expected a Forgiven outcome, got {type(outcome).__name__}")
    return outcome


Outcome = Counted | NoRecord | Forgiven | Applied


Slot = AccountSlot | None
"""An account's slot as a command sees it: ``None`` for an account that never registered."""


def apply(policy: VaultPolicy, slot: Slot, command: Command) -> tuple[Slot, Outcome]:
    """Apply one command to the slot of its account; pure and deterministic.

    ``slot`` is the account's current slot (``None``: never registered). The
    result is the slot after the command; it is the very same object when the
    command changed nothing (an idempotent expose, a KE1 on an account without
    a live record), so ``new is not slot`` tells a caller whether there is
    anything to store. Raises VaultError subclasses on refusal.
    """
    rule = _RULES.get(type(command))
    if rule is None:
        raise TypeError(f"not a command: {type(command).__name__}")
    if slot is not None and slot.account_id != command.account_id:
        raise ValueError("the slot given is not the command's account's")
    return rule(policy, slot, command)


def _count_attempt(_policy: VaultPolicy, slot: Slot, command: CountAttempt) -> tuple[Slot, Outcome]:
    if slot is None or slot.record is None:
        return slot, NoRecord(destroyed_now=False)
    record = slot.record
    if record.attempts_used >= record.guess_limit:
        # The limit was reached and none of the counted attempts has proved the
        # password yet (a valid KE3 forgives at least its own): destroy, answer as
        # if unknown.
        return _without_records(slot), NoRecord(destroyed_now=True)
    counted = dataclasses.replace(record, attempts_started=record.attempts_started + 1)
    return dataclasses.replace(slot, record=counted), Counted(counted)


def _live_record(slot: Slot, generation: int) -> tuple[AccountSlot, Record]:
    """The slot and its live record of ``generation``; else the session is stale."""
    if slot is None or slot.record is None or slot.record.generation != generation:
        raise ProtocolStateError("the record this session was opened for no longer exists")
    return slot, slot.record


def _forgive_attempts(
    _policy: VaultPolicy, slot: Slot, command: ForgiveAttempts
) -> tuple[Slot, Outcome]:
    slot, record = _live_record(slot, command.generation)
    if not 1 <= command.attempt <= record.attempts_started:
        raise ProtocolStateError("no such attempt on this record")
    # Only what started before this KE1 is forgiven: attempts started after it
    # (a host may open sessions while the owner's login is in flight) stay
    # counted. An older session succeeding after a newer one forgives nothing more.
    own_still_counted = command.attempt > record.forgiven_through
    failed = record.attempts_used - (1 if own_still_counted else 0)
    forgiven_through = max(record.forgiven_through, command.attempt)
    forgiven = dataclasses.replace(record, forgiven_through=forgiven_through)
    return dataclasses.replace(slot, record=forgiven), Forgiven(forgiven, failed)


def _destroy_record(
    _policy: VaultPolicy, slot: Slot, command: DestroyRecord
) -> tuple[Slot, Outcome]:
    slot, record = _live_record(slot, command.generation)
    if record.attempts_used < record.guess_limit:
        # Only a record at its limit is destroyed by a failed attempt: a stale
        # or replayed DestroyRecord cannot wipe a record that a login has forgiven.
        raise ProtocolStateError("record is not at its guess limit")
    new_slot = _without_records(slot)
    return new_slot, Applied(new_slot)


def _delete_record(_policy: VaultPolicy, slot: Slot, command: DeleteRecord) -> tuple[Slot, Outcome]:
    slot, _record = _live_record(slot, command.generation)
    new_slot = _without_records(slot)
    return new_slot, Applied(new_slot)


def _without_records(slot: AccountSlot) -> AccountSlot:
    """The slot as a tombstone: the live record and any pending record are zeroized.

    The pending record goes too: it was registered while the destroyed record
    held the account's spent attempts, and exposing it afterwards would start
    it at zero (a host could withhold the client's RegisterExpose, spend the
    live record's attempts, then deliver it).
    """
    # The generation moves on too (saturating: at MAX_GENERATION no registration
    # can install any more, see _install_record), so a registration started
    # against the destroyed record (InstallRecord.expected_generation) can never
    # finish afterwards with a fresh counter: it gets PROTOCOL_STATE.
    generation = min(slot.generation + 1, MAX_GENERATION)
    return dataclasses.replace(slot, generation=generation, record=None, pending=None)


def carried_attempts(slot: AccountSlot) -> int:
    """Attempts the live record has spent: a record that replaces it inherits all of them."""
    return 0 if slot.record is None else slot.record.attempts_used


def _install_record(
    policy: VaultPolicy, slot: Slot, command: InstallRecord
) -> tuple[Slot, Outcome]:
    if not 1 <= command.guess_limit <= policy.max_guess_limit:
        raise ValueError("guess limit outside the fleet policy")  # checked by the caller first
    current = slot or AccountSlot(command.account_id, 0, None)
    if current.generation != command.expected_generation:
        raise ProtocolStateError("another registration finished first; start again")
    # Re-registration rule (docs/threat-model.md, "The re-registration rule"):
    # the new record is stored as *pending*. It answers no password check until
    # the client exposes it, so an install whose RegisterFinishOk the host
    # dropped is worth nothing to the host, and a retried RegisterFinish just
    # replaces it. Refuse early
    # what the expose would refuse anyway (ExposeRecord checks again).
    if carried_attempts(current) >= command.guess_limit:
        raise RecordExistsError("the live record's spent attempts reach the new guess limit")
    if current.generation >= MAX_GENERATION:
        raise RecordExistsError("the account has used up its record generations")
    pending = Record(
        generation=current.generation + 1,
        registration_id=command.registration_id,
        opaque_record=command.opaque_record,
        secret=command.secret,
        guess_limit=command.guess_limit,
        created_ms=command.now_ms,
    )
    new_slot = AccountSlot(command.account_id, pending.generation, current.record, pending)
    return new_slot, Applied(new_slot)


def pending_expired(record: Record, now_ms: int) -> bool:
    """Whether a pending record is past :data:`PENDING_RECORD_TTL_MS` at ``now_ms``."""
    return now_ms >= record.created_ms + PENDING_RECORD_TTL_MS


def is_exposed(slot: Slot, registration_id: bytes) -> bool:
    """Whether the live record of ``slot`` is the one registered as ``registration_id``."""
    return (
        slot is not None
        and slot.record is not None
        and hmac.compare_digest(slot.record.registration_id, registration_id)
    )


def _expose_record(_policy: VaultPolicy, slot: Slot, command: ExposeRecord) -> tuple[Slot, Outcome]:
    pending = None if slot is None else slot.pending
    if (
        slot is None
        or pending is None
        or not hmac.compare_digest(pending.registration_id, command.registration_id)
    ):
        if is_exposed(slot, command.registration_id) and slot is not None:
            # Idempotent: the client lost the first RegisterExposeOk and asks again.
            # Nothing changes (no attempt, no counter move); it hears the same news.
            return slot, Applied(slot)
        raise ProtocolStateError("no pending record with this registration id")
    if pending_expired(pending, command.now_ms):
        raise ProtocolStateError("the pending record expired; register again")
    # Re-registration rule: the new live record carries over *every* attempt the
    # record it replaces has spent, also when that record is at its limit (then
    # the expose is refused: the locked record is destroyed by the normal path,
    # and only after that may the account start afresh).
    carried = carried_attempts(slot)
    if carried >= pending.guess_limit:
        raise RecordExistsError("the live record's spent attempts reach the new guess limit")
    # The carried attempts are the new record's first ones (numbered 1..carried);
    # sessions of the old record cannot forgive them (their generation is stale).
    live = dataclasses.replace(pending, attempts_started=carried)
    new_slot = dataclasses.replace(slot, record=live, pending=None)
    return new_slot, Applied(new_slot)


def _expire_pending(
    _policy: VaultPolicy, slot: Slot, command: ExpirePending
) -> tuple[Slot, Outcome]:
    if slot is None or slot.pending is None or not pending_expired(slot.pending, command.now_ms):
        raise ProtocolStateError("no expired pending record for this account")
    # The generation stays: nothing was exposed, and no started registration
    # names the pending record's generation (InstallRecord moved the slot to it).
    new_slot = dataclasses.replace(slot, pending=None)
    return new_slot, Applied(new_slot)


_Rule = Callable[[VaultPolicy, Slot, Any], tuple[Slot, Outcome]]

_RULES: Mapping[type, _Rule] = MappingProxyType(
    {
        CountAttempt: _count_attempt,
        ForgiveAttempts: _forgive_attempts,
        DestroyRecord: _destroy_record,
        DeleteRecord: _delete_record,
        InstallRecord: _install_record,
        ExposeRecord: _expose_record,
        ExpirePending: _expire_pending,
    }
)
"""How each command changes a slot: one pure function per command type."""
