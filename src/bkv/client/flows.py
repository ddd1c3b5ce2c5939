"""The vault's operations as sans-IO state machines: what to send next, what an answer means.

Each operation (status, register, recover, change password, delete) is a
:class:`VaultFlow`, in the style of h11: the flow says which bytes to send next
and consumes the answer; it never does I/O itself. A transport — the SDK's HTTP
client (:mod:`bkv.client.sdk`) or an app's own HTTP stack — only runs this loop::

    flow = flows.recover_flow(FlowContext(fleet, account_id, opaque_config()), password)
    while not isinstance(step := flow.next_request(), flows.Done):
        try:
            answer = post("/v1/request", step)  # the transport's own I/O
        except LostAnswer as exc:  # timeout, connection dropped, 5xx
            flow.answer_lost(FleetUnreachableError(str(exc)))  # raises unless it retries
            continue
        flow.receive(answer)
    recovered = step.result

The flow decides everything else: which inner request comes next (sealed to
the fleet's channel key with randomness from the context's ``rng``), what an
answer means, whether a lost answer may be asked again (only ``RegisterExpose``,
which the HSM answers the same when repeated, up to :data:`EXPOSE_TRIES` times;
:attr:`VaultFlow.retries` counts them) and the result. A refusal or a failed
check is raised from :meth:`VaultFlow.receive` / :meth:`VaultFlow.answer_lost`
as its :mod:`bkv.errors` type and ends the flow; so does any other failure of
the transport (the caller drops the flow). The steps are those of
docs/protocol.md, "Client flows and backup-key wrapping".

The states are immutable values (one dataclass per step); a flow object only
holds the current one and the request in flight.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bkv.client import vault
from bkv.client.trust import FleetKeys
from bkv.client.vault import PendingRequest, RecoveredKey, VaultStatus
from bkv.crypto.opaque import (
    KE2,
    ClientLoginState,
    ClientRegistrationState,
    Config,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import (
    EnvelopeRecoveryError,
    FleetUnreachableError,
    ProtocolStateError,
    RecordDestroyedError,
    WrongPasswordError,
)
from bkv.protocol import release
from bkv.protocol.messages import (
    DEFAULT_GUESS_LIMIT,
    MAX_ACCOUNT_ID,
    MAX_GUESS_LIMIT,
    AbortOk,
    FinishAction,
    InnerRequest,
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
)

__all__ = [
    "EXPOSE_TRIES",
    "MAX_EXCHANGES",
    "DeletedRecord",
    "Done",
    "FlowContext",
    "VaultFlow",
    "change_password_flow",
    "check_registration_args",
    "delete_flow",
    "recover_flow",
    "register_flow",
    "status_flow",
]

EXPOSE_TRIES = 3
"""How many times a registration sends RegisterExpose when its answer is lost."""

MAX_EXCHANGES = 5 + EXPOSE_TRIES
"""The most requests any flow sends: a password change's KE1, KE3, status, start,
finish and its exposes."""

NO_RECORD = "no record for this account (destroyed, deleted or none)"

_R = TypeVar("_R")


@dataclass(frozen=True)
class FlowContext:
    """What every flow of one account needs: whose keys, which account, which OPAQUE, what rng.

    ``fleet`` must stay the same for a whole flow (a login's KE1 and KE3 go to one
    fleet), so a transport that refreshes keys starts its next flow with a new context.
    """

    fleet: FleetKeys
    account_id: bytes
    config: Config
    rng: Rng = default_rng

    def __post_init__(self) -> None:
        if not isinstance(self.fleet, FleetKeys):
            raise TypeError("fleet must be FleetKeys (pinned or from a validated bundle)")
        if not isinstance(self.account_id, bytes) or not 0 < len(self.account_id) <= MAX_ACCOUNT_ID:
            raise ValueError(f"account_id must be 1..{MAX_ACCOUNT_ID} bytes")


@dataclass(frozen=True)
class Done(Generic[_R]):
    """The flow has finished; ``result`` is the operation's result."""

    result: _R


@dataclass(frozen=True)
class DeletedRecord:
    """A delete's result: the generation of the record that is gone (durably)."""

    generation: int


# --- steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finished:
    """The last answer arrived: ``result`` is the operation's."""

    result: object


class _Step(abc.ABC):
    """One exchange of an operation: the request to send and what its answer leads to."""

    @abc.abstractmethod
    def request(self) -> InnerRequest:
        """The inner request of this step (the flow seals it afresh each time it is sent)."""

    @abc.abstractmethod
    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        """The next step given this step's (opened) answer; ``sent``: the request's bytes."""

    def retry(self) -> _Step | None:
        """The step to take when this step's answer was lost; None: the loss ends the flow.

        Only an idempotent request may be sent again: any other (a KE1 costs an
        attempt, a RegisterStart replaces the pending registration) would change
        what the first one did, so by default a lost answer ends the operation.
        """
        return None


