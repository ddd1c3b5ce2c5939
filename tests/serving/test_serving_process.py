"""How every bkv server serves (bkv.serving), checked on the real `bkv ... serve` processes.

The HSM, the host and the witness run the same way: ready line only once
connections are accepted, TCP_NODELAY on every accepted connection, a bounded
time for the request head and body, early answers that close the connection
instead of reading on, and one log line (never a traceback) per refused
request. Each check runs against all three servers over loopback, with slow,
oversized and vanishing clients written against a raw socket; every wait is
bounded in count and time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_world import (
    KINDS,
    TIMEOUT_S,
    NoPidfdGetfdError,
    Server,
    head_of,
    prepare,
    read_response,
    read_until_closed,
    request_head,
    running,
    server_side_socket,
    status_of,
)

pytestmark = pytest.mark.slow

RESTARTS = 6
"""Restarts per server in the readiness test (a late ready line was refused on ~1 in 3)."""
POLL_S = 0.25
MAX_POLLS = 60
"""Slow-client loops: at most 60 rounds of 0.25 s, fifteen times the 1 s timeouts."""
LOG_WAIT_S = 10.0


def _serve(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp(kind)
    setup = prepare(kind, directory / "server")
    with running(setup, directory / "stderr.log") as running_server:
        yield running_server


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=("hsm", "host"))
def credentialed_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The servers that authenticate their callers (the witness's API is public)."""
    yield from _serve(request.param, tmp_path_factory)


def _wait_for_log(server: Server, since: int, text: str) -> str:
    """The log written after offset ``since``, once it holds ``text`` (bounded wait)."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        new = server.log()[since:]
        if text in new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_the_ready_line_means_connections_are_accepted(kind: str, tmp_path: Path) -> None:
    setup = prepare(kind, tmp_path / "server")
    for _ in range(RESTARTS):
        # Connect the moment the line appeared: no retry, no sleep.
        with (
            running(setup, tmp_path / "stderr.log") as started,
            socket.create_connection((started.host, started.port), timeout=5),
        ):
            pass


def test_every_accepted_connection_has_tcp_nodelay(server: Server) -> None:
    with server.connect() as client:
        client.sendall(request_head("GET", server.setup.get_path, {}))
        assert client.recv(1)  # answered: the server has accepted this connection
        try:
            accepted = server_side_socket(server.process.pid, client)
        except NoPidfdGetfdError as exc:
            pytest.fail(f"cannot inspect the server's socket on this machine: {exc}")
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_request_read_whole_keeps_its_connection(server: Server) -> None:
    # The negative of the tests below: only an early answer closes the connection.
    with server.connect() as client:
        for _ in range(2):
            client.sendall(request_head("GET", server.setup.get_path, {}))
            response = read_response(client)
            assert status_of(response) in (200, 401)
            assert "connection: close" not in head_of(response)


def test_a_slow_request_head_is_cut_off(server: Server) -> None:
    since = len(server.log())
    with server.connect(timeout_s=POLL_S) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer, closed = b"", False
        for _ in range(MAX_POLLS):  # one header byte per round: every byte is "progress"
            try:
                client.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            answer, closed = read_until_closed(client)
            if closed:
                break
    assert closed, "the server waited for the head for 15 s"
    assert answer == b""  # not answered: the connection is just closed
    log = _wait_for_log(server, since, "request head not complete")
    assert f"request head not complete within {TIMEOUT_S} s" in log
    assert "Traceback" not in log


def test_a_slow_request_body_gets_408(server: Server) -> None:
    since = len(server.log())
    setup = server.setup
    response, closed = b"", False
    with server.connect(timeout_s=POLL_S) as client:
        client.sendall(request_head("POST", setup.body_path, setup.body_headers, 100))
        for _ in range(MAX_POLLS):  # one body byte per round, never all 100
            try:
                client.sendall(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                data, closed = read_until_closed(client)
                response += data
                break
            data, closed = read_until_closed(client)
            response += data
            if closed:
                break
    assert closed, "the server waited for the body for 15 s"
    assert status_of(response) == 408
    assert "connection: close" in head_of(response)
    log = _wait_for_log(server, since, "body not complete")
    assert f"body not complete within {TIMEOUT_S} s" in log
    assert "Traceback" not in log


def test_a_declared_oversized_body_is_refused_without_reading_it(server: Server) -> None:
    setup = server.setup
    since = len(server.log())
    with server.connect(timeout_s=5) as client:
        client.sendall(request_head("POST", setup.body_path, setup.body_headers, 10_000_000))
        response, closed = read_until_closed(client)
        assert status_of(response) == setup.too_large_status
        assert "connection: close" in head_of(response)
        assert closed, "the server kept the connection to read the refused body"
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(200):  # 12.8 MB: more than the declared body
                client.sendall(b"\x00" * 65536)
    log = _wait_for_log(server, since, "declared body over")
    assert f"declared body over the {setup.body_limit}-byte limit" in log


def test_a_streamed_oversized_body_is_cut_off_at_the_limit(server: Server) -> None:
    setup = server.setup
    headers = {**setup.body_headers, "Transfer-Encoding": "chunked"}
    chunk = b"\x00" * (setup.body_limit + 1)
    with server.connect(timeout_s=5) as client:
        client.sendall(request_head("POST", setup.body_path, headers))
        client.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        response, closed = read_until_closed(client)
    assert status_of(response) == setup.too_large_status
    assert "connection: close" in head_of(response)
    assert closed


def test_a_client_leaving_mid_body_costs_one_log_line(server: Server) -> None:
    setup = server.setup
    since = len(server.log())
    with server.connect() as client:
        client.sendall(request_head("POST", setup.body_path, setup.body_headers, 1000))
        client.sendall(b"\x00" * 10)
    log = _wait_for_log(server, since, "client left before its body was complete")
    assert "Traceback" not in log
    lines = log.splitlines()
    assert len(lines) == 1, log
    assert lines[0].startswith(f"bkv {setup.kind}: refused POST {setup.body_path} from 127.0.0.1:")
    assert lines[0].endswith(": client left before its body was complete")


def test_credentials_are_checked_before_the_body_is_read(credentialed_server: Server) -> None:
    server = credentialed_server
    setup = server.setup
    # The HSM wants the host's link MAC, the host a bearer token; neither is valid here.
    headers = {} if setup.kind == "hsm" else {"authorization": "Bearer not-a-token"}
    with server.connect(timeout_s=5) as client:
        client.sendall(request_head("POST", setup.body_path, headers, 100))  # and no body
        response, closed = read_until_closed(client)
    assert status_of(response) == 401  # at once: not a 408 after waiting for the body
    assert "connection: close" in head_of(response)
    assert closed
