"""The HSM application: request bytes and record reads in, sealed records and answers out.

Sans-IO. :class:`HsmApp` holds the fleet secrets (OPAQUE :class:`ServerSecrets`,
the channel private key, the record key) and a :class:`~bkv.hsm.state.Snapshot`:
the policy and the head of the record tree. It keeps no record: the host
stores one sealed slot per account under the record tree, and hands the HSM
the slot a request needs, with its proof, in a
:class:`~bkv.protocol.vault_records.RecordRead` (docs/architecture.md, "Record
storage"). The HSM checks every read against the head it holds
(:mod:`bkv.hsm.records`) before it uses it.

Group commit. Requests are taken in batches; the host drives one batch at a time::

    for request in queue:                     # any number, up to MAX_BATCH_REQUESTS
        record_id = record_id_for(app.head.tree_id, account_id_of(request))
        read = store.read(app.head, record_id)   # proof + sealed slot, at app.head
        ticket = app.submit(request, read, now_ms)
    end = app.end_batch()
    if end.persist is None:
        answers = end.answers                 # nothing changed: answer at once
    else:                                     # write everything, then the counter
        store.commit(end.persist.update, end.persist.records, end.persist.sealed_state)
        counter.advance(end.persist.version, SHA-256(end.persist.sealed_state))
        answers = app.persisted(end.persist.version)   # ticket -> response

``app.housekeeping_due(now_ms)`` names accounts whose record used its last
attempt or whose pending record expired; ``app.housekeep(account_id, read,
now_ms)`` adds their change to the open batch.

Every request of a batch is applied in order to the slots the batch has read
(a later request on the same account sees the earlier one's change). A
handler either answers from its slot (a read, or a change to the volatile
tables) or returns a :class:`_Change`: one typed command (:mod:`bkv.hsm.state`)
and how to answer from its outcome. At the end of the batch the changed slots
are sealed, the tree update is computed from their proofs alone
(:func:`bkv.records.tree.apply_batch`: one new root, one new version, however
many records changed), and the new snapshot is sealed. *Every* answer of the
batch, reads included, is withheld inside the HSM until the host acknowledges
that the batch is durable: only :meth:`HsmApp.persisted` releases them. So a
KE2 never leaves before the attempt it answers is counted on disk
(docs/threat-model.md, "The guess-limit argument"), and no answer reveals a
change that could still be lost. If the write fails the host calls
:meth:`HsmApp.abandon`: the batch and its answers are dropped, and the HSM's
head never runs ahead of the disk.

Same cost, real or not (RFC 9807 section 10.9). A KE1 for an account without a
live record answers with a fake-record KE2 of the same size and format, goes
through the same command, seals and tree-updates a dummy slot of a real
record's size (discarded), and makes its batch commit (a new version with the
same root) just as a counted attempt would, so the work and the durable write
are the same whether or not the record exists.

Bounded memory. Nothing the HSM holds grows with the number of records: the
snapshot is a few hundred bytes, a batch is bounded
(:data:`MAX_BATCH_REQUESTS`), the volatile tables are bounded
(:mod:`bkv.hsm.sessions`), and the accounts housekeeping watches are at most
:data:`MAX_WATCHED` (beyond that a locked record waits for its next KE1, which
destroys it, and an expired pending record is refused when exposed).

Volatile, per-HSM state (:mod:`bkv.hsm.sessions`: not replicated, lost on
restart, always safe to lose): open login sessions (``ServerLoginState``
between KE2 and KE3, single-use, random 128-bit ids) and started registrations
(single-use, random 256-bit ids).

Forgiveness. A valid KE3 forgives the attempts started before its own KE1
(its own included), never one started after it: the session remembers the
sequence number of the attempt its KE1 was counted as, and
:class:`~bkv.hsm.state.ForgiveAttempts` names it. The owner is told, in
``KeyReleased.failed_attempts``, how many other attempts counted against the
limit when the KE3 arrived (all of them since the KE1 of the previous
successful recovery), and ``StatusOk.failed_attempts`` counts the same.

Replays. The channel (HPKE) does not stop a host from replaying a sealed
request, so every request is safe to replay by construction:
- RecoverStart: a new attempt (counted) with a fresh session; the host could
  as well have made its own KE1, so this gives it nothing it did not have.
- RecoverFinish / RecoverAbort: the session id is single-use; a replay finds no
  session -> ``PROTOCOL_STATE``, no state change.
- RegisterFinish: the registration id is single-use; a replay (even after the
  record was destroyed) finds no started registration -> ``PROTOCOL_STATE``.
  The OPRF key of a record is derived from its registration id, which the HSM
  drew at random, so an old registration can never be re-installed. What it
  installs is a *pending* record that answers no password check.
- RegisterExpose: idempotent. While the record it exposed is the live one, a
  replay (or the client's retry after a lost RegisterExposeOk) gets the same
  RegisterExposeOk and changes nothing; once that record was replaced, expired
  or destroyed -> ``PROTOCOL_STATE``.
- RegisterStart: draws a new registration id; the newest one of an account wins.
  It names the live record it replaces; once that one is gone -> ``PROTOCOL_STATE``.
- Status: reads only.

Status and enumeration. ``STATUS`` answers whether the account has a live
record and its attempts left, to whoever can build a request for the account,
and the host can (sealing needs only the public channel key). The host already
sees every registration and recovery request of every account it relays, so
this tells it nothing new. Enumeration protection (RFC 9807 section 10.9) is
against parties without the account's bearer token, whom the host refuses;
within the protocol, a KE1 for a destroyed, deleted, pending-only or
never-registered account gets a fake-record KE2 of the same size and format.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from bkv.crypto import channel
from bkv.crypto.interfaces import Sealer
from bkv.crypto.ksf import Identity
from bkv.crypto.opaque import (
    KE1,
    KE3,
    REGISTRATION_RECORD_SIZE,
    Config,
    RegistrationRecord,
    ServerSecrets,
    server_login_finish,
    server_login_start_bytes,
    server_registration_response_bytes,
)
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import (
    ClientAuthenticationError,
    CodecError,
    CryptoError,
    DecryptionError,
    ProtocolStateError,
    RecordExistsError,
    RecordProofError,
    StorageError,
    VaultError,
    VaultFullError,
)
from bkv.hsm.public_keys import FleetPublicKeys
from bkv.hsm.records import ReadSlot, RecordCipher
from bkv.hsm.sealing import UNBOUND_COUNTER_ID, open_snapshot, seal_snapshot
from bkv.hsm.sessions import (
    REGISTRATION_TTL_MS,
    SESSION_TTL_MS,
    LoginSession,
    StartedRegistration,
    VolatileTables,
)
from bkv.hsm.state import (
    MAX_BATCH_COMMANDS,
    PENDING_RECORD_TTL_MS,
    AccountSlot,
    Command,
    CommandBatch,
    CountAttempt,
    Counted,
    DeleteRecord,
    DestroyRecord,
    ExpirePending,
    ExposeRecord,
    ForgiveAttempts,
    HsmSecrets,
    InstallRecord,
    NoRecord,
    Outcome,
    Record,
    Slot,
    Snapshot,
    applied_slot,
    apply,
    carried_attempts,
    forgiven_of,
    is_exposed,
    live_record_of,
    pending_expired,
)
from bkv.protocol import release
from bkv.protocol.messages import (
    INNER_REQUESTS,
    KIND_OF_REQUEST,
    MAX_REQUEST_SIZE,
    OPAQUE_CONTEXT,
    REGISTRATION_ID_SIZE,
    SESSION_ID_SIZE,
    AbortOk,
    ErrorCode,
    FinishAction,
    HsmRejected,
    HsmRequest,
    HsmResponse,
    InnerResponse,
    KeyReleased,
    RecordDeleted,
    RecoverAbort,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterExpose,
    RegisterExposeOk,
    RegisterFinish,
    RegisterFinishOk,
    RegisterStart,
    RegisterStartOk,
    StatusOk,
    StatusRequest,
    VaultFailure,
    request_aad,
)
from bkv.protocol.vault_records import record_id_for, tree_id_for
from bkv.records.nodes import record_hash
from bkv.records.tree import TreeHead, TreeUpdate, apply_verified_batch, new_tree
from bkv.wire import decode, decode_any, encode

CREDENTIAL_LABEL = b"bkv.hsm.credential.v1"
_MAX_NOW_MS = 2**64 - 1  # commands carry the clock as a u64
FAKE_ID_LABEL = b"bkv.hsm.fake-registration-id.v1"

MAX_BATCH_REQUESTS: Final = MAX_BATCH_COMMANDS
"""Requests and housekeeping changes one batch takes (each makes at most one command)."""

MAX_WATCHED: Final = 65_536
"""Accounts housekeeping watches at most, per kind (locked records, pending records)."""

_DUMMY_SECRET_SIZE: Final = 64
"""Secret size of the dummy slot a KE1 without a record seals (a wrapped 32-byte key)."""


def credential_identifier(account_id: bytes, registration_id: bytes) -> bytes:
    """RFC 9807 credential_identifier of a record: account and the record's registration id.

    The OPRF key is derived from it (section 4.1.1, DeriveKeyPair over the
    oprf_seed and this identifier), so each registration has its own OPRF key.
    """
    return CREDENTIAL_LABEL + len(account_id).to_bytes(1, "big") + account_id + registration_id


@dataclass(frozen=True)
class Persist:
    """Effect: store everything here in one atomic write, advance the counter, then ack.

    ``update`` and ``records`` (record id -> sealed slot) go to the record
    store, with ``sealed_state`` (the new :class:`~bkv.hsm.state.Snapshot`,
    sealed) in the same transaction; the NV counter then moves to
    ``(version, SHA-256(sealed_state))``; then :meth:`HsmApp.persisted`.
    ``commands`` is the encoded :class:`~bkv.hsm.state.CommandBatch` the batch
    applied (empty for the genesis of a new vault): the unit a replicated fleet
    would agree on.
    """

    version: int
    sealed_state: bytes = field(repr=False)
    update: TreeUpdate = field(repr=False)
    records: Mapping[bytes, bytes] = field(repr=False)
    commands: bytes = field(repr=False)


@dataclass(frozen=True)
class BatchEnd:
    """What :meth:`HsmApp.end_batch` gives: a persist to do, or the answers at once.

    Exactly one of them is set when the batch held anything: ``persist`` when
    the batch changed durable state (then :meth:`HsmApp.persisted` gives the
    answers), else ``answers`` (ticket -> response; ``None`` for housekeeping).
    """

    persist: Persist | None = None
    answers: Mapping[int, bytes | None] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class _Request:
    """An opened request, as every handler sees it: whose, its exact bytes, and when."""

    account_id: bytes
    request: bytes = field(repr=False)  # the outer HsmRequest (a released secret is bound to it)
    now_ms: int


@dataclass(frozen=True)
class _OpensSession:
    """An answer that opens a login session, once the state it depends on is durable."""

    response: RecoverStartOk
    session_id: bytes = field(repr=False)
    session: LoginSession


_Answer = Callable[[Outcome], InnerResponse | _OpensSession]
"""How a change answers, from the outcome of its command (computed before persisting)."""


@dataclass(frozen=True)
class _Change:
    """A request that changes durable state: the command, then how to answer."""

    command: Command
    answer: _Answer | None  # None: housekeeping, answers no one


@dataclass
class _Entry:
    """One record the open batch has read: its verified proof and its slot as of now."""

    account_id: bytes
    read: ReadSlot
    slot: Slot
    changed: bool = False


@dataclass(frozen=True)
class _Held:
    """An answer withheld until its batch is durable (``None``: housekeeping)."""

    response: bytes | None = field(repr=False)
    opens: _OpensSession | None = None


@dataclass
class _Batch:
    """The open batch: the records it read, the commands it applied, the answers it holds."""

    entries: dict[bytes, _Entry] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    held: dict[int, _Held] = field(default_factory=dict)
    touched: bool = False  # a KE1 without a record: commit anyway (same cost)

    @property
    def size(self) -> int:
        return len(self.held)


@dataclass(frozen=True)
class _Sealed:
    """A batch whose persist is outstanding."""

    version: int
    snapshot: Snapshot
    sealed_state: bytes = field(repr=False)
    batch: _Batch = field(repr=False)


class _RefusedError(Exception):
    """Internal: answer with this VaultFailure code (never escapes the module)."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


