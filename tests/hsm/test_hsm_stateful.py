"""Hypothesis state machine on HsmApp: a malicious host's schedules never beat the guess limit.

The machine plays the client *and* the host: it starts registrations and
finishes them as separate steps (so any schedule can put a destroy, a delete or
another registration between RegisterStart and RegisterFinish, or between
RegisterFinish and RegisterExpose), exposes them or not, asks for the status,
starts logins with the right or a wrong password and leaves them open,
finishes them with a valid or a forged KE3, aborts, lets time pass (and runs
housekeeping), restarts the HSM from the latest state in the record store,
names alice's sessions from another account, and replays any request it sent
before.

It also owns the record store (one sealed blob per account under the record
tree, :mod:`bkv.hsm.records`) and keeps a copy of everything the store ever
held. With a KE1 of alice it serves one of her *older* blobs (under the
current proof or its own old one), *another account's* blob (bob's), or
*hides* her record (no blob, a stale or restamped proof of her absence from
before she registered, her leaf without its value); and it restarts the HSM
from an *older* state of the store, blob and copy together, against an
emulated NV counter (:func:`bkv.hsm.sealing.check_freshness`).

Invariants, checked after every step that could break them:

- *Guess limit.* A KE2 that opens under the password it was requested with
  came from the real record (a fake-record KE2 opens under no password). The
  number of such real KE2s for one password whose KE1 came after the KE1 of the
  owner's last successful recovery is at most the guess limit of the record
  that answered (retries, re-registrations and carry-over included), however
  the owner's logins interleave with the host's: a success forgives only the
  attempts started before its own KE1. The count restarts only when the client
  has been *told* that its record is gone (a status answer without a record),
  not when the record merely disappears inside the HSM: a registration the
  client started before that must not give the password a fresh counter.
- *Told.* The failed attempts a ``KeyReleased`` or a ``StatusOk`` reports are at
  least the real KE2s (other than the owner's own) since the KE1 of the
  owner's previous successful recovery.
- *Release.* A ``KeyReleased`` answers only a fresh RecoverFinish carrying the
  KE3 that ``client_login_finish`` computed for that session, and it opens to
  the secret registered under that password. Forged KE3s and replays release
  nothing.
- *Storage.* A tampered record read is refused with a typed error
  (``RecordProofError``, ``RecordMismatchError`` or ``SealingError``) before the
  request is taken: nothing staged, nothing answered, nothing durable or
  volatile changed, no KE2 given; the same KE1 relayed honestly afterwards is
  served as usual. An older state never passes the counter check
  (``StateRollbackError``), and the machine never continues from one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field

import pytest
from hsm_world import (
    CONFIG,
    InProcessHost,
    RefusedError,
    VaultClient,
    fleet_keys_of,
    new_app,
    record_of,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from bkv.crypto import channel
from bkv.crypto.opaque import (
    KE2,
    ClientLoginState,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.errors import (
    EnvelopeRecoveryError,
    ProofKeyMismatchError,
    RecordMismatchError,
    RecordProofError,
    SealingError,
    StaleProofError,
    StateRollbackError,
)
from bkv.hsm.app import SESSION_TTL_MS, HsmApp, Persist
from bkv.hsm.sealing import Freshness, blob_digest, check_freshness
from bkv.hsm.state import PENDING_RECORD_TTL_MS
from bkv.protocol import release
from bkv.protocol.messages import (
    FinishAction,
    HsmRequest,
    KeyReleased,
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
    RequestKind,
    StatusOk,
    StatusRequest,
)
from bkv.protocol.vault_records import RecordRead, record_id_for
from bkv.records.proof import Proof, encode_proof
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.tree import read_record_proof
from bkv.wire import decode, encode

ALICE = b"alice"
PASSWORDS = (b"password zero", b"password one")
WRONG = b"never registered"
BOB = b"bob"
BOB_PASSWORD = b"bob's password"

READ_REFUSALS = (RecordProofError, RecordMismatchError, SealingError)
"""What the HSM raises for a record read that is not the one its head proves."""

DROPS = ("no blob", "old absence", "old absence, restamped", "leaf without value")
"""How the host hides alice's record: the current proof without her blob; the proof
of her absence from before she registered, as it was or restamped with the
current version; the current proof with her leaf's value cut off."""


