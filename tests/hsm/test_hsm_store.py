"""Sealed persistence: atomic store, tamper detection, config, and the SoftHSM2 backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hsm_world import InProcessHost, client_for

from bkv.client.artifact import FleetKeyArtifact, FleetPolicy, PublicKey, parse_artifact
from bkv.errors import ConfigError, SealingError, StorageError
from bkv.hsm.app import HsmApp
from bkv.hsm.sealing import SealedState, open_snapshot, peek_version
from bkv.hsm.server import (
    HsmConfig,
    init_hsm,
    load_config,
    load_hsm,
    open_sealer,
    run_housekeeping,
)
from bkv.hsm.store import PUBLIC_KEYS_FILE, StateStore
from bkv.keystore import SoftwareSealer
from bkv.keystore.pkcs11 import init_token
from bkv.wire import decode, encode

PASSWORD = b"pw for the store tests"
SECRET = b"\x42" * 32


def _write_config(tmp_path: Path, sealer_lines: str, extra: str = "") -> Path:
    path = tmp_path / "hsm.toml"
    path.write_text(
        '[hsm]\nfleet_id = "store-fleet"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        f"max_guess_limit = 5\n\n[sealer]\n{sealer_lines}\n{extra}",
        encoding="utf-8",
    )
    return path


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
    client = client_for(app, b"a")
    client.register(PASSWORD, SECRET)
    store.write(app.sealed_state())
    assert peek_version(store.read()) == app.version == 2
    assert [p.name for p in store.directory.iterdir()] == ["state.sealed"]  # no temp files left
    assert (store.path.stat().st_mode & 0o777) == 0o600


def test_header_version_edit_is_detected(tmp_path: Path) -> None:
    sealer = SoftwareSealer.generate()
    app = HsmApp.initialize("f", sealer)
    header = decode(SealedState, app.sealed_state())
    bumped = encode(SealedState(header.fleet_id, header.version + 1, header.sealed))
    with pytest.raises(SealingError):
        open_snapshot(sealer, bumped)
    with pytest.raises(StorageError):
        open_snapshot(sealer, b"\x07\x06\x01garbage")


def test_rollback_to_an_older_blob_is_not_detectable_on_one_hsm() -> None:
    # Documented limit (docs/parts/hsm.md): an untouched older blob opens. The
    # fleet issue closes this with majority consensus.
    sealer = SoftwareSealer.generate()
    app = HsmApp.initialize("f", sealer)
    old = app.sealed_state()
    client_for(app, b"a").register(PASSWORD, SECRET)
    assert HsmApp.load(old, sealer).vault.record(b"a") is None


def test_config_init_and_load_software(tmp_path: Path) -> None:
    config = load_config(_write_config(tmp_path, 'backend = "software"'))
    app = init_hsm(config)
    assert (config.state_dir / PUBLIC_KEYS_FILE).read_bytes() == app.public_keys_json()
    assert (config.state_dir / "sealing.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(StorageError, match="exists"):
        init_hsm(config)
    loaded = load_hsm(config)
    assert loaded.public_keys() == app.public_keys()
    assert loaded.vault.max_guess_limit == 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[hsm]\n", "fleet_id|listen|state_dir"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\nbackend = "cloud"\n', "backend"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nlisten = "nope"\n[sealer]\n', "listen"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nmax_guess_limit = 0\n[sealer]\n', "guess"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nextra = 1\n[sealer]\n', "unknown"),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\n[sealer]\n[testing]\npause_at = "x"\n', "pause"),
        ("not toml [", "TOML"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


@pytest.mark.softhsm
def test_softhsm2_backend_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = init_token(tmp_path / "token", "bkv-hsm-test", "so-pin-1234", "user-pin-1234")
    token_config = tmp_path / "pkcs11.json"
    token.save(token_config)
    monkeypatch.setenv("BKV_TEST_HSM_PIN", "user-pin-1234")
    config = load_config(
        _write_config(
            tmp_path,
            'backend = "pkcs11"\npkcs11_config = "pkcs11.json"\n'
            'user_pin_env = "BKV_TEST_HSM_PIN"\nkey_label = "hsm-seal"\n',
        )
    )
    app = init_hsm(config)
    store = StateStore(config.state_dir)
    host = InProcessHost(app)
    client = client_for(app, b"alice", host)
    client.register(PASSWORD, SECRET, guess_limit=5)
    store.write(host.stored[-1])

    reloaded = load_hsm(config)  # the token key opens the state written through it
    assert reloaded.version == app.version
    client2 = client_for(reloaded, b"alice")
    assert client2.recover(PASSWORD) == SECRET
    # A software key cannot open what the token sealed; a flipped byte fails in the token.
    with pytest.raises(SealingError):
        HsmApp.load(store.read(), SoftwareSealer.generate())
    tampered = bytearray(store.read())
    tampered[-5] ^= 0x10
    with pytest.raises(SealingError):
        load_hsm_from(config, bytes(tampered))


def load_hsm_from(config: object, blob: bytes) -> HsmApp:
    assert isinstance(config, HsmConfig)
    return HsmApp.load(blob, open_sealer(config.sealer, create=False))


def test_public_keys_drop_into_the_fleet_key_artifact(tmp_path: Path) -> None:
    app = init_hsm(load_config(_write_config(tmp_path, 'backend = "software"')))
    published = json.loads((tmp_path / "state" / PUBLIC_KEYS_FILE).read_bytes())
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
    assert parsed.key("channel").key == app.channel_public_key
    assert parsed.key("opaque_ake").key == app.opaque_public_key
    assert parsed.policy.guess_limit == 5


def test_serve_start_destroys_records_left_at_their_limit(tmp_path: Path) -> None:
    config = load_config(_write_config(tmp_path, 'backend = "software"'))
    app = init_hsm(config)
    host = InProcessHost(app)
    client = client_for(app, b"alice", host)
    client.register(PASSWORD, SECRET, guess_limit=1)
    client.start_login(PASSWORD)  # the last attempt; then the process dies
    store = StateStore(config.state_dir)
    store.write(host.stored[-1])
    reloaded = load_hsm(config)
    assert reloaded.vault.record(b"alice") is not None
    assert run_housekeeping(reloaded, store) == 1
    assert run_housekeeping(reloaded, store) == 0
    assert load_hsm(config).vault.record(b"alice") is None
