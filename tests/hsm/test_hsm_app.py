"""The HSM application in process, driven by the shipped SDK: guess limit, destruction,
re-registration (two-phase register/expose), bad input."""

from __future__ import annotations

import contextlib

import pytest
from hsm_world import (
    CONFIG,
    FLEET,
    WRONG_PASSWORD_ERRORS,
    InProcessHost,
    RefusedError,
    RejectedError,
    VaultClient,
    client_for,
    new_app,
    record_of,
    slot_of,
    staged_slot,
    store_and_release,
    submit,
)

from bkv.client.operator import artifact_from_public_keys
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
from bkv.errors import (
    CodecError,
    EnvelopeRecoveryError,
    RecordDestroyedError,
    RecordExistsError,
    SealingError,
    StorageError,
    WrongPasswordError,
)
from bkv.hsm.app import _HANDLERS, REGISTRATION_TTL_MS, SESSION_TTL_MS, HsmApp
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.state import PENDING_RECORD_TTL_MS, CommandBatch, CountAttempt, apply
from bkv.protocol.messages import (
    INNER_REQUESTS,
    KIND_OF_REQUEST,
    MAX_REQUEST_SIZE,
    ErrorCode,
    FinishAction,
    HsmRequest,
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
    request_aad,
)
from bkv.wire import decode, encode

PASSWORD = b"correct horse battery staple"
SECRET = bytes(range(32))


World = tuple[HsmApp, InProcessHost, VaultClient]


@pytest.fixture
def world() -> World:
    app, _sealer = new_app()
    host = InProcessHost(app)
    return app, host, client_for(app, b"alice", host)


def wrong_guess(client: VaultClient, n: int) -> None:
    with pytest.raises(WRONG_PASSWORD_ERRORS):
        client.recover(b"wrong guess %d" % n)


def finish_registration(
    client: VaultClient, password: bytes, secret: bytes = SECRET, guess_limit: int = 10
) -> tuple[bytes, RegisterFinishOk]:
    """RegisterStart + RegisterFinish (raw, no expose): the registration id and the answer.

    The start names the live record it replaces, as the SDK does (from a status).
    """
    live = client.status()
    state, request = client_registration_start(password)
    started = client.call(RegisterStart(request.to_bytes(), live.generation if live.exists else 0))
    assert isinstance(started, RegisterStartOk)
    record, _export = client_registration_finish(
        state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
    )
    finish = RegisterFinish(started.registration_id, record.to_bytes(), secret, guess_limit)
    done = client.call(finish)
    assert isinstance(done, RegisterFinishOk)
    return started.registration_id, done


def last_relayed(host: InProcessHost, kind: RequestKind) -> bytes:
    """The last request of ``kind`` the host relayed (its transcript also holds blobs, answers)."""
    for sent in reversed(host.transcript):
        with contextlib.suppress(CodecError):
            if decode(HsmRequest, sent).kind is kind:
                return sent
    raise AssertionError(f"no {kind.name} request was relayed")


def ke2_opens(client: VaultClient, password: bytes) -> bool:
    """Send one KE1 and leave the session open; whether its KE2 is a real record's for ``password``.

    A KE2 opens under the right password only if it came from the real record
    (a fake-record KE2 opens under no password): this counts real password checks.
    """
    half = client.start_login(password)
    try:
        client_login_finish(half.login_state, CONFIG, KE2.from_bytes(half.started.ke2))
    except EnvelopeRecoveryError:
        return False
    return True


# --- the guess limit ------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_exactly_limit_wrong_guesses_destroy_the_record(limit: int) -> None:
    app, _ = new_app()
    host = InProcessHost(app)
    client = client_for(app, b"alice", host)
    client.register(PASSWORD, SECRET, guess_limit=limit)
    for n in range(limit - 1):
        wrong_guess(client, n)
        assert client.status().attempts_left == limit - 1 - n
    assert client.status().exists
    with pytest.raises(RecordDestroyedError):
        client.recover(b"the last wrong guess")
    assert not client.status().exists
    # The record is gone for good: the right password no longer opens anything.
    with pytest.raises(RecordDestroyedError):
        client.recover(PASSWORD)
    assert record_of(host, b"alice") is None