_Next = _Step | _Finished


@dataclass(frozen=True)
class _ReadStatus(_Step):
    """The status operation: one StatusRequest."""

    def request(self) -> InnerRequest:
        return StatusRequest()

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        return _Finished(vault.status_of(vault.expect(answer, StatusOk)))


# Registration (docs/threat-model.md, "The re-registration rule"): Status (which
# live record this replaces) -> RegisterStart -> RegisterFinish (a pending
# record) -> RegisterExpose, sent only after RegisterFinishOk came back.


@dataclass(frozen=True)
class _Registration:
    """RFC 9807 section 5.2.1 done on the client: the state and the RegistrationRequest."""

    state: ClientRegistrationState = field(repr=False)
    request: bytes = field(repr=False)


def _start_registration(context: FlowContext, password: bytes) -> _Registration:
    state, request = client_registration_start(password, context.rng)
    return _Registration(state, request.to_bytes())


@dataclass(frozen=True)
class _AnyLiveRecord:
    """A plain registration: replace whichever record is live (or none), with this limit."""

    guess_limit: int


@dataclass(frozen=True)
class _RecoveredRecord:
    """A password change: replace exactly the record just recovered, keeping its limit."""

    generation: int


@dataclass(frozen=True)
class _ReadLiveRecord(_Step):
    """StatusRequest: which live record the new one replaces, and with what guess limit."""

    registration: _Registration
    backup_key: bytes = field(repr=False)
    replacing: _AnyLiveRecord | _RecoveredRecord

    def request(self) -> InnerRequest:
        return StatusRequest()

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        live = vault.expect(answer, StatusOk)
        guess_limit = self._guess_limit(live)
        replaces = live.generation if live.exists else 0
        return _SendRegistrationRequest(self.registration, self.backup_key, replaces, guess_limit)

    def _guess_limit(self, live: StatusOk) -> int:
        if isinstance(self.replacing, _AnyLiveRecord):
            return self.replacing.guess_limit
        if not live.exists:
            raise RecordDestroyedError(NO_RECORD)
        if live.generation != self.replacing.generation:
            # Another registration replaced the record between the recovery and
            # now: overwriting it would drop that record's backup key.
            raise ProtocolStateError("the live record changed after it was recovered")
        return live.guess_limit


@dataclass(frozen=True)
class _SendRegistrationRequest(_Step):
    """RegisterStart; its answer finishes the registration on the client (KSF, wrapping)."""

    registration: _Registration
    backup_key: bytes = field(repr=False)
    replaces_generation: int
    guess_limit: int

    def request(self) -> InnerRequest:
        return RegisterStart(self.registration.request, self.replaces_generation)

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        started = vault.expect(answer, RegisterStartOk)
        response = RegistrationResponse.from_bytes(started.registration_response)
        vault.check_server_key(context.fleet, response.server_public_key)
        record, export_key = client_registration_finish(
            self.registration.state, context.config, response, rng=context.rng
        )
        secret = vault.wrap_backup_key(export_key, context.account_id, self.backup_key, context.rng)
        return _SendRecord(
            RegisterFinish(started.registration_id, record.to_bytes(), secret, self.guess_limit)
        )


@dataclass(frozen=True)
class _SendRecord(_Step):
    """RegisterFinish: the HSM stores the record as pending (not guessable yet)."""

    finish: RegisterFinish

    def request(self) -> InnerRequest:
        return self.finish

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        vault.expect(answer, RegisterFinishOk)
        return _Expose(self.finish.registration_id, tries=1)


@dataclass(frozen=True)
class _Expose(_Step):
    """RegisterExpose, the ``tries``-th time: the pending record goes live."""

    registration_id: bytes = field(repr=False)
    tries: int

    def request(self) -> InnerRequest:
        return RegisterExpose(self.registration_id)

    def retry(self) -> _Step | None:
        # The HSM answers a repeated expose of the live record the same and
        # changes nothing (docs/protocol.md, "Sealed requests and responses").
        if self.tries >= EXPOSE_TRIES:
            return None
        return dataclasses.replace(self, tries=self.tries + 1)

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        exposed = vault.expect(answer, RegisterExposeOk)
        if exposed.attempts_left > exposed.guess_limit:
            raise ProtocolStateError("the vault reports more attempts left than its guess limit")
        spent = exposed.guess_limit - exposed.attempts_left
        return _Finished(
            VaultStatus(True, exposed.generation, exposed.guess_limit, exposed.attempts_left, spent)
        )


