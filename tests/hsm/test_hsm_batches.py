"""Group commit in the HSM app: one batch, one persist, one version, answers held till durable.

Drives :class:`bkv.hsm.app.HsmApp` by hand (``submit`` / ``end_batch`` /
``persisted`` / ``abandon``, the steps :class:`bkv.hsm.runner.BatchRunner`
takes) or through the runner (``host.batch``), against the in-process host's
memory store (docs/architecture.md, "Record storage"; :mod:`bkv.hsm.app`, "Group
commit"). The 50,000-account cap and ``VaultFullError`` are gone with the
in-HSM vault: there is no cap to test, only that many accounts fit one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import pytest
from hsm_world import (
    CONFIG,
    WRONG_PASSWORD_ERRORS,
    InProcessHost,
    RefusedError,
    RejectedError,
    VaultClient,
    client_for,
    new_app,
    rebuilt_root,
    record_of,
    slot_of,
    staged_slot,
    store_and_release,
    stored_records,
    submit,
)

from bkv.crypto import channel
from bkv.crypto.opaque import (
    KE2,
    KE2_SIZE,
    ClientLoginState,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.errors import EnvelopeRecoveryError, StorageError
from bkv.hsm.app import HsmApp, Persist
from bkv.hsm.runner import BatchRunner
from bkv.hsm.sessions import SESSION_TTL_MS
from bkv.hsm.state import (
    PENDING_RECORD_TTL_MS,
    CommandBatch,
    CountAttempt,
    DestroyRecord,
    ExpirePending,
)
from bkv.protocol.messages import (
    AbortOk,
    ErrorCode,
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
    StatusOk,
    StatusRequest,
)
from bkv.records.tree import TreeStore
from bkv.wire import decode

PASSWORD = b"correct horse battery staple"
SECRET = bytes(range(32))


@dataclass(frozen=True)
class Ke1:
    """A KE1 request built by a client, and what it needs to open its answer."""

    client: VaultClient
    request: bytes
    state: channel.ClientChannelState
    login: ClientLoginState

    def started(self, response: bytes | None) -> RecoverStartOk:
        assert response is not None
        started = self.client.open(self.state, response)
        assert isinstance(started, RecoverStartOk)
        return started

    def is_real(self, response: bytes | None, password: bytes = PASSWORD) -> bool:
        """Whether the KE2 is a real record's for ``password`` (a fake one opens under none)."""
        try:
            client_login_finish(self.login, CONFIG, KE2.from_bytes(self.started(response).ke2))
        except EnvelopeRecoveryError:
            return False
        return True


def ke1(client: VaultClient, password: bytes = PASSWORD) -> Ke1:
    login, message = client_login_start(password)
    request, state = client.request_bytes(RecoverStart(message.to_bytes()))
    return Ke1(client, request, state, login)


def status_request(client: VaultClient) -> tuple[bytes, channel.ClientChannelState]:
    return client.request_bytes(StatusRequest())


def opened_status(
    client: VaultClient, state: channel.ClientChannelState, response: bytes | None
) -> StatusOk:
    assert response is not None
    status = client.open(state, response)
    assert isinstance(status, StatusOk)
    return status


@dataclass
class World:
    app: HsmApp
    host: InProcessHost
    clients: dict[bytes, VaultClient]

    def client(self, account: bytes) -> VaultClient:
        if account not in self.clients:
            self.clients[account] = client_for(self.app, account, self.host)
        return self.clients[account]

    def register(self, account: bytes, guess_limit: int = 10) -> VaultClient:
        client = self.client(account)
        client.register(PASSWORD, SECRET, guess_limit=guess_limit)
        return client


@pytest.fixture
def world() -> World:
    app, _sealer = new_app()
    return World(app, InProcessHost(app), {})


def commands_of(persist: Persist) -> tuple[object, ...]:
    batch = decode(CommandBatch, persist.commands)
    assert batch.version == persist.version
    return batch.commands