def test_correct_password_after_limit_minus_one_wrong_succeeds_and_forgives(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    for n in range(9):
        with pytest.raises(WrongPasswordError) as wrong:
            client.recover(b"wrong guess %d" % n)
        assert wrong.value.attempts_left == 9 - n
    assert client.status().attempts_left == 1
    assert client.recover(PASSWORD) == SECRET
    assert client.status().attempts_left == 10
    # The 9 guesses started before the login were forgiven: 9 more still leave the record.
    for n in range(9):
        wrong_guess(client, n)
    assert client.recover(PASSWORD) == SECRET


def test_abandoned_attempts_count_and_the_next_ke1_destroys_at_the_limit(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    client.start_login(b"never finished 1")  # no KE3, no abort: still counted
    client.start_login(b"never finished 2")
    assert client.status().attempts_left == 0
    # The limit is reached: the next KE1 destroys and is answered with a fake KE2.
    with pytest.raises(RecordDestroyedError):
        client.recover(PASSWORD)
    assert record_of(host, b"alice") is None


def test_last_chance_session_can_still_succeed(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    client.start_login(b"abandoned")
    assert client.recover(PASSWORD) == SECRET  # the 2nd (last) attempt, correct
    assert client.status().attempts_left == 2


def test_invalid_ke3_on_last_chance_destroys_and_releases_nothing(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    half = client.start_login(PASSWORD)
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(half.session_id, bytes(64), FinishAction.RELEASE))
    assert refused.value.code is ErrorCode.LOGIN_FAILED
    assert record_of(host, b"alice") is None


def test_invalid_ke3_before_the_limit_releases_nothing_and_keeps_the_count(world: World) -> None:
    app, _host, client = world
    client.register(PASSWORD, SECRET)
    half = client.start_login(PASSWORD)
    before = app.sealed_state()
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(half.session_id, bytes(64), FinishAction.RELEASE))
    assert refused.value.code is ErrorCode.LOGIN_FAILED
    assert app.sealed_state() == before
    assert client.status().attempts_left == 9


# --- destroyed records look like unknown accounts --------------------------------------


def test_destroyed_record_ke2_is_indistinguishable_from_never_registered(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    wrong_guess(client, 0)
    stranger = client_for(app, b"bobby", host)  # never registered
    answers = []
    for who in (client, stranger):
        request, _ = who.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
        stored = len(host.stored)
        response = host(request)
        assert len(host.stored) == stored + 1  # the probe was persisted, exactly once
        stored = len(host.stored)
        started = who.start_login(PASSWORD).started
        assert len(host.stored) == stored + 1
        answers.append((len(request), len(response), started))
    (req_a, resp_a, ok_a), (req_b, resp_b, ok_b) = answers
    assert (req_a, resp_a) == (req_b, resp_b)
    assert isinstance(ok_a, RecoverStartOk) and isinstance(ok_b, RecoverStartOk)
    assert len(ok_a.ke2) == len(ok_b.ke2) == KE2_SIZE
    KE2.from_bytes(ok_a.ke2)  # both parse as valid RFC 9807 KE2 (valid points)
    KE2.from_bytes(ok_b.ke2)


def test_fake_session_cannot_be_completed_or_used_to_delete(world: World) -> None:
    _app, _host, client = world
    half = client.start_login(PASSWORD)  # no record for alice
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(half.session_id, bytes(64), FinishAction.DELETE))
    assert refused.value.code is ErrorCode.LOGIN_FAILED


# --- owner delete ------------------------------------------------------------------


def test_owner_deletes_with_the_password_and_the_account_can_start_over(world: World) -> None:
    _app, _host, client = world
    assert client.register(PASSWORD, SECRET).generation == 1
    client.delete(PASSWORD)
    assert not client.status().exists
    new_secret = bytes(range(32, 64))
    # Record 1 was deleted (the tombstone moved to 2): the new record is 3.
    assert client.register(b"new password", new_secret).generation == 3
    assert client.recover(b"new password") == new_secret


def test_delete_with_a_wrong_password_is_impossible(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    with pytest.raises(WrongPasswordError):
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
    with pytest.raises(RecordExistsError):
        client.register(b"other", bytes(32), guess_limit=5)
    assert app.sealed_state() == before


def test_password_change_after_a_successful_login_starts_from_zero(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    wrong_guess(client, 0)
    assert client.recover(PASSWORD) == SECRET  # forgives the wrong guess before it
    assert client.register(b"new password", SECRET).attempts_left == 10
    with pytest.raises(WrongPasswordError):
        client.recover(PASSWORD)
    assert client.recover(b"new password") == SECRET


def test_change_password_keeps_the_backup_key_and_retires_the_old_password(
    world: World,
) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    wrong_guess(client, 0)
    status = client.change_password(PASSWORD, b"new password")
    assert status.generation == 2 and status.attempts_left == 10  # the recover forgave it
    with pytest.raises(WrongPasswordError):
        client.recover(PASSWORD)
    assert client.recover(b"new password") == SECRET


def test_replayed_registration_cannot_reinstate_a_destroyed_record(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    finish_request = last_relayed(host, RequestKind.REGISTER_FINISH)
    wrong_guess(client, 0)
    wrong_guess(client, 1)
    assert not client.status().exists
    before = app.sealed_state()
    replayed = host(finish_request)
    assert app.sealed_state() == before
    # The answer is sealed to the original client; the host only sees that it is short.
    assert record_of(host, b"alice") is None
    assert replayed  # answered (sealed VaultFailure), not crashed


def test_old_session_cannot_release_the_secret_of_a_newer_record(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    half = client.start_login(PASSWORD)
    client.register(PASSWORD, bytes(range(1, 33)))  # generation 2 replaces generation 1
    with pytest.raises(RefusedError) as refused:
        client.finish_login(half)
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_registration_over_the_fleet_limit_is_refused(world: World) -> None:
    _app, _host, client = world
    with pytest.raises(RefusedError) as refused:
        finish_registration(client, PASSWORD, guess_limit=11)
    assert refused.value.code is ErrorCode.INVALID_POLICY


def test_register_finish_needs_the_issued_registration_id(world: World) -> None:
    app, _host, client = world
    state, request = client_registration_start(PASSWORD)
    started = client.call(RegisterStart(request.to_bytes()))
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
            client.open(None, _unchanged(app, host, request))
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
            client.open(None, _unchanged(app, host, encode(request)))
        assert rejected.value.code == code, name
    assert client.status().attempts_left == 10


def test_kind_that_does_not_match_the_sealed_message_is_refused(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    inner = encode(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    aad = request_aad(FLEET, RequestKind.STATUS, b"alice")
    state, sealed = channel.seal_request(app.channel_public_key, FLEET.encode(), inner, aad)
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
        state, sealed = channel.seal_request(app.channel_public_key, FLEET.encode(), inner, aad)
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

    half = client.start_login(PASSWORD)
    ke3, _key, _export = client_login_finish(
        half.login_state, CONFIG, KE2.from_bytes(half.started.ke2)
    )
    request, state = client.request_bytes(RecoverFinish(half.session_id, ke3.to_bytes()))
    client.open(state, host(request))  # the real one: releases, resets
    with pytest.raises(RefusedError) as refused:
        client.open(state, _unchanged(app, host, request))  # the replay
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_session_of_another_account_is_not_found(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    half = client.start_login(PASSWORD)
    mallory = client_for(app, b"mallory", host)
    for probe in (RecoverFinish(half.session_id, bytes(64)), RecoverAbort(half.session_id)):
        with pytest.raises(RefusedError) as refused:
            mallory.call(probe)
        assert refused.value.code is ErrorCode.PROTOCOL_STATE
    # Naming alice's session from another account did not close it: alice can still finish.
    assert client.finish_login(half) == SECRET


def test_expired_session_is_not_found(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET)
    half = client.start_login(PASSWORD)
    host.now_ms += SESSION_TTL_MS
    with pytest.raises(RefusedError) as refused:
        client.finish_login(half)
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


def test_every_inner_request_type_has_one_handler_and_one_kind() -> None:
    """The dispatch table, the accepted messages and the clear kinds list the same types."""
    assert set(_HANDLERS) == set(INNER_REQUESTS) == set(KIND_OF_REQUEST)
    assert len(set(KIND_OF_REQUEST.values())) == len(KIND_OF_REQUEST)


def test_public_keys_render_the_document_the_operator_reads(world: World) -> None:
    app, _host, _client = world
    rendered = render_public_keys(app.public_keys())
    artifact = artifact_from_public_keys(
        rendered,
        fleet_id=FLEET,
        members=("hsm-1",),
        guess_limit=10,
        not_before_ms=0,
        not_after_ms=1,
    )
    assert artifact.key("channel").key == app.channel_public_key
    assert artifact.key("opaque_ake").key == app.opaque_public_key
    assert b" " not in rendered and rendered.startswith(b'{"fleet_id":"test-fleet","keys":[')
    assert rendered.endswith(b'"policy":{"guess_limit":10}}')


# --- persistence discipline ------------------------------------------------------


def test_ke2_is_withheld_until_the_persist_is_acknowledged(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    request, state = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    ticket = submit(host, request)
    end = app.end_batch()
    assert not end.answers and end.persist is not None
    persist = end.persist
    # The sealed record already counts the attempt: opening it shows 9 left ...
    staged = staged_slot(app, b"alice", persist).record
    assert staged is not None and staged.attempts_left == 9
    # ... and the sealed state is the next version, committing to the new root.
    reopened = HsmApp.load(persist.sealed_state, app._sealer)
    assert reopened.version == app.version + 1 == persist.version
    assert reopened.head == persist.update.new_head != app.head
    # Nothing more is taken, and nothing is answered, while the persist is outstanding.
    with pytest.raises(ValueError, match="outstanding"):
        submit(host, request)
    with pytest.raises(ValueError, match="outstanding"):
        app.end_batch()
    with pytest.raises(ValueError, match="no outstanding persist"):
        app.persisted(persist.version + 1)
    answers = store_and_release(host, persist)
    assert set(answers) == {ticket}
    response = answers[ticket]
    assert response is not None
    assert isinstance(client.open(state, response), RecoverStartOk)
    assert app.version == persist.version and app.sealed_state() == persist.sealed_state


def test_abandoned_persist_releases_nothing_and_changes_nothing(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    before = app.sealed_state()
    head, version = app.head, app.version
    request, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    submit(host, request)
    end = app.end_batch()
    assert end.persist is not None and not end.answers
    app.abandon(end.persist.version)
    assert (app.sealed_state(), app.head, app.version) == (before, head, version)
    assert client.status().attempts_left == 10
    with pytest.raises(ValueError, match="no outstanding persist"):
        app.persisted(end.persist.version)
    with pytest.raises(ValueError, match="no outstanding persist"):
        app.abandon(end.persist.version)


def test_restart_from_the_sealed_state_keeps_everything(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    wrong_guess(client, 0)
    assert host.store.sealed_state() == host.stored[-1] == app.sealed_state()
    restarted = HsmApp.load(host.stored[-1], app._sealer, fleet_id=FLEET)
    assert (restarted.version, restarted.head) == (app.version, app.head)
    client2 = client_for(restarted, b"alice", InProcessHost(restarted, store=host.store))
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
    app, host, client = world
    client.register(PASSWORD, SECRET)
    registration_id, _done = finish_registration(client, b"pending password")  # a pending record
    half = client.start_login(PASSWORD)
    record = record_of(host, b"alice")
    slot = slot_of(host, b"alice")
    assert record is not None and slot is not None and slot.pending is not None
    # A batch held open at its persist (its Persist and BatchEnd are reprs a log might show).
    request, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    submit(host, request)
    end = app.end_batch()
    assert end.persist is not None
    snapshot = app._snapshot
    text = "".join(
        repr(shown)
        for shown in (snapshot, app, app._cipher, end, end.persist, record, slot, half.started)
    )
    secrets = snapshot.secrets
    held = (record.secret, record.opaque_record, slot.pending.opaque_record, secrets.opaque)
    keys = (secrets.channel_private_key, secrets.fake_key, secrets.record_key)
    for secret in held + keys + (end.persist.sealed_state, *end.persist.records.values()):
        assert repr(secret)[2:-1] not in text and secret.hex() not in text
    # The masking key is bytes 32..64 of the OPAQUE record (RFC 9807 section 5.1.1).
    masking_key = record.opaque_record[32:64]
    assert repr(masking_key)[2:-1] not in text and masking_key.hex() not in text
    for capability in (half.session_id, registration_id, record.registration_id):
        assert repr(capability)[2:-1] not in text and capability.hex() not in text
    assert "secret=" not in text and "opaque_record=" not in text
    assert "session_id=" not in text and "registration_id=" not in text
    assert "_key=" not in text.replace("channel_public_key=", "")
    assert host.stored  # (the world persisted what it did)
    store_and_release(host, end.persist)


def test_every_durable_change_is_one_logged_command(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    before = slot_of(host, b"alice")
    request, _ = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    submit(host, request)
    persist = app.end_batch().persist
    assert persist is not None
    batch = decode(CommandBatch, persist.commands)
    assert batch.version == persist.version == app.version + 1
    assert batch.commands == (CountAttempt(b"alice"),)
    # Replaying the logged commands on the previous slots gives the stored slots exactly.
    replayed, _ = apply(app._snapshot.policy, before, batch.commands[0])
    assert replayed is not None and encode(replayed) == encode(staged_slot(app, b"alice", persist))
    assert set(persist.records) == {app.record_id(b"alice")}
    store_and_release(host, persist)
    assert encode(replayed) == encode(slot_of(host, b"alice"))


# --- housekeeping: a record at its limit does not linger ----------------------------


def test_tick_with_nothing_to_do_changes_nothing(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    before = app.sealed_state()
    assert host.tick() == 0
    assert app.sealed_state() == before


@pytest.mark.parametrize("clock", ["float", "negative", "bool", "past u64"])
def test_tick_refuses_a_bad_clock_like_handle_and_stays_usable(world: World, clock: str) -> None:
    """A clock value no command can carry (u64) is caller misuse, refused before anything is staged.

    A pending record past its expiry makes housekeeping build an ExpirePending
    from the clock: a float one used to be staged, then fail to encode, leaving
    the app waiting for the acknowledgement of a persist it never announced.
    """
    app, host, client = world
    client.register(PASSWORD, SECRET)
    finish_registration(client, b"never exposed")  # a pending record
    due = host.now_ms + PENDING_RECORD_TTL_MS
    bad = {"float": float(due), "negative": -1, "bool": True, "past u64": 2**64}[clock]
    before = app.sealed_state()
    status, _ = client.request_bytes(StatusRequest())
    with pytest.raises(ValueError, match="now_ms"):
        app.housekeeping_due(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now_ms"):
        app.housekeep(b"alice", host.runner.read(b"alice"), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now_ms"):
        app.submit(status, host.runner.read(b"alice"), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now_ms"):
        host.runner.housekeeping(bad)  # type: ignore[arg-type]
    assert app.batch_size == 0
    end = app.end_batch()  # nothing was staged
    assert end.persist is None and not end.answers
    assert app.sealed_state() == before
    host.now_ms = due
    assert host.tick() == 1  # the same housekeeping with a good clock
    assert client.status().exists


def test_tick_keeps_a_last_chance_record_while_its_session_is_open(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    half = client.start_login(PASSWORD)
    assert host.tick() == 0
    assert record_of(host, b"alice") is not None
    assert client.finish_login(half) == SECRET


def test_tick_destroys_a_record_whose_last_session_expired(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    client.start_login(b"walked away")
    host.now_ms += SESSION_TTL_MS
    assert host.tick() == 1
    assert record_of(host, b"alice") is None
    assert not client.status().exists


def _restart_with_alice_locked(world: World) -> InProcessHost:
    """alice at her limit (her last session open), bob not; then the HSM restarts."""
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=1)
    other = client_for(app, b"bob", host)
    other.register(PASSWORD, SECRET, guess_limit=2)
    client.start_login(PASSWORD)  # alice: last chance, then the HSM dies
    other.start_login(PASSWORD)  # bob: 1 of 2 used
    restarted = HsmApp.load(host.stored[-1], app._sealer)
    return InProcessHost(restarted, now_ms=host.now_ms, store=host.store)


def test_after_a_restart_housekeeping_knows_no_locked_record(world: World) -> None:
    """The watch lists are volatile (bounded memory): a restarted HSM destroys a record left
    at its limit at its next KE1 (below), not by housekeeping (docs/threat-model.md §13)."""
    new_host = _restart_with_alice_locked(world)
    assert new_host.app.housekeeping_due(new_host.now_ms) == ()
    assert new_host.tick() == 0
    assert record_of(new_host, b"alice") is not None


def test_after_a_restart_a_record_at_its_limit_answers_no_check_and_the_next_ke1_destroys(
    world: World,
) -> None:
    """What holds today without housekeeping: the normal path still ends a locked record."""
    new_host = _restart_with_alice_locked(world)
    alice = client_for(new_host.app, b"alice", new_host)
    assert record_of(new_host, b"alice") is not None
    assert not ke2_opens(alice, PASSWORD)  # a fake-record KE2: no check, and it destroys
    assert record_of(new_host, b"alice") is None
    bob = record_of(new_host, b"bob")
    assert bob is not None and bob.attempts_left == 1


def test_a_session_does_not_survive_a_restart(world: World) -> None:
    """Sessions are volatile: after a restart the owner's KE3 finds none, releases nothing,
    forgives nothing, and the attempt its KE1 cost stays counted."""
    app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=3)
    wrong_guess(client, 0)
    half = client.start_login(PASSWORD)
    restarted = HsmApp.load(host.stored[-1], app._sealer)
    again_host = InProcessHost(restarted, now_ms=host.now_ms, store=host.store)
    again = client_for(restarted, b"alice", again_host)
    with pytest.raises(RefusedError) as refused:
        again.finish_login(half)
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    assert (again.status().attempts_left, again.status().failed_attempts) == (1, 2)


def test_a_failed_attempt_does_not_destroy_while_an_earlier_session_can_still_succeed(
    world: World,
) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    first = client.start_login(PASSWORD)  # attempt 1 (right password), pending
    second = client.start_login(b"wrong")  # attempt 2: the limit
    client.abort(second.session_id)  # attempt 2 failed, but attempt 1 is still open
    assert record_of(host, b"alice") is not None
    assert client.finish_login(first) == SECRET
    # Attempt 2 started after attempt 1's KE1: that success does not forgive it.
    assert client.status().attempts_left == 1


def test_the_last_open_attempt_failing_destroys(world: World) -> None:
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    first = client.start_login(b"wrong 1")
    second = client.start_login(b"wrong 2")
    client.abort(second.session_id)
    assert record_of(host, b"alice") is not None
    with pytest.raises(RefusedError) as refused:
        client.call(RecoverFinish(first.session_id, bytes(64)))  # invalid KE3
    assert refused.value.code is ErrorCode.LOGIN_FAILED
    assert record_of(host, b"alice") is None


# --- forgiveness: a valid KE3 forgives only the attempts started before its own KE1 --------


def test_a_login_forgives_no_attempt_started_after_its_ke1(world: World) -> None:
    """A host that sees the owner's KE1 gets no extra checks out of the owner's success.

    It starts 9 sessions after the owner's KE1, lets the owner finish, then tries
    10 more: at most 10 checks after the owner's KE1 in all (19 if the owner's
    success forgave every attempt counted so far).
    """
    _app, _host, client = world
    client.register(PASSWORD, SECRET)  # guess limit 10
    owner = client.start_login(PASSWORD)
    # The host's KE1s use the right password only so that a real-record KE2 shows:
    # each one that opens is a password check the record answered.
    checks = sum(ke2_opens(client, PASSWORD) for _ in range(9))
    key, released = client.finish_login_released(owner)
    assert key == SECRET
    assert released.failed_attempts == 9  # the owner is told: 9 checks were not theirs
    checks += sum(ke2_opens(client, PASSWORD) for _ in range(10))
    assert checks == 10


def test_the_owner_is_told_the_failed_attempts_since_the_last_recovery(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    for n in range(3):
        wrong_guess(client, n)
    status = client.call(StatusRequest())
    assert isinstance(status, StatusOk)
    assert (status.failed_attempts, status.attempts_left) == (3, 7)
    key, released = client.finish_login_released(client.start_login(PASSWORD))
    assert (key, released.failed_attempts) == (SECRET, 3)
    status = client.call(StatusRequest())
    assert isinstance(status, StatusOk)
    assert (status.failed_attempts, status.attempts_left) == (0, 10)
    _key, released = client.finish_login_released(client.start_login(PASSWORD))
    assert released.failed_attempts == 0  # nothing failed since the last recovery
    # A guess made while the owner's login is open is told, and stays counted.
    owner = client.start_login(PASSWORD)
    wrong_guess(client, 9)
    _key, released = client.finish_login_released(owner)
    assert released.failed_attempts == 1
    status = client.call(StatusRequest())
    assert isinstance(status, StatusOk)
    assert (status.failed_attempts, status.attempts_left) == (1, 9)


def test_a_login_older_than_the_last_forgiven_one_forgives_nothing_more(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    older = client.start_login(PASSWORD)
    newer = client.start_login(PASSWORD)
    _key, released = client.finish_login_released(newer)
    assert released.failed_attempts == 1  # the older login, not finished yet
    assert client.status().attempts_left == 10  # ... and forgiven: it started before
    wrong_guess(client, 0)
    key, released = client.finish_login_released(older)  # valid: releases, forgives nothing
    assert (key, released.failed_attempts) == (SECRET, 1)
    assert client.status().attempts_left == 9


# --- two-phase registration: RegisterFinish stores a pending record, RegisterExpose --------


def test_a_pending_record_answers_no_check_and_costs_nothing(world: World) -> None:
    _app, host, client = world
    registration_id, done = finish_registration(client, PASSWORD, guess_limit=3)
    assert (done.generation, done.guess_limit, done.attempts_left) == (1, 3, 3)
    assert not client.status().exists  # not live yet
    for _ in range(5):  # more than the limit: none is a real check, none is counted
        assert not ke2_opens(client, PASSWORD)
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.record is None and slot.pending is not None
    assert slot.pending.attempts_used == 0
    exposed = client.call(RegisterExpose(registration_id))
    assert isinstance(exposed, RegisterExposeOk)
    assert (exposed.generation, exposed.attempts_left) == (1, 3)
    assert ke2_opens(client, PASSWORD)  # now it is live


def test_the_live_record_stays_live_under_its_own_counter_until_expose(world: World) -> None:
    _app, _host, client = world
    client.register(PASSWORD, SECRET)
    registration_id, done = finish_registration(client, b"new password", bytes(32))
    assert done.generation == 2 and done.attempts_left == 10
    # Until expose, the old password works and guesses count against the old record.
    assert not ke2_opens(client, b"new password")
    assert ke2_opens(client, PASSWORD)
    assert client.status().generation == 1 and client.status().attempts_left == 8
    exposed = client.call(RegisterExpose(registration_id))
    assert isinstance(exposed, RegisterExposeOk)
    assert (exposed.generation, exposed.attempts_left) == (2, 8)  # carried over
    assert not ke2_opens(client, PASSWORD)  # the old record is gone


def test_dropped_register_finish_ok_then_spent_attempts_yield_at_most_limit_checks(
    world: World,
) -> None:
    """A host racing the owner's login, now harmless: 2x the limit before, at most the limit now.

    The host drops RegisterFinishOk, spends `limit` KE1s with sessions left open
    (so housekeeping destroys nothing), then lets the client's retry through.
    """
    _app, host, client = world
    limit = 3
    real_checks = 0
    finish_registration(client, PASSWORD, guess_limit=limit)  # the host drops the answer
    for _ in range(limit):
        real_checks += ke2_opens(client, PASSWORD)  # the attacker's "guesses" (the right one!)
    assert real_checks == 0  # the pending record answered none
    client.register(PASSWORD, SECRET, guess_limit=limit)  # the client's retry, exposed
    for _ in range(limit):
        real_checks += ke2_opens(client, PASSWORD)  # sessions left open
    assert host.tick() == 0  # open sessions could still succeed: nothing destroyed yet
    with pytest.raises(RecordExistsError):  # another retry cannot reset the spent counter
        client.register(PASSWORD, SECRET, guess_limit=limit)
    for _ in range(2):  # the first of these destroys the locked record; both get fake KE2s
        real_checks += ke2_opens(client, PASSWORD)
    assert real_checks == limit
    assert not client.status().exists


def test_a_locked_live_record_cannot_be_replaced_by_a_retried_registration(
    world: World,
) -> None:
    app, host, client = world
    limit = 2
    client.register(PASSWORD, SECRET, guess_limit=limit)
    registration_id, _done = finish_registration(client, PASSWORD, guess_limit=limit)  # Ok dropped
    real_checks = sum(ke2_opens(client, PASSWORD) for _ in range(limit))  # sessions kept open
    assert real_checks == limit
    before = app.sealed_state()
    with pytest.raises(RefusedError) as refused:  # the pending record cannot go live
        client.call(RegisterExpose(registration_id))
    assert refused.value.code is ErrorCode.RECORD_EXISTS
    assert app.sealed_state() == before
    with pytest.raises(RecordExistsError):  # nor can a new registration
        client.register(PASSWORD, SECRET, guess_limit=limit)
    assert not any(ke2_opens(client, PASSWORD) for _ in range(3))
    # The locked record was destroyed by the normal path (the next KE1), pending and all.
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.record is None and slot.pending is None
    assert host.tick() == 0


def test_a_retried_register_finish_replaces_the_pending_record(world: World) -> None:
    _app, host, client = world
    first_id, first = finish_registration(client, b"first try")
    second_id, second = finish_registration(client, b"second try")
    assert second.generation == first.generation + 1
    with pytest.raises(RefusedError) as refused:
        client.call(RegisterExpose(first_id))  # replaced: refused, changes nothing
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    exposed = client.call(RegisterExpose(second_id))
    assert isinstance(exposed, RegisterExposeOk) and exposed.generation == second.generation
    assert ke2_opens(client, b"second try") and not ke2_opens(client, b"first try")
    assert record_of(host, b"alice") is not None


def test_expose_is_idempotent_and_needs_a_known_fresh_registration_id(world: World) -> None:
    app, host, client = world
    for unknown in (bytes(32), b"\x01" * 32):
        with pytest.raises(RefusedError) as refused:
            client.call(RegisterExpose(unknown))
        assert refused.value.code is ErrorCode.PROTOCOL_STATE
    registration_id, _done = finish_registration(client, PASSWORD)
    with pytest.raises(RefusedError) as refused:
        client.call(RegisterExpose(bytes(32)))  # wrong id while one is pending
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    request, state = client.request_bytes(RegisterExpose(registration_id))
    assert isinstance(client.open(state, host(request)), RegisterExposeOk)
    after, version = app.sealed_state(), app.version
    # The host replays the expose (or the client retries it): the same answer, no change.
    again = client.open(state, host(request))
    assert isinstance(again, RegisterExposeOk) and again.attempts_left == 10
    assert app.sealed_state() == after and app.version == version
    # An expose that comes too late is refused, and the pending record stays unguessable.
    stale_id, _done = finish_registration(client, b"another password")
    host.now_ms += PENDING_RECORD_TTL_MS
    with pytest.raises(RefusedError) as refused:
        client.call(RegisterExpose(stale_id))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    assert ke2_opens(client, PASSWORD) and not ke2_opens(client, b"another password")


def test_destroying_the_live_record_also_drops_a_pending_one(world: World) -> None:
    """A withheld RegisterExpose cannot revive fresh guesses after the live record's end."""
    _app, host, client = world
    client.register(PASSWORD, SECRET, guess_limit=2)
    registration_id, _done = finish_registration(client, PASSWORD, guess_limit=2)
    request, state = client.request_bytes(RegisterExpose(registration_id))  # withheld
    for n in range(2):
        wrong_guess(client, n)
    assert not client.status().exists
    with pytest.raises(RefusedError) as refused:
        client.open(state, host(request))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.record is None and slot.pending is None


def test_register_start_without_finish_expires(world: World) -> None:
    _app, host, client = world
    state, request = client_registration_start(PASSWORD)
    started = client.call(RegisterStart(request.to_bytes()))
    assert isinstance(started, RegisterStartOk)
    record, _ = client_registration_finish(
        state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
    )
    host.now_ms += REGISTRATION_TTL_MS
    with pytest.raises(RefusedError) as refused:
        client.call(RegisterFinish(started.registration_id, record.to_bytes(), SECRET))
    assert refused.value.code is ErrorCode.PROTOCOL_STATE


def test_register_start_must_name_the_live_record_it_replaces(world: World) -> None:
    app, _host, client = world
    live = client.register(PASSWORD, SECRET)
    _state, request = client_registration_start(b"next password")
    version = app.version
    for wrong in (0, live.generation + 1):
        with pytest.raises(RefusedError) as refused:
            client.call(RegisterStart(request.to_bytes(), wrong))
        assert refused.value.code is ErrorCode.PROTOCOL_STATE
    assert isinstance(
        client.call(RegisterStart(request.to_bytes(), live.generation)), RegisterStartOk
    )
    assert app.version == version  # a start is volatile: nothing persisted


def test_an_expired_pending_record_is_zeroized_at_the_next_tick(world: World) -> None:
    app, host, client = world
    client.register(PASSWORD, SECRET)
    finish_registration(client, b"never exposed")
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.pending is not None
    host.now_ms += PENDING_RECORD_TTL_MS - 1
    assert host.tick() == 0  # not yet expired
    host.now_ms += 1
    assert host.tick() == 1
    slot = slot_of(host, b"alice")
    assert slot is not None and slot.pending is None and slot.record is not None
    assert client.recover(PASSWORD) == SECRET  # the live record is untouched
    restarted = HsmApp.load(host.stored[-1], app._sealer)
    slot = slot_of(InProcessHost(restarted, now_ms=host.now_ms, store=host.store), b"alice")
    assert slot is not None and slot.pending is None