# Login (RFC 9807 section 6): KE1 -> KE2, then KE3 with what the proof is for,
# or, when KE2 does not open, RecoverAbort and a status to report the attempts left.


@dataclass(frozen=True)
class _Release:
    """Recover: the backup key is the result."""


@dataclass(frozen=True)
class _Delete:
    """Delete: proving the password authorizes the deletion."""


@dataclass(frozen=True)
class _ReleaseThenRegister:
    """Change password: the released key is registered again under the new password."""

    registration: _Registration


_Purpose = _Release | _Delete | _ReleaseThenRegister


@dataclass(frozen=True)
class _SendKe1(_Step):
    """RecoverStart (KE1): costs one attempt, counted durably before KE2 leaves the HSM."""

    login: ClientLoginState = field(repr=False)
    ke1: bytes = field(repr=False)
    purpose: _Purpose

    def request(self) -> InnerRequest:
        return RecoverStart(self.ke1)

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        started = vault.expect(answer, RecoverStartOk)
        try:
            ke3, session_key, export_key = client_login_finish(
                self.login, context.config, KE2.from_bytes(started.ke2)
            )
        except EnvelopeRecoveryError:
            # A wrong password, or the RFC 9807 fake record of an account with none.
            return _Abort(started.session_id)
        return _SendKe3(started.session_id, ke3.to_bytes(), session_key, export_key, self.purpose)


@dataclass(frozen=True)
class _SendKe3(_Step):
    """RecoverFinish (KE3): releases the key (then maybe re-registers it) or deletes the record."""

    session_id: bytes = field(repr=False)
    ke3: bytes = field(repr=False)
    session_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)
    purpose: _Purpose

    def request(self) -> InnerRequest:
        action = FinishAction.DELETE if isinstance(self.purpose, _Delete) else FinishAction.RELEASE
        return RecoverFinish(self.session_id, self.ke3, action)

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        if isinstance(self.purpose, _Delete):
            return _Finished(DeletedRecord(vault.expect(answer, RecordDeleted).generation))
        released = vault.expect(answer, KeyReleased)
        # The release is bound to this session and to the exact request bytes sent.
        secret = release.open_release(self.session_key, sent, released.sealed_secret)
        backup_key = vault.unwrap_backup_key(self.export_key, context.account_id, secret)
        if isinstance(self.purpose, _ReleaseThenRegister):
            replacing = _RecoveredRecord(released.generation)
            return _ReadLiveRecord(self.purpose.registration, backup_key, replacing)
        return _Finished(RecoveredKey(backup_key, released.failed_attempts, released.generation))


@dataclass(frozen=True)
class _Abort(_Step):
    """RecoverAbort: close the session, so a record at its last attempt is destroyed now."""

    session_id: bytes = field(repr=False)

    def request(self) -> InnerRequest:
        return RecoverAbort(self.session_id)

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        vault.expect(answer, AbortOk)
        return _ReportWrongPassword()


@dataclass(frozen=True)
class _ReportWrongPassword(_Step):
    """StatusRequest after a wrong password: how many attempts remain, if any."""

    def request(self) -> InnerRequest:
        return StatusRequest()

    def advance(self, context: FlowContext, answer: InnerResponse, sent: bytes) -> _Next:
        status = vault.expect(answer, StatusOk)
        if not status.exists or status.attempts_left == 0:
            # Also the answer for an account that never registered: its KE2 came
            # from the fake record and opens under no password.
            raise RecordDestroyedError(NO_RECORD)
        raise WrongPasswordError(status.attempts_left)


# --- the flow ------------------------------------------------------------------------


