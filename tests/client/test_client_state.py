"""Client state: strict JSON mapping and the atomic JSON-file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bkv.client.state import ClientState
from bkv.client.store_json import MAX_STATE_FILE_SIZE, JsonFileStateStore
from bkv.errors import StorageError


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.tmp"]
    assert stale.read_bytes() == b"stale"


def test_unwritable_directory_is_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        JsonFileStateStore(tmp_path / "missing-dir" / "state.json").save(ClientState())
