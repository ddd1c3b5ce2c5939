"""What the host sees: every byte it relayed or stored holds no secret and no guessing aid."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
from hsm_world import (
    CONFIG,
    WRONG_PASSWORD_ERRORS,
    InProcessHost,
    RefusedError,
    VaultClient,
    client_for,
    new_app,
    record_of,
    stored_records,
)

from bkv.crypto import channel, oprf, ristretto
from bkv.crypto.opaque import KE2, RegistrationResponse, client_login_start
from bkv.crypto.opaque.client import client_login_finish_traced
from bkv.crypto.opaque.registration import (
    client_registration_finish_traced,
    client_registration_start,
)
from bkv.errors import DecryptionError, EnvelopeRecoveryError
from bkv.protocol import release
from bkv.protocol.messages import (
    ErrorCode,
    HsmRequest,
    HsmResponse,
    KeyReleased,
    RecoverAbort,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterExpose,
    RegisterExposeOk,
    RegisterFinish,
    RegisterStart,
    RegisterStartOk,
)
from bkv.wire import decode

PASSWORD = b"hunter2 but longer"
BACKUP_KEY = os.urandom(32)


Exchange = tuple[bytes, channel.ClientChannelState]


def _secrets_of_a_full_run(client: VaultClient) -> tuple[list[bytes], list[Exchange]]:
    """Register, recover, fail once; return every client-side secret and (request, state) pairs."""
    secrets: list[bytes] = [PASSWORD, BACKUP_KEY]
    exchanges: list[Exchange] = []

    def call(inner: object) -> object:
        request, state = client.request_bytes(inner)  # type: ignore[arg-type]
        exchanges.append((request, state))
        return client.open(state, client.relay(request))

    reg_state, reg_request = client_registration_start(PASSWORD)
    started = call(RegisterStart(reg_request.to_bytes()))
    assert isinstance(started, RegisterStartOk)
    response = RegistrationResponse.from_bytes(started.registration_response)
    oprf_output = oprf.finalize(
        PASSWORD, reg_state.blind, ristretto.decode_element(response.evaluated_message)
    )
    record, export_key, trace = client_registration_finish_traced(
        reg_state, CONFIG, response, envelope_nonce=os.urandom(32)
    )
    secrets += [oprf_output, trace.randomized_password, export_key, trace.stored.masking_key]
    call(RegisterFinish(started.registration_id, record.to_bytes(), BACKUP_KEY))
    call(RegisterExpose(started.registration_id))

    login_state, ke1 = client_login_start(PASSWORD)
    opened = call(RecoverStart(ke1.to_bytes()))
    assert isinstance(opened, RecoverStartOk)
    ke3, session_key, export2, login_trace = client_login_finish_traced(
        login_state, CONFIG, KE2.from_bytes(opened.ke2)
    )
    keys = login_trace.keys
    secrets += [session_key, export2, login_trace.randomized_password, ke3.to_bytes()]
    secrets += [keys.handshake_secret, keys.client_mac_key, keys.server_mac_key]
    finish = RecoverFinish(opened.session_id, ke3.to_bytes())
    request, state = client.request_bytes(finish)
    exchanges.append((request, state))
    released = client.open(state, client.relay(request))
    assert isinstance(released, KeyReleased)
    assert release.open_release(session_key, request, released.sealed_secret) == BACKUP_KEY

    bad_state, bad_ke1 = client_login_start(b"a wrong guess")
    opened = call(RecoverStart(bad_ke1.to_bytes()))
    assert isinstance(opened, RecoverStartOk)
    with pytest.raises(EnvelopeRecoveryError):
        client_login_finish_traced(bad_state, CONFIG, KE2.from_bytes(opened.ke2))
    call(RecoverAbort(opened.session_id))
    return secrets, exchanges


def _fragments(secret: bytes) -> list[bytes]:
    # Any 16-byte window of a secret (catches a partial copy), or the whole of a short one.
    if len(secret) <= 16:
        return [secret]
    return [secret[i : i + 16] for i in range(len(secret) - 15)]


def test_transcript_holds_no_secret_and_no_guessing_aid() -> None:
    app, _sealer = new_app()
    host = InProcessHost(app)
    client = client_for(app, b"alice", host)
    secrets, exchanges = _secrets_of_a_full_run(client)
    transcript = b"".join(host.transcript)
    assert len(host.transcript) > 10 and any(host.stored)
    # What the host stores is in the transcript too: the sealed states and every sealed record.
    records = stored_records(host)
    assert records and all(blob in transcript for blob in records.values())
    assert all(state in transcript for state in host.stored)
    # The HSM side's secrets: the record as stored (OPAQUE record with its masking key
    # and envelope, the wrapped secret) and the fleet keys the records are sealed under.
    record = record_of(host, b"alice")
    assert record is not None
    fleet = app._snapshot.secrets
    secrets += [record.opaque_record, record.secret, record.registration_id]
    secrets += [fleet.record_key, fleet.channel_private_key, fleet.fake_key, fleet.opaque]
    for secret in secrets:
        for fragment in _fragments(secret):
            assert fragment not in transcript
            assert fragment.hex().encode() not in transcript

    # The host could replay anything it saw. Replayed KE3s and aborts find no session;
    # replayed KE1s are counted, and their answers are sealed to the original client.
    attempts_before = record.attempts_used
    for request, state in exchanges:
        outer = decode(HsmRequest, request)
        version_before = app.version
        response = host(request)
        if outer.kind.name in {"RECOVER_FINISH", "RECOVER_ABORT", "REGISTER_FINISH"}:
            with pytest.raises(RefusedError) as refused:
                client.open(state, response)
            assert refused.value.code is ErrorCode.PROTOCOL_STATE
        if outer.kind.name == "REGISTER_EXPOSE":
            # Idempotent while that record is live, else refused; never a state change.
            with contextlib.suppress(RefusedError):
                assert isinstance(client.open(state, response), RegisterExposeOk)
            assert app.version == version_before
        # Without the client's per-request secret, no response opens.
        forged = dataclasses.replace(state, response_secret=os.urandom(32))
        with pytest.raises(DecryptionError):
            channel.open_response(forged, decode(HsmResponse, response).sealed)
    # Replays of the two KE1s counted two attempts; nothing was released or reset.
    after = record_of(host, b"alice")
    assert after is not None and after.attempts_used == attempts_before + 2


def test_sdk_transcript_holds_neither_password_nor_backup_key() -> None:
    app, _sealer = new_app()
    host = InProcessHost(app)
    client = client_for(app, b"alice", host)
    client.register(PASSWORD, BACKUP_KEY)
    with pytest.raises(WRONG_PASSWORD_ERRORS):
        client.recover(b"a wrong guess")
    assert client.recover(PASSWORD) == BACKUP_KEY
    new_password = b"the new password, also long"
    client.change_password(PASSWORD, new_password)
    assert client.recover(new_password) == BACKUP_KEY
    client.delete(new_password)
    transcript = b"".join(host.transcript)
    assert len(host.transcript) > 20
    for secret in (PASSWORD, new_password, BACKUP_KEY):
        for fragment in _fragments(secret):
            assert fragment not in transcript
            assert fragment.hex().encode() not in transcript