class VaultFlow(Generic[_R]):
    """One operation in progress: :meth:`next_request`, then :meth:`receive` its answer.

    Single-threaded and single-use. After an error (raised from :meth:`receive`
    or :meth:`answer_lost`) the flow is over and refuses further use.
    """

    def __init__(self, context: FlowContext, first: _Step, result_type: type[_R]) -> None:
        self._context = context
        self._state: _Next = first
        self._result_type = result_type
        self._in_flight: PendingRequest | None = None
        self._failed = False
        self.requests_sent = 0
        """Requests built so far, re-sent ones included (at most :data:`MAX_EXCHANGES`)."""
        self.retries = 0
        """Requests sent again because the answer to the previous one was lost."""

    def __repr__(self) -> str:
        return (
            f"VaultFlow({type(self._state).__name__}, requests_sent={self.requests_sent}, "
            f"retries={self.retries})"
        )

    def next_request(self) -> bytes | Done[_R]:
        """The bytes to POST next, or :class:`Done` with the result."""
        self._check_usable()
        if self._in_flight is not None:
            raise ValueError("the last request's answer is still due: receive() or answer_lost()")
        if isinstance(self._state, _Finished):
            return Done(self._result(self._state.result))
        self._in_flight = vault.build_request(
            self._context.fleet, self._context.account_id, self._state.request(), self._context.rng
        )
        self.requests_sent += 1
        return self._in_flight.request

    def receive(self, answer: bytes) -> None:
        """Consume the answer to the request in flight; a refusal raises its typed error."""
        sent, step = self._take_in_flight()
        try:
            inner = vault.read_response(sent, answer)
            self._state = step.advance(self._context, inner, sent.request)
        except BaseException:
            self._failed = True
            raise

    def answer_lost(self, error: FleetUnreachableError) -> None:
        """No answer came (timeout, dropped connection, the host could not reach the HSM).

        The request may or may not have reached the HSM. If the step may be sent
        again, the flow re-arms it (:meth:`next_request` seals it afresh) and
        counts a retry; otherwise ``error`` is raised and the flow is over.
        """
        if not isinstance(error, FleetUnreachableError):
            raise TypeError("answer_lost takes the FleetUnreachableError the transport saw")
        _sent, step = self._take_in_flight()
        again = step.retry()
        if again is None:
            self._failed = True
            raise error
        self._state = again
        self.retries += 1

    def _check_usable(self) -> None:
        if self._failed:
            raise ValueError("this flow ended with an error; start a new one")

    def _take_in_flight(self) -> tuple[PendingRequest, _Step]:
        self._check_usable()
        sent, state = self._in_flight, self._state
        if sent is None or isinstance(state, _Finished):
            raise ValueError("no request is in flight: call next_request() first")
        self._in_flight = None
        return sent, state

    def _result(self, result: object) -> _R:
        if not isinstance(result, self._result_type):
            raise TypeError(f"the flow ended with {type(result).__name__}, not a result")
        return result


# --- the operations -------------------------------------------------------------------


def status_flow(context: FlowContext) -> VaultFlow[VaultStatus]:
    """Whether a record exists, its counter, and the password checks that failed."""
    return VaultFlow(context, _ReadStatus(), VaultStatus)


def register_flow(
    context: FlowContext,
    password: bytes,
    backup_key: bytes,
    guess_limit: int = DEFAULT_GUESS_LIMIT,
) -> VaultFlow[VaultStatus]:
    """Store ``backup_key`` under ``password``, replacing the live record (counter carried over)."""
    check_registration_args(backup_key, guess_limit)
    registration = _start_registration(context, password)
    first = _ReadLiveRecord(registration, backup_key, _AnyLiveRecord(guess_limit))
    return VaultFlow(context, first, VaultStatus)


def recover_flow(context: FlowContext, password: bytes) -> VaultFlow[RecoveredKey]:
    """The backup key; costs one attempt, forgiven by the vault if the password is right.

    A valid KE3 forgives the attempts started before its KE1, never later ones
    (docs/threat-model.md §4 step 4).
    """
    return VaultFlow(context, _login(context, password, _Release()), RecoveredKey)


def change_password_flow(
    context: FlowContext, old_password: bytes, new_password: bytes
) -> VaultFlow[VaultStatus]:
    """Recover with the old password, then register the same key under the new one.

    The new record replaces exactly the recovered one and keeps its guess limit.
    """
    purpose = _ReleaseThenRegister(_start_registration(context, new_password))
    return VaultFlow(context, _login(context, old_password, purpose), VaultStatus)


def delete_flow(context: FlowContext, password: bytes) -> VaultFlow[DeletedRecord]:
    """Delete the record; proving the password is the authorization."""
    return VaultFlow(context, _login(context, password, _Delete()), DeletedRecord)


def _login(context: FlowContext, password: bytes, purpose: _Purpose) -> _SendKe1:
    login, ke1 = client_login_start(password, context.rng)
    return _SendKe1(login, ke1.to_bytes(), purpose)


def check_registration_args(backup_key: bytes, guess_limit: int) -> None:
    """Refuse a caller's bad backup key or guess limit (TypeError / ValueError)."""
    _check_backup_key(backup_key)
    if isinstance(guess_limit, bool) or not isinstance(guess_limit, int):
        raise TypeError("guess_limit must be an int")
    if not 1 <= guess_limit <= MAX_GUESS_LIMIT:
        raise ValueError(f"guess_limit must be 1..{MAX_GUESS_LIMIT}")


def _check_backup_key(backup_key: bytes) -> None:
    if not isinstance(backup_key, bytes):
        raise TypeError("backup_key must be bytes")
    if len(backup_key) != vault.BACKUP_KEY_SIZE:
        raise ValueError(f"a backup key is {vault.BACKUP_KEY_SIZE} bytes")
