"""The host's HTTP client of the HSM link: HTTP/1.1 (h11) over persistent loopback connections.

One request at a time per connection, connections kept open between requests
(RFC 9112 section 9.3, persistence) and reused, at most
:data:`MAX_CONNECTIONS` open at once. A general-purpose client (httpx) costs
more per request here than the rest of the host's relay; this one does only
what the link needs:

- straight to ``url``: no proxy or certificate settings are read from the
  environment, since a proxy would see, and could replay, every request of the
  link; ``https`` uses httpx's default verifying TLS context, as before;
- every request carries the link MAC (:mod:`bkv.protocol.hsm_link`) over the
  method, the target exactly as sent and the body;
- the whole exchange (waiting for a connection, connecting, sending, reading
  the answer) is bounded by ``timeout_seconds``, and the answer's body is read
  only up to :data:`MAX_RESPONSE_SIZE` (the head up to :data:`MAX_HEAD_SIZE`),
  so a peer that kept sending cannot hold host memory;
- ``TCP_NODELAY`` on every connection (asyncio sets it too): a request written
  as head then body must not wait for a delayed ACK (RFC 896);
- a connection is reused only if its last exchange ended cleanly (both sides
  done, no ``Connection: close``) and it has been idle less than
  :data:`IDLE_EXPIRY_S`, half the HSM server's keep-alive
  (:data:`bkv.serving.timeouts.KEEP_ALIVE_SECONDS`), so the host never sends on
  a connection the HSM is about to close. Any failure closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Final, SupportsIndex

import h11
import httpx

from bkv.errors import FleetUnreachableError
from bkv.protocol.hsm_link import LINK_MAC_HEADER, link_mac_header
from bkv.serving.timeouts import KEEP_ALIVE_SECONDS

OCTET_STREAM: Final = "application/octet-stream"
MAX_RESPONSE_SIZE: Final = 4096
"""Largest HSM answer relayed (an outer response is at most ~1 KiB)."""
MAX_HEAD_SIZE: Final = 16 * 1024
"""Largest response head read (the HSM's is a few hundred bytes)."""
MAX_CONNECTIONS: Final = 16
"""Most connections to the HSM open at once (it answers one request at a time anyway)."""
IDLE_EXPIRY_S: Final = KEEP_ALIVE_SECONDS / 2
READ_SIZE: Final = 64 * 1024
_MAX_READS: Final = MAX_HEAD_SIZE + MAX_RESPONSE_SIZE + 2
"""Reads per answer, at most: each read brings at least one byte or ends the exchange."""


class _CountingReader(asyncio.StreamReader):
    """A stream reader that counts the bytes it was given (read or not)."""

    def __init__(self) -> None:
        super().__init__(limit=READ_SIZE)
        self.received = 0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        chunk = bytes(data)  # the transport gives bytes: no copy
        self.received += len(chunk)
        super().feed_data(chunk)


class _Connection:
    """One HTTP/1.1 connection to the HSM, with its h11 state."""

    def __init__(self, reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
        self._reads = 0
        self._consumed = 0
        self.idle_since = time.monotonic()

    def reusable(self, now: float) -> bool:
        """Idle, open, not told to close, nothing unasked-for received, within keep-alive.

        Bytes beyond the last answer (the peer's, or left in h11's buffer) would be
        read as the next request's answer: such a connection is closed instead.
        """
        return (
            self._h11.our_state is h11.IDLE
            and self._h11.their_state is h11.IDLE
            and not self._h11.trailing_data[0]
            and self._reader.received == self._consumed
            and not self._reader.at_eof()
            and not self._writer.is_closing()
            and now - self.idle_since < IDLE_EXPIRY_S
        )

    async def post(self, request: h11.Request, body: bytes) -> bytes:
        """Send one request, return the body of its (checked) answer; then ready for the next."""
        for message in (request, h11.Data(data=body), h11.EndOfMessage()):
            self._writer.write(self._h11.send(message) or b"")  # None only for ConnectionClosed
        await self._writer.drain()
        self._reads = 0
        head = await self._next_event()
        if not isinstance(head, h11.Response):  # an informational answer, or nothing
            raise FleetUnreachableError("the HSM sent no final answer")
        _check_hsm_answer_head(head)
        answer = bytearray()
        for _ in range(_MAX_READS + 1):  # bounded: each Data adds >= 1 byte, capped
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > MAX_RESPONSE_SIZE:
                    raise FleetUnreachableError("the HSM sent an oversized answer")
            else:
                raise FleetUnreachableError("the HSM's answer ended early")
        else:
            raise FleetUnreachableError("the HSM sent an oversized answer")
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()  # else MUST_CLOSE: reusable() says no
        self.idle_since = time.monotonic()
        return bytes(answer)

    async def _next_event(self) -> object:
        # Bounded: at most _MAX_READS reads per answer, each of at least one byte
        # (or the end of the stream, after which h11 answers without more data).
        for _ in range(_MAX_READS + 1):
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._reads += 1
            if self._reads > _MAX_READS:
                break
            data = await self._reader.read(READ_SIZE)
            self._consumed += len(data)
            self._h11.receive_data(data)  # b"": end of stream
        raise FleetUnreachableError("the HSM sent an oversized answer")

    def close(self) -> None:
        # RuntimeError: its event loop is closed already (and the socket with it).
        with contextlib.suppress(RuntimeError):
            self._writer.close()


def _check_hsm_answer_head(response: h11.Response) -> None:
    # `bkv hsm serve` answers 200 with an HsmResponse and 400 with an HsmRejected;
    # both are relayed (the caller checks the bytes). Anything else is a failure.
    if response.status_code == 401:
        raise FleetUnreachableError("the HSM refused this host's link key")
    if response.status_code not in (200, 400):
        raise FleetUnreachableError(f"the HSM answered HTTP {response.status_code}")
    content_types = [value for name, value in response.headers if name == b"content-type"]
    if content_types != [OCTET_STREAM.encode("ascii")]:
        raise FleetUnreachableError("the HSM answered with an unexpected content type")
    if any(name == b"content-encoding" for name, _ in response.headers):
        # The raw bytes are what is bounded; the HSM never compresses.
        raise FleetUnreachableError("the HSM answered with a content encoding")


class HttpHsmLink:
    """POSTs the request bytes to the HSM's HTTP endpoint (``bkv hsm serve``), with the link MAC.

    See the module docstring for what bounds an exchange and when a connection
    is reused.
    """

    def __init__(self, url: str, timeout_seconds: float, link_key: bytes) -> None:
        parsed = httpx.URL(url)  # the same parsing (and target encoding) as before
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("the HSM URL must be an http(s) URL with a host")
        self._url = url
        self._key = link_key
        self._timeout = timeout_seconds
        self._host = parsed.host
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._target = parsed.raw_path
        self._host_header = parsed.netloc
        self._tls: ssl.SSLContext | None = (
            httpx.create_ssl_context(trust_env=False) if parsed.scheme == "https" else None
        )
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"HttpHsmLink({self._url!r}, <link key>)"

    async def exchange(self, request: bytes) -> bytes:
        """The HSM's answer; raises :class:`FleetUnreachableError` if there is none."""
        # The MAC covers the target exactly as sent (path and query) and the body.
        mac = link_mac_header(self._key, "POST", self._target, request)
        outgoing = h11.Request(
            method="POST",
            target=self._target,
            headers=[
                (b"host", self._host_header),
                (b"content-type", OCTET_STREAM.encode("ascii")),
                (b"content-length", str(len(request)).encode("ascii")),
                (LINK_MAC_HEADER.encode("ascii"), mac.encode("ascii")),
            ],
        )
        self._use_running_loop()
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                return await self._post(outgoing, request)
        except TimeoutError:
            raise FleetUnreachableError("the HSM did not answer in time") from None
        except (OSError, h11.ProtocolError) as exc:
            raise FleetUnreachableError(f"cannot reach the HSM: {type(exc).__name__}") from None

    async def _post(self, outgoing: h11.Request, body: bytes) -> bytes:
        connection = self._reuse() or await self._connect()
        try:
            answer = await connection.post(outgoing, body)
        except BaseException:
            connection.close()  # whatever happened, its state is unknown: never reuse it
            raise
        if connection.reusable(time.monotonic()):
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def _use_running_loop(self) -> None:
        # Connections and the semaphore belong to the event loop that made them; a
        # link used from another loop (a test client may run one per call) starts afresh.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._close_idle()
            self._loop = loop
            self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:  # bounded: each turn removes one of at most MAX_CONNECTIONS
            connection = self._idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        # asyncio.open_connection, with a reader that counts what arrives.
        loop = asyncio.get_running_loop()
        reader = _CountingReader()
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader), self._host, self._port, ssl=self._tls
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        """Close the idle connections."""
        self._close_idle()

    def _close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