def finish_registration(client: VaultClient, password: bytes) -> bytes:
    """RegisterStart + RegisterFinish (no expose): a pending record; its registration id."""
    live = client.status()
    state, request = client_registration_start(password)
    started = client.call(RegisterStart(request.to_bytes(), live.generation if live.exists else 0))
    assert isinstance(started, RegisterStartOk)
    record, _export = client_registration_finish(
        state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
    )
    done = client.call(RegisterFinish(started.registration_id, record.to_bytes(), SECRET))
    assert isinstance(done, RegisterFinishOk)
    return started.registration_id


def assert_store_is_a_full_rebuild(host: InProcessHost) -> None:
    """The app's head is the store's, and the root a rebuild of every stored record gives."""
    app = host.app
    assert host.store.head() == app.head
    assert host.store.sealed_state() == app.sealed_state()
    assert app.head.version == app.version - 1
    assert app.head.root == rebuilt_root(host)


# --- one batch, one persist --------------------------------------------------------


def test_requests_of_different_accounts_make_one_persist_and_wait_for_it(world: World) -> None:
    app, host = world.app, world.host
    accounts = [b"alice", b"bob", b"carol"]
    for account in accounts:
        world.register(account)
    version, head, stored = app.version, app.head, len(host.stored)
    sent = [ke1(world.client(account)) for account in accounts]
    tickets = [submit(host, k.request) for k in sent]
    assert app.batch_size == len(accounts) and len(set(tickets)) == len(tickets)

    end = app.end_batch()
    assert end.persist is not None and not end.answers  # every answer is held
    persist = end.persist
    # One persist: one new version, one tree update covering the three records.
    assert persist.version == version + 1
    assert persist.update.old_head == head
    assert persist.update.new_head.version == head.version + 1
    assert set(persist.records) == {app.record_id(a) for a in accounts}
    assert commands_of(persist) == tuple(CountAttempt(a) for a in accounts)
    for account in accounts:
        staged = staged_slot(app, account, persist).record
        assert staged is not None and staged.attempts_left == 9
    # Until persisted() nothing moved, and the app takes nothing else.
    assert (app.version, app.head, len(host.stored)) == (version, head, stored)
    extra = ke1(world.client(b"alice"))
    with pytest.raises(ValueError, match="outstanding"):
        submit(host, extra.request)
    with pytest.raises(ValueError, match="outstanding"):
        app.end_batch()
    with pytest.raises(ValueError, match="outstanding"):
        app.housekeep(b"alice", host.runner.read(b"alice"), host.now_ms)

    answers = store_and_release(host, persist)
    assert set(answers) == set(tickets)
    assert all(k.is_real(answers[t]) for k, t in zip(sent, tickets, strict=True))
    assert (app.version, app.head, len(host.stored)) == (
        version + 1,
        persist.update.new_head,
        stored + 1,
    )
    for account in accounts:
        record = record_of(host, account)
        assert record is not None and record.attempts_left == 9
    assert_store_is_a_full_rebuild(host)


def test_an_abandoned_batch_releases_no_answer_and_keeps_the_head(world: World) -> None:
    app, host = world.app, world.host
    for account in (b"alice", b"bob"):
        world.register(account)
    version, head, sealed = app.version, app.head, app.sealed_state()
    sent = [ke1(world.client(a)) for a in (b"alice", b"bob")]
    for k in sent:
        submit(host, k.request)
    persist = app.end_batch().persist
    assert persist is not None
    with pytest.raises(ValueError, match="no outstanding persist"):
        app.abandon(persist.version + 1)  # only the outstanding version
    app.abandon(persist.version)
    assert (app.version, app.head, app.sealed_state()) == (version, head, sealed)
    with pytest.raises(ValueError, match="no outstanding persist"):
        app.persisted(persist.version)  # its answers are gone
    # Nothing was counted, no session opened: the app serves on from the old head.
    for account in (b"alice", b"bob"):
        assert world.client(account).status().attempts_left == 10
    with pytest.raises(WRONG_PASSWORD_ERRORS):
        world.client(b"alice").recover(b"not it")
    assert world.client(b"bob").recover(PASSWORD) == SECRET
    assert_store_is_a_full_rebuild(host)


