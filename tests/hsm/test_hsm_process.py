"""`bkv hsm init` / `bkv hsm serve` as real subprocesses on 127.0.0.1, killed with SIGKILL.

Every request carries the host's link MAC (:mod:`bkv.protocol.hsm_link`), made
here with the link key `bkv hsm init` wrote, except in the tests of requests
without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hsm_world import VaultClient

from bkv.crypto.opaque import client_login_start
from bkv.errors import WrongPasswordError
from bkv.hsm.config import RECORD_STORE_FILE
from bkv.hsm.sealing import peek_version
from bkv.hsm.store import PUBLIC_KEYS_FILE
from bkv.keystore.counter import COUNTER_FILE_NAME, FileCounter
from bkv.keystore.files import LOCK_FILE_NAME
from bkv.keystore.link_key import read_link_key
from bkv.protocol.hsm_link import LINK_MAC_HEADER, link_mac_header
from bkv.protocol.messages import InnerRequest, RecoverStart, StatusRequest
from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import TreeHead

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
def running_hsm(
    config: Path, stderr_file: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `bkv hsm serve`; yield (process, base URL); SIGKILL it on exit if still alive.

    Its stderr goes to ``stderr_file`` (default: next to the config).
    """
    log = stderr_file or config.with_suffix(".stderr")
    with log.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            _bkv("hsm", "serve", "--config", str(config)),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        url = _read_url(process, log)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


def _read_url(process: subprocess.Popen[str], stderr_file: Path) -> str:
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
        process.wait(timeout=10)
        stderr = stderr_file.read_text(encoding="utf-8")
        raise AssertionError(f"bkv hsm serve did not start: {found!r} {stderr[-2000:]}")
    return found[0].strip().rsplit("listening on ", 1)[1]


def _link_key(directory: Path) -> bytes:
    return read_link_key(directory / "link.key")


def _sign_with(key: bytes) -> Callable[[httpx.Request], None]:
    """An httpx request hook adding the host's link MAC, as `bkv host serve` does."""

    def sign(request: httpx.Request) -> None:
        mac = link_mac_header(key, request.method, request.url.raw_path, request.read())
        request.headers[LINK_MAC_HEADER] = mac

    return sign


def _transport(url: str, link_key: bytes | None) -> httpx.Client:
    """A client of the HSM at ``url``: signing with ``link_key``, or unsigned when None."""
    hooks = {"request": [_sign_with(link_key)]} if link_key is not None else {}
    return httpx.Client(base_url=url, timeout=PAUSE_TIMEOUT_S + 10, event_hooks=hooks)


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
    assert _store_path(tmp_path).is_file()  # the default record store, in state_dir
    assert (tmp_path / "state" / PUBLIC_KEYS_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "hsm-private").iterdir()) == [
        LOCK_FILE_NAME,
        COUNTER_FILE_NAME,
        "sealing.key",
    ]
    assert stat.S_IMODE((tmp_path / "link.key").stat().st_mode) == 0o600
    assert len(_link_key(tmp_path)) == 32
    return tmp_path


