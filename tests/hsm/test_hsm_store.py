"""Sealed persistence: atomic store, tamper and rollback detection (NV counter), config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pkcs11 as p11
import pytest
from hsm_world import InProcessHost, VaultClient, client_for
from starlette.testclient import TestClient

from bkv.cli.keystore import add_commands as add_keystore_commands
from bkv.crypto.opaque import client_login_start
from bkv.errors import (
    ConfigError,
    HsmFailedError,
    KeystoreError,
    NvCounterError,
    SealingError,
    StateRollbackError,
    StorageError,
    WrongPasswordError,
)
from bkv.hsm.app import HsmApp
from bkv.hsm.config import HsmConfig, load_config
from bkv.hsm.device import open_device
from bkv.hsm.http import build_app, housekeeping_loop
from bkv.hsm.node import HsmNode, init_hsm, load_hsm
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.sealing import (
    Freshness,
    SealedState,
    blob_digest,
    check_freshness,
    open_snapshot,
    peek_version,
)
from bkv.hsm.store import MAX_STATE_SIZE, PUBLIC_KEYS_FILE, STATE_FILE, StateStore
from bkv.keystore import SoftwareSealer, pkcs11
from bkv.keystore.counter import COUNTER_FILE_NAME, FileCounter
from bkv.keystore.files import read_key_file, write_key_file
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey, parse_artifact
from bkv.protocol.hsm_link import LINK_MAC_HEADER, link_mac_header
from bkv.protocol.messages import MAX_REQUEST_SIZE, RecoverStart
from bkv.wire import decode, encode

PASSWORD = b"pw for the store tests"
WRONG = b"not the password"
SECRET = b"\x42" * 32
NOW_MS = 1_700_000_000_000
LINK_KEY = b"\x11" * 32


def _write_config(tmp_path: Path, sealer_lines: str, hsm_lines: str = "", extra: str = "") -> Path:
    path = tmp_path / "hsm.toml"
    path.write_text(
        '[hsm]\nfleet_id = "store-fleet"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        f"max_guess_limit = 5\n{hsm_lines}\n[sealer]\n{sealer_lines}\n{extra}",
        encoding="utf-8",
    )
    return path


def _no_pause(_point: str) -> None:
    return None


def _client(node: HsmNode, account: bytes = b"alice") -> VaultClient:
    """A client whose requests go through the node's real persist protocol (store + counter)."""

    def relay(request: bytes) -> bytes:
        return node.handle(request, NOW_MS, _no_pause)

    return VaultClient(relay, render_public_keys(node.app.public_keys()), account)


def _stage_and_write(node: HsmNode, client: VaultClient) -> bytes:
    """A KE1 whose blob reaches the disk, then the HSM "crashes": no counter bump, no KE2."""
    request, _state = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    effects = node.app.handle(request, NOW_MS)
    assert effects.persist is not None and effects.response is None
    node.store.write(effects.persist.blob)
    return effects.persist.blob


@pytest.fixture
def software_config(tmp_path: Path) -> HsmConfig:
    return load_config(_write_config(tmp_path, 'backend = "software"'))


@pytest.fixture
def software_node(software_config: HsmConfig) -> Iterator[HsmNode]:
    with init_hsm(software_config) as node:
        yield node


# --- the store ---------------------------------------------------------------------


def test_store_writes_atomically_and_only_forward(tmp_path: Path) -> None:
    sealer = SoftwareSealer.generate()
    app = HsmApp.initialize("f", sealer)
    store = StateStore(tmp_path / "s")
    assert not store.exists()
    with pytest.raises(StorageError):
        store.read()
    store.write(app.sealed_state())
    assert store.read() == app.sealed_state()
    with pytest.raises(ValueError, match="not newer"):
        store.write(app.sealed_state())
    host = InProcessHost(app)
    client_for(app, b"a", host).register(PASSWORD, SECRET)
    store.write(host.stored[-1])
    assert peek_version(store.read()) == app.version > 1
    assert [p.name for p in store.directory.iterdir()] == [STATE_FILE]  # no temp files left
    assert (store.path.stat().st_mode & 0o777) == 0o600