def _code_for(exc: Exception) -> ErrorCode:
    if isinstance(exc, ProtocolStateError):
        return ErrorCode.PROTOCOL_STATE
    if isinstance(exc, RecordExistsError):
        return ErrorCode.RECORD_EXISTS
    if isinstance(exc, VaultFullError):
        return ErrorCode.VAULT_FULL
    if isinstance(exc, ClientAuthenticationError):
        return ErrorCode.LOGIN_FAILED
    return ErrorCode.MALFORMED


def _dummy_slot(account_id: bytes) -> AccountSlot:
    """A slot of a real one's size, for the work a KE1 without a record does and discards."""
    record = Record(
        generation=1,
        registration_id=bytes(REGISTRATION_ID_SIZE),
        opaque_record=bytes(REGISTRATION_RECORD_SIZE),
        secret=bytes(_DUMMY_SECRET_SIZE),
        attempts_started=1,
    )
    return AccountSlot(account_id, 1, record)


class HsmApp:
    """The vault inside one (emulated) HSM. Not thread-safe: the adapter serializes calls."""

    def __init__(
        self,
        snapshot: Snapshot,
        sealed_state: bytes,
        sealer: Sealer,
        *,
        rng: Rng = default_rng,
        session_ttl_ms: int = SESSION_TTL_MS,
        counter_id: bytes = UNBOUND_COUNTER_ID,
    ) -> None:
        secrets = snapshot.secrets
        self._secrets = secrets
        self._opaque = ServerSecrets.from_bytes(secrets.opaque)
        self._channel_key = channel.ChannelPrivateKey(secrets.channel_private_key)
        expected_public = self._channel_key.key.public_key().public_bytes_raw()
        if not hmac.compare_digest(expected_public, secrets.channel_public_key):
            raise StorageError("sealed state: channel public key does not match its private key")
        if snapshot.tree_id != tree_id_for(snapshot.fleet_id):
            raise StorageError("sealed state: the record tree is not this fleet's")
        self._snapshot = snapshot
        self._sealed_state = sealed_state
        self._sealer = sealer
        self._counter_id = counter_id  # bound into every sealed state's AAD
        self._rng = rng
        self._cipher = RecordCipher(secrets.record_key, snapshot.fleet_id, rng)
        self._session_ttl_ms = session_ttl_ms
        # The server never runs the KSF (RFC 9807 section 6): Identity says so.
        self._config = Config(context=OPAQUE_CONTEXT, ksf=Identity())
        self._tables = VolatileTables()
        self._batch: _Batch | None = None
        self._sealed: _Sealed | None = None
        self._next_ticket = 0
        # Accounts whose live record used its last attempt (housekeeping destroys
        # it once no session can prove the password any more), and accounts with
        # a pending record, by its expiry time. Learnt from the batches this HSM
        # committed since it started; bounded (MAX_WATCHED).
        self._locked: dict[bytes, int] = {}  # account -> generation of the locked record
        self._pending: dict[bytes, int] = {}

    def __repr__(self) -> str:
        return f"HsmApp(fleet_id={self.fleet_id!r}, version={self.version})"

    # --- lifecycle --------------------------------------------------------------

    @classmethod
    def initialize(
        cls,
        fleet_id: str,
        sealer: Sealer,
        *,
        max_guess_limit: int = 10,
        rng: Rng = default_rng,
        counter_id: bytes = UNBOUND_COUNTER_ID,
    ) -> HsmApp:
        """Generate fleet secrets and an empty vault at version 1 (store :meth:`genesis` first).

        ``counter_id``: the id of the NV counter that guards this HSM's states.
        """
        opaque = ServerSecrets.generate(rng)
        channel_private, channel_public = channel.generate_channel_key_pair(rng)
        secrets = HsmSecrets(
            opaque=opaque.to_bytes(),
            channel_private_key=channel_private,
            channel_public_key=channel_public,
            fake_key=draw(rng, 32),
            record_key=draw(rng, 32),
        )
        head = new_tree(tree_id_for(fleet_id)).new_head
        snapshot = Snapshot(
            version=1,
            secrets=secrets,
            fleet_id=fleet_id,
            max_guess_limit=max_guess_limit,
            tree_id=head.tree_id,
            tree_version=head.version,
            root=head.root,
        )
        sealed_state = seal_snapshot(sealer, snapshot, counter_id)
        return cls(snapshot, sealed_state, sealer, rng=rng, counter_id=counter_id)

    def genesis(self) -> Persist:
        """The persist that creates a new vault's store: the empty tree and the version-1 state.

        Stored and counted like any batch, except that no answer waits for it
        (:meth:`persisted` is not called for it). Only a vault still at version 1 has one.
        """
        if self.version != 1:
            raise ValueError("only a new vault (version 1) has a genesis")
        return Persist(1, self._sealed_state, new_tree(self.head.tree_id), {}, b"")

    @classmethod
    def load(
        cls,
        sealed_state: bytes,
        sealer: Sealer,
        *,
        fleet_id: str | None = None,
        rng: Rng = default_rng,
        counter_id: bytes = UNBOUND_COUNTER_ID,
    ) -> HsmApp:
        """Open a sealed state; raises :class:`SealingError` / :class:`StorageError`.

        A state sealed under another NV counter's id is a :class:`SealingError`.
        """
        snapshot = open_snapshot(sealer, sealed_state, counter_id)
        if fleet_id is not None and snapshot.fleet_id != fleet_id:
            raise StorageError("sealed state belongs to another fleet")
        return cls(snapshot, sealed_state, sealer, rng=rng, counter_id=counter_id)

    @property
    def fleet_id(self) -> str:
        """The fleet this HSM serves."""
        return self._snapshot.fleet_id

    @property
    def version(self) -> int:
        """Version of the last durable (acknowledged) state."""
        return self._snapshot.version

    @property
    def head(self) -> TreeHead:
        """The record tree head of the last durable state: the host reads proofs at it."""
        return self._snapshot.head

    @property
    def channel_public_key(self) -> bytes:
        """The fleet's HPKE (X25519) channel public key: clients seal requests to it."""
        return self._secrets.channel_public_key

    @property
    def opaque_public_key(self) -> bytes:
        """The fleet's OPAQUE AKE public key (ristretto255)."""
        return self._opaque.server_public_key

    def sealed_state(self) -> bytes:
        """The sealed snapshot of the last durable state."""
        return self._sealed_state

    def record_id(self, account_id: bytes) -> bytes:
        """The record id of ``account_id`` (:func:`~bkv.protocol.vault_records.record_id_for`)."""
        return record_id_for(self._snapshot.tree_id, account_id)

    def public_keys(self) -> FleetPublicKeys:
        """What this HSM publishes (:func:`bkv.hsm.public_keys.render_public_keys` renders it)."""
        return FleetPublicKeys(
            fleet_id=self.fleet_id,
            channel_public_key=self.channel_public_key,
            opaque_public_key=self.opaque_public_key,
            max_guess_limit=self._snapshot.max_guess_limit,
        )

    @property
    def batch_size(self) -> int:
        """Requests and housekeeping changes in the open batch."""
        return 0 if self._batch is None else self._batch.size

    # --- the message interface ----------------------------------------------------

    def submit(self, request: bytes, read: bytes | None, now_ms: int) -> int:
        """Take one request into the open batch; its answer comes with the batch's end.

        ``read`` is the host's :class:`~bkv.protocol.vault_records.RecordRead`
        of the request's record at :attr:`head` (``None`` only when the request
        names no account: it is then refused as malformed). Returns the
        request's ticket. A read that fails its checks raises the typed error
        (:class:`bkv.errors.RecordProofError`, ``RecordMismatchError``,
        :class:`bkv.errors.SealingError`) and the request is not taken: nothing
        changed, nothing was answered, no attempt was counted.
        """
        batch = self._batch_with_room(now_ms)
        self._tables.expire(now_ms)
        opened = self._open(request)
        if isinstance(opened, HsmRejected):
            return self._hold(batch, _Held(encode(opened)))
        outer, channel_state, plaintext = opened
        entry = self._entry(batch, outer.account_id, read)
        opens = None
        try:
            inner = decode_any(plaintext, INNER_REQUESTS)
            if KIND_OF_REQUEST[type(inner)] != outer.kind:
                raise _RefusedError(ErrorCode.KIND_MISMATCH)
            handler = _HANDLERS[type(inner)]  # INNER_REQUESTS and the table agree (a test)
            req = _Request(outer.account_id, request, now_ms)
            result = handler(self, req, inner, entry.slot)
            answer: InnerResponse | None
            if isinstance(result, _Change):
                reply = self._apply(batch, entry, result)
                opens = reply if isinstance(reply, _OpensSession) else None
                answer = reply.response if isinstance(reply, _OpensSession) else reply
            else:
                answer = result
        except _RefusedError as refused:
            answer = VaultFailure(refused.code)
        except (CodecError, CryptoError, VaultError) as exc:
            answer = VaultFailure(_code_for(exc))
        response = None if answer is None else self._seal_answer(channel_state, answer)
        return self._hold(batch, _Held(response, opens))

    def housekeeping_due(self, now_ms: int) -> tuple[bytes, ...]:
        """Accounts housekeeping may have work for (give each to :meth:`housekeep`).

        A live record that used its last attempt and that no open session on
        this HSM can still prove the password for (the client vanished, the
        session expired, or the HSM restarted) can never answer a check again,
        so its secret goes now rather than at the next KE1; a pending record past
        :data:`~bkv.hsm.state.PENDING_RECORD_TTL_MS` can never go live. At most
        the room left in the open batch.
        """
        self._check_clock(now_ms)
        self._tables.expire(now_ms)
        room = MAX_BATCH_REQUESTS - self.batch_size
        locked = [
            account
            for account, generation in sorted(self._locked.items())
            if not self._session_may_succeed(account, generation)
        ]
        expired = [a for a, expiry in sorted(self._pending.items()) if now_ms >= expiry]
        return tuple(dict.fromkeys(locked + expired))[: max(room, 0)]

    def housekeep(self, account_id: bytes, read: bytes, now_ms: int) -> None:
        """Add the housekeeping change of ``account_id`` (if it still has one) to the batch.

        ``read`` as for :meth:`submit`; a bad read raises and changes nothing.
        """
        batch = self._batch_with_room(now_ms)
        entry = self._entry(batch, account_id, read)
        change = self._housekeeping_change(entry.slot, now_ms)
        if change is None:
            self._watch(account_id, entry.slot)  # nothing to do: stop watching it
            return
        self._apply(batch, entry, change)
        self._hold(batch, _Held(None))

    def end_batch(self) -> BatchEnd:
        """Close the open batch: a :class:`Persist` if it changed anything, else its answers."""
        if self._sealed is not None:
            raise ValueError("a persist is outstanding: call persisted() or abandon() first")
        batch, self._batch = self._batch, None
        if batch is None:
            return BatchEnd()
        changed = {rid: e for rid, e in batch.entries.items() if e.changed}
        if not changed and not batch.touched:
            return BatchEnd(answers=self._release(batch))
        head = self.head
        tree_version = head.version + 1
        records = {
            rid: self._cipher.seal(rid, tree_version, _stored(e)) for rid, e in changed.items()
        }
        update = self._tree_update(head, changed, records)
        snapshot = dataclasses.replace(
            self._snapshot,
            version=self.version + 1,
            tree_version=update.new_head.version,
            root=update.new_head.root,
        )
        sealed_state = seal_snapshot(self._sealer, snapshot, self._counter_id)
        commands = encode(CommandBatch(snapshot.version, tuple(batch.commands)))
        self._sealed = _Sealed(snapshot.version, snapshot, sealed_state, batch)
        return BatchEnd(persist=Persist(snapshot.version, sealed_state, update, records, commands))

    def persisted(self, version: int) -> Mapping[int, bytes | None]:
        """The host stored the batch of ``version`` and advanced the counter: release its answers.

        Returns ticket -> response (``None`` for housekeeping, which answers no one).
        """
        sealed = self._take_sealed(version)
        self._snapshot, self._sealed_state = sealed.snapshot, sealed.sealed_state
        for entry in sealed.batch.entries.values():
            if entry.changed:
                self._watch(entry.account_id, entry.slot)
        return self._release(sealed.batch)

    def abandon(self, version: int) -> None:
        """The host could not persist ``version``: drop the batch and every answer it held."""
        self._take_sealed(version)

    # --- batches ------------------------------------------------------------------

    def _batch_with_room(self, now_ms: int) -> _Batch:
        """The open batch (opened if needed); caller misuse (``ValueError``) if it cannot take more.

        Commands carry the clock as a u64; a clock value that does not fit is
        refused here, before any change is computed from it.
        """
        self._check_clock(now_ms)
        if self._sealed is not None:
            raise ValueError("a persist is outstanding: call persisted() or abandon() first")
        if self._batch is None:
            self._batch = _Batch()
        if self._batch.size >= MAX_BATCH_REQUESTS:
            raise ValueError("the batch is full: end it first")
        return self._batch

    @staticmethod
    def _check_clock(now_ms: int) -> None:
        if type(now_ms) is not int or not 0 <= now_ms <= _MAX_NOW_MS:
            raise ValueError("now_ms must be an int in 0..2**64-1")

    def _hold(self, batch: _Batch, held: _Held) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        batch.held[ticket] = held
        return ticket

    def _entry(self, batch: _Batch, account_id: bytes, read: bytes | None) -> _Entry:
        """The batch's entry for ``account_id``, checking the host's read the first time."""
        record_id = self.record_id(account_id)
        entry = batch.entries.get(record_id)
        if entry is not None:
            return entry  # the batch's own, newer slot (the read is at the old head)
        if read is None:
            raise RecordProofError("the host sent no record read for the request's account")
        checked = self._cipher.read(self.head, account_id, record_id, read)
        entry = _Entry(account_id, checked, checked.slot)
        batch.entries[record_id] = entry
        return entry

    def _apply(
        self, batch: _Batch, entry: _Entry, change: _Change
    ) -> InnerResponse | _OpensSession | None:
        """Apply ``change`` to the entry's slot; nothing changes if it or its answer raises."""
        slot, outcome = apply(self._snapshot.policy, entry.slot, change.command)
        reply = None if change.answer is None else change.answer(outcome)
        if len(batch.commands) >= MAX_BATCH_COMMANDS:
            raise ValueError("the batch holds its maximum number of commands")
        batch.commands.append(change.command)
        if slot is not entry.slot:
            entry.slot, entry.changed = slot, True
        elif isinstance(outcome, NoRecord):
            # A KE1 without a live record: the same work and the same durable write
            # as a counted attempt (RFC 9807 section 10.9), the result discarded.
            self._shadow_work(entry)
            batch.touched = True
        return reply

    def _shadow_work(self, entry: _Entry) -> None:
        record_id = entry.read.record_id
        blob = self._cipher.seal(record_id, self.head.version + 1, _dummy_slot(entry.account_id))
        value = record_hash(self.head.tree_id, record_id, blob)
        apply_verified_batch(self.head, [entry.read.path], {record_id: value})

    def _tree_update(
        self, head: TreeHead, changed: Mapping[bytes, _Entry], records: Mapping[bytes, bytes]
    ) -> TreeUpdate:
        if not changed:  # touched only: a new version with the same root
            new_head = TreeHead(head.tree_id, head.version + 1, head.root)
            return TreeUpdate(head, new_head, (), ())
        values = {rid: record_hash(head.tree_id, rid, blob) for rid, blob in records.items()}
        return apply_verified_batch(head, [e.read.path for e in changed.values()], values)

    def _release(self, batch: _Batch) -> dict[int, bytes | None]:
        for held in batch.held.values():
            if held.opens is not None:
                self._tables.open_session(held.opens.session_id, held.opens.session)
        return {ticket: held.response for ticket, held in batch.held.items()}

    def _take_sealed(self, version: int) -> _Sealed:
        sealed = self._sealed
        if sealed is None or sealed.version != version:
            raise ValueError("no outstanding persist with that version")
        self._sealed = None
        return sealed

    # --- opening ------------------------------------------------------------------

    def _open(
        self, request: bytes
    ) -> HsmRejected | tuple[HsmRequest, channel.ServerChannelState, bytes]:
        if not isinstance(request, bytes):
            raise TypeError("request must be bytes")
        if not 0 < len(request) <= MAX_REQUEST_SIZE:
            return HsmRejected(ErrorCode.MALFORMED)
        try:
            outer = decode(HsmRequest, request)
        except CodecError:
            return HsmRejected(ErrorCode.MALFORMED)
        if outer.fleet_id != self.fleet_id:
            return HsmRejected(ErrorCode.WRONG_FLEET)
        aad = request_aad(outer.fleet_id, outer.kind, outer.account_id)
        try:
            channel_state, plaintext = channel.open_request(
                self._channel_key, outer.fleet_id.encode("utf-8"), outer.sealed, aad
            )
        except CodecError:
            return HsmRejected(ErrorCode.MALFORMED)
        except DecryptionError:
            return HsmRejected(ErrorCode.UNDECRYPTABLE)
        return outer, channel_state, plaintext

    def _seal_answer(
        self, channel_state: channel.ServerChannelState, answer: InnerResponse
    ) -> bytes:
        sealed = channel.seal_response(channel_state, encode(answer), self._rng)
        return encode(HsmResponse(sealed))

    # --- request handlers (dispatched by _HANDLERS) -----------------------------------

    def _register_start(self, req: _Request, inner: RegisterStart, slot: Slot) -> InnerResponse:
        account = req.account_id
        registration_id = draw(self._rng, REGISTRATION_ID_SIZE)
        # A fresh OPRF key per registration: this evaluation can never help
        # guess the password of any record that exists or will exist. (The
        # encoding form decodes and checks the blinded element in the multiplication.)
        response = server_registration_response_bytes(
            self._opaque,
            inner.registration_request,
            credential_identifier(account, registration_id),
        )
        live_generation = 0 if slot is None or slot.record is None else slot.record.generation
        if inner.replaces_generation != live_generation:
            # The client means to replace a record that is not the live one: it was
            # destroyed or deleted (or replaced) since the client last looked, maybe
            # while the host held this request back. Starting anyway would give the
            # same password a record with a fresh counter behind the client's back.
            raise ProtocolStateError("the live record is not the one this registration replaces")
        started = StartedRegistration(
            registration_id=registration_id,
            generation=0 if slot is None else slot.generation,
            expires_ms=req.now_ms + REGISTRATION_TTL_MS,
        )
        self._tables.start_registration(account, started)
        return RegisterStartOk(response, registration_id)

    def _register_finish(self, req: _Request, inner: RegisterFinish, _slot: Slot) -> _Change:
        account = req.account_id
        started = self._tables.registration(account, inner.registration_id)
        if not 1 <= inner.guess_limit <= self._snapshot.max_guess_limit:
            raise _RefusedError(ErrorCode.INVALID_POLICY)
        record = RegistrationRecord.from_bytes(inner.registration_record)
        self._tables.end_registration(account)  # single-use, whatever the outcome from here on
        command = InstallRecord(
            account_id=account,
            expected_generation=started.generation,
            registration_id=started.registration_id,
            opaque_record=record.to_bytes(),
            secret=inner.secret,
            guess_limit=inner.guess_limit,
            now_ms=req.now_ms,
        )
        return _Change(command, _answer_installed)

    def _register_expose(
        self, req: _Request, inner: RegisterExpose, slot: Slot
    ) -> InnerResponse | _Change:
        # Everything is checked inside apply (the pending record is durable state,
        # replicated like the rest): unknown, replaced, expired or replayed ids
        # are ProtocolStateError; a carried-over counter at the limit RecordExistsError.
        if slot is not None and slot.record is not None and is_exposed(slot, inner.registration_id):
            # Idempotent (the client lost RegisterExposeOk and retries): answer
            # again without a state change, so no new version is persisted. (A
            # pending record never has the live record's id: the HSM draws each
            # registration id afresh.)
            live = slot.record
            return RegisterExposeOk(live.generation, live.guess_limit, live.attempts_left)
        return _Change(
            ExposeRecord(req.account_id, inner.registration_id, req.now_ms), _answer_exposed
        )

    def _recover_start(self, req: _Request, inner: RecoverStart, _slot: Slot) -> _Change:
        KE1.from_bytes(inner.ke1)  # a malformed KE1 is refused before it costs an attempt
        session_id = draw(self._rng, SESSION_ID_SIZE)
        # Every KE1 goes through the same command, the same work and the same
        # durable write, whether or not a live record exists (_apply).
        answer = functools.partial(self._answer_ke1, req, inner.ke1, session_id)
        return _Change(CountAttempt(req.account_id), answer)

    def _answer_ke1(
        self, req: _Request, ke1: bytes, session_id: bytes, outcome: Outcome
    ) -> _OpensSession:
        """KE2 for a counted attempt (real record) or for an uncounted one (fake record)."""
        account = req.account_id
        expires_ms = req.now_ms + self._session_ttl_ms
        if isinstance(outcome, Counted):
            record = outcome.record
            ke2, login_state = server_login_start_bytes(
                self._opaque,
                self._config,
                record.opaque_record,
                credential_identifier(account, record.registration_id),
                ke1,
                rng=self._rng,
            )
            # The attempt's sequence number: the one a valid KE3 in this session forgives.
            attempt = record.attempts_started
            session = LoginSession(account, record.generation, attempt, login_state, expires_ms)
        else:
            # RFC 9807 section 10.9: a fake record, derived per account, so an
            # unknown, destroyed, deleted or pending-only account answers exactly
            # like a live one (a pending record is never checked against).
            ke2, login_state = server_login_start_bytes(
                self._opaque,
                self._config,
                None,
                credential_identifier(account, self._fake_registration_id(account)),
                ke1,
                rng=self._rng,
            )
            session = LoginSession(account, 0, 0, login_state, expires_ms)
        return _OpensSession(RecoverStartOk(session_id, ke2), session_id, session)

    def _recover_finish(
        self, req: _Request, inner: RecoverFinish, slot: Slot
    ) -> InnerResponse | _Change:
        account = req.account_id
        session = self._tables.take_session(account, inner.session_id, req.now_ms)
        try:
            session_key = server_login_finish(session.login_state, KE3.from_bytes(inner.ke3))
        except ClientAuthenticationError:
            if self._all_attempts_failed(session, slot):
                return _Change(DestroyRecord(account, session.generation), _answer_login_failed)
            raise
        if not session.live:
            # Unreachable in practice (nobody can complete a login on a fake record).
            raise ClientAuthenticationError("no record behind this session")
        if inner.action is FinishAction.DELETE:
            deleted = RecordDeleted(session.generation)
            return _Change(DeleteRecord(account, session.generation), lambda _: deleted)
        forgive = ForgiveAttempts(account, session.generation, session.attempt)
        return _Change(forgive, functools.partial(self._answer_release, req, session_key))

    def _answer_release(self, req: _Request, session_key: bytes, outcome: Outcome) -> KeyReleased:
        """The secret, sealed to this login and request, and the failed attempts to report."""
        forgiven = forgiven_of(outcome)
        record = forgiven.record
        sealed_secret = release.seal_release(session_key, req.request, record.secret, self._rng)
        return KeyReleased(record.generation, forgiven.failed_attempts, sealed_secret)

    def _recover_abort(
        self, req: _Request, inner: RecoverAbort, slot: Slot
    ) -> InnerResponse | _Change:
        session = self._tables.take_session(req.account_id, inner.session_id, req.now_ms)
        if self._all_attempts_failed(session, slot):
            return _Change(DestroyRecord(req.account_id, session.generation), _answer_aborted)
        return AbortOk()

    def _status(self, _req: _Request, _inner: StatusRequest, slot: Slot) -> InnerResponse:
        record = None if slot is None else slot.record
        if record is None:
            return StatusOk(
                exists=False, generation=0, guess_limit=0, attempts_left=0, failed_attempts=0
            )
        # Every attempt that counts against the limit has not succeeded (so far):
        # those since the KE1 of the last successful recovery.
        return StatusOk(
            exists=True,
            generation=record.generation,
            guess_limit=record.guess_limit,
            attempts_left=record.attempts_left,
            failed_attempts=record.attempts_used,
        )

    # --- housekeeping ---------------------------------------------------------------

    def _housekeeping_change(self, slot: Slot, now_ms: int) -> _Change | None:
        """Zeroize an expired pending record, or destroy a locked record nobody can rescue."""
        if slot is None:
            return None
        if slot.pending is not None and pending_expired(slot.pending, now_ms):
            return _Change(ExpirePending(slot.account_id, now_ms), None)
        record = slot.record
        if (
            record is not None
            and record.attempts_left == 0
            and not self._session_may_succeed(slot.account_id, record.generation)
        ):
            return _Change(DestroyRecord(slot.account_id, record.generation), None)
        return None

    def _watch(self, account: bytes, slot: Slot) -> None:
        """Keep housekeeping's watch lists in step with a slot that is now durable."""
        record = None if slot is None else slot.record
        if record is not None and record.attempts_left == 0:
            if account in self._locked or len(self._locked) < MAX_WATCHED:
                self._locked[account] = record.generation
        else:
            self._locked.pop(account, None)
        pending = None if slot is None else slot.pending
        if pending is not None:
            if account in self._pending or len(self._pending) < MAX_WATCHED:
                self._pending[account] = pending.created_ms + PENDING_RECORD_TTL_MS
        else:
            self._pending.pop(account, None)

    # --- helpers ------------------------------------------------------------------

    def _fake_registration_id(self, account: bytes) -> bytes:
        digest = hmac.digest(self._secrets.fake_key, FAKE_ID_LABEL + account, hashlib.sha256)
        return digest[:REGISTRATION_ID_SIZE]

    def _session_may_succeed(self, account: bytes, generation: int) -> bool:
        """Whether a login on that record may still prove the password on this HSM.

        An open session, or one the open batch will open once it is durable (a
        KE1 earlier in the same batch): a record is never destroyed under it.
        """
        if self._tables.has_live_session(account, generation):
            return True
        batch = self._batch
        return batch is not None and any(
            held.opens is not None
            and held.opens.session.live
            and held.opens.session.account_id == account
            and held.opens.session.generation == generation
            for held in batch.held.values()
        )

    def _all_attempts_failed(self, failed: LoginSession, slot: Slot) -> bool:
        """Whether ``failed`` (already closed) was the record's last hope.

        True when its record is at the guess limit and no other open session on
        this HSM could still prove the password for it: every allowed check was
        answered and none succeeded, so the record is destroyed now.
        """
        if not failed.live:
            return False
        record = None if slot is None else slot.record
        return (
            record is not None
            and record.generation == failed.generation
            and record.attempts_left == 0
            and not self._session_may_succeed(failed.account_id, failed.generation)
        )


