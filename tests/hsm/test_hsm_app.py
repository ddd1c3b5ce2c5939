"""The HSM application in process: guess limit, destruction, re-registration, bad input."""

from __future__ import annotations

import pytest
from hsm_world import (
    CONFIG,
    FLEET,
    InProcessHost,
    RefusedError,
    RejectedError,
    VaultClient,
    channel_key_of,
    new_app,
)

from bkv.crypto import channel
from bkv.crypto.opaque import (
    KE2,
    KE2_SIZE,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.errors import EnvelopeRecoveryError, SealingError, StorageError
from bkv.hsm import release
from bkv.hsm.app import SESSION_TTL_MS, HsmApp
from bkv.hsm.messages import (
    MAX_REQUEST_SIZE,
    ErrorCode,
    FinishAction,
    HsmRequest,
    KeyReleased,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterFinish,
    RegisterStart,
    RegisterStartOk,
    RequestKind,
    StatusRequest,
    request_aad,
)
from bkv.hsm.state import CommandEnvelope, CountAttempt, apply
from bkv.wire import decode, encode

PASSWORD = b"correct horse battery staple"
SECRET = bytes(range(32))


World = tuple[HsmApp, InProcessHost, VaultClient]


@pytest.fixture
def world() -> World:
    app, _sealer = new_app()
    host = InProcessHost(app)
    return app, host, VaultClient(host, channel_key_of(app), b"alice")


def wrong_guess(client: VaultClient, n: int) -> None:
    with pytest.raises(EnvelopeRecoveryError):
        client.recover(b"wrong guess %d" % n)


# --- the guess limit ------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_exactly_limit_wrong_guesses_destroy_the_record(limit: int) -> None:
    app, _ = new_app()
    client = VaultClient(InProcessHost(app), channel_key_of(app), b"alice")
    client.register(PASSWORD, SECRET, guess_limit=limit)
    for n in range(limit - 1):
        wrong_guess(client, n)
        assert client.status().attempts_left == limit - 1 - n
    assert client.status().exists
    wrong_guess(client, limit)
    assert not client.status().exists
    # The record is gone for good: the right password no longer opens anything.
    with pytest.raises(EnvelopeRecoveryError):
        client.recover(PASSWORD)
    assert app.vault.record(b"alice") is None


def test_correct_password_after_limit_minus_one_wrong_succeeds_and_resets(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    for n in range(9):
        wrong_guess(client, n)
    assert client.status().attempts_left == 1
    assert client.recover(PASSWORD) == SECRET
    assert client.status().attempts_left == 10
    # And the reset is real: another 9 wrong guesses still leave the record alive.
    for n in range(9):
        wrong_guess(client, n)
    assert client.recover(PASSWORD) == SECRET


def test_abandoned_attempts_count_and_the_next_ke1_destroys_at_the_limit(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    client.start_login(b"never finished 1")  # no KE3, no abort: still counted
    client.start_login(b"never finished 2")
    assert client.status().attempts_left == 0
    # The limit is reached: the next KE1 destroys and is answered with a fake KE2.
    with pytest.raises(EnvelopeRecoveryError):
        client.recover(PASSWORD)
    assert app.vault.record(b"alice") is None


def test_last_chance_session_can_still_succeed(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    client.start_login(b"abandoned")
    assert client.recover(PASSWORD) == SECRET  # the 2nd (last) attempt, correct
    assert client.status().attempts_left == 2


def test_invalid_ke3_on_last_chance_destroys_and_releases_nothing(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    _state, started = client.start_login(PASSWORD)
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(started.session_id, bytes(64), FinishAction.RELEASE))
    assert refused.value.code is ErrorCode.LOGIN_FAILED
    assert app.vault.record(b"alice") is None


def test_invalid_ke3_before_the_limit_releases_nothing_and_keeps_the_count(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET)
    _state, started = client.start_login(PASSWORD)
    before = app.sealed_state()
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(started.session_id, bytes(64), FinishAction.RELEASE))
    assert refused.value.code is ErrorCode.LOGIN_FAILED
    assert app.sealed_state() == before
    assert client.status().attempts_left == 9


# --- destroyed records look like unknown accounts --------------------------------------


def test_destroyed_record_ke2_is_indistinguishable_from_never_registered(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    wrong_guess(client, 0)
    stranger = VaultClient(host, channel_key_of(app), b"bobby")  # never registered
    answers = []
    for who in (client, stranger):
        request, _ = who.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
        response = host(request)
        _state, started = who.start_login(PASSWORD)
        answers.append((len(request), len(response), started))
    (req_a, resp_a, ok_a), (req_b, resp_b, ok_b) = answers
    assert (req_a, resp_a) == (req_b, resp_b)
    assert isinstance(ok_a, RecoverStartOk) and isinstance(ok_b, RecoverStartOk)
    assert len(ok_a.ke2) == len(ok_b.ke2) == KE2_SIZE
    KE2.from_bytes(ok_a.ke2)  # both parse as valid RFC 9807 KE2 (valid points)
    KE2.from_bytes(ok_b.ke2)
    # Both paths persist, so the host sees the same behaviour, too.
    assert len(host.stored) >= 4


def test_fake_session_cannot_be_completed_or_used_to_delete(world: World) -> None:
    _app, _host, client = world
    _state, started = client.start_login(PASSWORD)  # no record for alice
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(started.session_id, bytes(64), FinishAction.DELETE))
    assert refused.value.code is ErrorCode.LOGIN_FAILED


# --- owner delete ------------------------------------------------------------------


def test_owner_deletes_with_the_password_and_the_account_can_start_over(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    assert client.delete(PASSWORD).generation == 1
    assert not client.status().exists
    assert client.register(b"new password", b"new secret").generation == 2
    assert client.recover(b"new password") == b"new secret"


def test_delete_with_a_wrong_password_is_impossible(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    with pytest.raises(EnvelopeRecoveryError):
        client.delete(b"not it")
    assert client.status().exists


# --- re-registration rule ------------------------------------------------------------


def test_reregistration_carries_over_the_spent_counter(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    for n in range(7):
        wrong_guess(client, n)
    done = client.register(PASSWORD, SECRET)  # attacker (or user) registers again
    assert done.generation == 2
    assert done.attempts_left == 3
    assert client.status().attempts_left == 3


def test_reregistration_that_would_leave_no_attempts_is_refused(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET)
    for n in range(5):
        wrong_guess(client, n)
    before = app.sealed_state()
    with pytest.raises(RefusedError) as refused:
        client.register(b"other", b"other secret", guess_limit=5)
    assert refused.value.code is ErrorCode.RECORD_EXISTS
    assert app.sealed_state() == before


def test_password_change_after_a_successful_login_starts_from_zero(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    wrong_guess(client, 0)
    assert client.recover(PASSWORD) == SECRET  # resets the counter
    assert client.register(b"new password", SECRET).attempts_left == 10
    with pytest.raises(EnvelopeRecoveryError):
        client.recover(PASSWORD)
    assert client.recover(b"new password") == SECRET


def test_replayed_registration_cannot_reinstate_a_destroyed_record(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    finish_request = host.transcript[-3]  # the RegisterFinish request the host relayed
    wrong_guess(client, 0)
    wrong_guess(client, 1)
    assert not client.status().exists
    before = app.sealed_state()
    replayed = host(finish_request)
    assert app.sealed_state() == before
    # The answer is sealed to the original client; the host only sees that it is short.
    assert app.vault.record(b"alice") is None
    assert replayed  # answered (sealed VaultFailure), not crashed


def test_old_session_cannot_release_the_secret_of_a_newer_record(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    login_state, started = client.start_login(PASSWORD)
    client.register(PASSWORD, b"the newer secret")  # generation 2 replaces generation 1
    ke3, _key, _export = client_login_finish(login_state, CONFIG, KE2.from_bytes(started.ke2))  # type: ignore[arg-type]
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(started.session_id, ke3.to_bytes(), FinishAction.RELEASE))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_registration_over_the_fleet_limit_is_refused(world: World) -> None:
    _app, _host, client = world
    with pytest.raises(RefusedError) as refused:
        client.register(PASSWORD, SECRET, guess_limit=11)
    assert refused.value.code is ErrorCode.INVALID_POLICY


def test_register_finish_needs_the_issued_registration_id(world: World) -> None:
    app, _host, client = world
    state, request = client_registration_start(PASSWORD)
    started = client.call(RegisterStart(request.to_bytes())).response
    assert isinstance(started, RegisterStartOk)
    record, _ = client_registration_finish(
        state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
    )
    before = app.sealed_state()
    with pytest.raises(RefusedError) as refused:
        client.call(RegisterFinish(bytes(32), record.to_bytes(), SECRET))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    assert app.sealed_state() == before
    # The real id still works once, and only once.
    client.call(RegisterFinish(started.registration_id, record.to_bytes(), SECRET))
    with pytest.raises(RefusedError):
        client.call(RegisterFinish(started.registration_id, record.to_bytes(), SECRET))


# --- bad input: typed error, no state change ---------------------------------------


def _unchanged(app: HsmApp, host: InProcessHost, request: bytes) -> bytes:
    before, stored = app.sealed_state(), len(host.stored)
    response = host(request)
    assert app.sealed_state() == before
    assert len(host.stored) == stored
    return response


def test_bad_outer_bytes_are_rejected_in_the_clear_without_state_change(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    good, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    cases = {
        "truncated": good[:-1],
        "empty": b"",
        "oversized": good + bytes(MAX_REQUEST_SIZE),
        "trailing": good + b"\x00",
        "wrong tag": b"\x01\x99" + good[2:],
        "wrong version": good[:2] + b"\x09" + good[3:],
    }
    for name, request in cases.items():
        with pytest.raises(RejectedError) as rejected:
            client.open(None, _unchanged(app, host, request))  # type: ignore[arg-type]
        assert rejected.value.code is ErrorCode.MALFORMED, name
    assert client.status().attempts_left == 10


def test_tampered_or_rerouted_seal_is_rejected(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    good, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    outer = decode(HsmRequest, good)
    flipped = outer.sealed[:-1] + bytes([outer.sealed[-1] ^ 1])
    cases = {
        "flipped ciphertext": (HsmRequest(FLEET, outer.kind, outer.account_id, flipped), 3),
        "other account": (HsmRequest(FLEET, outer.kind, b"mallory", outer.sealed), 3),
        "other kind": (HsmRequest(FLEET, RequestKind.STATUS, outer.account_id, outer.sealed), 3),
        "other fleet": (HsmRequest("other", outer.kind, outer.account_id, outer.sealed), 2),
    }
    for name, (request, code) in cases.items():
        with pytest.raises(RejectedError) as rejected:
            client.open(None, _unchanged(app, host, encode(request)))  # type: ignore[arg-type]
        assert rejected.value.code == code, name
    assert client.status().attempts_left == 10


def test_kind_that_does_not_match_the_sealed_message_is_refused(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    inner = encode(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    aad = request_aad(FLEET, RequestKind.STATUS, b"alice")
    state, sealed = channel.seal_request(channel_key_of(app), FLEET.encode(), inner, aad)
    request = encode(HsmRequest(FLEET, RequestKind.STATUS, b"alice", sealed))
    with pytest.raises(RefusedError) as refused:
        client.open(state, _unchanged(app, host, request))
    assert refused.value.code is ErrorCode.KIND_MISMATCH
    assert client.status().attempts_left == 10


def test_malformed_inner_messages_cost_nothing(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    ke1 = client_login_start(PASSWORD)[1].to_bytes()
    good = encode(RecoverStart(ke1))
    bad_point = encode(RecoverStart(b"\xff" * 32 + ke1[32:]))  # not a ristretto255 element
    for inner in (good[:-1], good + b"\x00", b"\x02\x03\x09" + good[3:], bad_point):
        aad = request_aad(FLEET, RequestKind.RECOVER_START, b"alice")
        state, sealed = channel.seal_request(channel_key_of(app), FLEET.encode(), inner, aad)
        request = encode(HsmRequest(FLEET, RequestKind.RECOVER_START, b"alice", sealed))
        with pytest.raises(RefusedError) as refused:
            client.open(state, _unchanged(app, host, request))
        assert refused.value.code is ErrorCode.MALFORMED
    assert client.status().attempts_left == 10


def test_ke3_without_session_and_replayed_ke3_are_protocol_errors(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    request, state = client.request_bytes(RecoverFinish(bytes(16), bytes(64)))
    with pytest.raises(RefusedError) as refused:
        client.open(state, _unchanged(app, host, request))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE

    login_state, started = client.start_login(PASSWORD)
    ke3, _key, _export = client_login_finish(login_state, CONFIG, KE2.from_bytes(started.ke2))  # type: ignore[arg-type]
    request, state = client.request_bytes(RecoverFinish(started.session_id, ke3.to_bytes()))
    client.open(state, host(request))  # the real one: releases, resets
    with pytest.raises(RefusedError) as refused:
        client.open(state, _unchanged(app, host, request))  # the replay
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_session_of_another_account_is_not_found(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    _state, started = client.start_login(PASSWORD)
    mallory = VaultClient(host, channel_key_of(app), b"mallory")
    with pytest.raises(RefusedError) as refused:
        mallory.call(RecoverFinish(started.session_id, bytes(64)))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_expired_session_is_not_found(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET)
    _state, started = client.start_login(PASSWORD)
    host.now_ms += SESSION_TTL_MS
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(started.session_id, bytes(64)))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_replayed_ke1_is_a_new_counted_attempt(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET)
    request, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    host(request)
    host(request)
    assert client.status().attempts_left == 8


def test_status_never_changes_state(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    request, _ = client.request_bytes(StatusRequest())
    _unchanged(app, host, request)


# --- persistence discipline ------------------------------------------------------


def test_ke2_is_withheld_until_the_persist_is_acknowledged(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    request, state = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    effects = app.handle(request, host.now_ms)
    assert effects.response is None and effects.persist is not None
    # The blob already counts the attempt: reopening it shows 9 left.
    reopened = HsmApp.load(effects.persist.blob, app._sealer)
    assert reopened.vault.record(b"alice").attempts_left == 9  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="outstanding"):
        app.handle(request, host.now_ms)
    response = app.persisted(effects.persist.version)
    assert isinstance(client.open(state, response), RecoverStartOk)


def test_abandoned_persist_releases_nothing_and_changes_nothing(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    before = app.sealed_state()
    request, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    effects = app.handle(request, host.now_ms)
    assert effects.persist is not None
    app.abandon(effects.persist.version)
    assert app.sealed_state() == before
    assert client.status().attempts_left == 10
    with pytest.raises(ValueError, match="no staged"):
        app.persisted(effects.persist.version)


def test_restart_from_the_sealed_state_keeps_everything(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    wrong_guess(client, 0)
    restarted = HsmApp.load(host.stored[-1], app._sealer, fleet_id=FLEET)
    client2 = VaultClient(InProcessHost(restarted), channel_key_of(restarted), b"alice")
    assert client2.status().attempts_left == 9
    assert client2.recover(PASSWORD) == SECRET


def test_tampered_state_does_not_load(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET)
    blob = app.sealed_state()
    for index in (len(blob) - 1, len(blob) // 2, 12):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(StorageError):
            HsmApp.load(bytes(tampered), app._sealer)
    with pytest.raises(SealingError):
        HsmApp.load(blob, new_app()[1])  # another sealing key
    with pytest.raises(StorageError):
        HsmApp.load(blob, app._sealer, fleet_id="other")


def test_repr_shows_no_secrets(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET)
    text = repr(app.vault) + repr(app) + repr(app.vault.record(b"alice"))
    assert repr(SECRET)[2:-1] not in text
    assert "secret=" not in text


def test_every_durable_change_is_one_logged_command(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    request, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    effects = app.handle(request, host.now_ms)
    assert effects.persist is not None and len(effects.commands) == 1
    envelope = decode(CommandEnvelope, effects.commands[0])
    assert envelope.index == effects.persist.version == app.version + 1
    assert envelope.command == CountAttempt(b"alice")
    # Replaying the logged commands on the previous state gives the staged state exactly.
    replayed, _ = apply(app.vault, envelope.command)
    app.persisted(effects.persist.version)
    assert encode(replayed) == encode(app.vault)


# --- housekeeping: a record at its limit does not linger ----------------------------


def test_tick_with_nothing_to_do_changes_nothing(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    before = app.sealed_state()
    assert host.tick() == 0
    assert app.sealed_state() == before


def test_tick_keeps_a_last_chance_record_while_its_session_is_open(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    login_state, started = client.start_login(PASSWORD)
    assert host.tick() == 0
    assert app.vault.record(b"alice") is not None
    ke3, session_key, _export = client_login_finish(
        login_state,  # type: ignore[arg-type]
        CONFIG,
        KE2.from_bytes(started.ke2),
    )
    request, state = client.request_bytes(RecoverFinish(started.session_id, ke3.to_bytes()))
    released = client.open(state, host(request))
    assert isinstance(released, KeyReleased)
    assert release.open_release(session_key, request, released.sealed_secret) == SECRET


def test_tick_destroys_a_record_whose_last_session_expired(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    client.start_login(b"walked away")
    host.now_ms += SESSION_TTL_MS
    assert host.tick() == 1
    assert app.vault.record(b"alice") is None
    assert not client.status().exists


def test_after_a_restart_records_at_their_limit_are_destroyed_first(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    other = VaultClient(host, channel_key_of(app), b"bob")
    other.register(PASSWORD, SECRET, guess_limit=2)
    client.start_login(PASSWORD)  # alice: last chance, then the HSM dies
    other.start_login(PASSWORD)  # bob: 1 of 2 used
    restarted = HsmApp.load(host.stored[-1], app._sealer)
    new_host = InProcessHost(restarted, now_ms=host.now_ms)
    assert new_host.tick() == 1
    assert restarted.vault.record(b"alice") is None
    assert restarted.vault.record(b"bob") is not None


def test_a_failed_attempt_does_not_destroy_while_an_earlier_session_can_still_succeed(
    world: World,
) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    login_state, first = client.start_login(PASSWORD)  # attempt 1 (right password), pending
    _bad_state, second = client.start_login(b"wrong")  # attempt 2: the limit
    client.abort(second.session_id)  # attempt 2 failed, but attempt 1 is still open
    assert app.vault.record(b"alice") is not None
    ke3, session_key, _export = client_login_finish(
        login_state,  # type: ignore[arg-type]
        CONFIG,
        KE2.from_bytes(first.ke2),
    )
    request, state = client.request_bytes(RecoverFinish(first.session_id, ke3.to_bytes()))
    released = client.open(state, host(request))
    assert isinstance(released, KeyReleased)
    assert release.open_release(session_key, request, released.sealed_secret) == SECRET
    assert client.status().attempts_left == 2


def test_the_last_open_attempt_failing_destroys(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    _s1, first = client.start_login(b"wrong 1")
    _s2, second = client.start_login(b"wrong 2")
    client.abort(second.session_id)
    assert app.vault.record(b"alice") is not None
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(first.session_id, bytes(64)))  # invalid KE3
    assert refused.value.code is ErrorCode.LOGIN_FAILED
    assert app.vault.record(b"alice") is None