def test_serve_full_flow_and_restart(initialized: Path) -> None:
    config = _write_config(initialized)
    key = _link_key(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        assert http.get("/v1/public-keys").content == keys_file
        assert http.head("/v1/public-keys").status_code == 200  # with HEAD's own MAC
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
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        client = _client(http, keys_file)
        assert client.status().attempts_left == 9
        assert client.recover(PASSWORD) == SECRET


def _register(config: Path, keys_file: bytes) -> None:
    key = _link_key(config.parent)
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        _client(http, keys_file).register(PASSWORD, SECRET)


def _ke1_while_killed(initialized: Path, pause_at: str) -> tuple[list[object], bytes]:
    """Send a KE1 to an HSM that stops at ``pause_at``; SIGKILL it there. Return what came back."""
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    marker = initialized / "state" / f"paused-{pause_at}"
    outcome: list[object] = []
    with running_hsm(_write_config(initialized, pause_at)) as (process, url):
        http = _transport(url, _link_key(initialized))
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


def _store_path(initialized: Path) -> Path:
    return initialized / "state" / RECORD_STORE_FILE


def _stored(initialized: Path) -> tuple[TreeHead | None, bytes]:
    """The record store's head and sealed state (read through the real store, as the host)."""
    with SqliteTreeStore(_store_path(initialized)) as store:
        sealed = store.sealed_state()
        head = store.head()
    assert sealed is not None
    return head, sealed


def _state_version(initialized: Path) -> int:
    return peek_version(_stored(initialized)[1])


def _copy_store(initialized: Path, name: str) -> Path:
    """A consistent copy of the record store (SQLite's online backup API), outside state_dir."""
    copy = initialized / f"backup-{name}.sqlite3"
    with (
        contextlib.closing(sqlite3.connect(_store_path(initialized))) as live,
        contextlib.closing(sqlite3.connect(copy)) as to,
    ):
        live.backup(to)
    return copy


def _restore_store(initialized: Path, copy: Path) -> None:
    """Put an old copy back over the record store (the host owns it; no HSM runs)."""
    with (
        contextlib.closing(sqlite3.connect(copy)) as old,
        contextlib.closing(sqlite3.connect(_store_path(initialized))) as to,
    ):
        old.backup(to)


def _execute(initialized: Path, sql: str, *args: object) -> None:
    """One statement on the record store, in the host's own connection."""
    with contextlib.closing(sqlite3.connect(_store_path(initialized), timeout=30)) as db, db:
        db.execute(sql, args)


@pytest.mark.parametrize("pause_at", ["persisted", "committed"])
def test_sigkill_after_persist_before_ke2_keeps_the_attempt_counted(
    initialized: Path, pause_at: str
) -> None:
    # "persisted": the blob is on disk, the NV counter not yet advanced (the
    # restart accepts the state one step ahead and commits it). "committed":
    # the counter covers it too. Either way no KE2 left and the attempt stays.
    config = _write_config(initialized)
    key = _link_key(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    outcome, _ = _ke1_while_killed(initialized, pause_at)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)  # no KE2 left
    lag = 1 if pause_at == "persisted" else 0
    assert _counter_version(initialized) == _state_version(initialized) - lag
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
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
    older = _copy_store(initialized, "older")
    with (
        running_hsm(config) as (_process, url),
        _transport(url, _link_key(initialized)) as http,
        pytest.raises(WrongPasswordError),
    ):
        _client(http, keys_file).recover(b"wrong")
    _restore_store(initialized, older)  # the host restores its backup: the attempt would come back
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
    key = _link_key(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    state_before = _stored(initialized)
    outcome, _ = _ke1_while_killed(initialized, "request-received")
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)  # no KE2 left
    assert _stored(initialized) == state_before  # nothing was committed
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        client = _client(http, keys_file)
        # No check was answered, so none was spent: count == answered checks.
        assert client.status().attempts_left == 10


def test_serve_refuses_a_tampered_state(initialized: Path) -> None:
    blob = bytearray(_stored(initialized)[1])
    blob[-3] ^= 0x01
    _execute(initialized, "UPDATE head SET sealed_state = ? WHERE one = 1", bytes(blob))
    result = subprocess.run(
        _bkv("hsm", "serve", "--config", str(_write_config(initialized))),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "SealingError" in result.stderr


# --- the host-to-HSM link: only requests with the link MAC are answered ---------------------


WRONG = b"a guess from another local account"


def _request_bytes(keys_file: bytes, inner: InnerRequest, account: bytes = b"alice") -> bytes:
    def never_sent(_request: bytes) -> bytes:
        raise AssertionError("only the request bytes are built here")

    request, _state = VaultClient(never_sent, keys_file, account).request_bytes(inner)
    return request


def _attempt_request(keys_file: bytes) -> bytes:
    """A RecoverStart for alice: it would cost her an attempt if the HSM answered it."""
    return _request_bytes(keys_file, RecoverStart(client_login_start(WRONG)[1].to_bytes()))


def test_requests_without_the_link_mac_are_refused_alike_and_change_nothing(
    initialized: Path,
) -> None:
    config = _write_config(initialized)
    key = _link_key(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    state_before = _stored(initialized)
    counter_before = _counter_version(initialized)
    attempt = _attempt_request(keys_file)
    other_key = bytes(31) + b"\x01"
    good_mac = link_mac_header(key, "POST", b"/v1/message", attempt)
    refused: list[httpx.Response] = []
    with running_hsm(config) as (_process, url), _transport(url, None) as raw:
        for headers in (
            {},  # no MAC at all
            {LINK_MAC_HEADER: "zz" * 32},  # not hex
            {LINK_MAC_HEADER: good_mac.upper()},  # not lowercase
            {LINK_MAC_HEADER: good_mac[:-2]},  # too short
            {LINK_MAC_HEADER: link_mac_header(other_key, "POST", b"/v1/message", attempt)},
            {LINK_MAC_HEADER: link_mac_header(key, "POST", b"/v1/message", attempt[:-1])},
            {LINK_MAC_HEADER: link_mac_header(key, "POST", b"/v1/messages", attempt)},
            {LINK_MAC_HEADER: link_mac_header(key, "PUT", b"/v1/message", attempt)},
        ):
            refused.append(raw.post("/v1/message", content=attempt, headers=headers))
        for account in (b"alice", b"bob"):  # registered or not: the same answer
            status = _request_bytes(keys_file, StatusRequest(), account)
            refused.append(raw.post("/v1/message", content=status))
        refused.append(raw.get("/v1/public-keys"))  # public, but only to the host
        refused.append(raw.get("/no/such/route"))  # no route is revealed either
        refused.append(raw.post("/v1/message", content=b"\x01\x01\x01"))  # unparsable
        refused.append(raw.options("/v1/message"))  # every method, not only the routed ones
        good_for_post = {LINK_MAC_HEADER: good_mac}  # valid, but only for its own target
        refused.append(raw.post("/v1/message?x=1", content=attempt, headers=good_for_post))
        keys_mac = link_mac_header(key, "GET", b"/v1/public-keys", b"")
        heads = [
            raw.head("/v1/public-keys"),
            raw.head("/v1/public-keys", headers={LINK_MAC_HEADER: keys_mac}),  # GET's MAC
        ]
    assert [head.status_code for head in heads] == [401, 401]
    for response in refused:
        assert response.status_code == 401
        assert response.content == b"unauthenticated\n"
        assert response.headers["content-type"] == refused[0].headers["content-type"]
    # Nothing was parsed or persisted: the record still has all its attempts.
    assert _stored(initialized) == state_before
    assert _counter_version(initialized) == counter_before
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        assert _client(http, keys_file).status().attempts_left == 10
    log = config.with_suffix(".stderr").read_text(encoding="utf-8")
    assert "Traceback" not in log


def test_first_request_that_hits_a_persistence_failure_gets_503(initialized: Path) -> None:
    config = _write_config(initialized)
    key = _link_key(initialized)
    keys_file = (initialized / "state" / PUBLIC_KEYS_FILE).read_bytes()
    _register(config, keys_file)
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        # The host moves the store's head on behind the HSM's back: the next commit is
        # refused (it must follow the stored head) and the HSM fails safe on this very
        # request.
        _execute(initialized, "UPDATE head SET version = version + 5 WHERE one = 1")
        first = http.post("/v1/message", content=_attempt_request(keys_file))
        second = http.post("/v1/message", content=_attempt_request(keys_file))
    assert (first.status_code, second.status_code) == (503, 503)
    assert first.content == second.content == b"hsm unavailable: restart required\n"
    log = config.with_suffix(".stderr").read_text(encoding="utf-8")
    assert "persistence failed (StorageError)" in log
    assert "Traceback" not in log


def test_a_second_serve_on_the_same_config_refuses_to_start(initialized: Path) -> None:
    config = _write_config(initialized)
    key = _link_key(initialized)
    with running_hsm(config) as (_process, url), _transport(url, key) as http:
        second = subprocess.run(
            _bkv("hsm", "serve", "--config", str(config)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("bkv: DirectoryLockedError: another process")
        assert str(initialized / "hsm-private") in lines[0]
        assert second.stdout == ""  # it never said it was listening
        assert http.get("/v1/public-keys").status_code == 200  # the first one serves on


def test_serve_refuses_a_link_key_other_users_can_read(initialized: Path) -> None:
    (initialized / "link.key").chmod(0o640)
    result = subprocess.run(
        _bkv("hsm", "serve", "--config", str(_write_config(initialized))),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "KeystoreError" in result.stderr
    assert "accessible to other users" in result.stderr