def test_store_refuses_oversized_irregular_and_linked_state_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    store.directory.mkdir()
    with store.path.open("wb") as handle:
        handle.truncate(MAX_STATE_SIZE + 1)  # sparse: refused by its size, before any read
    with pytest.raises(StorageError, match="larger than"):
        store.read()
    store.path.unlink()
    os.mkfifo(store.path)
    with pytest.raises(StorageError, match="not a regular file"):
        store.read()  # a FIFO would block a naive read forever
    store.path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"x")
    store.path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError):
        store.read()
    with pytest.raises(ValueError, match="MAX_STATE_SIZE"):
        store.write(b"\x00" * (MAX_STATE_SIZE + 1))


def test_header_version_edit_is_detected() -> None:
    sealer = SoftwareSealer.generate()
    app = HsmApp.initialize("f", sealer)
    header = decode(SealedState, app.sealed_state())
    bumped = encode(SealedState(header.fleet_id, header.version + 1, header.sealed))
    with pytest.raises(SealingError):
        open_snapshot(sealer, bumped)
    with pytest.raises(StorageError):
        open_snapshot(sealer, b"\x07\x06\x01garbage")


# --- the freshness rule (pure) -----------------------------------------------------------

D1, D2 = b"\x01" * 32, b"\x02" * 32


def test_freshness_accepts_the_committed_state_and_exactly_one_step_ahead() -> None:
    assert check_freshness(7, D1, 7, D1) is Freshness.CURRENT
    assert check_freshness(8, D2, 7, D1) is Freshness.NEXT
    assert check_freshness(1, D2, 0, bytes(32)) is Freshness.NEXT


@pytest.mark.parametrize(
    ("version", "digest", "match"),
    [
        (6, D1, "older"),  # rolled back
        (0, D1, "older"),
        (7, D2, "not the one"),  # a sibling at the committed version that was never committed
        (9, D1, "ahead"),  # the counter cannot lag by two
    ],
)
def test_freshness_refuses_rollback_forks_and_gaps(version: int, digest: bytes, match: str) -> None:
    with pytest.raises(StateRollbackError, match=match):
        check_freshness(version, digest, 7, D1)


# --- rollback on one HSM (software backend: NV counter file in key_dir) --------------------


def test_restoring_an_older_state_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    # The reviewer's attack: limit 3, two wrong guesses, put the older file back.
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    older = software_node.store.read()
    for left in (2, 1):
        with pytest.raises(WrongPasswordError) as wrong:
            client.recover(WRONG)
        assert wrong.value.attempts_left == left
    newest = software_node.store.read()
    software_node.close()

    software_node.store.path.write_bytes(older)  # the host owns state_dir
    with pytest.raises(StateRollbackError, match="older than the NV counter"):
        load_hsm(software_config)
    software_node.store.path.write_bytes(newest)
    with load_hsm(software_config) as node:
        assert _client(node).status().attempts_left == 1
        assert _client(node).recover(PASSWORD) == SECRET


def test_a_write_acknowledged_but_not_kept_then_restart_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    # A host that acks without keeping the write (or a disk that loses it) and
    # restarts the HSM: the counter already covers the answered version, so the
    # HSM refuses to start. That is an availability loss, never a guess given back.
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    before = software_node.store.read()
    client.start_login(PASSWORD)  # KE2 left: the counter moved to this version
    software_node.close()
    software_node.store.path.write_bytes(before)
    with pytest.raises(StateRollbackError):
        load_hsm(software_config)