def test_a_batch_the_store_refuses_is_abandoned_and_can_be_retried(world: World) -> None:
    """Through the runner: a failed write raises, answers nothing, and costs nothing."""
    app, host = world.app, world.host
    client = world.register(b"alice")
    version, head = app.version, app.head

    class BrokenStore:
        def __init__(self, inner: TreeStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def commit(self, *_args: object) -> None:
            raise StorageError("the disk is full")

    broken = BatchRunner(app, cast(TreeStore, BrokenStore(host.store)))
    attempt = ke1(client)
    with pytest.raises(StorageError):
        broken.run([attempt.request], host.now_ms)
    assert (app.version, app.head) == (version, head) and app.batch_size == 0
    assert host.store.head() == head
    (response,) = host.batch([attempt.request])  # the host retries the same KE1
    assert attempt.is_real(response)
    assert client.status().attempts_left == 9  # counted once


# --- requests of one account in one batch ----------------------------------------------


def test_a_second_request_of_an_account_sees_the_first_ones_change(world: World) -> None:
    app, host = world.app, world.host
    client = world.register(b"alice")
    version = app.version
    first, second = ke1(client), ke1(client)
    before, before_state = status_request(client)
    after, after_state = status_request(client)
    responses = host.batch([before, first.request, second.request, after])
    assert app.version == version + 1  # one persist for the lot
    # A status before the KE1s sees none of them; one after sees both.
    seen_before = opened_status(client, before_state, responses[0])
    seen_after = opened_status(client, after_state, responses[3])
    assert (seen_before.attempts_left, seen_before.failed_attempts) == (10, 0)
    assert (seen_after.attempts_left, seen_after.failed_attempts) == (8, 2)
    # Both KE1s were counted (two attempts), each on the real record.
    assert first.is_real(responses[1]) and second.is_real(responses[2])
    record = record_of(host, b"alice")
    assert record is not None and record.attempts_left == 8 and record.attempts_started == 2


def test_a_ke1_after_its_accounts_limit_in_the_same_batch_destroys(world: World) -> None:
    app, host = world.app, world.host
    client = world.register(b"alice", guess_limit=2)
    sent = [ke1(client) for _ in range(3)]
    for k in sent:
        submit(host, k.request)
    persist = app.end_batch().persist
    assert persist is not None
    # The third sees the two counted before it in this batch: the record is at its limit.
    assert commands_of(persist) == (CountAttempt(b"alice"),) * 3
    staged = staged_slot(app, b"alice", persist)
    assert staged.record is None
    answers = list(store_and_release(host, persist).values())
    assert [k.is_real(r) for k, r in zip(sent, answers, strict=True)] == [True, True, False]
    assert record_of(host, b"alice") is None
    assert_store_is_a_full_rebuild(host)


def test_a_login_opened_and_finished_in_separate_batches_forgives_both_attempts(
    world: World,
) -> None:
    """Sessions open only when their batch is durable; the later attempt's KE3 forgives both."""
    host = world.host
    client = world.register(b"alice")
    first, second = ke1(client), ke1(client)
    answers = host.batch([first.request, second.request])
    started = second.started(answers[1])
    ke3, _key, _export = client_login_finish(second.login, CONFIG, KE2.from_bytes(started.ke2))
    finish = client.call(RecoverFinish(started.session_id, ke3.to_bytes()))
    assert isinstance(finish, KeyReleased)
    assert finish.failed_attempts == 1  # the first, not finished
    assert client.status().attempts_left == 10


def test_an_abort_batched_after_the_last_ke1_does_not_destroy_its_record(world: World) -> None:
    """Batched as in sequence: the new KE1's session can still succeed, so the abort keeps it."""
    host = world.host
    client = world.register(b"alice", guess_limit=2)
    typo = client.start_login(b"typo")  # attempt 1, its session open
    owner = ke1(client)  # attempt 2, the last: the owner's login, right password
    abort, abort_state = client.request_bytes(RecoverAbort(typo.session_id))
    started_answer, aborted = host.batch([owner.request, abort])
    assert client.open(abort_state, aborted) == AbortOk()
    assert owner.is_real(started_answer)  # a real record's KE2 ...
    assert record_of(host, b"alice") is not None  # ... for a record that must still be there


def test_an_abort_in_its_own_batch_after_the_last_ke1_does_not_destroy(world: World) -> None:
    """The same two requests one batch each: the sequential behaviour the batch must equal."""
    host = world.host
    client = world.register(b"alice", guess_limit=2)
    typo = client.start_login(b"typo")
    owner = ke1(client)
    (started_answer,) = host.batch([owner.request])
    client.abort(typo.session_id)
    assert owner.is_real(started_answer)
    assert record_of(host, b"alice") is not None
    started = owner.started(started_answer)
    ke3, _key, _export = client_login_finish(owner.login, CONFIG, KE2.from_bytes(started.ke2))
    assert isinstance(client.call(RecoverFinish(started.session_id, ke3.to_bytes())), KeyReleased)


def test_housekeeping_batched_after_the_last_ke1_does_not_destroy_its_record(
    world: World,
) -> None:
    app, host = world.app, world.host
    client = world.register(b"alice", guess_limit=1)
    owner = ke1(client)  # the last attempt
    ticket = submit(host, owner.request)
    app.housekeep(b"alice", host.runner.read(b"alice"), host.now_ms)  # the host asks anyway
    persist = app.end_batch().persist
    assert persist is not None
    answer = store_and_release(host, persist)[ticket]
    assert owner.is_real(answer)
    assert record_of(host, b"alice") is not None


# --- batches that change nothing durable --------------------------------------------------


def test_a_batch_of_reads_persists_nothing_and_answers_at_once(world: World) -> None:
    app, host = world.app, world.host
    world.register(b"alice")
    version, sealed, stored = app.version, app.sealed_state(), len(host.stored)
    readers = [world.client(a) for a in (b"alice", b"bob", b"alice")]  # bob: never registered
    requests = [status_request(c) for c in readers]
    # A KE3 for no session and bytes that are no request change nothing either.
    no_session, no_session_state = readers[0].request_bytes(RecoverFinish(bytes(16), bytes(64)))
    tickets = [submit(host, r) for r, _ in requests]
    tickets.append(submit(host, no_session))
    tickets.append(app.submit(b"\x00garbage", None, host.now_ms))

    end = app.end_batch()
    assert end.persist is None
    assert set(end.answers) == set(tickets)
    answered = [end.answers[t] for t in tickets]
    exists = [
        opened_status(c, state, response).exists
        for c, (_r, state), response in zip(readers, requests, answered[:3], strict=True)
    ]
    assert exists == [True, False, True]
    no_session_answer, garbage_answer = answered[3:]
    assert no_session_answer is not None and garbage_answer is not None
    with pytest.raises(RefusedError) as refused:
        readers[0].open(no_session_state, no_session_answer)
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    with pytest.raises(RejectedError) as rejected:
        readers[0].open(None, garbage_answer)
    assert rejected.value.code is ErrorCode.MALFORMED
    assert (app.version, app.sealed_state(), len(host.stored)) == (version, sealed, stored)
    with pytest.raises(ValueError, match="no outstanding persist"):
        app.persisted(version + 1)  # nothing to acknowledge
    assert app.end_batch().persist is None  # an empty batch: nothing at all
    # The same reads with one KE1 among them make the batch durable (the negative case).
    # Then the reads' answers are held with the rest, and released by persisted().
    attempt = ke1(world.client(b"alice"))
    tickets = [submit(host, r) for r, _ in requests]
    submit(host, attempt.request)
    end = app.end_batch()
    assert end.persist is not None and not end.answers
    answers = store_and_release(host, end.persist)
    assert len(answers) == len(requests) + 1
    attempts_left = [
        opened_status(c, state, answers[t]).attempts_left
        for c, (_r, state), t in zip(readers, requests, tickets, strict=True)
    ]
    assert attempts_left == [10, 0, 10]  # each read before the KE1 of its batch
    assert_store_is_a_full_rebuild(host)


def test_a_ke1_for_an_unknown_account_costs_a_persist_with_the_same_root(world: World) -> None:
    """Same cost (RFC 9807 section 10.9): a new version, the same root, a same-size KE2."""
    app, host = world.app, world.host
    world.register(b"alice")
    version, head, stored = app.version, app.head, len(host.stored)
    stranger = ke1(world.client(b"nobody"))
    ticket = submit(host, stranger.request)
    end = app.end_batch()
    assert end.persist is not None and not end.answers  # held, like a counted attempt's
    persist = end.persist
    assert persist.version == version + 1 and not persist.records
    assert commands_of(persist) == (CountAttempt(b"nobody"),)
    assert persist.update.new_head.version == head.version + 1
    assert persist.update.new_head.root == head.root
    fake = store_and_release(host, persist)[ticket]
    assert (app.version, app.head.root, len(host.stored)) == (version + 1, head.root, stored + 1)
    assert slot_of(host, b"nobody") is None  # the dummy slot was discarded
    assert_store_is_a_full_rebuild(host)

    # A real record's KE2, for comparison: the same sizes, both well-formed.
    owner = ke1(world.client(b"alice"))
    (real,) = host.batch([owner.request])
    assert fake is not None and len(fake) == len(real)
    assert len(stranger.started(fake).ke2) == len(owner.started(real).ke2) == KE2_SIZE
    assert not stranger.is_real(fake) and owner.is_real(real)
    # A status for the unknown account, in contrast, is a read: no persist.
    status, state = status_request(world.client(b"nobody"))
    ticket = submit(host, status)
    end = app.end_batch()
    assert end.persist is None
    assert not opened_status(world.client(b"nobody"), state, end.answers[ticket]).exists


# --- the store the batches leave --------------------------------------------------------


def test_the_store_after_many_batches_equals_a_full_rebuild(world: World) -> None:
    app, host = world.app, world.host
    assert_store_is_a_full_rebuild(host)  # the genesis: the empty tree
    steps: list[Callable[[], object]] = [
        lambda: world.register(b"alice"),
        lambda: world.register(b"bob", guess_limit=1),
        lambda: world.register(b"carol"),
        lambda: host.batch([ke1(world.client(a)).request for a in (b"alice", b"bob", b"dave")]),
        lambda: world.client(b"carol").delete(PASSWORD),
        lambda: finish_registration(world.client(b"erin"), PASSWORD),  # pending only
        lambda: host.batch([ke1(world.client(b"bob")).request]),  # at its limit: destroyed
        lambda: world.client(b"alice").recover(PASSWORD),
    ]
    versions = [app.version]
    for step in steps:
        step()
        versions.append(app.version)
        assert_store_is_a_full_rebuild(host)
    host.now_ms += PENDING_RECORD_TTL_MS
    assert host.tick() == 1  # erin's pending record
    assert_store_is_a_full_rebuild(host)
    assert versions == sorted(versions)
    # Every stored record opens, for its own account; tombstones stay, nobody's dummy does not.
    records = stored_records(host)
    assert set(records) == {app.record_id(a) for a in (b"alice", b"bob", b"carol", b"erin")}
    for account in (b"alice", b"bob", b"carol", b"erin"):
        slot = slot_of(host, account)
        assert slot is not None and slot.account_id == account
    assert [record_of(host, a) is not None for a in (b"alice", b"bob", b"carol", b"erin")] == [
        True,
        False,
        False,
        False,
    ]
    # The check has teeth: a rebuild missing one record gives another root.
    host.store._records.pop(app.record_id(b"carol"))
    assert rebuilt_root(host) != app.head.root


def test_many_accounts_register_in_three_batches(world: World) -> None:
    """No cap on accounts, and a registration step of many accounts is one write."""
    app, host = world.app, world.host
    accounts = [b"user-%03d" % n for n in range(24)]
    clients = [world.client(a) for a in accounts]
    version, stored = app.version, len(host.stored)

    def run(requests: Sequence[tuple[bytes, channel.ClientChannelState]]) -> list[object]:
        responses = host.batch([r for r, _ in requests])
        return [c.open(s, r) for c, (_r, s), r in zip(clients, requests, responses, strict=True)]

    starts = [client_registration_start(PASSWORD) for _ in clients]
    started = run(
        [
            c.request_bytes(RegisterStart(m.to_bytes()))
            for c, (_s, m) in zip(clients, starts, strict=True)
        ]
    )
    assert (app.version, len(host.stored)) == (version, stored)  # a start is volatile
    finishes = []
    for client, (state, _m), answer in zip(clients, starts, started, strict=True):
        assert isinstance(answer, RegisterStartOk)
        record, _export = client_registration_finish(
            state, CONFIG, RegistrationResponse.from_bytes(answer.registration_response)
        )
        finish = RegisterFinish(answer.registration_id, record.to_bytes(), SECRET)
        finishes.append((client.request_bytes(finish), answer.registration_id))
    assert all(isinstance(a, RegisterFinishOk) for a in run([f for f, _ in finishes]))
    assert (app.version, len(host.stored)) == (version + 1, stored + 1)
    exposes = [
        c.request_bytes(RegisterExpose(rid)) for c, (_f, rid) in zip(clients, finishes, strict=True)
    ]
    assert all(isinstance(a, RegisterExposeOk) for a in run(exposes))
    assert (app.version, len(host.stored)) == (version + 2, stored + 2)
    assert len(stored_records(host)) == len(accounts)
    assert_store_is_a_full_rebuild(host)
    # Raw registrations (their secret is not an SDK-wrapped key): the KE2 shows the record.
    last = ke1(clients[-1])
    (response,) = host.batch([last.request])
    assert last.is_real(response)


# --- housekeeping --------------------------------------------------------------------


def test_housekeeping_destroys_a_record_at_its_limit_once_its_session_expired(
    world: World,
) -> None:
    app, host = world.app, world.host
    alice = world.register(b"alice", guess_limit=1)
    bob = world.register(b"bob", guess_limit=2)
    alice.start_login(b"walked away")  # alice's last attempt, session open
    bob.start_login(b"walked away too")  # bob: 1 of 2
    generation = record_of(host, b"alice").generation  # type: ignore[union-attr]
    assert app.housekeeping_due(host.now_ms) == ()  # alice's open session could still succeed
    assert host.tick() == 0
    host.now_ms += SESSION_TTL_MS
    assert app.housekeeping_due(host.now_ms) == (b"alice",)  # never bob: he has one left
    version = app.version
    assert host.runner.housekeeping(host.now_ms) == 1
    assert app.version == version + 1
    assert record_of(host, b"alice") is None
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.generation > generation  # a tombstone, moved on
    assert record_of(host, b"bob") is not None
    assert app.housekeeping_due(host.now_ms) == ()
    assert host.tick() == 0
    assert not alice.status().exists and bob.status().attempts_left == 1
    assert_store_is_a_full_rebuild(host)


def test_housekeep_by_hand_is_one_command_that_answers_no_one(world: World) -> None:
    app, host = world.app, world.host
    world.register(b"alice", guess_limit=1)
    world.client(b"alice").start_login(b"walked away")
    host.now_ms += SESSION_TTL_MS
    (due,) = app.housekeeping_due(host.now_ms)
    generation = record_of(host, due).generation  # type: ignore[union-attr]
    app.housekeep(due, host.runner.read(due), host.now_ms)
    assert app.batch_size == 1
    end = app.end_batch()
    assert end.persist is not None and not end.answers
    assert commands_of(end.persist) == (DestroyRecord(b"alice", generation),)
    answers = store_and_release(host, end.persist)
    assert list(answers.values()) == [None]  # housekeeping answers no one
    # Nothing left to do: housekeep then stages nothing, and the batch persists nothing.
    app.housekeep(due, host.runner.read(due), host.now_ms)
    assert app.batch_size == 0
    assert app.end_batch().persist is None
    assert app.housekeeping_due(host.now_ms) == ()


def test_housekeeping_zeroizes_an_expired_pending_record(world: World) -> None:
    app, host = world.app, world.host
    client = world.register(b"alice")
    finish_registration(client, b"never exposed")
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.pending is not None
    host.now_ms += PENDING_RECORD_TTL_MS - 1
    assert app.housekeeping_due(host.now_ms) == ()  # not yet expired
    host.now_ms += 1
    assert app.housekeeping_due(host.now_ms) == (b"alice",)
    app.housekeep(b"alice", host.runner.read(b"alice"), host.now_ms)
    persist = app.end_batch().persist
    assert persist is not None
    assert commands_of(persist) == (ExpirePending(b"alice", host.now_ms),)
    store_and_release(host, persist)
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.pending is None and slot.record is not None
    assert app.housekeeping_due(host.now_ms) == ()
    assert client.recover(PASSWORD) == SECRET  # the live record is untouched
    assert_store_is_a_full_rebuild(host)
