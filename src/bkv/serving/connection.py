"""The HTTP/1.1 connection of every bkv server: uvicorn's h11 protocol with two additions.

``TCP_NODELAY`` on every accepted connection. Without it, a response written
in two segments (head, then body) on a keep-alive connection waits for the
client's delayed ACK (Nagle's algorithm, RFC 896; about 40 ms on Linux)
before its second segment leaves. asyncio sets the option itself only when
the listening socket was created with ``IPPROTO_TCP`` (``_set_nodelay``);
:mod:`bkv.serving.server` does create it so, and the option is set here as
well so that it never depends on that detail.

A head timeout. uvicorn closes an *idle* keep-alive connection after a few
seconds, but any byte restarts that timer, and a new connection that sends
nothing has no timer at all: a client sending one header byte every few
seconds holds the connection for ever. Here a connection whose request head
is not complete ``header_seconds`` after it opened (or after the previous
response) is closed, however many bytes trickled in
(:mod:`bkv.serving.timeouts`). The body has its own limit in
:mod:`bkv.serving.guard`, which sees the request once its head is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from bkv.serving.guard import Log


class ServingConfig(uvicorn.Config):
    """uvicorn's configuration, plus what :class:`GuardedH11Protocol` needs."""

    def __init__(
        self, app: Any, *, header_seconds: float, keep_alive_seconds: int, log: Log
    ) -> None:
        super().__init__(
            app,
            http=GuardedH11Protocol,
            ws="none",  # no bkv server speaks WebSocket: refuse upgrades
            lifespan="on",
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # no proxy in front is trusted to name the client
            server_header=False,
            timeout_keep_alive=keep_alive_seconds,
        )
        self.header_seconds = header_seconds
        self.refusal_log = log


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``TCP_NODELAY`` and a request-head timeout."""

    def __init__(
        self,
        config: ServingConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_seconds = config.header_seconds
        self._log = config.refusal_log
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_after: object = None  # the request cycle before the awaited head
        self._bytes_while_waiting = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _set_nodelay(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        self._bytes_while_waiting += len(data)
        super().data_received(data)
        self._stop_if_head_arrived()

    def on_response_complete(self) -> None:
        # Armed before uvicorn handles any pipelined request already buffered, so
        # that a head it finds there stops the timer right away.
        if not self.transport.is_closing():
            self._await_head()
        super().on_response_complete()
        self._stop_if_head_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._waiting_after = self.cycle
        self._bytes_while_waiting = 0
        self._head_timer = self.loop.call_later(self._header_seconds, self._head_timed_out)

    def _stop_if_head_arrived(self) -> None:
        # uvicorn starts a new request cycle exactly when a complete head is parsed.
        if self._head_timer is not None and self.cycle is not self._waiting_after:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.cycle is not self._waiting_after:
            return
        if self._bytes_while_waiting:  # a silent idle connection is not a refused request
            who = f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown client"
            self._log(
                f"closed the connection from {who}: request head not complete within "
                f"{self._header_seconds:g} s"
            )
        self.transport.close()


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # the peer may already have reset the connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