def test_crash_between_blob_write_and_counter_bump_is_accepted_and_counted(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    committed = software_node.store.read()
    counter = software_node.device.counter
    blob = _stage_and_write(software_node, client)
    assert counter.read().version == peek_version(blob) - 1  # crashed before the bump
    software_node.close()

    with load_hsm(software_config) as node:
        # Accepted (no KE2 ever left for it) and committed now; the attempt stays counted.
        assert node.app.version == peek_version(blob)
        assert node.device.counter.read().version == peek_version(blob)
        assert node.device.counter.read().digest == blob_digest(blob)
        assert _client(node).status().attempts_left == 2
    node.store.path.write_bytes(committed)  # the pre-crash state is now a rollback
    with pytest.raises(StateRollbackError):
        load_hsm(software_config)


def test_an_uncommitted_sibling_at_the_committed_version_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    # The host crashes the HSM after the write, restores the previous state, and
    # lets another change commit at the same version. The first blob never
    # released anything; swapping it in later would undo the committed change.
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    committed = software_node.store.read()
    sibling = _stage_and_write(software_node, client)
    software_node.close()
    software_node.store.path.write_bytes(committed)
    with load_hsm(software_config) as node:
        assert node.app.version == peek_version(committed)
        _client(node).start_login(PASSWORD)  # commits another blob at the sibling's version
        assert node.app.version == peek_version(sibling)
    software_node.store.path.write_bytes(sibling)
    with pytest.raises(StateRollbackError, match="not the one"):
        load_hsm(software_config)


def test_missing_or_malformed_counter_refuses_to_start(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    software_node.close()
    counter_path = software_config.key_dir / COUNTER_FILE_NAME
    good = counter_path.read_bytes()
    counter_path.unlink()
    with pytest.raises(NvCounterError, match="does not exist"):
        load_hsm(software_config)
    counter_path.write_bytes(good[:-1])
    with pytest.raises(NvCounterError, match="malformed"):
        load_hsm(software_config)
    counter_path.write_bytes(good)
    with load_hsm(software_config) as node:
        assert node.app.version == 1


def test_file_counter_only_moves_forward(tmp_path: Path) -> None:
    counter = FileCounter.create(tmp_path / "c")
    with pytest.raises(NvCounterError, match="exists"):
        FileCounter.create(tmp_path / "c")
    value = counter.read()
    assert value.version == 0
    with pytest.raises(ValueError, match="higher"):
        counter.advance(value, value)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp files left


# --- configuration and the HSM-private key_dir ---------------------------------------------


def test_init_keeps_keys_out_of_the_host_state_dir(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    config = software_config
    assert config.key_dir == config.state_dir.parent / "hsm-private"  # the default: a sibling
    published = render_public_keys(software_node.app.public_keys())
    assert (config.state_dir / PUBLIC_KEYS_FILE).read_bytes() == published
    assert sorted(p.name for p in config.state_dir.iterdir()) == [PUBLIC_KEYS_FILE, STATE_FILE]
    assert stat.S_IMODE(config.key_dir.stat().st_mode) == 0o700
    for name in ("sealing.key", COUNTER_FILE_NAME):
        assert stat.S_IMODE((config.key_dir / name).stat().st_mode) == 0o600
    with pytest.raises(StorageError, match="exists"):
        init_hsm(config)
    software_node.close()
    with load_hsm(config) as loaded:
        assert loaded.app.public_keys() == software_node.app.public_keys()
        assert loaded.app.vault.max_guess_limit == 5


def test_init_refuses_to_reset_the_counter_when_the_host_deletes_the_state(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    software_node.close()
    shutil.rmtree(software_config.state_dir)
    with pytest.raises(NvCounterError, match="exists"):
        init_hsm(software_config)


def test_serve_refuses_a_key_dir_other_users_can_open(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    software_node.close()
    software_config.key_dir.chmod(0o750)
    with pytest.raises(KeystoreError, match="other users"):
        load_hsm(software_config)


def test_serve_refuses_a_key_dir_another_user_owns(
    software_config: HsmConfig, software_node: HsmNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    software_node.close()
    owner = software_config.key_dir.stat().st_uid
    with load_hsm(software_config):
        pass  # owned by this user, mode 0700: fine
    # The process now runs as someone else than the directory's owner.
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(KeystoreError, match="not owned by this user"):
        load_hsm(software_config)


def test_a_second_software_counter_for_the_same_key_cannot_roll_the_state_back(
    software_config: HsmConfig, software_node: HsmNode, tmp_path: Path
) -> None:
    """Software backend: a copied key file next to a fresh counter."""
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    fresh = software_node.store.read()
    with pytest.raises(WrongPasswordError):
        client.recover(WRONG)
    software_node.close()
    other = tmp_path / "other-key-dir"
    other.mkdir(mode=0o700)
    assert software_config.sealer.key_file is not None
    (other / "sealing.key").write_bytes(software_config.sealer.key_file.read_bytes())
    (other / "sealing.key").chmod(0o600)
    counter = FileCounter.create(other / COUNTER_FILE_NAME)
    start = counter.read()
    counter.advance(start, start.next(peek_version(fresh) - 1, bytes(32)))
    config = dataclasses.replace(
        software_config,
        key_dir=other,
        state_dir=tmp_path / "other-state",
        sealer=dataclasses.replace(software_config.sealer, key_file=other / "sealing.key"),
    )
    StateStore(config.state_dir).write(fresh)
    with pytest.raises(SealingError):
        load_hsm(config)


def test_a_key_from_bkv_keystore_loads_in_the_hsm(tmp_path: Path) -> None:
    # One key-file format: `bkv keystore gen-sealing-key --key-file` output is what
    # `bkv hsm init` adopts and `bkv hsm serve` loads.
    config = load_config(_write_config(tmp_path, 'backend = "software"'))
    config.key_dir.mkdir(mode=0o700)
    parser = argparse.ArgumentParser(prog="bkv")
    add_keystore_commands(parser.add_subparsers(dest="command"))
    key_file = config.key_dir / "sealing.key"
    args = parser.parse_args(["keystore", "gen-sealing-key", "--key-file", str(key_file)])
    assert args.handler(args) == 0
    with init_hsm(config):
        pass
    with load_hsm(config) as node:
        assert node.app.version == 1
        counter_id = node.device.counter_id
    sealer = SoftwareSealer(read_key_file(key_file))
    blob = StateStore(config.state_dir).read()
    assert open_snapshot(sealer, blob, counter_id).version == 1
    with pytest.raises(SealingError):
        open_snapshot(sealer, blob)  # bound to its NV counter's id, not to any other


def test_a_raw_32_byte_key_file_is_refused(tmp_path: Path) -> None:
    config = load_config(_write_config(tmp_path, 'backend = "software"'))
    config.key_dir.mkdir(mode=0o700)
    (config.key_dir / "sealing.key").write_bytes(os.urandom(32))  # the old, second format
    with pytest.raises(KeystoreError, match="hex"):
        init_hsm(config)


def test_key_files_are_created_exclusively_and_durably(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_key_file(path, b"\x01" * 32)
    assert path.read_text() == "01" * 32 + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeystoreError, match="exists"):
        write_key_file(path, b"\x02" * 32)
    assert read_key_file(path) == b"\x01" * 32


@pytest.mark.parametrize(
    ("state_dir", "key_dir", "match"),
    [
        ("state", "state", "key_dir must not be state_dir"),
        ("state", "state/keys", "key_dir must not be state_dir or inside it"),
        ("state", ".", "state_dir must not be inside key_dir"),
        (".", "hsm-private", "key_dir must not be state_dir or inside it"),  # default inside "."
    ],
)
def test_key_dir_and_state_dir_must_be_separate(
    tmp_path: Path, state_dir: str, key_dir: str, match: str
) -> None:
    path = tmp_path / "hsm.toml"
    key_line = "" if key_dir == "hsm-private" else f'key_dir = "{key_dir}"\n'
    path.write_text(
        f'[hsm]\nfleet_id = "f"\nstate_dir = "{state_dir}"\n{key_line}[sealer]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=match):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[hsm]\n", "fleet_id|listen|state_dir"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\nbackend = "cloud"\n', "backend"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nlisten = "nope"\n[sealer]\n', "listen"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nmax_guess_limit = 0\n[sealer]\n', "guess"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nextra = 1\n[sealer]\n', "unknown"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\n[testing]\npause_at = "x"\n', "pause"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\nkey_file = "../k"\n', "plain file"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\nkey_file = "nv-counter"\n', "plain"),
        (
            '[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\nbackend = "pkcs11"\n'
            'pkcs11_config = "p.json"\nkey_label = "x"\ncounter_label = "x"\n',
            "must differ",
        ),
        ("not toml [", "TOML"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_public_keys_drop_into_the_fleet_key_artifact(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    published = json.loads((software_config.state_dir / PUBLIC_KEYS_FILE).read_bytes())
    artifact = FleetKeyArtifact(
        fleet_id=published["fleet_id"],
        keys=tuple(
            PublicKey(k["role"], k["algorithm"], bytes.fromhex(k["public_key"]))
            for k in published["keys"]
        ),
        members=("hsm-1",),
        policy=FleetPolicy(guess_limit=published["policy"]["guess_limit"], quorum=1),
        not_before_ms=0,
        not_after_ms=1,
    )
    parsed = parse_artifact(artifact.to_bytes())
    assert parsed.key("channel").key == software_node.app.channel_public_key
    assert parsed.key("opaque_ake").key == software_node.app.opaque_public_key
    assert parsed.policy.guess_limit == 5


# --- housekeeping and failing safe -----------------------------------------------------------


def _record_at_its_limit(node: HsmNode) -> None:
    client = _client(node)
    client.register(PASSWORD, SECRET, guess_limit=1)
    client.start_login(PASSWORD)  # the last attempt; the session is then lost (restart)


def test_serve_start_destroys_records_left_at_their_limit(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    _record_at_its_limit(software_node)
    software_node.close()
    with load_hsm(software_config) as node:
        assert node.app.vault.record(b"alice") is not None
        assert node.run_housekeeping() == 1
        assert node.run_housekeeping() == 0
    with load_hsm(software_config) as node:
        assert node.app.vault.record(b"alice") is None


def _planted_newer_state(node: HsmNode) -> None:
    # The host plants a file whose clear version is far ahead: every write is refused.
    header = decode(SealedState, node.store.read())
    node.store.path.write_bytes(encode(SealedState(header.fleet_id, 2**40, header.sealed)))


def test_housekeeping_failure_latches_the_hsm_and_refuses_service(
    software_config: HsmConfig, software_node: HsmNode, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_at_its_limit(software_node)
    software_node.close()
    with load_hsm(software_config) as node:
        version = node.app.version
        _planted_newer_state(node)
        # The background loop: the ValueError ("not newer") latches the node and the
        # loop ends (bounded by wait_for) instead of dying silently or running on.
        asyncio.run(asyncio.wait_for(_housekeeping_loop(node), timeout=10))
        assert node.failed
        assert "persistence failed (ValueError)" in capsys.readouterr().err
        assert node.app.version == version  # the staged destruction was abandoned
        with pytest.raises(HsmFailedError):
            node.handle(b"\x01", NOW_MS, _no_pause)
        with pytest.raises(HsmFailedError):
            node.run_housekeeping()
        web = TestClient(build_app(node, LINK_KEY, log=print))
        body = b"\x01\x01\x01"
        assert web.post("/v1/message", content=body, headers=_signed(body)).status_code == 503


def _signed(body: bytes) -> dict[str, str]:
    return {LINK_MAC_HEADER: link_mac_header(LINK_KEY, "POST", b"/v1/message", body)}


async def _housekeeping_loop(node: HsmNode) -> None:
    await housekeeping_loop(node, 0.01)  # the server's own loop, with a short interval


def test_a_failed_request_persist_releases_nothing_and_latches(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    _planted_newer_state(software_node)
    with pytest.raises(ValueError, match="not newer"):
        client.start_login(PASSWORD)
    assert software_node.failed
    assert software_node.device.counter.read().version == software_node.app.version


def test_http_caps_request_bodies(software_node: HsmNode) -> None:
    web = TestClient(build_app(software_node, LINK_KEY, log=print))
    too_big = web.post("/v1/message", content=b"\x00" * (MAX_REQUEST_SIZE + 1))
    assert too_big.status_code == 400

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streaming cap applies
        for _ in range(MAX_REQUEST_SIZE // 512 + 2):
            yield b"\x00" * 512

    # A well-formed MAC, so that the body is read (and capped) before the MAC is checked.
    headers = {LINK_MAC_HEADER: "00" * 32}
    assert web.post("/v1/message", content=chunks(), headers=headers).status_code == 400
    assert software_node.app.version == 1


# --- the PKCS#11 backend: sealing key and NV counter in a SoftHSM2 token ---------------------


@pytest.fixture
def token_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HsmConfig]:
    token = pkcs11.init_token(tmp_path / "token", "bkv-hsm-test", "so-pin-1234", "user-pin-1234")
    token.save(tmp_path / "pkcs11.json")
    monkeypatch.setenv("BKV_TEST_HSM_PIN", "user-pin-1234")
    yield load_config(
        _write_config(
            tmp_path,
            'backend = "pkcs11"\npkcs11_config = "pkcs11.json"\n'
            'user_pin_env = "BKV_TEST_HSM_PIN"\nkey_label = "hsm-seal"\n',
        )
    )
    # Every test closes what it opened: a leak here breaks later PKCS#11 tests in
    # this process ("another PKCS#11 configuration has open keys").
    assert pkcs11.open_token_sessions() == 0


def _token_counter_objects(config: HsmConfig) -> list[tuple[bytes, bool]]:
    assert config.sealer.pkcs11_config is not None
    token = pkcs11.Pkcs11Config.load(config.sealer.pkcs11_config, "user-pin-1234")
    with pkcs11.load_counter(token, config.sealer.counter_label) as counter:
        objects = counter._objects()  # the token's objects, as stored
        return [
            (bytes(obj[p11.Attribute.VALUE]), bool(obj[p11.Attribute.PRIVATE]))
            for _, obj in objects
        ]


@pytest.mark.softhsm
def test_softhsm2_backend_round_trip_and_rollback(token_config: HsmConfig) -> None:
    with init_hsm(token_config) as node:
        client = _client(node)
        client.register(PASSWORD, SECRET, guess_limit=3)
        older = node.store.read()
        with pytest.raises(WrongPasswordError):
            client.recover(WRONG)
        newest = node.store.read()
        version = node.app.version
    # The counter is one private data object in the token, at the committed version.
    [(value, private)] = _token_counter_objects(token_config)
    assert private and value.endswith(blob_digest(newest))

    with load_hsm(token_config) as node:  # the token key opens the state written through it
        assert node.app.version == version
        assert _client(node).recover(PASSWORD) == SECRET
        newest = node.store.read()
    # A software key cannot open what the token sealed; a flipped byte fails in the token.
    with pytest.raises(SealingError):
        HsmApp.load(newest, SoftwareSealer.generate())
    store = StateStore(token_config.state_dir)
    tampered = bytearray(newest)
    tampered[-5] ^= 0x10
    store.path.write_bytes(bytes(tampered))
    with pytest.raises(SealingError):
        load_hsm(token_config)
    store.path.write_bytes(older)
    with pytest.raises(StateRollbackError):
        load_hsm(token_config)
    store.path.write_bytes(newest)
    with load_hsm(token_config) as node:
        assert _client(node).status().attempts_left == 3


@pytest.mark.softhsm
def test_softhsm2_crash_between_write_and_counter_bump(token_config: HsmConfig) -> None:
    with init_hsm(token_config) as node:
        client = _client(node)
        client.register(PASSWORD, SECRET, guess_limit=3)
        blob = _stage_and_write(node, client)
    with load_hsm(token_config) as node:
        assert node.device.counter.read().version == peek_version(blob)
        assert _client(node).status().attempts_left == 2  # counted, though no KE2 left
    assert len(_token_counter_objects(token_config)) == 1


@pytest.mark.softhsm
def test_softhsm2_init_adopts_a_provisioned_token_key(token_config: HsmConfig) -> None:
    assert token_config.sealer.pkcs11_config is not None
    token = pkcs11.Pkcs11Config.load(token_config.sealer.pkcs11_config, "user-pin-1234")
    with pkcs11.generate_sealing_key(token, token_config.sealer.key_label):
        pass  # provisioned as in the operations guide, then closed
    with init_hsm(token_config) as node:
        blob = node.store.read()
        counter_id = node.device.counter_id
    with pkcs11.load_sealing_key(token, token_config.sealer.key_label) as provisioned:
        assert open_snapshot(provisioned, blob, counter_id).version == 1
    with pytest.raises(NvCounterError, match="NV counter"), open_device(token_config, create=True):
        pass  # a second init finds the counter: it never resets one


@pytest.mark.softhsm
def test_softhsm2_a_second_counter_for_the_same_key_cannot_roll_the_state_back(
    token_config: HsmConfig, tmp_path: Path
) -> None:
    """A rollback through a fresh NV counter (new label) next to the same token key."""
    with init_hsm(token_config) as node:
        client = _client(node)
        client.register(PASSWORD, SECRET, guess_limit=3)
        fresh = node.store.read()  # attempts_left == 3
        with pytest.raises(WrongPasswordError):
            client.recover(WRONG)
    # 1. `bkv hsm init` with another state_dir and counter label refuses to adopt the key.
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    (second_dir / "pkcs11.json").write_bytes((tmp_path / "pkcs11.json").read_bytes())
    second = load_config(
        _write_config(
            second_dir,
            'backend = "pkcs11"\npkcs11_config = "pkcs11.json"\nuser_pin_env = "BKV_TEST_HSM_PIN"\n'
            'key_label = "hsm-seal"\ncounter_label = "second-counter"\n',
        )
    )
    with pytest.raises(NvCounterError, match="already holds an NV counter"):
        init_hsm(second)
    # 2. Made by hand anyway (whoever has the PIN can), the new counter has its own id,
    #    and the old blob was sealed for the first counter's: it does not open.
    assert second.sealer.pkcs11_config is not None
    token = pkcs11.Pkcs11Config.load(second.sealer.pkcs11_config, "user-pin-1234")
    with pkcs11.create_counter(token, "second-counter") as counter:
        start = counter.read()
        counter.advance(start, start.next(peek_version(fresh) - 1, bytes(32)))
    StateStore(second.state_dir).write(fresh)
    with pytest.raises(SealingError):
        load_hsm(second)
