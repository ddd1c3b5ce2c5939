"""Hypothesis state machine on HsmApp: a malicious host's schedules never beat the guess limit.

The machine plays the client *and* the host: it registers (with or without the
expose step), starts logins with the right or a wrong password and leaves them
open, finishes them with a valid or a forged KE3, aborts, lets time pass (and
runs housekeeping), restarts the HSM from its latest persisted state, names
alice's sessions from another account, and replays any request it sent before.

Invariants, checked after every step that could break them:

- *Guess limit.* A KE2 that opens under the password it was requested with
  came from the real record (a fake-record KE2 opens under no password). Between
  two successful logins, and as long as the account keeps a live record, the
  number of such real KE2s for one password is at most the guess limit of the
  record that answered (retries, re-registrations and carry-over included).
- *Release.* A ``KeyReleased`` answers only a fresh RecoverFinish carrying the
  KE3 that ``client_login_finish`` computed for that session, and it opens to
  the secret registered under that password. Forged KE3s and replays release
  nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from hsm_world import CONFIG, InProcessHost, RefusedError, VaultClient, fleet_keys_of, new_app
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from bkv.crypto import channel
from bkv.crypto.opaque import (
    KE2,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.errors import EnvelopeRecoveryError
from bkv.hsm import release
from bkv.hsm.app import SESSION_TTL_MS, HsmApp
from bkv.hsm.messages import (
    FinishAction,
    HsmRequest,
    KeyReleased,
    RecoverAbort,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterExpose,
    RegisterFinish,
    RegisterFinishOk,
    RegisterStart,
    RegisterStartOk,
    RequestKind,
)
from bkv.hsm.state import PENDING_RECORD_TTL_MS
from bkv.wire import decode

ALICE = b"alice"
PASSWORDS = (b"password zero", b"password one")
WRONG = b"never registered"


@dataclass
class Login:
    """A login whose KE2 came back: what the client can do with it."""

    password: bytes
    session_id: bytes
    ke3: bytes | None  # None: the KE2 did not open under the password
    session_key: bytes | None


@dataclass(frozen=True)
class Sent:
    """A request as it went out, kept for replays."""

    request: bytes
    state: channel.ClientChannelState


class HsmUnderAttack(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.app, self.sealer = new_app()
        self.host = InProcessHost(self.app)
        fleet = fleet_keys_of(self.app)
        self.alice = VaultClient(self._relay, fleet, ALICE)
        self.mallory = VaultClient(self._relay, fleet, b"mallory")
        self.logins: list[Login] = []
        self.sent: list[Sent] = []
        self.registrations: dict[bytes, tuple[bytes, bytes]] = {}  # id -> (password, secret)
        self.pending_ids: list[bytes] = []
        self.secret_of: dict[bytes, bytes] = {}  # password -> secret of its live record
        self.real: dict[bytes, int] = dict.fromkeys(PASSWORDS, 0)

    def _relay(self, request: bytes) -> bytes:
        return self.host(request)

    def _send(self, client: VaultClient, inner: object) -> tuple[bytes, bytes, Sent]:
        request, state = client.request_bytes(inner)  # type: ignore[arg-type]
        sent = Sent(request, state)
        self.sent.append(sent)
        return request, self._relay(request), sent

    def _after_step(self) -> None:
        # The account lost its live record (destroyed at the limit or deleted): the
        # secret is gone, and a new registration may start afresh (documented rule 4).
        if self.app.vault.record(ALICE) is None:
            self.real = dict.fromkeys(PASSWORDS, 0)
            self.secret_of.clear()

    # --- registration -------------------------------------------------------------

    @rule(password=st.sampled_from(PASSWORDS), limit=st.integers(1, 3), n=st.integers(0, 9))
    def register_finish(self, password: bytes, limit: int, n: int) -> None:
        """RegisterStart + RegisterFinish; the answer may or may not reach the client."""
        state, request = client_registration_start(password)
        started = self.alice.call(RegisterStart(request.to_bytes()))
        assert isinstance(started, RegisterStartOk)
        record, _export = client_registration_finish(
            state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
        )
        secret = b"secret %d of " % n + password
        finish = RegisterFinish(started.registration_id, record.to_bytes(), secret, limit)
        _request, answer, sent = self._send(self.alice, finish)
        try:
            done = self.alice.open(sent.state, answer)
        except RefusedError:
            return  # e.g. RECORD_EXISTS: the live record's spent attempts reach the limit
        assert isinstance(done, RegisterFinishOk)
        self.registrations[started.registration_id] = (password, secret)
        self.pending_ids.append(started.registration_id)

    @rule(password=st.sampled_from(PASSWORDS), limit=st.integers(1, 3), n=st.integers(0, 9))
    def register_and_expose(self, password: bytes, limit: int, n: int) -> None:
        """What the SDK does: finish, and expose once RegisterFinishOk came back."""
        pending = len(self.pending_ids)
        self.register_finish(password, limit, n)
        if len(self.pending_ids) > pending:
            self.expose(len(self.pending_ids) - 1)

    @precondition(lambda self: self.pending_ids)
    @rule(index=st.integers(0, 20))
    def expose(self, index: int) -> None:
        registration_id = self.pending_ids[index % len(self.pending_ids)]
        _request, answer, sent = self._send(self.alice, RegisterExpose(registration_id))
        try:
            self.alice.open(sent.state, answer)
        except RefusedError:
            return
        password, secret = self.registrations[registration_id]
        self.secret_of = {password: secret}  # the old live record (if any) is gone
        self._after_step()

    # --- logins ----------------------------------------------------------------------

    @rule(password=st.sampled_from((*PASSWORDS, WRONG)))
    def ke1(self, password: bytes) -> None:
        login_state, ke1 = client_login_start(password)
        _request, answer, sent = self._send(self.alice, RecoverStart(ke1.to_bytes()))
        started = self.alice.open(sent.state, answer)
        assert isinstance(started, RecoverStartOk)
        login = self._open_ke2(password, login_state, started)
        self.logins.append(login)
        self._after_step()

    def _open_ke2(self, password: bytes, login_state: object, started: RecoverStartOk) -> Login:
        try:
            ke3, session_key, _export = client_login_finish(
                login_state,  # type: ignore[arg-type]
                CONFIG,
                KE2.from_bytes(started.ke2),
            )
        except EnvelopeRecoveryError:
            return Login(password, started.session_id, None, None)
        # A real-record KE2: count it against the record that answered it.
        self.real[password] += 1
        record = self.app.vault.record(ALICE)
        assert record is not None, "a real KE2 without a live record"
        assert self.real[password] <= record.guess_limit, "more checks than the guess limit"
        return Login(password, started.session_id, ke3.to_bytes(), session_key)

    @precondition(lambda self: self.logins)
    @rule(index=st.integers(0, 20), forged=st.booleans())
    def ke3(self, index: int, forged: bool) -> None:
        login = self.logins.pop(index % len(self.logins))
        ke3 = login.ke3 if login.ke3 is not None and not forged else bytes(64)
        finish = RecoverFinish(login.session_id, ke3, FinishAction.RELEASE)
        request, answer, sent = self._send(self.alice, finish)
        try:
            released = self.alice.open(sent.state, answer)
        except RefusedError:
            self._after_step()
            return
        assert isinstance(released, KeyReleased)
        assert ke3 == login.ke3 and login.session_key is not None, "released without a valid KE3"
        secret = release.open_release(login.session_key, request, released.sealed_secret)
        assert secret == self.secret_of[login.password]
        self.real = dict.fromkeys(PASSWORDS, 0)  # a successful login resets the counter
        self._after_step()

    @precondition(lambda self: self.logins)
    @rule(index=st.integers(0, 20))
    def abort(self, index: int) -> None:
        login = self.logins.pop(index % len(self.logins))
        _request, answer, sent = self._send(self.alice, RecoverAbort(login.session_id))
        with contextlib.suppress(RefusedError):  # expired, or lost in a restart
            self.alice.open(sent.state, answer)
        self._after_step()

    @precondition(lambda self: self.logins)
    @rule(index=st.integers(0, 20), finish=st.booleans())
    def mallory_names_alices_session(self, index: int, finish: bool) -> None:
        login = self.logins[index % len(self.logins)]
        was_open = login.session_id in self.app._sessions
        inner = (
            RecoverFinish(login.session_id, login.ke3 or bytes(64))
            if finish
            else RecoverAbort(login.session_id)
        )
        _request, answer, sent = self._send(self.mallory, inner)
        try:
            self.mallory.open(sent.state, answer)
        except RefusedError:
            # Refused, and alice's session is exactly as open as it was.
            assert (login.session_id in self.app._sessions) == was_open
            return
        raise AssertionError("another account used alice's session")

    # --- the host's powers ----------------------------------------------------------

    @rule(ms=st.sampled_from([1_000, SESSION_TTL_MS, PENDING_RECORD_TTL_MS]))
    def time_passes(self, ms: int) -> None:
        self.host.now_ms += ms
        self.host.tick()
        self._after_step()

    @rule()
    def restart(self) -> None:
        """Kill the HSM and start it again from the newest state the host stored."""
        blob = self.host.stored[-1] if self.host.stored else self.app.sealed_state()
        assert blob == self.app.sealed_state()
        self.app = HsmApp.load(blob, self.sealer)
        self.host = InProcessHost(self.app, now_ms=self.host.now_ms, stored=self.host.stored)
        self.host.tick()
        self._after_step()

    @precondition(lambda self: self.sent)
    @rule(index=st.integers(0, 200))
    def replay(self, index: int) -> None:
        sent = self.sent[index % len(self.sent)]
        kind = decode(HsmRequest, sent.request).kind
        answer = self._relay(sent.request)
        try:
            inner = self.alice.open(sent.state, answer)
        except RefusedError:
            self._after_step()
            return
        assert not isinstance(inner, KeyReleased), "a replayed KE3 released the key"
        assert kind in {RequestKind.RECOVER_START, RequestKind.REGISTER_START}, kind
        if isinstance(inner, RecoverStartOk):
            # A replayed KE1 is a new, counted attempt whose KE2 only the client can open;
            # the client's original login state is gone here, so count it as a real check
            # whenever the record exists: the strictest reading.
            record = self.app.vault.record(ALICE)
            if record is not None:
                for password in self.real:
                    self.real[password] += 1
                    assert self.real[password] <= record.guess_limit
        self._after_step()


HsmUnderAttack.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_hsm_under_attack = pytest.mark.slow(HsmUnderAttack.TestCase)  # ~8 s on one core


def test_the_review_attack_sequence_runs_in_the_machine() -> None:
    """The schedule that reset a spent counter (before the two-phase rule), run every time."""
    machine = HsmUnderAttack()
    machine.register_and_expose(PASSWORDS[0], 1, 0)
    machine.ke1(PASSWORDS[0])  # the only allowed check; the session stays open
    machine.register_and_expose(PASSWORDS[0], 1, 1)  # a retry: refused, the counter is spent
    machine.ke1(PASSWORDS[0])  # destroys the locked record; fake KE2
    machine.register_finish(PASSWORDS[0], 1, 2)  # (rule 4: after destruction, afresh)
    assert machine.real[PASSWORDS[0]] == 0 and machine.app.vault.record(ALICE) is None
    machine.teardown()