def _stored(entry: _Entry) -> AccountSlot:
    """The slot a changed entry stores (a command never turns a slot back into nothing)."""
    if entry.slot is None:
        raise ValueError("a changed record has no slot")
    return entry.slot


# --- answers that need nothing but the outcome ---------------------------------------


def _answer_installed(outcome: Outcome) -> RegisterFinishOk:
    slot = applied_slot(outcome)
    if slot.pending is None:
        raise ValueError("InstallRecord left no pending record")  # apply guarantees it
    # What the record would have left if exposed now (the counter carries over).
    left = max(0, slot.pending.guess_limit - carried_attempts(slot))
    return RegisterFinishOk(slot.pending.generation, slot.pending.guess_limit, left)


def _answer_exposed(outcome: Outcome) -> RegisterExposeOk:
    live = live_record_of(outcome)
    return RegisterExposeOk(live.generation, live.guess_limit, live.attempts_left)


def _answer_login_failed(_outcome: Outcome) -> VaultFailure:
    return VaultFailure(ErrorCode.LOGIN_FAILED)


def _answer_aborted(_outcome: Outcome) -> AbortOk:
    return AbortOk()


# --- dispatch ----------------------------------------------------------------------

_Handler = Callable[[HsmApp, _Request, Any, Slot], InnerResponse | _Change]
"""``handler(app, request, inner, slot)``: answer from the slot, or a :class:`_Change`."""

_HANDLERS: Mapping[type, _Handler] = MappingProxyType(
    {
        RegisterStart: HsmApp._register_start,
        RegisterFinish: HsmApp._register_finish,
        RegisterExpose: HsmApp._register_expose,
        RecoverStart: HsmApp._recover_start,
        RecoverFinish: HsmApp._recover_finish,
        RecoverAbort: HsmApp._recover_abort,
        StatusRequest: HsmApp._status,
    }
)
"""The handler of each inner request type: one entry per type in ``INNER_REQUESTS``."""


__all__ = [
    "MAX_BATCH_REQUESTS",
    "REGISTRATION_TTL_MS",
    "SESSION_TTL_MS",
    "BatchEnd",
    "HsmApp",
    "Persist",
    "credential_identifier",
]
