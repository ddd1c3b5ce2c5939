"""Sealed persistence: the sealed state, the record store, tamper and rollback detection, config.

The HSM node keeps its vault in a record store (:mod:`bkv.records`, SQLite by
default at ``<state_dir>/records.sqlite3``): the sealed records, the tree
nodes and the sealed HSM state, committed together with every batch; the NV
counter in ``key_dir`` then covers the sealed state (:mod:`bkv.hsm.node`).
These tests drive real nodes (software sealer and counter, SQLite store in a
temporary directory) and play the host: they copy and restore the store with
SQLite's backup API, edit its rows, or commit a batch without advancing the
counter, the way a crash or a malicious host would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pkcs11 as p11
import pytest
from hsm_world import VaultClient
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
from bkv.hsm.app import SESSION_TTL_MS, HsmApp
from bkv.hsm.config import RECORD_STORE_FILE, HsmConfig, load_config
from bkv.hsm.device import open_device
from bkv.hsm.http import build_app
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
from bkv.hsm.store import PUBLIC_KEYS_FILE
from bkv.keystore import SoftwareSealer, pkcs11
from bkv.keystore.counter import COUNTER_FILE_NAME, FileCounter
from bkv.keystore.files import read_key_file, write_key_file
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey, parse_artifact
from bkv.protocol.hsm_link import LINK_MAC_HEADER, link_mac_header
from bkv.protocol.messages import MAX_REQUEST_SIZE, RecoverStart, StatusRequest
from bkv.records.store_sqlite import SqliteTreeStore
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


# --- playing the host: the SQLite record store -------------------------------------------


def _db_path(config: HsmConfig) -> Path:
    assert config.record_store.startswith("sqlite:")
    return Path(config.record_store.removeprefix("sqlite:"))


def _copy_store(config: HsmConfig, name: str) -> Path:
    """A consistent copy of the record store (SQLite's online backup API), outside state_dir.

    The backup reads through the WAL, so the copy holds every committed batch
    even while the node keeps its own connection open.
    """
    copy = config.state_dir.parent / f"backup-{name}.sqlite3"
    copy.unlink(missing_ok=True)
    with closing(sqlite3.connect(_db_path(config))) as live, closing(sqlite3.connect(copy)) as to:
        live.backup(to)
    return copy


def _restore_store(config: HsmConfig, copy: Path) -> None:
    """Put an old copy back over the record store (the host owns it); the node is closed."""
    with closing(sqlite3.connect(copy)) as old, closing(sqlite3.connect(_db_path(config))) as to:
        old.backup(to)


def _stored_state(config: HsmConfig) -> bytes:
    """The sealed HSM state the record store holds (read through the real store)."""
    with SqliteTreeStore(_db_path(config)) as store:
        sealed = store.sealed_state()
    assert sealed is not None
    return sealed


def _execute(config: HsmConfig, sql: str, *args: object) -> None:
    """One statement on the record store's file, in its own connection (the host's hand)."""
    with closing(sqlite3.connect(_db_path(config))) as db, db:
        db.execute(sql, args)


def _set_stored_state(config: HsmConfig, sealed_state: bytes) -> None:
    _execute(config, "UPDATE head SET sealed_state = ? WHERE one = 1", sealed_state)


def _commit_without_counting(node: HsmNode, client: VaultClient) -> bytes:
    """A KE1 whose batch reaches the store, then the HSM "crashes": no counter advance, no KE2.

    The host's own commit of the batch the app sealed (what the runner does
    before ``on_stored`` advances the counter). Returns the stored sealed state.
    """
    request, _state = client.request_bytes(RecoverStart(client_login_start(PASSWORD)[1].to_bytes()))
    node.app.submit(request, node.runner.read(client.account_id), NOW_MS)
    end = node.app.end_batch()
    persist = end.persist
    assert persist is not None and not end.answers
    node.store.commit(persist.update, persist.records, persist.sealed_state)
    assert node.store.sealed_state() == persist.sealed_state
    return persist.sealed_state


@pytest.fixture
def software_config(tmp_path: Path) -> HsmConfig:
    return load_config(_write_config(tmp_path, 'backend = "software"'))


@pytest.fixture
def software_node(software_config: HsmConfig) -> Iterator[HsmNode]:
    with init_hsm(software_config) as node:
        yield node


# --- the sealed state (bkv.hsm.sealing) ---------------------------------------------------


def test_header_version_edit_is_detected() -> None:
    sealer = SoftwareSealer.generate()
    app = HsmApp.initialize("f", sealer)
    header = decode(SealedState, app.sealed_state())
    bumped = encode(SealedState(header.fleet_id, header.version + 1, header.sealed))
    with pytest.raises(SealingError):
        open_snapshot(sealer, bumped)
    other_fleet = encode(SealedState("g", header.version, header.sealed))
    with pytest.raises(SealingError):
        open_snapshot(sealer, other_fleet)
    with pytest.raises(StorageError):
        open_snapshot(sealer, b"\x07\x06\x01garbage")
    with pytest.raises(StorageError):
        peek_version(b"\x07\x06\x01garbage")
    assert peek_version(app.sealed_state()) == 1
    assert open_snapshot(sealer, app.sealed_state()).head == app.head


def test_every_flipped_byte_of_a_sealed_state_is_refused() -> None:
    sealer = SoftwareSealer.generate()
    blob = HsmApp.initialize("f", sealer).sealed_state()
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(StorageError):  # SealingError, or a header that no longer decodes
            open_snapshot(sealer, bytes(tampered))


def test_a_sealed_state_is_bound_to_its_counter_id() -> None:
    sealer = SoftwareSealer.generate()
    counter_id = b"\x5c" * 16
    app = HsmApp.initialize("f", sealer, counter_id=counter_id)
    assert open_snapshot(sealer, app.sealed_state(), counter_id).version == 1
    for other in (bytes(16), b"\x5d" * 16):
        with pytest.raises(SealingError):
            open_snapshot(sealer, app.sealed_state(), other)
        with pytest.raises(SealingError):
            HsmApp.load(app.sealed_state(), sealer, counter_id=other)
    with pytest.raises(ValueError, match="counter id"):
        open_snapshot(sealer, app.sealed_state(), bytes(15))
    loaded = HsmApp.load(app.sealed_state(), sealer, fleet_id="f", counter_id=counter_id)
    assert loaded.head == app.head
    with pytest.raises(StorageError, match="another fleet"):
        HsmApp.load(app.sealed_state(), sealer, fleet_id="g", counter_id=counter_id)


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


# --- init and load with the SQLite record store --------------------------------------------


def test_init_stores_the_vault_in_the_record_store_and_keys_out_of_state_dir(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    config = software_config
    assert config.record_store == f"sqlite:{config.state_dir / RECORD_STORE_FILE}"
    assert config.key_dir == config.state_dir.parent / "hsm-private"  # the default: a sibling
    published = render_public_keys(software_node.app.public_keys())
    assert (config.state_dir / PUBLIC_KEYS_FILE).read_bytes() == published
    names = {p.name for p in config.state_dir.iterdir()}
    assert {PUBLIC_KEYS_FILE, RECORD_STORE_FILE} <= names
    assert names <= {PUBLIC_KEYS_FILE, RECORD_STORE_FILE} | {
        RECORD_STORE_FILE + suffix for suffix in ("-wal", "-shm")
    }
    assert stat.S_IMODE(config.key_dir.stat().st_mode) == 0o700
    for name in ("sealing.key", COUNTER_FILE_NAME):
        assert stat.S_IMODE((config.key_dir / name).stat().st_mode) == 0o600
    # The genesis is stored and counted: version 1 over the empty tree (tree version 0).
    app = software_node.app
    assert app.version == 1 and app.head.version == 0
    assert software_node.store.head() == app.head
    assert software_node.store.sealed_state() == app.sealed_state()
    committed = software_node.device.counter.read()
    assert (committed.version, committed.digest) == (1, blob_digest(app.sealed_state()))
    software_node.close()
    with load_hsm(config) as loaded:
        assert loaded.app.public_keys() == software_node.app.public_keys()
        assert loaded.app.public_keys().max_guess_limit == 5
        assert loaded.app.head == app.head


def test_every_batch_commits_the_store_and_then_the_counter(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    with pytest.raises(WrongPasswordError):
        client.recover(WRONG)
    node = software_node
    sealed = node.store.sealed_state()
    assert sealed is not None and sealed == node.app.sealed_state()
    assert node.store.head() == node.app.head
    assert node.app.head.version == node.app.version - 1
    committed = node.device.counter.read()
    assert (committed.version, committed.digest) == (node.app.version, blob_digest(sealed))
    record = node.store.read_record(node.app.record_id(b"alice"))
    assert record is not None and SECRET not in record and PASSWORD not in record
    assert node.store.read_record(node.app.record_id(b"bob")) is None
    node.close()
    with load_hsm(software_config) as loaded:
        status = _client(loaded).status()
        assert (status.attempts_left, status.failed_attempts) == (2, 1)
        assert _client(loaded).recover(PASSWORD) == SECRET


def test_init_refuses_an_existing_record_store(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    _client(software_node).register(PASSWORD, SECRET, guess_limit=5)
    before = _copy_store(software_config, "before")
    with pytest.raises(StorageError, match="holds an HSM state"):
        init_hsm(software_config)  # while the node serves
    software_node.close()
    # The HSM's keys gone (a new device), the host's store still there: never overwritten.
    shutil.rmtree(software_config.key_dir)
    with pytest.raises(StorageError, match="holds an HSM state"):
        init_hsm(software_config)
    assert not software_config.key_dir.exists()  # refused before any key was made
    with (
        closing(sqlite3.connect(before)) as old,
        closing(sqlite3.connect(_db_path(software_config))) as now,
    ):
        query = "SELECT version, root, sealed_state FROM head"
        assert old.execute(query).fetchall() == now.execute(query).fetchall()


def test_init_refuses_to_reset_the_counter_when_the_host_deletes_the_state(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    software_node.close()
    shutil.rmtree(software_config.state_dir)
    with pytest.raises(NvCounterError, match="exists"):
        init_hsm(software_config)


def test_load_refuses_an_empty_or_missing_record_store(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    software_node.close()
    path = _db_path(software_config)
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)
    with pytest.raises(StorageError, match="holds no HSM state"):
        load_hsm(software_config)  # a new, empty store is made and found empty
    # The device was released on the way out: the next start can take it.
    with open_device(software_config, create=False) as device:
        assert device.committed.version == 1


def test_a_record_store_outside_state_dir(tmp_path: Path) -> None:
    config = load_config(
        _write_config(tmp_path, 'backend = "software"', 'record_store = "sqlite:vault.sqlite3"')
    )
    assert config.record_store == f"sqlite:{tmp_path / 'vault.sqlite3'}"
    with init_hsm(config) as node:
        _client(node).register(PASSWORD, SECRET, guess_limit=5)
    assert (tmp_path / "vault.sqlite3").is_file()
    assert not (config.state_dir / RECORD_STORE_FILE).exists()
    with load_hsm(config) as node:
        assert _client(node).recover(PASSWORD) == SECRET


def test_a_tampered_sealed_state_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    _client(software_node).register(PASSWORD, SECRET, guess_limit=5)
    software_node.close()
    good = _stored_state(software_config)
    header = decode(SealedState, good)
    flipped = bytearray(good)
    flipped[-5] ^= 0x10
    for tampered in (
        bytes(flipped),
        encode(SealedState(header.fleet_id, header.version + 1, header.sealed)),
    ):
        _set_stored_state(software_config, tampered)
        with pytest.raises(SealingError) as refused:
            load_hsm(software_config)
        assert not isinstance(refused.value, StateRollbackError)  # tampering, not a rollback
    _set_stored_state(software_config, b"\x07\x06\x01 not a sealed state")
    with pytest.raises(StorageError, match="malformed"):
        load_hsm(software_config)
    _set_stored_state(software_config, good)
    with load_hsm(software_config) as node:
        assert _client(node).recover(PASSWORD) == SECRET


def test_a_tampered_record_is_refused_alone_and_changes_nothing(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    """A record whose read fails the HSM's checks: that request is refused, the node serves on."""
    node = software_node
    alice, bob = _client(node), _client(node, b"bob")
    alice.register(PASSWORD, SECRET, guess_limit=5)
    bob.register(PASSWORD, SECRET, guess_limit=5)
    alice_id, bob_id = node.app.record_id(b"alice"), node.app.record_id(b"bob")
    alice_blob = node.store.read_record(alice_id)
    bob_blob = node.store.read_record(bob_id)
    assert alice_blob is not None and bob_blob is not None
    version = node.app.version
    # The host serves bob's blob for alice, then a flipped byte of her own.
    for wrong in (bob_blob, alice_blob[:-1] + bytes([alice_blob[-1] ^ 1])):
        _execute(software_config, "UPDATE records SET blob = ? WHERE key = ?", wrong, alice_id)
        request, _state = alice.request_bytes(StatusRequest())
        with pytest.raises(StorageError, match="RecordMismatchError"):
            node.handle(request, NOW_MS, _no_pause)
        assert not node.failed and node.app.version == version
        assert bob.status().exists  # another account is served meanwhile
    _execute(software_config, "UPDATE records SET blob = ? WHERE key = ?", alice_blob, alice_id)
    assert alice.recover(PASSWORD) == SECRET


