"""The host's client of the HSM link (``HttpHsmLink``) against raw HTTP servers on 127.0.0.1.

The servers below stand in for what the host may meet on the link: an HSM
(or whatever answers at ``hsm_url``) that floods it, and a proxy named in the
environment that must never see the link's traffic. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bkv.errors import FleetUnreachableError
from bkv.host import link as link_module
from bkv.host.app import MAX_RESPONSE_SIZE, OCTET_STREAM, HttpHsmLink
from bkv.protocol.hsm_link import LINK_MAC_HEADER

LINK_KEY = bytes(range(32))
TIMEOUT_S = 5.0
FLOOD_SIZE = 64 * 1024 * 1024
"""What the flooding HSM offers: far more than loopback socket buffers can hold unread."""
CHUNK = 64 * 1024


class RawServer:
    """One loopback listener; ``answer(connection)`` runs for the first connection it accepts."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT_S)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self.sock.accept()
        except OSError:  # closed, or nobody came
            return
        with connection:
            connection.settimeout(TIMEOUT_S)
            self.requests.append(_read_head(connection))
            with contextlib.suppress(OSError):  # the client may hang up mid-answer
                self._answer(connection)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(TIMEOUT_S)


def _read_head(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:  # bounded by size and timeout
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[RawServer]:
    server = RawServer(answer)
    try:
        yield server
    finally:
        server.close()


def _exchange(url: str, body: bytes = b"request") -> bytes:
    async def run() -> bytes:
        link = HttpHsmLink(f"{url}/v1/message", TIMEOUT_S, LINK_KEY)
        try:
            return await link.exchange(body)
        finally:
            await link.aclose()

    return asyncio.run(run())


def _small_answer(connection: socket.socket) -> None:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {OCTET_STREAM}\r\ncontent-length: 2\r\n\r\n"
    connection.sendall(head.encode("ascii") + b"ok")


def test_the_link_never_goes_through_a_proxy_named_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy would see (and could replay) every MAC'd request of the link.
    with raw_server(_small_answer) as hsm, raw_server(_small_answer) as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert _exchange(hsm.url) == b"ok"
    assert proxy.requests == []
    assert len(hsm.requests) == 1
    assert hsm.requests[0].startswith(b"POST /v1/message HTTP/1.1\r\n")
    assert LINK_MAC_HEADER.encode("ascii") in hsm.requests[0].lower()


def _flood(sent: list[int]) -> Callable[[socket.socket], None]:
    """An answer: 200 with an endless chunked body, counting in ``sent`` what got out."""

    def answer(connection: socket.socket) -> None:
        head = f"HTTP/1.1 200 OK\r\ncontent-type: {OCTET_STREAM}\r\n"
        connection.sendall(f"{head}transfer-encoding: chunked\r\n\r\n".encode("ascii"))
        chunk = f"{CHUNK:x}\r\n".encode("ascii") + b"\x00" * CHUNK + b"\r\n"
        for _ in range(FLOOD_SIZE // CHUNK):  # bounded: the whole flood, or until refused
            connection.sendall(chunk)
            sent.append(CHUNK)

    return answer


def test_an_endless_answer_is_refused_at_the_size_limit() -> None:
    sent: list[int] = []
    with raw_server(_flood(sent)) as hsm, pytest.raises(FleetUnreachableError, match="oversized"):
        _exchange(hsm.url)
    # The host hung up soon after the limit, long before the flood ended (what the
    # kernel buffered before that is all the flood got out).
    assert sum(sent) < FLOOD_SIZE // 2


@pytest.mark.parametrize(
    "head",
    [
        f"HTTP/1.1 200 OK\r\ncontent-type: {OCTET_STREAM}\r\ncontent-encoding: gzip\r\n",
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
        f"HTTP/1.1 500 Internal Server Error\r\ncontent-type: {OCTET_STREAM}\r\n",
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\n",
    ],
)
def test_answers_that_are_not_an_hsm_answer_are_refused(head: str) -> None:
    def answer(connection: socket.socket) -> None:
        connection.sendall(f"{head}content-length: 2\r\n\r\nok".encode("ascii"))

    with raw_server(answer) as hsm, pytest.raises(FleetUnreachableError):
        _exchange(hsm.url)


def test_an_answer_at_the_size_limit_is_relayed() -> None:
    body = b"\x01" * MAX_RESPONSE_SIZE

    def answer(connection: socket.socket) -> None:
        head = f"HTTP/1.1 400 Bad Request\r\ncontent-type: {OCTET_STREAM}\r\n"
        connection.sendall(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)

    with raw_server(answer) as hsm:
        assert _exchange(hsm.url) == body


class KeepAliveServer:
    """A loopback listener that answers every request on every connection it accepts.

    Accepts up to ``accepts`` connections and records how many it did.
    ``closing`` makes each answer carry ``connection: close`` (and the server
    hang up after it); ``silent`` makes it never answer.
    """

    def __init__(
        self, accepts: int, *, closing: bool = False, silent: bool = False, extra: bytes = b""
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT_S)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._accepts = accepts
        self._closing = closing
        self._silent = silent
        self._extra = extra
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(self._accepts):  # bounded: as many as the test expects
            try:
                connection, _ = self.sock.accept()
            except OSError:  # closed, or nobody came
                return
            self.connections += 1
            # Each connection in its own thread: one left open must not hold up the next.
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(TIMEOUT_S)
            self._answer_all(connection)

    def _answer_all(self, connection: socket.socket) -> None:
        for _ in range(8):  # bounded: a few requests per connection
            head = _read_head(connection)
            if b"\r\n\r\n" not in head:
                return  # the client hung up
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:  # bounded by length and the socket timeout
                chunk = connection.recv(4096)
                if not chunk:
                    return
                body += chunk
            if self._silent:
                connection.recv(1)  # never answers: waits for the client to hang up
                return
            close = "connection: close\r\n" if self._closing else ""
            connection.sendall(
                f"HTTP/1.1 200 OK\r\ncontent-type: {OCTET_STREAM}\r\n{close}"
                f"content-length: 2\r\n\r\nok".encode("ascii")
            )
            if self._extra:
                time.sleep(0.1)  # after the answer, in a segment of its own
                connection.sendall(self._extra)
            if self._closing:
                return

    def close(self) -> None:
        self.sock.close()
        self._thread.join(TIMEOUT_S)


def _exchanges(url: str, count: int, timeout_s: float = TIMEOUT_S) -> list[bytes]:
    async def run() -> list[bytes]:
        link = HttpHsmLink(f"{url}/v1/message", timeout_s, LINK_KEY)
        try:
            return [await link.exchange(b"request %d" % i) for i in range(count)]
        finally:
            await link.aclose()

    return asyncio.run(run())


def test_the_link_reuses_its_connection() -> None:
    server = KeepAliveServer(1)
    try:
        assert _exchanges(server.url, 3) == [b"ok"] * 3
    finally:
        server.close()
    assert server.connections == 1


def test_a_connection_the_hsm_closes_is_not_reused() -> None:
    server = KeepAliveServer(3, closing=True)
    try:
        assert _exchanges(server.url, 3) == [b"ok"] * 3
    finally:
        server.close()
    assert server.connections == 3


def test_a_connection_idle_past_its_expiry_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past half the HSM server's keep-alive, the server may be closing it: never reuse.
    monkeypatch.setattr(link_module, "IDLE_EXPIRY_S", 0.0)
    server = KeepAliveServer(2)
    try:
        assert _exchanges(server.url, 2) == [b"ok"] * 2
    finally:
        server.close()
    assert server.connections == 2


def test_the_link_opens_new_connections_on_a_new_event_loop() -> None:
    # A connection belongs to the loop that made it (a test client may run one loop
    # per call): on another loop the link must not touch it, and still work.
    server = KeepAliveServer(2)
    link = HttpHsmLink(f"{server.url}/v1/message", TIMEOUT_S, LINK_KEY)
    try:
        assert asyncio.run(link.exchange(b"first loop")) == b"ok"
        assert asyncio.run(link.exchange(b"second loop")) == b"ok"
        asyncio.run(link.aclose())
    finally:
        server.close()
    assert server.connections == 2


def test_a_connection_with_bytes_beyond_the_answer_is_not_reused() -> None:
    # A second, unasked-for answer must never be taken as the next request's answer.
    unasked = f"HTTP/1.1 200 OK\r\ncontent-type: {OCTET_STREAM}\r\ncontent-length: 2\r\n\r\nxx"
    server = KeepAliveServer(2, extra=unasked.encode("ascii"))

    async def run() -> list[bytes]:
        link = HttpHsmLink(f"{server.url}/v1/message", TIMEOUT_S, LINK_KEY)
        try:
            first = await link.exchange(b"one")
            await asyncio.sleep(0.5)  # the unasked-for bytes arrive meanwhile
            return [first, await link.exchange(b"two")]
        finally:
            await link.aclose()

    try:
        assert asyncio.run(run()) == [b"ok", b"ok"]
    finally:
        server.close()
    assert server.connections == 2


def test_an_hsm_that_does_not_answer_in_time_is_unreachable() -> None:
    server = KeepAliveServer(1, silent=True)
    try:
        with pytest.raises(FleetUnreachableError, match="in time"):
            _exchanges(server.url, 1, timeout_s=0.5)
    finally:
        server.close()


def test_a_refused_connection_is_unreachable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(FleetUnreachableError, match="cannot reach"):
        _exchanges(f"http://127.0.0.1:{port}", 1)
