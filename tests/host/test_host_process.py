"""The host and the SDK against a real fleet: `bkv hsm serve` + `bkv host serve` subprocesses."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from host_world import (
    ACCOUNTS,
    Recorder,
    client,
    fleet_keys,
    init_hsm,
    pinned,
    public_keys_path,
    running,
    write_host_config,
)

from bkv import devnet
from bkv.client.trust import FleetKeys
from bkv.client.vault import build_request
from bkv.errors import (
    CodecError,
    FleetUnreachableError,
    RecordDestroyedError,
    RetryAfterError,
    ServerAuthenticationError,
    UnauthorizedError,
    WrongPasswordError,
)
from bkv.keystore.link_key import create_link_key
from bkv.protocol.messages import MAX_REQUEST_SIZE, HsmRequest, RequestKind, StatusRequest
from bkv.wire import decode, encode

pytestmark = pytest.mark.slow

PASSWORD = b"correct horse battery staple"
WRONG = b"incorrect horse"
BACKUP_KEY = bytes(range(100, 132))


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_hsm(tmp_path_factory.mktemp("fleet") / "hsm")


@pytest.fixture(scope="module")
def hsm_url(fleet_dir: Path) -> Iterator[str]:
    with running("hsm", "serve", "--config", str(fleet_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def host_url(fleet_dir: Path, hsm_url: str) -> Iterator[str]:
    config = write_host_config(fleet_dir.parent, hsm_url, fleet_dir)
    with running("host", "serve", "--config", str(config)) as url:
        yield url


@pytest.fixture(scope="module")
def keys(fleet_dir: Path) -> FleetKeys:
    return fleet_keys(fleet_dir)


def test_openapi_is_published(host_url: str) -> None:
    document = httpx.get(f"{host_url}/openapi.json", timeout=10).json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) >= {"/v1/request", "/v1/fleet-keys", "/healthz"}
    assert "429" in document["paths"]["/v1/request"]["post"]["responses"]


def test_healthz_and_fleet_keys(host_url: str, fleet_dir: Path) -> None:
    assert httpx.get(f"{host_url}/healthz", timeout=10).json() == {"status": "ok"}
    served = httpx.get(f"{host_url}/v1/fleet-keys", timeout=10)
    assert served.content == public_keys_path(fleet_dir).read_bytes()


def test_register_recover_and_wrong_password(host_url: str, keys: FleetKeys) -> None:
    with client(host_url, ACCOUNTS[0], keys) as vault:
        assert not vault.status().exists
        status = vault.register(PASSWORD, BACKUP_KEY)
        assert (status.exists, status.guess_limit, status.attempts_left) == (True, 10, 10)
        assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
        with pytest.raises(WrongPasswordError) as wrong:
            vault.recover(WRONG)
        assert wrong.value.attempts_left == 9
        assert vault.status().attempts_left == 9
        assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
        assert vault.status().attempts_left == 10


def test_guess_limit_destroys_record(host_url: str, keys: FleetKeys) -> None:
    with client(host_url, ACCOUNTS[1], keys) as vault:
        vault.register(PASSWORD, BACKUP_KEY, guess_limit=3)
        for left in (2, 1):
            with pytest.raises(WrongPasswordError) as wrong:
                vault.recover(WRONG)
            assert wrong.value.attempts_left == left
        with pytest.raises(RecordDestroyedError):
            vault.recover(WRONG)
        with pytest.raises(RecordDestroyedError):
            vault.recover(PASSWORD)
        assert not vault.status().exists


def test_change_password_and_delete(host_url: str, keys: FleetKeys) -> None:
    new_password = b"a new password"
    with client(host_url, ACCOUNTS[2], keys) as vault:
        vault.register(PASSWORD, BACKUP_KEY)
        vault.change_password(PASSWORD, new_password)
        assert vault.recover(new_password).backup_key == BACKUP_KEY
        with pytest.raises(WrongPasswordError):
            vault.recover(PASSWORD)
        vault.delete(new_password)
        assert not vault.status().exists
        with pytest.raises(RecordDestroyedError):
            vault.recover(new_password)


def test_unregistered_account_looks_destroyed(host_url: str, keys: FleetKeys) -> None:
    with client(host_url, ACCOUNTS[3], keys) as vault, pytest.raises(RecordDestroyedError):
        vault.recover(PASSWORD)


def test_relayed_bytes_hold_no_password_or_backup_key(host_url: str, keys: FleetKeys) -> None:
    recorder = Recorder()
    with client(host_url, ACCOUNTS[4], keys, transport=recorder) as vault:
        vault.register(PASSWORD, BACKUP_KEY)
        assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
        with pytest.raises(WrongPasswordError):
            vault.recover(WRONG)
    assert len(recorder.captured) >= 12
    for blob in recorder.captured:
        assert BACKUP_KEY not in blob
        assert PASSWORD not in blob
        assert WRONG not in blob


def test_register_refuses_a_vault_with_another_opaque_key(host_url: str, keys: FleetKeys) -> None:
    pinned_elsewhere = pinned(keys.fleet_id, keys.channel_public_key, bytes(32))
    with client(host_url, ACCOUNTS[5], pinned_elsewhere) as vault:
        with pytest.raises(ServerAuthenticationError):
            vault.register(PASSWORD, BACKUP_KEY)
        assert not vault.status().exists


def _post(url: str, body: bytes, token: str | None) -> httpx.Response:
    headers = {"content-type": "application/octet-stream"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v1/request", content=body, headers=headers, timeout=20)


def _status_request(keys: FleetKeys, account_id: bytes) -> bytes:
    return build_request(keys, account_id, StatusRequest()).request


def test_missing_or_unknown_token_is_401(host_url: str, keys: FleetKeys) -> None:
    body = _status_request(keys, ACCOUNTS[6].account_id)
    for token in (None, "not-a-token"):
        response = _post(host_url, body, token)
        assert response.status_code == 401
        assert response.json()["error"] == "UnauthorizedError"
    wrong = client(host_url, ACCOUNTS[6], keys)
    wrong._http.headers["authorization"] = "Bearer nope"
    with wrong, pytest.raises(UnauthorizedError):
        wrong.status()


def test_token_of_another_account_is_403(host_url: str, keys: FleetKeys) -> None:
    body = _status_request(keys, ACCOUNTS[7].account_id)
    response = _post(host_url, body, ACCOUNTS[6].token)
    assert response.status_code == 403
    assert response.json()["error"] == "UnauthorizedError"


def test_malformed_wrong_fleet_and_oversized_are_refused(host_url: str, keys: FleetKeys) -> None:
    token = ACCOUNTS[8].token
    assert _post(host_url, b"\x01\x01\x01garbage", token).status_code == 400
    assert _post(host_url, b"", token).status_code == 400
    body = _status_request(keys, ACCOUNTS[8].account_id)
    outer = decode(HsmRequest, body)
    other_fleet = encode(HsmRequest("other", outer.kind, outer.account_id, outer.sealed))
    response = _post(host_url, other_fleet, token)
    assert (response.status_code, response.json()["error"]) == (400, "WrongFleet")
    assert _post(host_url, b"\x00" * (MAX_REQUEST_SIZE + 1), token).status_code == 413


def test_clear_fields_cannot_be_changed_by_the_host(host_url: str, keys: FleetKeys) -> None:
    # Relabel a status request as RECOVER_START: the HSM binds kind into the seal's AAD.
    body = _status_request(keys, ACCOUNTS[8].account_id)
    outer = decode(HsmRequest, body)
    relabelled = encode(
        HsmRequest(outer.fleet_id, RequestKind.RECOVER_START, outer.account_id, outer.sealed)
    )
    response = _post(host_url, relabelled, ACCOUNTS[8].token)
    assert response.status_code == 200  # relayed; the HSM refuses it in the clear
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content[:2] == b"\x01\x03"  # HsmRejected


def test_record_attempts_are_rate_limited(
    fleet_dir: Path, hsm_url: str, keys: FleetKeys, tmp_path: Path
) -> None:
    limits = "\n[rate_limits.record_attempts]\nburst = 2\nper_period = 1\nperiod_seconds = 3600\n"
    config = write_host_config(tmp_path, hsm_url, fleet_dir, limits=limits)
    with running("host", "serve", "--config", str(config)) as url:
        with client(url, ACCOUNTS[9], keys) as vault:
            vault.register(PASSWORD, BACKUP_KEY)
            assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
            assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
            with pytest.raises(RetryAfterError) as limited:
                vault.recover(PASSWORD)
            assert limited.value.retry_after_seconds is not None
            assert limited.value.retry_after_seconds > 0
            assert vault.status().attempts_left == 10  # the refused attempt cost nothing
        with client(url, ACCOUNTS[10], keys) as other:  # another record is unaffected
            other.register(PASSWORD, BACKUP_KEY)
            assert other.recover(PASSWORD).backup_key == BACKUP_KEY


def test_accounts_are_rate_limited(
    fleet_dir: Path, hsm_url: str, keys: FleetKeys, tmp_path: Path
) -> None:
    limits = "\n[rate_limits.account]\nburst = 3\nper_period = 1\nperiod_seconds = 3600\n"
    config = write_host_config(tmp_path, hsm_url, fleet_dir, limits=limits)
    with running("host", "serve", "--config", str(config)) as url:
        with client(url, ACCOUNTS[11], keys) as vault:
            for _ in range(3):
                vault.status()
            with pytest.raises(RetryAfterError):
                vault.status()
        response = _post(url, _status_request(keys, ACCOUNTS[11].account_id), ACCOUNTS[11].token)
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0


def test_unreachable_hsm_is_fleet_unreachable(
    fleet_dir: Path, keys: FleetKeys, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = write_host_config(tmp_path, dead, fleet_dir)
    with (
        running("host", "serve", "--config", str(config)) as url,
        client(url, ACCOUNTS[0], keys) as vault,
        pytest.raises(FleetUnreachableError),
    ):
        vault.status()


def test_host_down_is_fleet_unreachable(keys: FleetKeys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with client(dead, ACCOUNTS[0], keys) as vault, pytest.raises(FleetUnreachableError):
        vault.status()


def test_sdk_maps_host_refusals_to_typed_errors(host_url: str, keys: FleetKeys) -> None:
    wrong_fleet = pinned("other", keys.channel_public_key, keys.opaque_public_key)
    with client(host_url, ACCOUNTS[6], wrong_fleet) as vault, pytest.raises(CodecError):
        vault.status()


def test_hsm_answering_with_an_http_error_is_502(
    fleet_dir: Path, hsm_url: str, keys: FleetKeys, tmp_path: Path
) -> None:
    config = write_host_config(tmp_path, f"{hsm_url}/nowhere", fleet_dir)
    with running("host", "serve", "--config", str(config)) as url:
        response = _post(url, _status_request(keys, ACCOUNTS[0].account_id), ACCOUNTS[0].token)
        assert response.status_code == 502
        assert response.json()["error"] == "FleetUnreachableError"


def test_a_host_with_another_link_key_gets_nothing_from_the_hsm(
    fleet_dir: Path, hsm_url: str, keys: FleetKeys, tmp_path: Path
) -> None:
    other_key = tmp_path / "other-link.key"
    create_link_key(other_key)
    config = write_host_config(tmp_path, hsm_url, fleet_dir)
    real_key = str(devnet.hsm_link_key(fleet_dir))
    config.write_text(config.read_text().replace(real_key, str(other_key)))
    with running("host", "serve", "--config", str(config)) as url:
        response = _post(url, _status_request(keys, ACCOUNTS[0].account_id), ACCOUNTS[0].token)
    assert response.status_code == 502
    assert response.json() == {
        "error": "FleetUnreachableError",
        "message": "the HSM refused this host's link key",
    }


def test_a_fleet_keys_file_that_is_not_a_regular_file_never_blocks_the_host(
    fleet_dir: Path, hsm_url: str, tmp_path: Path
) -> None:
    # Opening a FIFO for reading waits for a writer: on the event loop, that
    # would stop every other request too.
    fifo = tmp_path / "public-keys.fifo"
    os.mkfifo(fifo)
    config = write_host_config(tmp_path, hsm_url, fleet_dir)
    config.write_text(config.read_text().replace(str(public_keys_path(fleet_dir)), str(fifo)))
    with (
        running("host", "serve", "--config", str(config)) as url,
        httpx.Client(base_url=url, timeout=5) as http,
    ):
        refused = http.get("/v1/fleet-keys")
        assert refused.status_code == 503
        assert refused.json()["error"] == "StorageError"
        assert http.get("/healthz").status_code == 200
