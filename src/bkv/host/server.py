"""Process adapter: bind the listening socket and run the host app on uvicorn."""

from __future__ import annotations

import socket

import uvicorn

from bkv.host.app import create_app
from bkv.host.config import HostConfig


def serve(config: HostConfig) -> None:
    """Run until killed. Prints one line with the bound address once listening."""
    family = socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.listen_host, config.listen_port))
        host, port = sock.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
        print(f"bkv host: fleet {config.fleet_id} listening on http://{host}:{port}", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
