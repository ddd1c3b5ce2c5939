"""The SDK's sans-IO core: request building, answer reading, error mapping, key wrapping."""

from __future__ import annotations

from typing import get_args

import pytest
from host_world import pinned

from bkv.client import vault
from bkv.client.trust import FleetKeys
from bkv.crypto import channel
from bkv.errors import (
    BkvError,
    ClientAuthenticationError,
    CodecError,
    DecryptionError,
    ProtocolStateError,
    RecordExistsError,
    ServerAuthenticationError,
    UnauthenticatedRejectionError,
    VaultError,
    VaultFullError,
)
from bkv.protocol.artifact import ROLE_CHANNEL, ROLE_OPAQUE_AKE, FleetKeyArtifact
from bkv.protocol.messages import (
    INNER_RESPONSES,
    ErrorCode,
    HsmRejected,
    HsmRequest,
    HsmResponse,
    InnerResponse,
    RequestKind,
    StatusOk,
    StatusRequest,
    VaultFailure,
    request_aad,
)
from bkv.wire import decode, encode

SK, PK = channel.derive_channel_key_pair(bytes(range(32)))
FLEET = pinned("fleet-1", PK, bytes(32))
ACCOUNT = b"alice"
EXPORT_KEY = bytes(range(64))
BACKUP_KEY = bytes(range(200, 232))


def _answer(pending: vault.PendingRequest, inner: object) -> bytes:
    outer = decode(HsmRequest, pending.request)
    aad = request_aad(outer.fleet_id, outer.kind, outer.account_id)
    state, _ = channel.open_request(SK, outer.fleet_id.encode(), outer.sealed, aad)
    return encode(HsmResponse(channel.seal_response(state, encode(inner))))


def test_build_request_binds_routing_fields() -> None:
    pending = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    outer = decode(HsmRequest, pending.request)
    assert (outer.fleet_id, outer.kind, outer.account_id) == (
        "fleet-1",
        RequestKind.STATUS,
        ACCOUNT,
    )
    aad = request_aad("fleet-1", RequestKind.STATUS, ACCOUNT)
    _, plaintext = channel.open_request(SK, b"fleet-1", outer.sealed, aad)
    assert plaintext == encode(StatusRequest())
    with pytest.raises(DecryptionError):
        channel.open_request(
            SK, b"fleet-1", outer.sealed, request_aad("fleet-1", outer.kind, b"bob")
        )


def test_read_response_opens_the_answer() -> None:
    pending = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    answer = vault.read_response(pending, _answer(pending, StatusOk(True, 3, 10, 7, 0)))
    status = vault.status_of(vault.expect(answer, StatusOk))
    assert status == vault.VaultStatus(True, 3, 10, 7, 0)


def test_read_response_refuses_an_answer_to_another_request() -> None:
    first = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    second = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    with pytest.raises(DecryptionError):
        vault.read_response(first, _answer(second, StatusOk(True, 3, 10, 7, 0)))


SEALED_ERRORS = [
    (ErrorCode.MALFORMED, CodecError),
    (ErrorCode.WRONG_FLEET, VaultError),
    (ErrorCode.UNDECRYPTABLE, DecryptionError),
    (ErrorCode.KIND_MISMATCH, CodecError),
    (ErrorCode.PROTOCOL_STATE, ProtocolStateError),
    (ErrorCode.LOGIN_FAILED, ClientAuthenticationError),
    (ErrorCode.RECORD_EXISTS, RecordExistsError),
    (ErrorCode.INVALID_POLICY, VaultError),
    (ErrorCode.VAULT_FULL, VaultFullError),
]


@pytest.mark.parametrize(("code", "error"), SEALED_ERRORS)
def test_sealed_error_codes_map_to_typed_errors(code: ErrorCode, error: type[BkvError]) -> None:
    assert set(ErrorCode) == {code for code, _ in SEALED_ERRORS}
    pending = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    with pytest.raises(error) as raised:
        vault.read_response(pending, _answer(pending, VaultFailure(code)))
    assert not isinstance(raised.value, UnauthenticatedRejectionError)


@pytest.mark.parametrize(("code", "error"), SEALED_ERRORS)
def test_only_codes_the_hsm_sends_in_the_clear_keep_their_errors_in_the_clear(
    code: ErrorCode, error: type[BkvError]
) -> None:
    """A clear HsmRejected is the host's word: only "could not open it" codes are believed."""
    pending = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    with pytest.raises(BkvError) as raised:
        vault.read_response(pending, encode(HsmRejected(code)))
    if code in (ErrorCode.MALFORMED, ErrorCode.WRONG_FLEET, ErrorCode.UNDECRYPTABLE):
        assert type(raised.value) is error
    else:
        assert type(raised.value) is UnauthenticatedRejectionError
        assert code.name in str(raised.value)