@dataclass(frozen=True)
class Kept:
    """The store as it was once a persist was acknowledged: a copy the host keeps for attacks."""

    version: int
    sealed_state: bytes
    store: MemoryTreeStore  # a deep copy of the whole store at that version
    reads: dict[bytes, tuple[Proof, bytes | None]]  # account -> its proof and blob then


@dataclass
class TamperingHost(InProcessHost):
    """The in-process host, keeping a copy of every state the store held, and the NV counter.

    There is no device here, so ``counter`` emulates the HSM's NV counter as
    :mod:`bkv.hsm.node` advances it: the version and SHA-256 of the last sealed
    state whose persist was acknowledged (``on_stored``).
    """

    kept: list[Kept] = field(default_factory=list)
    counter: tuple[int, bytes] = (0, b"")

    def _stored(self, persist: Persist) -> None:
        super()._stored(persist)
        self.counter = (persist.version, blob_digest(persist.sealed_state))
        head = persist.update.new_head
        reads = {
            account: read_record_proof(self.store, head, record_id_for(head.tree_id, account))
            for account in (ALICE, BOB)
        }
        store = copy.deepcopy(self.store)
        self.kept.append(Kept(persist.version, persist.sealed_state, store, reads))

    def reopened(self, app: HsmApp) -> TamperingHost:
        """A host for ``app`` (restarted) over the same store, keeping everything kept so far."""
        return TamperingHost(
            app,
            now_ms=self.now_ms,
            transcript=self.transcript,
            stored=self.stored,
            store=self.store,
            kept=self.kept,
            counter=self.counter,
        )


def record_read(proof: Proof, blob: bytes | None) -> bytes:
    """The RecordRead wire bytes of ``proof`` and ``blob``, as a host hands them over."""
    return encode(RecordRead(encode_proof(proof), blob or b""))


@dataclass
class Login:
    """A login whose KE2 came back: what the client can do with it."""

    password: bytes
    session_id: bytes
    ke3: bytes | None  # None: the KE2 did not open under the password
    session_key: bytes | None
    ke1_index: int  # when its KE1 went out, in the order of all KE1s the machine sent


@dataclass(frozen=True)
class Sent:
    """A request as it went out, kept for replays."""

    request: bytes
    state: channel.ClientChannelState
    exposes: bytes | None = None  # the registration id of a RegisterExpose


@dataclass(frozen=True)
class Started:
    """A registration whose RegisterStartOk came back: the client can finish it later."""

    password: bytes
    registration_id: bytes
    record: bytes


