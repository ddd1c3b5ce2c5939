"""The HSM application: request bytes in, effects (response bytes, sealed state) out.

Sans-IO. :class:`HsmApp` holds the fleet secrets (OPAQUE :class:`ServerSecrets`,
the channel private key) and the vault state, and talks to its host through
exactly two calls::

    effects = app.handle(request_bytes, now_ms)
    if effects.persist is not None:          # a state change: write, then ack
        store.write(effects.persist.blob)    # durable (fsync + rename)
        response = app.persisted(effects.persist.version)
    else:
        response = effects.response

plus ``app.tick(now_ms)`` every few seconds for housekeeping (same persist/ack
protocol; it destroys records whose last allowed attempt can no longer succeed).

Requests are dispatched by the type of the opened inner message through one
table, :data:`_HANDLERS` (docs/protocol.md, "How to add an HSM request type").
A handler either answers at once (a read, or a change to the volatile tables)
or returns a :class:`_Change`: one typed command (:mod:`bkv.hsm.state`) and
how to answer from its outcome. The command is applied to a *staged* copy of
the state, and the new state is sealed into ``effects.persist.blob``. The
response is withheld inside the HSM until the host acknowledges that the blob
is durable; only :meth:`HsmApp.persisted` releases it. So a KE2 never leaves
before the attempt it answers is counted on disk (docs/threat-model.md, "The
guess-limit argument"). If the write fails the host calls
:meth:`HsmApp.abandon` and the staged state and response are dropped: nothing
was released, and the in-memory state never runs ahead of the disk.

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

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bkv.crypto import channel
from bkv.crypto.interfaces import Sealer
from bkv.crypto.ksf import Identity
from bkv.crypto.opaque import (
    KE1,
    KE3,
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
    StorageError,
    VaultError,
    VaultFullError,
)
from bkv.hsm.public_keys import FleetPublicKeys
from bkv.hsm.sealing import UNBOUND_COUNTER_ID, open_snapshot, seal_snapshot
from bkv.hsm.sessions import (
    REGISTRATION_TTL_MS,
    SESSION_TTL_MS,
    LoginSession,
    StartedRegistration,
    VolatileTables,
)
from bkv.hsm.state import (
    Command,
    CommandEnvelope,
    CountAttempt,
    Counted,
    DeleteRecord,
    DestroyRecord,
    ExpirePending,
    ExposeRecord,
    ForgiveAttempts,
    HsmSecrets,
    InstallRecord,
    Outcome,
    Snapshot,
    VaultState,
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
from bkv.wire import decode, decode_any, encode

CREDENTIAL_LABEL = b"bkv.hsm.credential.v1"
_MAX_NOW_MS = 2**64 - 1  # commands carry the clock as a u64
FAKE_ID_LABEL = b"bkv.hsm.fake-registration-id.v1"


def credential_identifier(account_id: bytes, registration_id: bytes) -> bytes:
    """RFC 9807 credential_identifier of a record: account and the record's registration id.

    The OPRF key is derived from it (section 4.1.1, DeriveKeyPair over the
    oprf_seed and this identifier), so each registration has its own OPRF key.
    """
    return CREDENTIAL_LABEL + len(account_id).to_bytes(1, "big") + account_id + registration_id


@dataclass(frozen=True)
class Persist:
    """Effect: write ``blob`` durably (atomically), then call ``persisted(version)``."""

    version: int
    blob: bytes


@dataclass(frozen=True)
class Effects:
    """What the host must do after :meth:`HsmApp.handle`.

    At most one of ``response`` (send it) and ``persist`` (store, then ack) is set;
    :meth:`HsmApp.handle` always sets one, :meth:`HsmApp.tick` may set neither.
    ``commands`` are the wire-encoded :class:`~bkv.hsm.state.CommandEnvelope` s applied
    to the staged state; the envelope's index is the state version it produced
    (one command per version), the unit a replicated fleet would agree on.
    """

    response: bytes | None = None
    persist: Persist | None = None
    commands: tuple[bytes, ...] = ()


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


@dataclass(frozen=True)
class _Staged:
    version: int
    vault: VaultState
    blob: bytes
    response: bytes | None = field(repr=False)
    opens: _OpensSession | None  # the session to open once the state is durable
    account_id: bytes  # whose slot the command changed


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


class HsmApp:
    """The vault inside one (emulated) HSM. Not thread-safe: the adapter serializes calls."""

    def __init__(
        self,
        snapshot: Snapshot,
        blob: bytes,
        sealer: Sealer,
        *,
        rng: Rng = default_rng,
        session_ttl_ms: int = SESSION_TTL_MS,
        counter_id: bytes = UNBOUND_COUNTER_ID,
    ) -> None:
        self._secrets = snapshot.secrets
        self._opaque = ServerSecrets.from_bytes(snapshot.secrets.opaque)
        expected_public = channel.channel_public_key(snapshot.secrets.channel_private_key)
        if not hmac.compare_digest(expected_public, snapshot.secrets.channel_public_key):
            raise StorageError("sealed state: channel public key does not match its private key")
        self._vault = snapshot.vault
        self._version = snapshot.version
        self._blob = blob
        self._sealer = sealer
        self._counter_id = counter_id  # bound into every sealed state's AAD
        self._rng = rng
        self._session_ttl_ms = session_ttl_ms
        # The server never runs the KSF (RFC 9807 section 6): Identity says so.
        self._config = Config(context=OPAQUE_CONTEXT, ksf=Identity())
        self._tables = VolatileTables()
        self._staged: _Staged | None = None
        # Accounts whose record used its last attempt (tick() destroys them once
        # no session can prove the password any more).
        self._locked: set[bytes] = {
            slot.account_id
            for slot in self._vault.accounts
            if slot.record is not None and slot.record.attempts_left == 0
        }
        # Accounts with a pending record (tick() zeroizes it once it expired).
        self._with_pending: set[bytes] = {
            slot.account_id for slot in self._vault.accounts if slot.pending is not None
        }

    def __repr__(self) -> str:
        return f"HsmApp(fleet_id={self.fleet_id!r}, version={self._version})"

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
        """Generate fleet secrets and an empty vault at version 1 (``sealed_state()`` to store).

        ``counter_id``: the id of the NV counter that guards this HSM's states.
        """
        opaque = ServerSecrets.generate(rng)
        channel_private, channel_public = channel.generate_channel_key_pair(rng)
        secrets = HsmSecrets(
            opaque=opaque.to_bytes(),
            channel_private_key=channel_private,
            channel_public_key=channel_public,
            fake_key=draw(rng, 32),
        )
        snapshot = Snapshot(1, secrets, VaultState(fleet_id, max_guess_limit))
        blob = seal_snapshot(sealer, snapshot, counter_id)
        return cls(snapshot, blob, sealer, rng=rng, counter_id=counter_id)

    @classmethod
    def load(
        cls,
        blob: bytes,
        sealer: Sealer,
        *,
        fleet_id: str | None = None,
        rng: Rng = default_rng,
        counter_id: bytes = UNBOUND_COUNTER_ID,
    ) -> HsmApp:
        """Open a sealed state; raises :class:`SealingError` / :class:`StorageError`.

        A blob sealed under another NV counter's id is a :class:`SealingError`.
        """
        snapshot = open_snapshot(sealer, blob, counter_id)
        if fleet_id is not None and snapshot.vault.fleet_id != fleet_id:
            raise StorageError("sealed state belongs to another fleet")
        return cls(snapshot, blob, sealer, rng=rng, counter_id=counter_id)

    @property
    def fleet_id(self) -> str:
        """The fleet this HSM serves."""
        return self._vault.fleet_id

    @property
    def version(self) -> int:
        """Version of the last durable (acknowledged) state."""
        return self._version

    @property
    def vault(self) -> VaultState:
        """The last durable vault state (holds secrets: never send it anywhere)."""
        return self._vault

    @property
    def channel_public_key(self) -> bytes:
        """The fleet's HPKE (X25519) channel public key: clients seal requests to it."""
        return self._secrets.channel_public_key

    @property
    def opaque_public_key(self) -> bytes:
        """The fleet's OPAQUE AKE public key (ristretto255)."""
        return self._opaque.server_public_key

    def sealed_state(self) -> bytes:
        """The sealed blob of the last durable state."""
        return self._blob

    def public_keys(self) -> FleetPublicKeys:
        """What this HSM publishes (:func:`bkv.hsm.public_keys.render_public_keys` renders it)."""
        return FleetPublicKeys(
            fleet_id=self.fleet_id,
            channel_public_key=self.channel_public_key,
            opaque_public_key=self.opaque_public_key,
            max_guess_limit=self._vault.max_guess_limit,
        )

    # --- the message interface ----------------------------------------------------

    def handle(self, request: bytes, now_ms: int) -> Effects:
        """Process one request. State changes come back as ``Effects.persist`` to acknowledge."""
        self._check_ready(now_ms)
        self._tables.expire(now_ms)
        opened = self._open(request)
        if isinstance(opened, HsmRejected):
            return Effects(response=encode(opened))
        outer, channel_state, plaintext = opened
        try:
            inner = decode_any(plaintext, INNER_REQUESTS)
            if KIND_OF_REQUEST[type(inner)] != outer.kind:
                raise _RefusedError(ErrorCode.KIND_MISMATCH)
            handler = _HANDLERS[type(inner)]  # INNER_REQUESTS and the table agree (a test)
            result = handler(self, _Request(outer.account_id, request, now_ms), inner)
            if isinstance(result, _Change):
                return self._stage(result, channel_state)
            answer: InnerResponse = result
        except _RefusedError as refused:
            answer = VaultFailure(refused.code)
        except (CodecError, CryptoError, VaultError) as exc:
            answer = VaultFailure(_code_for(exc))
        return Effects(response=self._seal_answer(channel_state, answer))

    def persisted(self, version: int) -> bytes | None:
        """The host wrote the blob of ``version`` durably: commit and release the response.

        Returns ``None`` for a housekeeping change (:meth:`tick`), which answers no one.
        """
        staged = self._take_staged(version)
        self._vault, self._version, self._blob = staged.vault, staged.version, staged.blob
        self._track_locked(staged.account_id)
        if staged.opens is not None:
            self._tables.open_session(staged.opens.session_id, staged.opens.session)
        return staged.response

    def tick(self, now_ms: int) -> Effects:
        """Housekeeping, for the adapter to call every few seconds (and once after loading).

        Expires sessions and pending registrations, zeroizes one pending record
        past :data:`~bkv.hsm.state.PENDING_RECORD_TTL_MS`, or destroys one record that
        used its last attempt and has no open session left on this HSM to prove
        the password with (the client vanished, the session expired, or the HSM
        restarted): such a record can never answer a check again, so its secret
        goes now rather than at the next KE1. Returns an empty :class:`Effects`
        when there is nothing to do, else a persist to acknowledge with
        :meth:`persisted` (which then returns ``None``).
        """
        self._check_ready(now_ms)
        self._tables.expire(now_ms)
        change = self._expired_pending_change(now_ms) or self._locked_record_change()
        return Effects() if change is None else self._stage(change, None)

    def _check_ready(self, now_ms: int) -> None:
        """Caller misuse (``ValueError``): a persist still unacknowledged, or a bad clock value.

        Commands carry the clock as a u64; one that does not fit is refused here,
        before any change is computed from it.
        """
        if self._staged is not None:
            raise ValueError("a persist is outstanding: call persisted() or abandon() first")
        if type(now_ms) is not int or not 0 <= now_ms <= _MAX_NOW_MS:
            raise ValueError("now_ms must be an int in 0..2**64-1")

    def abandon(self, version: int) -> None:
        """The host could not persist ``version``: drop the staged state and its response."""
        self._take_staged(version)

    def _take_staged(self, version: int) -> _Staged:
        staged = self._staged
        if staged is None or staged.version != version:
            raise ValueError("no staged state with that version")
        self._staged = None
        return staged

    # --- opening and staging -----------------------------------------------------

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
                self._secrets.channel_private_key, outer.fleet_id.encode("utf-8"), outer.sealed, aad
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

    def _stage(self, change: _Change, channel_state: channel.ServerChannelState | None) -> Effects:
        try:
            vault, outcome = apply(self._vault, change.command)
            reply = None if change.answer is None else change.answer(outcome)
        except (CodecError, CryptoError, VaultError) as exc:
            if channel_state is None:
                raise
            return Effects(response=self._seal_answer(channel_state, VaultFailure(_code_for(exc))))
        opens = reply if isinstance(reply, _OpensSession) else None
        answer = reply.response if isinstance(reply, _OpensSession) else reply
        version = self._version + 1
        snapshot = Snapshot(version, self._secrets, vault)
        blob = seal_snapshot(self._sealer, snapshot, self._counter_id)
        response = None
        if channel_state is not None and answer is not None:
            response = self._seal_answer(channel_state, answer)
        logged = encode(CommandEnvelope(version, change.command))  # nothing staged if it raises
        self._staged = _Staged(
            version=version,
            vault=vault,
            blob=blob,
            response=response,
            opens=opens,
            account_id=change.command.account_id,
        )
        return Effects(persist=Persist(version, blob), commands=(logged,))

    # --- request handlers (dispatched by _HANDLERS) -----------------------------------

    def _register_start(self, req: _Request, inner: RegisterStart) -> InnerResponse:
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
        slot = self._vault.slot(account)
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

    def _register_finish(self, req: _Request, inner: RegisterFinish) -> _Change:
        account = req.account_id
        started = self._tables.registration(account, inner.registration_id)
        if not 1 <= inner.guess_limit <= self._vault.max_guess_limit:
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

    def _register_expose(self, req: _Request, inner: RegisterExpose) -> InnerResponse | _Change:
        # Everything is checked inside apply (the pending record is durable state,
        # replicated like the rest): unknown, replaced, expired or replayed ids
        # are ProtocolStateError; a carried-over counter at the limit RecordExistsError.
        slot = self._vault.slot(req.account_id)
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

    def _recover_start(self, req: _Request, inner: RecoverStart) -> _Change:
        KE1.from_bytes(inner.ke1)  # a malformed KE1 is refused before it costs an attempt
        session_id = draw(self._rng, SESSION_ID_SIZE)
        # Every KE1 goes through the same command and the same persist, whether
        # or not a live record exists, so the host cannot tell them apart by
        # the HSM's behaviour either.
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

    def _recover_finish(self, req: _Request, inner: RecoverFinish) -> InnerResponse | _Change:
        account = req.account_id
        session = self._tables.take_session(account, inner.session_id, req.now_ms)
        try:
            session_key = server_login_finish(session.login_state, KE3.from_bytes(inner.ke3))
        except ClientAuthenticationError:
            if self._all_attempts_failed(session):
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

    def _recover_abort(self, req: _Request, inner: RecoverAbort) -> InnerResponse | _Change:
        session = self._tables.take_session(req.account_id, inner.session_id, req.now_ms)
        if self._all_attempts_failed(session):
            return _Change(DestroyRecord(req.account_id, session.generation), _answer_aborted)
        return AbortOk()

    def _status(self, req: _Request, _inner: StatusRequest) -> InnerResponse:
        record = self._vault.record(req.account_id)
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

    def _expired_pending_change(self, now_ms: int) -> _Change | None:
        """Zeroize the first pending record past its expiry: it can never go live."""
        for account in sorted(self._with_pending):
            slot = self._vault.slot(account)
            if slot is None or slot.pending is None:
                self._with_pending.discard(account)
            elif pending_expired(slot.pending, now_ms):
                return _Change(ExpirePending(account, now_ms), None)
        return None

    def _locked_record_change(self) -> _Change | None:
        """Destroy the first record at its limit that no open session can still rescue."""
        for account in sorted(self._locked):
            record = self._vault.record(account)
            if record is None or record.attempts_left > 0:
                self._locked.discard(account)
            elif not self._tables.has_live_session(account, record.generation):
                return _Change(DestroyRecord(account, record.generation), None)
        return None

    # --- helpers ------------------------------------------------------------------

    def _fake_registration_id(self, account: bytes) -> bytes:
        digest = hmac.digest(self._secrets.fake_key, FAKE_ID_LABEL + account, hashlib.sha256)
        return digest[:REGISTRATION_ID_SIZE]

    def _track_locked(self, account: bytes) -> None:
        slot = self._vault.slot(account)
        record = None if slot is None else slot.record
        if record is not None and record.attempts_left == 0:
            self._locked.add(account)
        else:
            self._locked.discard(account)
        if slot is not None and slot.pending is not None:
            self._with_pending.add(account)
        else:
            self._with_pending.discard(account)

    def _all_attempts_failed(self, failed: LoginSession) -> bool:
        """Whether ``failed`` (already closed) was the record's last hope.

        True when its record is at the guess limit and no other open session on
        this HSM could still prove the password for it: every allowed check was
        answered and none succeeded, so the record is destroyed now.
        """
        if not failed.live:
            return False
        record = self._vault.record(failed.account_id)
        return (
            record is not None
            and record.generation == failed.generation
            and record.attempts_left == 0
            and not self._tables.has_live_session(failed.account_id, failed.generation)
        )


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

_Handler = Callable[[HsmApp, _Request, Any], InnerResponse | _Change]
"""``handler(app, request, inner)``: answer now, or a :class:`_Change` to persist first."""

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
    "REGISTRATION_TTL_MS",
    "SESSION_TTL_MS",
    "Effects",
    "HsmApp",
    "Persist",
    "credential_identifier",
]
