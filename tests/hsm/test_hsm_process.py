"""`bkv hsm init` / `bkv hsm serve` as real subprocesses on 127.0.0.1, killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hsm_world import VaultClient

from bkv.crypto.opaque import client_login_start
from bkv.errors import WrongPasswordError
from bkv.hsm.sealing import peek_version
from bkv.hsm.store import PUBLIC_KEYS_FILE, STATE_FILE
from bkv.keystore.counter import COUNTER_FILE_NAME, FileCounter
from bkv.protocol.messages import RecoverStart

pytestmark = pytest.mark.slow

FLEET = "proc-fleet"
PASSWORD = b"process test password"
SECRET = b"\x07" * 32
START_TIMEOUT_S = 30.0
PAUSE_TIMEOUT_S = 20.0


def _bkv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bkv.cli.main", *args]


def _write_config(directory: Path, pause_at: str | None = None) -> Path:
    testing = f'\n[testing]\npause_at = "{pause_at}"\n' if pause_at else ""
    path = directory / ("hsm.toml" if pause_at is None else f"hsm-{pause_at}.toml")
    path.write_text(
        f'[hsm]\nfleet_id = "{FLEET}"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        f'max_guess_limit = 10\n\n[sealer]\nbackend = "software"\n{testing}',
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def running_hsm(config: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `bkv hsm serve`; yield (process, base URL); SIGKILL it on exit if still alive."""
    process = subprocess.Popen(
        _bkv("hsm", "serve", "--config", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _read_url(process)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()


def _read_url(process: subprocess.Popen[str]) -> str:
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        found.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not found or "listening on " not in found[0]:
        process.kill()
        stderr = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"bkv hsm serve did not start: {found!r} {stderr[-2000:]}")
    return found[0].strip().rsplit("listening on ", 1)[1]


def _transport(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=PAUSE_TIMEOUT_S + 10)


def _client(http: httpx.Client, public_keys: bytes) -> VaultClient:
    def send(request: bytes) -> bytes:
        response = http.post(
            "/v1/message",
            content=request,
            headers={"content-type": "application/octet-stream"},
        )
        return response.content

    return VaultClient(send, public_keys, b"alice")


@pytest.fixture
def initialized(tmp_path: Path) -> Path:
    config = _write_config(tmp_path)
    result = subprocess.run(
        _bkv("hsm", "init", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "state" / STATE_FILE).is_file()
    assert (tmp_path / "state" / PUBLIC_KEYS_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "hsm-private").iterdir()) == [
        COUNTER_FILE_NAME,
        "sealing.key",
    ]
    return tmp_path


def test_serve_full_flow_and_restart(initialized: Path) -> None:
    config = _write_config(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    with running_hsm(config) as (_process, url), _transport(url) as http:
        assert http.get("/v1/public-keys").content == keys_file
        client = _client(http, keys_file)
        client.register(PASSWORD, SECRET)
        with pytest.raises(WrongPasswordError):
            client.recover(b"wrong")
        assert client.recover(PASSWORD) == SECRET
        with pytest.raises(WrongPasswordError):
            client.recover(b"wrong again")
        too_big = http.post("/v1/message", content=b"\x00" * 5000)
        assert too_big.status_code == 400
        garbage = http.post("/v1/message", content=b"\x01\x01\x01")
        assert garbage.status_code == 400
    # SIGKILLed on exit; the restarted HSM remembers everything that was acknowledged.
    with running_hsm(config) as (_process, url), _transport(url) as http:
        client = _client(http, keys_file)
        assert client.status().attempts_left == 9
        assert client.recover(PASSWORD) == SECRET


def _register(config: Path, keys_file: bytes) -> None:
    with running_hsm(config) as (_process, url), _transport(url) as http:
        _client(http, keys_file).register(PASSWORD, SECRET)


def _ke1_while_killed(initialized: Path, pause_at: str) -> tuple[list[object], bytes]:
    """Send a KE1 to an HSM that stops at ``pause_at``; SIGKILL it there. Return what came back."""
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    marker = initialized / "state" / f"paused-{pause_at}"
    outcome: list[object] = []
    with running_hsm(_write_config(initialized, pause_at)) as (process, url):
        http = _transport(url)
        client = _client(http, keys_file)
        request, _state = client.request_bytes(
            RecoverStart(client_login_start(PASSWORD)[1].to_bytes())
        )

        def send() -> None:
            try:
                outcome.append(http.post("/v1/message", content=request).content)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not marker.exists() and time.monotonic() < deadline:  # bounded wait
            time.sleep(0.02)
        assert marker.exists(), "the HSM never reached the pause point"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        sender.join(PAUSE_TIMEOUT_S)
        http.close()
    marker.unlink()
    return outcome, keys_file


def _counter_version(initialized: Path) -> int:
    return FileCounter(initialized / "hsm-private" / COUNTER_FILE_NAME).read().version


def _state_version(initialized: Path) -> int:
    return peek_version((initialized / "state" / STATE_FILE).read_bytes())


@pytest.mark.parametrize("pause_at", ["persisted", "committed"])
def test_sigkill_after_persist_before_ke2_keeps_the_attempt_counted(
    initialized: Path, pause_at: str
) -> None:
    # "persisted": the blob is on disk, the NV counter not yet advanced (the
    # restart accepts the state one step ahead and commits it). "committed":
    # the counter covers it too. Either way no KE2 left and the attempt stays.
    config = _write_config(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    outcome, _ = _ke1_while_killed(initialized, pause_at)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)  # no KE2 left
    lag = 1 if pause_at == "persisted" else 0
    assert _counter_version(initialized) == _state_version(initialized) - lag
    with running_hsm(config) as (_process, url), _transport(url) as http:
        client = _client(http, keys_file)
        assert client.status().attempts_left == 9  # the attempt was not given back
        # Loading committed the state one step ahead (or found it committed); a status
        # reads only: the counter covers exactly the state on disk.
        assert _counter_version(initialized) == _state_version(initialized)
        assert client.recover(PASSWORD) == SECRET


def test_serve_refuses_a_rolled_back_state(initialized: Path) -> None:
    config = _write_config(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    state = initialized / "state" / STATE_FILE
    older = state.read_bytes()
    with (
        running_hsm(config) as (_process, url),
        _transport(url) as http,
        pytest.raises(WrongPasswordError),
    ):
        _client(http, keys_file).recover(b"wrong")
    state.write_bytes(older)  # the host restores its backup: the attempt would come back
    result = subprocess.run(
        _bkv("hsm", "serve", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "StateRollbackError" in result.stderr


def test_sigkill_right_after_ke1_received_counts_nothing_and_releases_nothing(
    initialized: Path,
) -> None:
    config = _write_config(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    state_before = (initialized / "state" / STATE_FILE).read_bytes()
    outcome, _ = _ke1_while_killed(initialized, "request-received")
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)  # no KE2 left
    assert (initialized / "state" / STATE_FILE).read_bytes() == state_before
    with running_hsm(config) as (_process, url), _transport(url) as http:
        client = _client(http, keys_file)
        # No check was answered, so none was spent: count == answered checks.
        assert client.status().attempts_left == 10


def test_serve_refuses_a_tampered_state(initialized: Path) -> None:
    state = initialized / "state" / STATE_FILE
    blob = bytearray(state.read_bytes())
    blob[-3] ^= 0x01
    state.write_bytes(bytes(blob))
    result = subprocess.run(
        _bkv("hsm", "serve", "--config", str(_write_config(initialized))),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "SealingError" in result.stderr
