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

A request that changes durable state is turned into one typed command
(:mod:`bkv.hsm.state`), applied to a *staged* copy of the state, and the new
state is sealed into ``effects.persist.blob``. The response is withheld inside
the HSM until the host acknowledges that the blob is durable; only
:meth:`HsmApp.persisted` releases it. So a KE2 never leaves before the attempt
it answers is counted on disk (issue 3: "an attempt is counted, durably, before
the vault answers it"). If the write fails the host calls :meth:`HsmApp.abandon`
and the staged state and response are dropped: nothing was released, and the
in-memory state never runs ahead of the disk.

Volatile, per-HSM state (not replicated, lost on restart, always safe to lose):
open login sessions (``ServerLoginState`` between KE2 and KE3, single-use,
random 128-bit ids) and pending registrations (single-use, random 256-bit ids).

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

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from bkv.crypto import channel
from bkv.crypto.interfaces import Sealer
from bkv.crypto.ksf import Identity
from bkv.crypto.opaque import (
    KE1,
    KE3,
    Config,
    RegistrationRecord,
    RegistrationRequest,
    ServerLoginState,
    ServerSecrets,
    server_login_finish,
    server_login_start,
    server_registration_response,
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
from bkv.hsm.sealing import UNBOUND_COUNTER_ID, open_snapshot, seal_snapshot
from bkv.hsm.state import (
    Command,
    CommandEnvelope,
    CountAttempt,
    Counted,
    DeleteRecord,
    DestroyRecord,
    ExpirePending,
    ExposeRecord,
    HsmSecrets,
    InstallRecord,
    Outcome,
    ResetAttempts,
    Snapshot,
    VaultState,
    applied_slot,
    apply,
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
from bkv.wire import canonical_json, decode, decode_any, encode

SESSION_TTL_MS = 5 * 60 * 1000
"""An open login session (KE2 sent, KE3 awaited) lives at most this long."""

REGISTRATION_TTL_MS = 10 * 60 * 1000
"""A pending registration (RegisterStart answered) lives at most this long."""

MAX_SESSIONS = 4096
"""Open sessions one HSM keeps; the oldest is dropped first (its attempt stays counted)."""

MAX_PENDING_REGISTRATIONS = 4096

CREDENTIAL_LABEL = b"bkv.hsm.credential.v1"
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
    (one command per version), the unit the fleet issue replicates.
    """

    response: bytes | None = None
    persist: Persist | None = None
    commands: tuple[bytes, ...] = ()


@dataclass
class _Session:
    account_id: bytes
    generation: int  # of the record the attempt was counted on; 0 for a fake record
    login_state: ServerLoginState = field(repr=False)
    live: bool  # False: a fake-record session, which no KE3 can complete
    expires_ms: int


@dataclass(frozen=True)
class _PendingRegistration:
    registration_id: bytes
    generation: int  # the slot's generation when started (InstallRecord checks it)
    expires_ms: int


@dataclass(frozen=True)
class _Change:
    """A request that changes durable state: the command, then how to answer."""

    command: Command
    answer: Callable[[Outcome], InnerResponse] | None  # None: housekeeping, answers no one
    on_commit: Callable[[], None] | None = None


@dataclass(frozen=True)
class _Staged:
    version: int
    vault: VaultState
    blob: bytes
    response: bytes | None = field(repr=False)
    on_commit: Callable[[], None] | None
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
        self._sessions: dict[bytes, _Session] = {}
        self._pending: dict[bytes, _PendingRegistration] = {}
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

    def public_keys(self) -> dict[str, object]:
        """The fleet's public keys by role, in the fleet-key artifact's key format.

        Roles and algorithms are those of :mod:`bkv.protocol.artifact`
        (``opaque_ake``/``ristretto255``, ``channel``/``x25519``), sorted by role,
        so the operator can copy ``keys`` into the artifact unchanged.
        """
        return {
            "fleet_id": self.fleet_id,
            "keys": [
                {
                    "algorithm": "x25519",
                    "public_key": self.channel_public_key.hex(),
                    "role": "channel",
                },
                {
                    "algorithm": "ristretto255",
                    "public_key": self.opaque_public_key.hex(),
                    "role": "opaque_ake",
                },
            ],
            "policy": {"guess_limit": self._vault.max_guess_limit},
        }

    def public_keys_json(self) -> bytes:
        """:meth:`public_keys` as canonical JSON (:mod:`bkv.wire.canonical_json`)."""
        return canonical_json.dumps(self.public_keys())

    # --- the message interface ----------------------------------------------------

    def handle(self, request: bytes, now_ms: int) -> Effects:
        """Process one request. State changes come back as ``Effects.persist`` to acknowledge."""
        if self._staged is not None:
            raise ValueError("a persist is outstanding: call persisted() or abandon() first")
        if type(now_ms) is not int or now_ms < 0:
            raise ValueError("now_ms must be a non-negative int")
        self._expire(now_ms)
        opened = self._open(request)
        if isinstance(opened, HsmRejected):
            return Effects(response=encode(opened))
        outer, channel_state, plaintext = opened
        try:
            inner = decode_any(plaintext, INNER_REQUESTS)
            if KIND_OF_REQUEST[type(inner)] != outer.kind:
                raise _RefusedError(ErrorCode.KIND_MISMATCH)
            result = self._dispatch(outer, request, inner, now_ms)
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
        if staged.on_commit is not None:
            staged.on_commit()
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
        if self._staged is not None:
            raise ValueError("a persist is outstanding: call persisted() or abandon() first")
        self._expire(now_ms)
        for account in sorted(self._with_pending):
            slot = self._vault.slot(account)
            if slot is None or slot.pending is None:
                self._with_pending.discard(account)
                continue
            if pending_expired(slot.pending, now_ms):
                # An expired pending record can never go live: its secret goes now.
                return self._stage(_Change(ExpirePending(account, now_ms), None), None)
        for account in sorted(self._locked):
            record = self._vault.record(account)
            if record is None or record.attempts_left > 0:
                self._locked.discard(account)
                continue
            if not self._has_live_session(account, record.generation):
                return self._stage(_Change(DestroyRecord(account, record.generation), None), None)
        return Effects()

    def abandon(self, version: int) -> None:
        """The host could not persist ``version``: drop the staged state and its response."""
        self._take_staged(version)

    def _take_staged(self, version: int) -> _Staged:
        staged = self._staged
        if staged is None or staged.version != version:
            raise ValueError("no staged state with that version")
        self._staged = None
        return staged

    # --- opening ---------------------------------------------------------------

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
            answer = None if change.answer is None else change.answer(outcome)
        except (CodecError, CryptoError, VaultError) as exc:
            if channel_state is None:
                raise
            return Effects(response=self._seal_answer(channel_state, VaultFailure(_code_for(exc))))
        version = self._version + 1
        snapshot = Snapshot(version, self._secrets, vault)
        blob = seal_snapshot(self._sealer, snapshot, self._counter_id)
        response = None
        if channel_state is not None and answer is not None:
            response = self._seal_answer(channel_state, answer)
        self._staged = _Staged(
            version=version,
            vault=vault,
            blob=blob,
            response=response,
            on_commit=change.on_commit,
            account_id=change.command.account_id,
        )
        logged = encode(CommandEnvelope(version, change.command))
        return Effects(persist=Persist(version, blob), commands=(logged,))

    # --- requests ----------------------------------------------------------------

    def _dispatch(
        self, outer: HsmRequest, request: bytes, inner: object, now_ms: int
    ) -> InnerResponse | _Change:
        account = outer.account_id
        if isinstance(inner, RegisterStart):
            return self._register_start(account, inner, now_ms)
        if isinstance(inner, RegisterFinish):
            return self._register_finish(account, inner, now_ms)
        if isinstance(inner, RegisterExpose):
            return self._register_expose(account, inner, now_ms)
        if isinstance(inner, RecoverStart):
            return self._recover_start(account, inner, now_ms)
        if isinstance(inner, RecoverFinish):
            return self._recover_finish(account, request, inner, now_ms)
        if isinstance(inner, RecoverAbort):
            return self._recover_abort(account, inner, now_ms)
        if isinstance(inner, StatusRequest):
            return self._status(account)
        raise TypeError(f"unhandled request {type(inner).__name__}")  # registry and this agree

    def _register_start(self, account: bytes, inner: RegisterStart, now_ms: int) -> InnerResponse:
        request = RegistrationRequest.from_bytes(inner.registration_request)
        registration_id = draw(self._rng, REGISTRATION_ID_SIZE)
        # A fresh OPRF key per registration: this evaluation can never help
        # guess the password of any record that exists or will exist.
        response = server_registration_response(
            self._opaque, request, credential_identifier(account, registration_id)
        )
        slot = self._vault.slot(account)
        live_generation = 0 if slot is None or slot.record is None else slot.record.generation
        if inner.replaces_generation != live_generation:
            # The client means to replace a record that is not the live one: it was
            # destroyed or deleted (or replaced) since the client last looked, maybe
            # while the host held this request back. Starting anyway would give the
            # same password a record with a fresh counter behind the client's back.
            raise ProtocolStateError("the live record is not the one this registration replaces")
        self._pending.pop(account, None)
        if len(self._pending) >= MAX_PENDING_REGISTRATIONS:
            self._pending.pop(next(iter(self._pending)))
        self._pending[account] = _PendingRegistration(
            registration_id, 0 if slot is None else slot.generation, now_ms + REGISTRATION_TTL_MS
        )
        return RegisterStartOk(response.to_bytes(), registration_id)

    def _register_finish(self, account: bytes, inner: RegisterFinish, now_ms: int) -> _Change:
        pending = self._pending.get(account)
        if pending is None or not hmac.compare_digest(
            pending.registration_id, inner.registration_id
        ):
            raise ProtocolStateError("no pending registration with this id")
        if not 1 <= inner.guess_limit <= self._vault.max_guess_limit:
            raise _RefusedError(ErrorCode.INVALID_POLICY)
        record = RegistrationRecord.from_bytes(inner.registration_record)
        del self._pending[account]  # single-use, whatever the outcome from here on
        command = InstallRecord(
            account_id=account,
            expected_generation=pending.generation,
            registration_id=pending.registration_id,
            opaque_record=record.to_bytes(),
            secret=inner.secret,
            guess_limit=inner.guess_limit,
            now_ms=now_ms,
        )

        def answer(outcome: Outcome) -> InnerResponse:
            slot = applied_slot(outcome)
            if slot.pending is None:
                raise ValueError("InstallRecord left no pending record")  # apply guarantees it
            # What the record would have left if exposed now (the counter carries over).
            carried = 0 if slot.record is None else slot.record.attempts_used
            left = max(0, slot.pending.guess_limit - carried)
            return RegisterFinishOk(slot.pending.generation, slot.pending.guess_limit, left)

        return _Change(command, answer)

    def _register_expose(
        self, account: bytes, inner: RegisterExpose, now_ms: int
    ) -> InnerResponse | _Change:
        # Everything is checked inside apply (the pending record is durable state,
        # replicated like the rest): unknown, replaced, expired or replayed ids
        # are ProtocolStateError; a carried-over counter at the limit RecordExistsError.
        slot = self._vault.slot(account)
        live = None if slot is None else slot.record
        pending = None if slot is None else slot.pending
        if (
            live is not None
            and is_exposed(slot, inner.registration_id)
            and (pending is None or pending.registration_id != inner.registration_id)
        ):
            # Idempotent (the client lost RegisterExposeOk and retries): answer
            # again without a state change, so no new version is persisted.
            return RegisterExposeOk(live.generation, live.guess_limit, live.attempts_left)

        def answer(outcome: Outcome) -> InnerResponse:
            live = live_record_of(outcome)
            return RegisterExposeOk(live.generation, live.guess_limit, live.attempts_left)

        return _Change(ExposeRecord(account, inner.registration_id, now_ms), answer)

    def _recover_start(self, account: bytes, inner: RecoverStart, now_ms: int) -> _Change:
        ke1 = KE1.from_bytes(inner.ke1)  # a malformed KE1 is refused before it costs anything
        session_id = draw(self._rng, SESSION_ID_SIZE)
        sessions = self._sessions
        staged_sessions: list[Callable[[], None]] = []

        def answer(outcome: Outcome) -> InnerResponse:
            if isinstance(outcome, Counted):
                record = outcome.record
                ke2, login_state = server_login_start(
                    self._opaque,
                    self._config,
                    RegistrationRecord.from_bytes(record.opaque_record),
                    credential_identifier(account, record.registration_id),
                    ke1,
                    rng=self._rng,
                )
                session = _Session(
                    account_id=account,
                    generation=record.generation,
                    login_state=login_state,
                    live=True,
                    expires_ms=now_ms + self._session_ttl_ms,
                )
            else:
                # RFC 9807 section 10.9: a fake record, derived per account, so an
                # unknown, destroyed, deleted or pending-only account answers exactly
                # like a live one (a pending record is never checked against).
                ke2, login_state = server_login_start(
                    self._opaque,
                    self._config,
                    None,
                    credential_identifier(account, self._fake_registration_id(account)),
                    ke1,
                    rng=self._rng,
                )
                session = _Session(account, 0, login_state, False, now_ms + self._session_ttl_ms)

            def open_session() -> None:
                if len(sessions) >= MAX_SESSIONS:
                    sessions.pop(next(iter(sessions)))
                sessions[session_id] = session

            staged_sessions.append(open_session)
            return RecoverStartOk(session_id, ke2.to_bytes())

        def on_commit() -> None:
            for open_session in staged_sessions:
                open_session()

        # Every KE1 goes through the same command and the same persist, whether
        # or not a live record exists, so the host cannot tell them apart by
        # the HSM's behaviour either.
        return _Change(CountAttempt(account), answer, on_commit)

    def _take_session(self, account: bytes, session_id: bytes, now_ms: int) -> _Session:
        # Look up and check first: a request naming another account's session id
        # must not close (destroy) that account's session.
        session = self._sessions.get(session_id)
        if session is None or session.account_id != account or session.expires_ms <= now_ms:
            raise ProtocolStateError("no open session with this id for this account")
        del self._sessions[session_id]  # single-use: gone from here on, whatever the outcome
        return session

    def _recover_finish(
        self, account: bytes, request: bytes, inner: RecoverFinish, now_ms: int
    ) -> InnerResponse | _Change:
        session = self._take_session(account, inner.session_id, now_ms)
        try:
            session_key = server_login_finish(session.login_state, KE3.from_bytes(inner.ke3))
        except ClientAuthenticationError:
            if self._all_attempts_failed(session):
                return _Change(
                    DestroyRecord(account, session.generation),
                    lambda _outcome: VaultFailure(ErrorCode.LOGIN_FAILED),
                )
            raise
        if not session.live:
            # Unreachable in practice (nobody can complete a login on a fake record).
            raise ClientAuthenticationError("no record behind this session")
        if inner.action is FinishAction.DELETE:
            return _Change(
                DeleteRecord(account, session.generation),
                lambda _outcome: RecordDeleted(session.generation),
            )

        def answer(outcome: Outcome) -> InnerResponse:
            record = live_record_of(outcome)
            sealed_secret = release.seal_release(session_key, request, record.secret, self._rng)
            return KeyReleased(record.generation, max(record.attempts_used - 1, 0), sealed_secret)

        return _Change(ResetAttempts(account, session.generation), answer)

    def _recover_abort(
        self, account: bytes, inner: RecoverAbort, now_ms: int
    ) -> InnerResponse | _Change:
        session = self._take_session(account, inner.session_id, now_ms)
        if self._all_attempts_failed(session):
            return _Change(DestroyRecord(account, session.generation), lambda _outcome: AbortOk())
        return AbortOk()

    def _status(self, account: bytes) -> InnerResponse:
        record = self._vault.record(account)
        if record is None:
            return StatusOk(
                exists=False, generation=0, guess_limit=0, attempts_left=0, failed_attempts=0
            )
        return StatusOk(
            True,
            record.generation,
            record.guess_limit,
            record.attempts_left,
            record.attempts_used,
        )

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

    def _all_attempts_failed(self, failed: _Session) -> bool:
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
            and not self._has_live_session(failed.account_id, failed.generation)
        )

    def _has_live_session(self, account: bytes, generation: int) -> bool:
        return any(
            s.live and s.account_id == account and s.generation == generation
            for s in self._sessions.values()
        )

    def _expire(self, now_ms: int) -> None:
        for session_id in [k for k, s in self._sessions.items() if s.expires_ms <= now_ms]:
            del self._sessions[session_id]
        for account in [k for k, p in self._pending.items() if p.expires_ms <= now_ms]:
            del self._pending[account]


__all__ = ["Effects", "HsmApp", "Persist", "credential_identifier"]
