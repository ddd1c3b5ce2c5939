"""The three bkv servers as real processes on 127.0.0.1, and a raw HTTP/1.1 client.

Each server is set up the way an operator sets it up (``bkv hsm init``,
``bkv witness init``, a host config with a link key) with 1-second head and
body timeouts, so that a test of a slow client ends quickly. Its stderr goes
to a file the test reads; every wait is bounded.

The raw client speaks HTTP/1.1 over a plain socket: the point is to behave
like a slow, oversized or vanishing client, which no HTTP library does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bkv import devnet
from bkv.host.config import token_digest
from bkv.keystore.link_key import create_link_key
from bkv.protocol.hsm_link import LINK_MAC_HEADER
from bkv.protocol.messages import MAX_REQUEST_SIZE
from bkv.witness.http import BODY_LIMITS

KINDS = ("hsm", "host", "witness")
TIMEOUT_S = 1
"""The head and body timeouts every server here runs with."""
HOST_TOKEN = "serving-test-token-" + "x" * 24


@dataclass(frozen=True)
class Setup:
    """How to run one kind of server, and a route of it that reads a request body."""

    kind: str
    argv: tuple[str, ...]
    body_path: str
    body_limit: int
    body_headers: dict[str, str] = field(default_factory=dict)
    """Headers that make the server read the body (credentials, if it checks them first)."""
    too_large_status: int = 413
    get_path: str = "/"


def prepare(kind: str, directory: Path) -> Setup:
    """Initialize one server of ``kind`` in ``directory`` (which it creates)."""
    directory.mkdir(parents=True)
    timeouts = f"header_timeout_seconds = {TIMEOUT_S}\nbody_timeout_seconds = {TIMEOUT_S}\n"
    if kind == "hsm":
        config = directory / "hsm.toml"
        config.write_text(
            f'[hsm]\nfleet_id = "serving"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
            f'{timeouts}\n[sealer]\nbackend = "software"\n',
            encoding="utf-8",
        )
        devnet.run("hsm", "init", "--config", str(config))
        return Setup(
            kind,
            ("hsm", "serve", "--config", str(config)),
            body_path="/v1/message",
            body_limit=MAX_REQUEST_SIZE,
            # Well-formed, so the HSM reads the body before it checks the MAC.
            body_headers={LINK_MAC_HEADER: "00" * 32},
            too_large_status=400,
            get_path="/v1/public-keys",
        )
    if kind == "host":
        create_link_key(directory / "link.key")
        config = directory / "host.toml"
        config.write_text(
            '[host]\nfleet_id = "serving"\nlisten = "127.0.0.1:0"\n'
            f'hsm_url = "{_dead_url()}/v1/message"\nhsm_link_key_file = "link.key"\n{timeouts}'
            f'\n[[accounts]]\naccount_id = "{b"serving".hex()}"\n'
            f'token_sha256 = "{token_digest(HOST_TOKEN).hex()}"\n',
            encoding="utf-8",
        )
        return Setup(
            kind,
            ("host", "serve", "--config", str(config)),
            body_path="/v1/request",
            body_limit=MAX_REQUEST_SIZE,
            body_headers={"authorization": f"Bearer {HOST_TOKEN}"},
            get_path="/healthz",
        )
    if kind == "witness":
        devnet.run("witness", "init", "--dir", str(directory / "w"), "--name", "serving")
        return Setup(
            kind,
            (
                "witness",
                "serve",
                "--config",
                str(directory / "w" / "witness.json"),
                "--listen",
                "127.0.0.1:0",
                "--header-timeout-seconds",
                str(TIMEOUT_S),
                "--body-timeout-seconds",
                str(TIMEOUT_S),
            ),
            body_path="/namespaces/bkv.fleet_keys.v1/submissions",
            body_limit=BODY_LIMITS["submission"],
            get_path="/info",
        )
    raise ValueError(kind)


def _dead_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@dataclass
class Server:
    """A running server: its address, process and stderr file."""

    setup: Setup
    host: str
    port: int
    process: subprocess.Popen[str]
    stderr_file: Path

    def log(self) -> str:
        return self.stderr_file.read_text(encoding="utf-8", errors="replace")

    def connect(self, timeout_s: float = 5.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout_s)


@contextlib.contextmanager
def running(setup: Setup, stderr_file: Path) -> Iterator[Server]:
    """Start the server; yield it once its ready line appeared; stop it on exit."""
    with stderr_file.open("a", encoding="utf-8") as stderr:
        process = subprocess.Popen(  # our own CLI, argv list, no shell
            devnet.bkv_command(*setup.argv),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        line = devnet.first_line(process, devnet.START_TIMEOUT_S)
        if "listening on http://" not in line:
            raise AssertionError(f"{setup.kind} did not start: {line!r}")
        host, _, port = line.strip().rsplit("listening on http://", 1)[1].rpartition(":")
        yield Server(setup, host, int(port), process, stderr_file)
    finally:
        devnet.stop_process(process)


# --- a raw HTTP/1.1 client ----------------------------------------------------------------


def request_head(
    method: str, path: str, headers: dict[str, str], content_length: int | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (or ``sock``'s timeout passes).

    Returns (data, closed): closed is False if the timeout passed first.
    """
    data = b""
    while len(data) < limit:  # bounded: each round reads >= 1 byte or ends
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_response(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """One whole response with a Content-Length (head and body); AssertionError otherwise."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:  # bounded by limit and timeout
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line for line in head_of(data).split("\r\n") if line.startswith("content-length:")]
    assert lengths, f"no content-length: {head!r}"
    size = int(lengths[0].split(":", 1)[1])
    while len(body) < size:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    """The status code of a raw response (0 if there is none)."""
    first = response.split(b"\r\n", 1)[0].split(b" ")
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else 0


def head_of(response: bytes) -> str:
    return response.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()


# --- the server's side of a connection ----------------------------------------------------

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (since 5.6)


class NoPidfdGetfdError(Exception):
    """This kernel or sandbox does not let a parent copy its child's descriptors."""


def server_side_socket(pid: int, client: socket.socket) -> socket.socket:
    """The server process's socket of ``client``'s connection (a copy: pidfd_getfd(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    wanted = client.getsockname()
    pidfd = os.pidfd_open(pid)
    try:
        for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue  # closed meanwhile
            if not target.startswith("socket:"):
                continue
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                raise NoPidfdGetfdError(os.strerror(ctypes.get_errno()))
            sock = socket.socket(fileno=fd)
            try:
                if sock.getpeername() == wanted:
                    return sock
            except OSError:
                pass  # the listening socket, or not a connected one
            sock.close()
    finally:
        os.close(pidfd)
    raise AssertionError("the server holds no socket of this connection")
