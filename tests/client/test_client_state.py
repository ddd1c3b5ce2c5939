"""Client state: strict JSON mapping and the atomic JSON-file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from client_world import NOW_MS, World, make_artifact

from bkv.client.state import ClientState
from bkv.client.store_json import MAX_STATE_FILE_SIZE, JsonFileStateStore
from bkv.client.validation import validate_bundle
from bkv.errors import ConsistencyProofError, EpochRollbackError, StorageError
from bkv.protocol.bundle import encode_bundle


def test_missing_file_is_fresh_state(tmp_path: Path) -> None:
    assert JsonFileStateStore(tmp_path / "state.json").load() == ClientState()


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = JsonFileStateStore(tmp_path / "state.json")
    state = ClientState(
        epoch=7, digest=b"\x01" * 32, checkpoint_size=9, checkpoint_root=b"\x02" * 32
    )
    store.save(state)
    assert store.load() == state
    assert JsonFileStateStore(tmp_path / "state.json").load() == state
    assert not (tmp_path / "state.json.tmp").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 1}',
        b"\xff",
        b" " * (MAX_STATE_FILE_SIZE + 1),
    ],
)
def test_corrupt_file_is_storage_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StorageError):
        JsonFileStateStore(path).load()


@pytest.mark.parametrize(
    "patch",
    [
        {"version": 2},
        {"epoch": -1},
        {"epoch": True},
        {"epoch": 3, "digest": None},
        {"digest": "AB" * 32, "epoch": 1},
        {"digest": "ab" * 31, "epoch": 1},
        {"checkpoint_size": 4},
        {"extra": 1},
    ],
)
def test_inconsistent_state_rejected(tmp_path: Path, patch: dict[str, object]) -> None:
    value = ClientState().to_json_value()
    value.update(patch)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(value))
    with pytest.raises(StorageError):
        JsonFileStateStore(path).load()


def test_state_invariants_on_construction() -> None:
    with pytest.raises(ValueError):
        ClientState(epoch=1)
    with pytest.raises(ValueError):
        ClientState(checkpoint_size=1)


def test_deleted_state_file_is_not_a_silent_reset(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = ClientState(
        epoch=3, digest=b"\x03" * 32, checkpoint_size=5, checkpoint_root=b"\x05" * 32
    )
    store = JsonFileStateStore(path)
    store.save(state)
    path.unlink()
    # The store that saved it knows there was state; so does a caller that says so.
    with pytest.raises(StorageError, match="missing"):
        store.load()
    with pytest.raises(StorageError, match="missing"):
        JsonFileStateStore(path, must_exist=True).load()
    # A first run (nothing saved before, caller does not claim state) starts fresh.
    assert JsonFileStateStore(path).load() == ClientState()


def test_save_uses_unique_temporary_files_and_leaves_none(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    # A stale temp file of the old fixed name does not get in the way, nor is reused.
    stale = tmp_path / "state.json.tmp"
    stale.write_bytes(b"stale")
    first, second = JsonFileStateStore(path), JsonFileStateStore(path)
    first.save(ClientState(epoch=1, digest=b"\x01" * 32))
    second.save(ClientState(epoch=2, digest=b"\x02" * 32))
    assert JsonFileStateStore(path).load().epoch == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "state.json",
        "state.json.lock",
        "state.json.tmp",
    ]
    assert stale.read_bytes() == b"stale"


def test_unwritable_directory_is_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        JsonFileStateStore(tmp_path / "missing-dir" / "state.json").save(ClientState())


def test_two_writers_cannot_roll_the_saved_epoch_back(tmp_path: Path) -> None:
    # Two updates share one state file; both load the
    # fresh state, A accepts epoch 2 and saves, then B accepts epoch 1 and saved it
    # over A's (lost update), so epoch 1 was accepted again afterwards.
    world = World()
    first = encode_bundle(world.bundle(world.publish(make_artifact(seed="a").to_bytes())))
    second = encode_bundle(world.bundle(world.publish(make_artifact(seed="b").to_bytes())))
    roots = world.roots()
    path = tmp_path / "state.json"
    store_a, store_b = JsonFileStateStore(path), JsonFileStateStore(path)
    loaded_a, loaded_b = store_a.load(), store_b.load()
    _, newer = validate_bundle(second, roots, loaded_a, NOW_MS)
    store_a.save(newer)
    _, older = validate_bundle(first, roots, loaded_b, NOW_MS)
    with pytest.raises(EpochRollbackError):
        store_b.save(older)
    assert JsonFileStateStore(path).load() == newer
    with pytest.raises(EpochRollbackError):
        validate_bundle(first, roots, JsonFileStateStore(path).load(), NOW_MS)


STORED = ClientState(epoch=5, digest=b"\x05" * 32, checkpoint_size=9, checkpoint_root=b"\x09" * 32)


@pytest.mark.parametrize(
    ("older", "error"),
    [
        (ClientState(), EpochRollbackError),
        (
            ClientState(
                epoch=4, digest=b"\x05" * 32, checkpoint_size=10, checkpoint_root=b"\x0a" * 32
            ),
            EpochRollbackError,
        ),
        (
            ClientState(
                epoch=5, digest=b"\x06" * 32, checkpoint_size=9, checkpoint_root=b"\x09" * 32
            ),
            EpochRollbackError,
        ),
        (
            ClientState(
                epoch=6, digest=b"\x06" * 32, checkpoint_size=8, checkpoint_root=b"\x08" * 32
            ),
            ConsistencyProofError,
        ),
        (
            ClientState(
                epoch=6, digest=b"\x06" * 32, checkpoint_size=9, checkpoint_root=b"\x0a" * 32
            ),
            ConsistencyProofError,
        ),
    ],
)
def test_save_refuses_anything_older_than_the_stored_state(
    tmp_path: Path, older: ClientState, error: type[Exception]
) -> None:
    path = tmp_path / "state.json"
    JsonFileStateStore(path).save(STORED)
    with pytest.raises(error):
        JsonFileStateStore(path).save(older)
    assert JsonFileStateStore(path).load() == STORED


def test_save_accepts_the_same_state_and_states_that_move_forward(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = JsonFileStateStore(path)
    store.save(STORED)
    store.save(STORED)
    newer_checkpoint = ClientState(
        epoch=5, digest=b"\x05" * 32, checkpoint_size=12, checkpoint_root=b"\x0c" * 32
    )
    store.save(newer_checkpoint)
    newer_epoch = ClientState(
        epoch=6, digest=b"\x06" * 32, checkpoint_size=12, checkpoint_root=b"\x0c" * 32
    )
    JsonFileStateStore(path).save(newer_epoch)
    assert store.load() == newer_epoch
