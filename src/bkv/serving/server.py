"""Run an ASGI application the one way every bkv server runs: bind, serve, say when ready.

:func:`serve` binds the listening socket itself (so that port 0 works and the
real port can be printed), runs uvicorn on it with the guarded connection
(:mod:`bkv.serving.connection`), and prints the ready line only once uvicorn
accepts connections: after its startup (the application's lifespan startup,
``listen`` and the accept loop) has finished. A client, or :mod:`bkv.devnet`,
that connects the moment the line appears is therefore never refused.

The ready line ends in ``listening on http://HOST:PORT`` (an IPv6 host in
brackets): scripts take the URL after ``listening on``. It goes to stdout and
is flushed; everything else a server reports goes to stderr.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from bkv.errors import ConfigError
from bkv.serving.connection import ServingConfig
from bkv.serving.guard import Log
from bkv.serving.listen import ListenAddress, join_host_port
from bkv.serving.timeouts import KEEP_ALIVE_SECONDS, Timeouts


def serve(
    app: ASGIApp,
    address: ListenAddress,
    *,
    timeouts: Timeouts,
    ready_line: Callable[[str], str],
    log: Log,
) -> None:
    """Serve ``app`` on ``address`` until SIGINT/SIGTERM.

    ``ready_line(url)`` is printed once the server accepts connections.
    :class:`ConfigError` if the address cannot be bound, or if the server stops
    before it was ready (its lifespan startup failed; uvicorn logged why).
    """
    config = ServingConfig(
        app, header_seconds=timeouts.header_seconds, keep_alive_seconds=KEEP_ALIVE_SECONDS, log=log
    )
    with listening_socket(address) as sock:
        host, port = sock.getsockname()[:2]
        url = f"http://{join_host_port(host, port)}"
        server = _AnnouncingServer(config, lambda: print(ready_line(url), flush=True))
        server.run(sockets=[sock])
        if not server.announced:
            raise ConfigError(f"the server on {address} stopped before it was ready")


@contextlib.contextmanager
def listening_socket(address: ListenAddress) -> Iterator[socket.socket]:
    """A TCP socket bound to ``address`` (not yet listening), closed on exit whatever happens."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot listen on {address}: {reason}") from None
        yield sock
    finally:
        sock.close()


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, calling ``on_ready`` once its startup has completed."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self.announced = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # `started` is set last, after loop.create_server() has called listen()
        # and registered the accept handler: connections are accepted from now on.
        if self.started and not self.should_exit:
            self._on_ready()
            self.announced = True