def test_the_inner_answers_come_from_the_one_registry() -> None:
    assert set(INNER_RESPONSES) == set(get_args(InnerResponse))


def test_garbage_answers_raise_codec_errors() -> None:
    pending = vault.build_request(FLEET, ACCOUNT, StatusRequest())
    for answer in (b"", b"\x01\x02\x01", b"\xff" * 40):
        with pytest.raises(CodecError):
            vault.read_response(pending, answer)


def test_expect_refuses_the_wrong_answer() -> None:
    with pytest.raises(ProtocolStateError):
        vault.expect(StatusOk(True, 1, 10, 10, 0), VaultFailure)


def test_recovered_key_checks_its_size_and_hides_the_key() -> None:
    recovered = vault.RecoveredKey(BACKUP_KEY, failed_attempts=2, generation=1)
    assert "failed_attempts=2" in repr(recovered) and BACKUP_KEY.hex() not in repr(recovered)
    with pytest.raises(ValueError):
        vault.RecoveredKey(BACKUP_KEY + b"\x00", failed_attempts=0, generation=1)


def test_check_server_key() -> None:
    vault.check_server_key(FLEET, bytes(32))
    with pytest.raises(ServerAuthenticationError):
        vault.check_server_key(FLEET, b"\x01" * 32)


def test_the_vault_uses_the_fleet_keys_by_role() -> None:
    assert FLEET.channel_public_key == FLEET.public_key(ROLE_CHANNEL) == PK
    assert FLEET.opaque_public_key == FLEET.public_key(ROLE_OPAQUE_AKE) == bytes(32)
    assert FLEET.source == "pinned" and FLEET.epoch is None


def test_wrap_round_trip_and_binding() -> None:
    secret = vault.wrap_backup_key(EXPORT_KEY, ACCOUNT, BACKUP_KEY)
    assert len(secret) == vault.WRAPPED_KEY_SIZE
    assert BACKUP_KEY not in secret
    assert vault.unwrap_backup_key(EXPORT_KEY, ACCOUNT, secret) == BACKUP_KEY
    with pytest.raises(DecryptionError):
        vault.unwrap_backup_key(bytes(64), ACCOUNT, secret)
    with pytest.raises(DecryptionError):
        vault.unwrap_backup_key(EXPORT_KEY, b"bob", secret)
    for index in range(len(secret)):
        tampered = bytearray(secret)
        tampered[index] ^= 1
        with pytest.raises(DecryptionError):
            vault.unwrap_backup_key(EXPORT_KEY, ACCOUNT, bytes(tampered))
    with pytest.raises(DecryptionError):
        vault.unwrap_backup_key(EXPORT_KEY, ACCOUNT, secret[:-1])


def test_wrap_refuses_misuse() -> None:
    with pytest.raises(ValueError):
        vault.wrap_backup_key(EXPORT_KEY, ACCOUNT, BACKUP_KEY[:31])
    with pytest.raises(ValueError):
        vault.wrap_backup_key(b"", ACCOUNT, BACKUP_KEY)


@pytest.mark.parametrize(
    ("digest", "epoch", "source"),
    [
        (b"\x00" * 31, None, "pinned"),
        (FLEET.digest, 1, "pinned"),
        (FLEET.digest, None, "over_the_air"),
        (FLEET.digest, 0, "over_the_air"),
    ],
)
def test_fleet_keys_validate(digest: bytes, epoch: int | None, source: str) -> None:
    with pytest.raises(ValueError):
        FleetKeys(FLEET.artifact, digest, epoch, source)  # type: ignore[arg-type]


def test_fleet_keys_need_an_artifact() -> None:
    with pytest.raises(TypeError):
        FleetKeys("fleet-1", FLEET.digest, None, "pinned")  # type: ignore[arg-type]
    assert isinstance(FLEET.artifact, FleetKeyArtifact)


def test_build_request_refuses_bad_account() -> None:
    with pytest.raises(ValueError):
        vault.build_request(FLEET, b"", StatusRequest())
    with pytest.raises(ValueError):
        vault.build_request(FLEET, b"x" * 65, StatusRequest())


def test_pinned_client_has_no_bundle_to_refresh() -> None:
    from bkv.client.sdk import VaultClient  # noqa: PLC0415

    with VaultClient("http://127.0.0.1:9", "token", ACCOUNT, FLEET) as client:
        assert not client.refresh_pending
        with pytest.raises(ValueError):
            client.refresh()
        assert "pinned" in repr(client)
    with pytest.raises(TypeError):
        VaultClient("http://127.0.0.1:9", "token", ACCOUNT, FLEET.artifact)  # type: ignore[arg-type]