# --- rollback on one HSM (software backend: NV counter file in key_dir) --------------------


def test_restoring_an_older_record_store_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    # The reviewer's attack: limit 3, two wrong guesses, put the older store back.
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    older = _copy_store(software_config, "older")
    for left in (2, 1):
        with pytest.raises(WrongPasswordError) as wrong:
            client.recover(WRONG)
        assert wrong.value.attempts_left == left
    newest = _copy_store(software_config, "newest")
    software_node.close()

    _restore_store(software_config, older)  # the host owns the store
    with pytest.raises(StateRollbackError, match="older than the NV counter"):
        load_hsm(software_config)
    _restore_store(software_config, newest)
    with load_hsm(software_config) as node:
        assert _client(node).status().attempts_left == 1
        assert _client(node).recover(PASSWORD) == SECRET


def test_a_file_copy_of_the_store_restored_is_refused_too(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    """The same attack with plain file copies (database and WAL), as a host's backup tool would."""
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    software_node.close()  # a clean close checkpoints the WAL into the database file
    path = _db_path(software_config)
    saved = {p.name: p.read_bytes() for p in path.parent.glob(path.name + "*")}
    with load_hsm(software_config) as node, pytest.raises(WrongPasswordError):
        _client(node).recover(WRONG)
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    for name, data in saved.items():
        (path.parent / name).write_bytes(data)
    with pytest.raises(StateRollbackError):
        load_hsm(software_config)


def test_a_write_acknowledged_but_not_kept_then_restart_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    # A host that acks without keeping the write (or a disk that loses it) and
    # restarts the HSM: the counter already covers the answered version, so the
    # HSM refuses to start. That is an availability loss, never a guess given back.
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    before = _copy_store(software_config, "before")
    client.start_login(PASSWORD)  # KE2 left: the counter moved to this version
    software_node.close()
    _restore_store(software_config, before)
    with pytest.raises(StateRollbackError):
        load_hsm(software_config)


def test_crash_between_store_commit_and_counter_advance_is_accepted_and_counted(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    committed = _copy_store(software_config, "committed")
    counter = software_node.device.counter
    sealed = _commit_without_counting(software_node, client)
    assert counter.read().version == peek_version(sealed) - 1  # crashed before the advance
    software_node.close()

    with load_hsm(software_config) as node:
        # Accepted (no KE2 ever left for it) and committed now; the attempt stays counted.
        assert node.app.version == peek_version(sealed)
        assert node.device.counter.read().version == peek_version(sealed)
        assert node.device.counter.read().digest == blob_digest(sealed)
        assert _client(node).status().attempts_left == 2
    _restore_store(software_config, committed)  # the pre-crash store is now a rollback
    with pytest.raises(StateRollbackError):
        load_hsm(software_config)


def test_a_store_two_steps_ahead_of_the_counter_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    """The counter lags by one batch at most: two uncounted batches mean a forged counter."""
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    first = _commit_without_counting(software_node, client)
    software_node.app.persisted(peek_version(first))  # the app moves on, the counter does not
    second = _commit_without_counting(software_node, client)
    assert peek_version(second) == software_node.device.counter.read().version + 2
    software_node.close()
    with pytest.raises(StateRollbackError, match="ahead"):
        load_hsm(software_config)


def test_an_uncommitted_sibling_at_the_committed_version_is_refused(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    # The host crashes the HSM after the write, restores the previous store, and
    # lets another change commit at the same version. The first batch never
    # released anything; swapping it in later would undo the committed change.
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    committed = _copy_store(software_config, "committed")
    sibling_state = _commit_without_counting(software_node, client)
    sibling = _copy_store(software_config, "sibling")
    software_node.close()
    _restore_store(software_config, committed)
    with load_hsm(software_config) as node:
        assert node.app.version == peek_version(sibling_state) - 1
        _client(node).start_login(PASSWORD)  # commits another batch at the sibling's version
        assert node.app.version == peek_version(sibling_state)
    _restore_store(software_config, sibling)
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


def test_a_second_software_counter_for_the_same_key_cannot_roll_the_state_back(
    software_config: HsmConfig, software_node: HsmNode, tmp_path: Path
) -> None:
    """Software backend: a copied key file next to a fresh counter, and the old store."""
    client = _client(software_node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    fresh = _copy_store(software_config, "fresh")
    fresh_version = software_node.app.version
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
    counter.advance(start, start.next(fresh_version - 1, bytes(32)))  # "one step behind"
    other_state = tmp_path / "other-state"
    other_state.mkdir()
    config = dataclasses.replace(
        software_config,
        key_dir=other,
        state_dir=other_state,
        record_store=f"sqlite:{other_state / RECORD_STORE_FILE}",
        sealer=dataclasses.replace(software_config.sealer, key_file=other / "sealing.key"),
    )
    _restore_store(config, fresh)
    with pytest.raises(SealingError) as refused:
        load_hsm(config)
    assert not isinstance(refused.value, StateRollbackError)  # it does not even open


# --- configuration and the HSM-private key_dir ---------------------------------------------


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
    blob = _stored_state(config)
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
    ("record_store", "expected"),
    [
        (None, "sqlite:{state}/records.sqlite3"),
        ('"sqlite:elsewhere/r.sqlite3"', "sqlite:{base}/elsewhere/r.sqlite3"),
        ('"sqlite:///abs/r.sqlite3"', "sqlite:/abs/r.sqlite3"),
        ('"postgresql://bkv@db.example/bkv?schema=fleet_a"', None),
        ('"postgres://db.example/bkv"', None),
    ],
)
def test_the_record_store_url(
    tmp_path: Path, record_store: str | None, expected: str | None
) -> None:
    line = "" if record_store is None else f"record_store = {record_store}"
    config = load_config(_write_config(tmp_path, 'backend = "software"', line))
    if expected is None:  # a PostgreSQL URL is passed on as written
        assert record_store is not None and config.record_store == record_store.strip('"')
    else:
        base = tmp_path.resolve()
        assert config.record_store == expected.format(state=config.state_dir, base=base)


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
        (
            '[hsm]\nfleet_id = "f"\nstate_dir = "s"\nrecord_store = "mysql://db/x"\n[sealer]\n',
            "sqlite",
        ),
        ('[hsm]\nfleet_id = "f"\nstate_dir = "s"\nrecord_store = ""\n[sealer]\n', "record_store"),
        (
            '[hsm]\nfleet_id = "f"\nstate_dir = "s"\nrecord_store = "sqlite:hsm-private/r"\n'
            "[sealer]\n",
            "must not be inside key_dir",
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
    client.start_login(PASSWORD)  # the last attempt; the session then expires


def test_housekeeping_destroys_a_record_left_at_its_limit(
    software_config: HsmConfig, software_node: HsmNode
) -> None:
    _record_at_its_limit(software_node)
    assert software_node.run_housekeeping(lambda: NOW_MS) == 0  # its session may still succeed
    later = NOW_MS + SESSION_TTL_MS
    assert software_node.run_housekeeping(lambda: later) == 1
    assert software_node.run_housekeeping(lambda: later) == 0
    software_node.close()
    with load_hsm(software_config) as node:
        assert not _client(node).status().exists


def _plant_another_head(config: HsmConfig) -> tuple[object, ...]:
    """The host moves the store's head on behind the node's back: its next commit is refused.

    Returns the row, to put back.
    """
    with closing(sqlite3.connect(_db_path(config))) as db:
        row = db.execute("SELECT version, root FROM head WHERE one = 1").fetchone()
    _execute(config, "UPDATE head SET version = version + 5 WHERE one = 1")
    return tuple(row)


def _restore_head(config: HsmConfig, row: tuple[object, ...]) -> None:
    _execute(config, "UPDATE head SET version = ?, root = ? WHERE one = 1", *row)


def _signed(body: bytes) -> dict[str, str]:
    return {LINK_MAC_HEADER: link_mac_header(LINK_KEY, "POST", b"/v1/message", body)}


def test_a_failed_request_persist_releases_nothing_and_latches(
    software_config: HsmConfig, software_node: HsmNode, capsys: pytest.CaptureFixture[str]
) -> None:
    node = software_node
    client = _client(node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    version = node.app.version
    planted = _plant_another_head(software_config)
    with pytest.raises(StorageError, match="stored head"):
        client.start_login(PASSWORD)  # no KE2: the exception is all the caller gets
    assert node.failed
    assert "persistence failed (StorageError)" in capsys.readouterr().err
    assert node.app.version == version  # the batch was abandoned
    assert node.device.counter.read().version == version  # and never counted
    with pytest.raises(HsmFailedError):
        client.status()
    with pytest.raises(HsmFailedError):
        node.run_housekeeping()
    web = TestClient(build_app(node, LINK_KEY, log=print))
    body = b"\x01\x01\x01"
    assert web.post("/v1/message", content=body, headers=_signed(body)).status_code == 503
    node.close()
    _restore_head(software_config, planted)  # the host repairs its store: the restart serves
    with load_hsm(software_config) as restarted:
        assert restarted.app.version == version
        assert _client(restarted).status().attempts_left == 3  # nothing was counted


def test_a_counter_that_cannot_advance_latches_and_the_restart_commits_the_batch(
    software_config: HsmConfig, software_node: HsmNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store took the batch, the counter did not move: no answer leaves, the node stops."""
    node = software_node
    client = _client(node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    version = node.app.version
    counter_path = software_config.key_dir / COUNTER_FILE_NAME
    saved = counter_path.read_bytes()
    counter_path.unlink()  # the device's NV storage fails under it
    with pytest.raises(NvCounterError):
        client.start_login(PASSWORD)
    assert node.failed
    assert "persistence failed (NvCounterError)" in capsys.readouterr().err
    assert node.app.version == version  # abandoned: the app's head never runs ahead
    assert peek_version(_stored_state(software_config)) == version + 1  # the store has it
    with pytest.raises(HsmFailedError):
        client.status()
    counter_path.write_bytes(saved)
    node.close()
    with load_hsm(software_config) as restarted:
        # One step ahead of the counter: accepted, counted, and the attempt stays spent.
        assert restarted.app.version == version + 1
        assert restarted.device.counter.read().version == version + 1
        assert _client(restarted).status().attempts_left == 2


def test_a_counter_moved_by_another_writer_latches(
    software_config: HsmConfig, software_node: HsmNode, capsys: pytest.CaptureFixture[str]
) -> None:
    node = software_node
    client = _client(node)
    client.register(PASSWORD, SECRET, guess_limit=3)
    other = FileCounter(software_config.key_dir / COUNTER_FILE_NAME)
    current = other.read()
    other.advance(current, current.next(current.version + 1, b"\x77" * 32))
    with pytest.raises(NvCounterError, match="another writer"):
        client.start_login(PASSWORD)
    assert node.failed
    assert "persistence failed (NvCounterConflictError)" in capsys.readouterr().err
    with pytest.raises(HsmFailedError):
        client.status()


def test_housekeeping_failure_latches_the_hsm_and_refuses_service(
    software_config: HsmConfig, software_node: HsmNode, capsys: pytest.CaptureFixture[str]
) -> None:
    node = software_node
    _record_at_its_limit(node)  # at NOW_MS: long expired by the server's wall clock
    version = node.app.version
    _plant_another_head(software_config)
    web = build_app(node, LINK_KEY, log=print, tick_interval_s=0.01)
    with TestClient(web) as http:  # runs the lifespan: the worker and its housekeeping ticks
        deadline = time.monotonic() + 10
        while not node.failed and time.monotonic() < deadline:  # bounded wait
            time.sleep(0.01)
        assert node.failed
        body = b"\x01\x01\x01"
        assert http.post("/v1/message", content=body, headers=_signed(body)).status_code == 503
    assert "persistence failed (StorageError)" in capsys.readouterr().err
    assert node.app.version == version  # the staged destruction was abandoned
    with pytest.raises(HsmFailedError):
        node.handle(b"\x01", NOW_MS, _no_pause)
    with pytest.raises(HsmFailedError):
        node.run_housekeeping()


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
        older = _copy_store(token_config, "older")
        with pytest.raises(WrongPasswordError):
            client.recover(WRONG)
        version = node.app.version
    newest_state = _stored_state(token_config)
    # The counter is one private data object in the token, at the committed version.
    [(value, private)] = _token_counter_objects(token_config)
    assert private and value.endswith(blob_digest(newest_state))

    with load_hsm(token_config) as node:  # the token key opens the state written through it
        assert node.app.version == version
        assert _client(node).recover(PASSWORD) == SECRET
    newest = _copy_store(token_config, "newest")
    newest_state = _stored_state(token_config)
    # A software key cannot open what the token sealed; a flipped byte fails in the token.
    with pytest.raises(SealingError):
        HsmApp.load(newest_state, SoftwareSealer.generate())
    tampered = bytearray(newest_state)
    tampered[-5] ^= 0x10
    _set_stored_state(token_config, bytes(tampered))
    with pytest.raises(SealingError):
        load_hsm(token_config)
    _restore_store(token_config, older)
    with pytest.raises(StateRollbackError):
        load_hsm(token_config)
    _restore_store(token_config, newest)
    with load_hsm(token_config) as node:
        assert _client(node).status().attempts_left == 3


@pytest.mark.softhsm
def test_softhsm2_crash_between_commit_and_counter_advance(token_config: HsmConfig) -> None:
    with init_hsm(token_config) as node:
        client = _client(node)
        client.register(PASSWORD, SECRET, guess_limit=3)
        sealed = _commit_without_counting(node, client)
    with load_hsm(token_config) as node:
        assert node.device.counter.read().version == peek_version(sealed)
        assert _client(node).status().attempts_left == 2  # counted, though no KE2 left
    assert len(_token_counter_objects(token_config)) == 1


@pytest.mark.softhsm
def test_softhsm2_init_adopts_a_provisioned_token_key(token_config: HsmConfig) -> None:
    assert token_config.sealer.pkcs11_config is not None
    token = pkcs11.Pkcs11Config.load(token_config.sealer.pkcs11_config, "user-pin-1234")
    with pkcs11.generate_sealing_key(token, token_config.sealer.key_label):
        pass  # provisioned as in the operations guide, then closed
    with init_hsm(token_config) as node:
        counter_id = node.device.counter_id
    blob = _stored_state(token_config)
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
        fresh = _copy_store(token_config, "fresh")  # attempts_left == 3
        fresh_version = node.app.version
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
    #    and the old state was sealed for the first counter's: it does not open.
    assert second.sealer.pkcs11_config is not None
    token = pkcs11.Pkcs11Config.load(second.sealer.pkcs11_config, "user-pin-1234")
    with pkcs11.create_counter(token, "second-counter") as counter:
        start = counter.read()
        counter.advance(start, start.next(fresh_version - 1, bytes(32)))
    second.state_dir.mkdir(exist_ok=True)
    _restore_store(second, fresh)
    with pytest.raises(SealingError):
        load_hsm(second)