class HsmUnderAttack(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.app, self.sealer = new_app()
        self.host = TamperingHost(self.app)
        fleet = fleet_keys_of(self.app)
        self.alice = VaultClient(self._relay, fleet, ALICE)
        self.mallory = VaultClient(self._relay, fleet, b"mallory")
        self.bob = VaultClient(self._relay, fleet, BOB)  # registered by the first swap
        self.bob_registered = False
        self.logins: list[Login] = []
        self.sent: list[Sent] = []
        self.registrations: dict[bytes, tuple[bytes, bytes]] = {}  # id -> (password, secret)
        self.pending_ids: list[bytes] = []
        self.started: list[Started] = []
        self.secret_of: dict[bytes, bytes] = {}  # password -> secret of its live record
        self.ke1s_sent = 0
        # Real-record KE2s since the client was last told its record is gone, as
        # (KE1 index, password), and the latest KE1 index of a successful recovery.
        self.checks: list[tuple[int, bytes]] = []
        self.forgiven_through = 0
        self.known_generation = 0  # the live record's generation as the client last saw it

    def _relay(self, request: bytes) -> bytes:
        return self.host(request)

    def _send(
        self, client: VaultClient, inner: object, exposes: bytes | None = None
    ) -> tuple[bytes, bytes, Sent]:
        request, state = client.request_bytes(inner)  # type: ignore[arg-type]
        sent = Sent(request, state, exposes)
        self.sent.append(sent)
        return request, self._relay(request), sent

    def _told_no_record(self) -> None:
        # The client learned that its record is gone (destroyed at the limit or
        # deleted): the secret is lost, and a registration it starts from now on
        # may start afresh (docs/threat-model.md §5 rule 6). Only now are the counts reset.
        self.checks.clear()
        self.secret_of.clear()
        self.known_generation = 0

    def _next_ke1_index(self) -> int:
        self.ke1s_sent += 1
        return self.ke1s_sent

    def real(self, password: bytes) -> int:
        """Real checks of ``password`` since the KE1 of the last successful recovery."""
        return sum(1 for index, p in self.checks if p == password and index > self.forgiven_through)

    def _unforgiven_checks(self, since: int, besides: int = 0) -> int:
        """Distinct KE1s answered with a real KE2 after KE1 ``since`` (not counting ``besides``)."""
        return len({index for index, _ in self.checks if index > since and index != besides})

    def _check_limit(self, password: bytes) -> None:
        record = record_of(self.host, ALICE)
        assert record is not None, "a real KE2 without a live record"
        assert self.real(password) <= record.guess_limit, "more checks than the guess limit"

    # --- registration -------------------------------------------------------------

    @rule()
    def status(self) -> None:
        """The client asks; an answer without a record *tells* it the record is gone."""
        answer = self.alice.call(StatusRequest())
        assert isinstance(answer, StatusOk)
        if not answer.exists:
            self._told_no_record()
        else:
            self.known_generation = answer.generation
            assert answer.failed_attempts >= self._unforgiven_checks(self.forgiven_through)

    @rule(password=st.sampled_from(PASSWORDS))
    def register_start(self, password: bytes) -> None:
        """RegisterStart naming the live record as the client last saw it; finished later."""
        state, request = client_registration_start(password)
        inner = RegisterStart(request.to_bytes(), self.known_generation)
        _request, answer, sent = self._send(self.alice, inner)
        try:
            started = self.alice.open(sent.state, answer)
        except RefusedError:
            return  # PROTOCOL_STATE: the live record is not the one the client saw
        assert isinstance(started, RegisterStartOk)
        record, _export = client_registration_finish(
            state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
        )
        self.started.append(Started(password, started.registration_id, record.to_bytes()))

    @initialize(password=st.sampled_from(PASSWORDS), limit=st.integers(1, 3))
    def first_registration(self, password: bytes, limit: int) -> None:
        """Most schedules are about a record that exists: start with one."""
        self.register_and_expose(password, limit, 0)

    @precondition(lambda self: self.started)
    @rule(
        index=st.integers(0, 20),
        limit=st.integers(1, 3),
        n=st.integers(0, 9),
        then_expose=st.booleans(),
    )
    def finish_started(self, index: int, limit: int, n: int, then_expose: bool) -> None:
        """RegisterFinish of any started registration, maybe with its expose right after."""
        pending = len(self.pending_ids)
        self.register_finish(index, limit, n)
        if then_expose and len(self.pending_ids) > pending:
            self.expose(len(self.pending_ids) - 1)

    def register_finish(self, index: int, limit: int, n: int) -> None:
        """RegisterFinish of any started registration, however much happened since its start."""
        started = self.started.pop(index % len(self.started))
        password = started.password
        secret = b"secret %d of " % n + password
        finish = RegisterFinish(started.registration_id, started.record, secret, limit)
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
        """What the SDK does in one go: status, start, finish, expose once FinishOk came back."""
        self.status()
        started = len(self.started)
        self.register_start(password)
        if len(self.started) == started:
            return
        pending = len(self.pending_ids)
        self.register_finish(len(self.started) - 1, limit, n)
        if len(self.pending_ids) > pending:
            self.expose(len(self.pending_ids) - 1)

    @precondition(lambda self: self.pending_ids)
    @rule(index=st.integers(0, 20))
    def expose(self, index: int) -> None:
        registration_id = self.pending_ids[index % len(self.pending_ids)]
        inner = RegisterExpose(registration_id)
        _request, answer, sent = self._send(self.alice, inner, exposes=registration_id)
        try:
            exposed = self.alice.open(sent.state, answer)
        except RefusedError:
            return
        self._exposed(registration_id, exposed)

    def _exposed(self, registration_id: bytes, exposed: object) -> None:
        assert isinstance(exposed, RegisterExposeOk)
        password, secret = self.registrations[registration_id]
        self.secret_of = {password: secret}  # the old live record (if any) is gone
        self.known_generation = exposed.generation

    # --- logins ----------------------------------------------------------------------

    @rule(password=st.sampled_from((*PASSWORDS, WRONG)))
    def ke1(self, password: bytes) -> None:
        login_state, sent = self._alice_ke1(password)
        self._relay_ke1(password, login_state, sent)

    def _alice_ke1(self, password: bytes) -> tuple[ClientLoginState, Sent]:
        """A KE1 of alice under ``password``, built and kept (for replays) but not sent yet."""
        login_state, ke1 = client_login_start(password)
        request, state = self.alice.request_bytes(RecoverStart(ke1.to_bytes()))
        sent = Sent(request, state)
        self.sent.append(sent)
        return login_state, sent

    def _relay_ke1(self, password: bytes, login_state: ClientLoginState, sent: Sent) -> None:
        index = self._next_ke1_index()
        started = self.alice.open(sent.state, self._relay(sent.request))
        assert isinstance(started, RecoverStartOk)
        login = self._open_ke2(password, login_state, started, index)
        self.logins.append(login)

    @rule(password=st.sampled_from((*PASSWORDS, WRONG)))
    def spend_to_destruction(self, password: bytes) -> None:
        """The host's power: KE1s (sessions left open) until alice's live record is gone."""
        for _ in range(5):  # limits are at most 3: the 4th KE1 destroys
            if record_of(self.host, ALICE) is None:
                return
            self.ke1(password)
        raise AssertionError("the record outlived more KE1s than its guess limit")

    def _open_ke2(
        self, password: bytes, login_state: ClientLoginState, started: RecoverStartOk, index: int
    ) -> Login:
        try:
            ke3, session_key, _export = client_login_finish(
                login_state,
                CONFIG,
                KE2.from_bytes(started.ke2),
            )
        except EnvelopeRecoveryError:
            return Login(password, started.session_id, None, None, index)
        # A real-record KE2: count it against the record that answered it.
        self.checks.append((index, password))
        self._check_limit(password)
        return Login(password, started.session_id, ke3.to_bytes(), session_key, index)

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
            return
        assert isinstance(released, KeyReleased)
        assert ke3 == login.ke3 and login.session_key is not None, "released without a valid KE3"
        secret = release.open_release(login.session_key, request, released.sealed_secret)
        assert secret == self.secret_of[login.password]
        # The owner hears of every real check since its previous success but its own ...
        told = self._unforgiven_checks(self.forgiven_through, besides=login.ke1_index)
        assert released.failed_attempts >= told, "the owner was not told of a failed check"
        # ... and the success forgives only what started before its own KE1.
        self.forgiven_through = max(self.forgiven_through, login.ke1_index)
        self.known_generation = released.generation

    @rule(password=st.sampled_from(PASSWORDS), guesses=st.integers(0, 3))
    def owner_login_amid_guesses(self, password: bytes, guesses: int) -> None:
        """The owner's KE1, then the host's KE1s (sessions left open), then the owner's KE3.

        The host sees the owner's KE1 go by and starts its own sessions before the
        owner finishes; they use the same password, the strictest count.
        """
        self.ke1(password)
        owner = len(self.logins) - 1
        for _ in range(guesses):
            self.ke1(password)
        self.ke3(owner, forged=False)

    @precondition(lambda self: self.logins)
    @rule(index=st.integers(0, 20))
    def abort(self, index: int) -> None:
        login = self.logins.pop(index % len(self.logins))
        _request, answer, sent = self._send(self.alice, RecoverAbort(login.session_id))
        with contextlib.suppress(RefusedError):  # expired, or lost in a restart
            self.alice.open(sent.state, answer)

    @precondition(lambda self: self.logins)
    @rule(index=st.integers(0, 20), finish=st.booleans())
    def mallory_names_alices_session(self, index: int, finish: bool) -> None:
        login = self.logins[index % len(self.logins)]
        was_open = self._session_open(login.session_id)
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
            assert self._session_open(login.session_id) == was_open
            return
        raise AssertionError("another account used alice's session")

    def _session_open(self, session_id: bytes) -> bool:
        return self.app._tables.has_session(session_id)  # white box

    # --- the host's powers ----------------------------------------------------------

    @rule(ms=st.sampled_from([1_000, SESSION_TTL_MS, PENDING_RECORD_TTL_MS]))
    def time_passes(self, ms: int) -> None:
        self.host.now_ms += ms
        self.host.tick()

    @rule()
    def restart(self) -> None:
        """Kill the HSM and start it again from the newest state in the store (the same store)."""
        sealed_state = self.host.store.sealed_state()
        assert sealed_state is not None
        assert sealed_state == self.app.sealed_state() == self.host.stored[-1]
        self.app = self._load(sealed_state)
        assert self._freshness(self.app, sealed_state) is Freshness.CURRENT
        self.host = self.host.reopened(self.app)
        self.host.tick()

    def _load(self, sealed_state: bytes) -> HsmApp:
        return HsmApp.load(sealed_state, self.sealer)

    def _freshness(self, app: HsmApp, sealed_state: bytes) -> Freshness:
        """The node's start check (:func:`bkv.hsm.node.load_hsm`) against the emulated counter."""
        return check_freshness(app.version, blob_digest(sealed_state), *self.host.counter)

    @precondition(lambda self: self.sent)
    @rule(index=st.integers(0, 200))
    def replay(self, index: int) -> None:
        sent = self.sent[index % len(self.sent)]
        kind = decode(HsmRequest, sent.request).kind
        ke1_index = self._next_ke1_index() if kind is RequestKind.RECOVER_START else 0
        answer = self._relay(sent.request)
        try:
            inner = self.alice.open(sent.state, answer)
        except RefusedError:
            return
        assert not isinstance(inner, KeyReleased), "a replayed KE3 released the key"
        assert kind in {
            RequestKind.RECOVER_START,
            RequestKind.REGISTER_START,
            RequestKind.REGISTER_EXPOSE,  # idempotent: the same answer, or a late expose
            RequestKind.STATUS,
        }, kind
        if sent.exposes is not None:
            self._exposed(sent.exposes, inner)
        # A replayed KE1 is a new, counted attempt whose KE2 only the client can open;
        # the client's original login state is gone here, so count it as a real check
        # whenever the record exists: the strictest reading.
        if isinstance(inner, RecoverStartOk) and record_of(self.host, ALICE) is not None:
            for password in PASSWORDS:
                self.checks.append((ke1_index, password))
                self._check_limit(password)

    # --- the host's powers over the record store ------------------------------------
    #
    # The host hands the HSM each request's record with its proof (RecordRead).
    # A read that is not exactly what the HSM's head proves is refused before
    # the request is taken: a typed error, nothing staged, nothing answered, no
    # attempt counted, and the next honest request is served as if nothing had
    # happened. The only way back to an older record is an older head, which the
    # NV counter refuses when the HSM starts.

    @rule(
        password=st.sampled_from((*PASSWORDS, WRONG)),
        index=st.integers(0, 50),
        old_proof=st.booleans(),
        then_honest=st.booleans(),
    )
    def serve_old_blob(
        self, password: bytes, index: int, old_proof: bool, then_honest: bool
    ) -> None:
        self.old_blob_refused(password, index, old_proof, then_honest)

    @rule(
        password=st.sampled_from((*PASSWORDS, WRONG)),
        own_proof=st.booleans(),
        then_honest=st.booleans(),
    )
    def swap_blob(self, password: bytes, own_proof: bool, then_honest: bool) -> None:
        self.swapped_blob_refused(password, own_proof, then_honest)

    @rule(
        password=st.sampled_from((*PASSWORDS, WRONG)),
        how=st.sampled_from(DROPS),
        then_honest=st.booleans(),
    )
    def drop_record(self, password: bytes, how: str, then_honest: bool) -> None:
        self.dropped_record_refused(password, how, then_honest)

    @rule(index=st.integers(0, 200))
    def replay_old_root(self, index: int) -> None:
        self.old_root_refused(index)

    def old_blob_refused(
        self, password: bytes, index: int, old_proof: bool, then_honest: bool
    ) -> Exception:
        """Alice's KE1 with one of her older blobs, under the current proof or under its own."""
        proof, blob = self._current_read(ALICE)
        kept = [read for read in self._kept_reads(ALICE) if read[1] is not None]
        if old_proof:  # an old blob as the store held it, with the proof of that version
            old = [(p, b) for p, b in kept if p.version != proof.version]
        else:  # an old blob, with the proof of the current version (which holds another)
            old = [(proof, b) for b in dict.fromkeys(b for _, b in kept) if b != blob]
        assert old, "alice has an older blob from her first registration on"
        return self._tamper(password, record_read(*old[index % len(old)]), then_honest)

    def swapped_blob_refused(
        self, password: bytes, own_proof: bool, then_honest: bool
    ) -> Exception:
        """Alice's KE1 with bob's blob, under alice's proof or under bob's own."""
        if not self.bob_registered:
            self.bob.register(BOB_PASSWORD, bytes(range(32)), 3)
            self.bob_registered = True
        proof, _blob = self._current_read(ALICE)
        bob_proof, bob_blob = self._current_read(BOB)
        assert bob_blob is not None
        read = record_read(bob_proof if own_proof else proof, bob_blob)
        return self._tamper(password, read, then_honest)

    def dropped_record_refused(self, password: bytes, how: str, then_honest: bool) -> Exception:
        """Alice's KE1 with her record hidden although the tree holds it (see :data:`DROPS`)."""
        proof, blob = self._current_read(ALICE)
        assert blob is not None, "the tree holds alice's slot from her first registration on"
        absent, _ = self.host.kept[0].reads[ALICE]  # the genesis: before she registered
        assert absent.value is None
        reads = {
            "no blob": (proof, None),
            "old absence": (absent, None),
            "old absence, restamped": (dataclasses.replace(absent, version=proof.version), None),
            "leaf without value": (dataclasses.replace(proof, value=None), None),
        }
        return self._tamper(password, record_read(*reads[how]), then_honest)

    def old_root_refused(self, index: int) -> StateRollbackError:
        """Restart the HSM from an older state of the store: the (emulated) NV counter refuses it.

        The old sealed state opens (sealing alone cannot tell a rollback) and the
        old store copy serves proofs for it, so only the counter stands between
        the host and every attempt spent since. The machine goes on with the
        current HSM, as a refused start leaves it.
        """
        counter_version = self.host.counter[0]
        old = [kept for kept in self.host.kept if kept.version < counter_version]
        assert old, "the genesis is older than any state after the first registration"
        kept = old[index % len(old)]
        app = self._load(kept.sealed_state)
        assert app.version == kept.version and app.head == kept.store.head()
        with pytest.raises(StateRollbackError) as refused:
            self._freshness(app, kept.sealed_state)
        assert self._freshness(self.app, self.app.sealed_state()) is Freshness.CURRENT
        return refused.value

    def _current_read(self, account: bytes) -> tuple[Proof, bytes | None]:
        """The honest proof and blob of ``account`` at the head the HSM holds."""
        return read_record_proof(self.host.store, self.app.head, self.app.record_id(account))

    def _kept_reads(self, account: bytes) -> list[tuple[Proof, bytes | None]]:
        return [kept.reads[account] for kept in self.host.kept]

    def _tamper(self, password: bytes, read: bytes, then_honest: bool) -> Exception:
        """A real KE1 of alice with a tampered ``read``: refused; then maybe relayed honestly."""
        login_state, sent = self._alice_ke1(password)
        error = self._refused(sent.request, read)
        if then_honest:
            self._relay_ke1(password, login_state, sent)
        return error

    def _refused(self, request: bytes, read: bytes) -> Exception:
        """Hand ``request`` and ``read`` to the HSM directly: a typed refusal, nothing changed."""
        app, host = self.app, self.host

        def observed() -> tuple[object, ...]:
            return (
                app.version,
                app.head,
                app.sealed_state(),
                host.store.head(),
                host.store.sealed_state(),
                len(host.stored),
                repr(app._tables),  # white box: the open sessions and registrations
                len(self.checks),  # the real KE2s
            )

        before = observed()
        with pytest.raises(READ_REFUSALS) as refused:
            app.submit(request, read, host.now_ms)
        assert app.batch_size == 0, "a refused read left something in the batch"
        assert observed() == before
        return refused.value


HsmUnderAttack.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_hsm_under_attack = pytest.mark.slow(HsmUnderAttack.TestCase)  # ~8 s on one core


class ReRegistrationUnderAttack(RuleBasedStateMachine):
    """The same client, host and invariants, with only the re-registration moves.

    Fewer rules make the schedules the big machine finds only rarely (a step of
    a registration held across a destroy) come up in most runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.m = HsmUnderAttack()

    @initialize(password=st.sampled_from(PASSWORDS), limit=st.integers(1, 3))
    def first_registration(self, password: bytes, limit: int) -> None:
        self.m.first_registration(password, limit)

    @rule()
    def status(self) -> None:
        self.m.status()

    @rule(password=st.sampled_from(PASSWORDS))
    def register_start(self, password: bytes) -> None:
        self.m.register_start(password)

    @precondition(lambda self: self.m.started)
    @rule(index=st.integers(0, 20), limit=st.integers(1, 3), then_expose=st.booleans())
    def finish_started(self, index: int, limit: int, then_expose: bool) -> None:
        self.m.finish_started(index, limit, 0, then_expose)

    @precondition(lambda self: self.m.pending_ids)
    @rule(index=st.integers(0, 20))
    def expose(self, index: int) -> None:
        self.m.expose(index)

    @rule(password=st.sampled_from(PASSWORDS))
    def spend_to_destruction(self, password: bytes) -> None:
        self.m.spend_to_destruction(password)

    @rule(password=st.sampled_from(PASSWORDS))
    def ke1(self, password: bytes) -> None:
        self.m.ke1(password)

    def teardown(self) -> None:
        self.m.teardown()


ReRegistrationUnderAttack.TestCase.settings = settings(
    max_examples=150, stateful_step_count=12, deadline=None
)
test_reregistration_under_attack = ReRegistrationUnderAttack.TestCase


def test_a_retried_registration_over_a_spent_counter_runs_in_the_machine() -> None:
    """A retried registration over a spent counter (docs/threat-model.md §5), run every time."""
    machine = HsmUnderAttack()
    machine.register_and_expose(PASSWORDS[0], 1, 0)
    machine.ke1(PASSWORDS[0])  # the only allowed check; the session stays open
    machine.register_and_expose(PASSWORDS[0], 1, 1)  # a retry: refused, the counter is spent
    machine.ke1(PASSWORDS[0])  # destroys the locked record; fake KE2
    assert machine.real(PASSWORDS[0]) == 1  # not told yet: the count stands
    machine.status()  # told: no record
    assert machine.real(PASSWORDS[0]) == 0 and record_of(machine.host, ALICE) is None
    machine.register_and_expose(PASSWORDS[0], 1, 2)  # (§5 rule 6: after being told, afresh)
    assert record_of(machine.host, ALICE) is not None
    machine.teardown()


def test_a_registration_finished_after_a_destroy_runs_in_the_machine() -> None:
    """Started before a destroy, finished after it: refused (threat-model §5 rule 3)."""
    machine = HsmUnderAttack()
    machine.register_and_expose(PASSWORDS[0], 1, 0)
    machine.register_start(PASSWORDS[0])  # names generation 1, the live record
    machine.ke1(PASSWORDS[0])  # the only allowed check
    machine.ke1(PASSWORDS[0])  # destroys the record; the client is not told
    pending = len(machine.pending_ids)
    machine.register_finish(0, 1, 1)  # refused: the slot's generation moved on
    assert len(machine.pending_ids) == pending
    machine.register_start(PASSWORDS[0])  # still names generation 1: refused at the start
    assert not machine.started
    machine.ke1(PASSWORDS[0])  # a fake KE2: the password got exactly its one check
    assert machine.real(PASSWORDS[0]) == 1
    machine.teardown()


def test_an_owner_login_between_the_hosts_guesses_runs_in_the_machine() -> None:
    """The host opens sessions after the owner's KE1, the owner succeeds, the host goes on.

    Before a success forgave only the attempts started before its own KE1, the
    host got the record's whole limit again after the owner's success.
    """
    machine = HsmUnderAttack()
    machine.register_and_expose(PASSWORDS[0], 3, 0)
    machine.ke1(PASSWORDS[0])  # the owner's KE1 (login 0)
    machine.ke1(PASSWORDS[0])  # the host's, sessions left open
    machine.ke1(PASSWORDS[0])
    machine.ke3(0, forged=False)  # the owner succeeds: told of the host's 2 checks
    assert machine.real(PASSWORDS[0]) == 2
    for _ in range(3):  # one more real check, then the record is destroyed: fake KE2s
        machine.ke1(PASSWORDS[0])
    assert machine.real(PASSWORDS[0]) == 3
    machine.teardown()


# --- the storage tampering moves, one schedule each ---------------------------------


def _machine_with_history() -> HsmUnderAttack:
    """Alice registered (limit 3) and one real check spent: her blob changed three times."""
    machine = HsmUnderAttack()
    machine.register_and_expose(PASSWORDS[0], 3, 0)
    machine.ke1(PASSWORDS[0])
    assert machine.real(PASSWORDS[0]) == 1
    return machine


def test_an_old_blob_of_alice_is_refused() -> None:
    """An older sealed slot of alice's, under the current proof or under its own old proof."""
    machine = _machine_with_history()
    for index in range(3):
        error = machine.old_blob_refused(PASSWORDS[0], index, old_proof=False, then_honest=False)
        assert isinstance(error, RecordMismatchError), error
        error = machine.old_blob_refused(PASSWORDS[0], index, old_proof=True, then_honest=False)
        assert isinstance(error, StaleProofError), error
    assert machine.real(PASSWORDS[0]) == 1  # no refused KE1 was counted or answered
    machine.old_blob_refused(PASSWORDS[0], 0, old_proof=False, then_honest=True)
    assert machine.real(PASSWORDS[0]) == 2  # the same KE1, relayed honestly: served
    machine.ke3(len(machine.logins) - 1, forged=False)  # and the owner's login completes
    machine.teardown()


def test_another_accounts_blob_is_refused() -> None:
    """Bob's sealed slot served as alice's, under alice's proof or under bob's own."""
    machine = _machine_with_history()
    error = machine.swapped_blob_refused(PASSWORDS[0], own_proof=False, then_honest=False)
    assert isinstance(error, RecordMismatchError), error
    error = machine.swapped_blob_refused(PASSWORDS[0], own_proof=True, then_honest=True)
    assert isinstance(error, ProofKeyMismatchError), error
    assert machine.real(PASSWORDS[0]) == 2
    machine.status()
    machine.teardown()


def test_a_hidden_record_of_alice_is_refused() -> None:
    """Alice's record hidden: no blob, an old or restamped absence, a leaf without its value."""
    machine = _machine_with_history()
    expected = {
        "no blob": RecordMismatchError,
        "old absence": StaleProofError,
        "old absence, restamped": RecordProofError,
        "leaf without value": RecordProofError,
    }
    for how in DROPS:
        error = machine.dropped_record_refused(WRONG, how, then_honest=False)
        assert isinstance(error, expected[how]), (how, error)
        assert not isinstance(error, StaleProofError) or how == "old absence"
    # Hidden, a record would answer with a fake KE2 and count nothing: the wrong
    # password's KE1, relayed honestly, is counted against the real record.
    machine.dropped_record_refused(WRONG, "no blob", then_honest=True)
    record = record_of(machine.host, ALICE)
    assert record is not None and record.attempts_left == 1
    machine.teardown()


def test_an_old_root_is_refused_at_restart() -> None:
    """Every older state of the store opens, and the NV counter refuses every one of them."""
    machine = _machine_with_history()
    version = machine.app.version
    for index in range(version - 1):  # genesis (1) .. version - 1
        error = machine.old_root_refused(index)
        assert isinstance(error, StateRollbackError), error
    assert machine.app.version == version
    machine.restart()  # the newest state passes the same check
    machine.ke1(PASSWORDS[0])
    assert machine.real(PASSWORDS[0]) == 2
    machine.teardown()
