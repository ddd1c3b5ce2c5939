"""A vault for the client tests: a real :class:`bkv.hsm.app.HsmApp` in process.

- :class:`InProcessHsm` is the HSM with a host's persistence reduced to memory:
  request bytes in, answer bytes out (every persist acknowledged), so the
  sans-IO flows of :mod:`bkv.client.flows` can be driven with no HTTP at all.
- :class:`HttpHost` serves ``POST /v1/request`` on a real HTTP server on
  127.0.0.1, answering either by relaying to such an HSM (what an honest host
  does) or with fixed bytes (what a hostile host may do), for the SDK tests.

Imported by basename (tests are rootdir-relative without packages), hence the unique name.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bkv.client import flows, sdk
from bkv.client.trust import FleetKeys, PinnedFleetKeys
from bkv.client.vault import opaque_config
from bkv.crypto.ksf import Argon2id
from bkv.crypto.rng import Rng, default_rng
from bkv.hsm.app import HsmApp
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.runner import BatchRunner
from bkv.keystore import SoftwareSealer
from bkv.protocol.artifact import (
    ROLE_CHANNEL,
    ROLE_OPAQUE_AKE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
)
from bkv.records.store_memory import MemoryTreeStore

TEST_KSF = Argon2id(memory_kib=256, iterations=1, lanes=1)
"""A real but small Argon2id: the production default costs ~0.2 s per login."""

FLEET_ID = "client-test-fleet"
ACCOUNT = b"alice"
TOKEN = "client-test-token"
NOW_MS = 1_700_000_000_000
MAX_REQUEST_BODY = 1 << 16


@dataclass
class InProcessHsm:
    """An HsmApp behind the shipped host half (BatchRunner) with a memory record store."""

    app: HsmApp
    now_ms: int = NOW_MS
    requests: list[bytes] = field(default_factory=list)
    store: MemoryTreeStore = field(default_factory=MemoryTreeStore)
    runner: BatchRunner = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.runner = BatchRunner(self.app, self.store)
        self.runner.store_genesis()

    def __call__(self, request: bytes) -> bytes:
        with self._lock:
            self.requests.append(request)
            (outcome,) = self.runner.run([request], self.now_ms)
            assert isinstance(outcome, bytes), outcome
            return outcome


def new_hsm(rng: Rng = default_rng, max_guess_limit: int = 10) -> InProcessHsm:
    app = HsmApp.initialize(
        FLEET_ID, SoftwareSealer.generate(), max_guess_limit=max_guess_limit, rng=rng
    )
    return InProcessHsm(app)


def fleet_keys_of(hsm: InProcessHsm) -> FleetKeys:
    """Pinned-mode keys for this one-HSM fleet, from its published public keys."""
    published = json.loads(render_public_keys(hsm.app.public_keys()))
    by_role = {key["role"]: bytes.fromhex(key["public_key"]) for key in published["keys"]}
    artifact = FleetKeyArtifact(
        fleet_id=published["fleet_id"],
        keys=(
            PublicKey(ROLE_CHANNEL, "x25519", by_role[ROLE_CHANNEL]),
            PublicKey(ROLE_OPAQUE_AKE, "ristretto255", by_role[ROLE_OPAQUE_AKE]),
        ),
        members=("hsm-1",),
        policy=FleetPolicy(guess_limit=10, quorum=1),
        not_before_ms=0,
        not_after_ms=2**53 - 1,
    )
    return PinnedFleetKeys.of(artifact).fleet_keys(now_ms=1)


def context_of(hsm: InProcessHsm, account_id: bytes = ACCOUNT) -> flows.FlowContext:
    """What the flows need: the fleet's keys, the account, the OPAQUE config (small KSF)."""
    return flows.FlowContext(fleet_keys_of(hsm), account_id, opaque_config(TEST_KSF))


@dataclass(frozen=True)
class Answer:
    """A fixed HTTP answer of a hostile host."""

    status: int
    body: bytes
    content_type: str = "application/json"


Responder = Callable[[bytes], Answer]


def relay_to(hsm: InProcessHsm) -> Responder:
    """An honest host: every HSM answer comes back as 200 octet-stream (as :mod:`bkv.host`)."""
    return lambda request: Answer(200, hsm(request), sdk.OCTET_STREAM)


def always(answer: Answer) -> Responder:
    return lambda _request: answer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(min(length, MAX_REQUEST_BODY))
        if self.path != sdk.REQUEST_PATH:
            self._send(Answer(404, b'{"error":"NotFound","message":"no such route"}'))
            return
        self._send(self.server.responder(body))

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("content-type", answer.content_type)
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    responder: Responder


@contextmanager
def http_host(responder: Responder) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering ``POST /v1/request``; yields its base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.responder = responder
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def sdk_client(url: str, fleet: FleetKeys, account_id: bytes = ACCOUNT) -> sdk.VaultClient:
    return sdk.VaultClient(url, TOKEN, account_id, fleet, ksf=TEST_KSF, timeout_seconds=20)


@contextmanager
def vault_behind(responder: Responder, fleet: FleetKeys) -> Iterator[sdk.VaultClient]:
    """An SDK client whose host is a real HTTP server on 127.0.0.1 answering with ``responder``."""
    with http_host(responder) as url, sdk_client(url, fleet) as vault:
        yield vault
