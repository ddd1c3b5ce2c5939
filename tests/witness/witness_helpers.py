"""Helpers for the witness tests: fixed keys, a settable clock, a uvicorn thread."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from bkv.keystore import SoftwareSigner
from bkv.protocol import submission as submission_format
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey
from bkv.witness.http import create_app
from bkv.witness.service import WitnessService
from bkv.witness.store import WitnessStore

NS = submission_format.FLEET_KEYS_NAMESPACE
ORIGIN = "bkv-witness/test"
T0 = 1_800_000_000_000


class Clock:
    """A clock the test moves by hand (milliseconds)."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


def fixed_signer(byte: int) -> SoftwareSigner:
    return SoftwareSigner(bytes([byte]) * 32)


def make_service(db: Path, clock: Clock) -> WitnessService:
    return WitnessService(
        WitnessStore(db),
        origin=ORIGIN,
        statement_signer=fixed_signer(0x51),
        log_signer=fixed_signer(0x52),
        cosigner_signer=fixed_signer(0x53),
        clock=clock,
    )


def artifact_for(label: int | str, *, evidence: bytes | None = None) -> bytes:
    """A real fleet-key artifact (the witness parses what it signs), one per label."""
    seed = hashlib.sha256(f"witness-test/{label}".encode()).digest()
    return FleetKeyArtifact(
        fleet_id="fleet-test",
        keys=(PublicKey("channel", "x25519", seed), PublicKey("opaque_ake", "ristretto255", seed)),
        members=("hsm-1",),
        policy=FleetPolicy(guess_limit=10, quorum=1),
        not_before_ms=0,
        not_after_ms=T0 * 2,
        evidence_digest=None if evidence is None else hashlib.sha256(evidence).digest(),
    ).to_bytes()


def submission(
    operator: SoftwareSigner,
    epoch: int,
    clock: Clock,
    *,
    artifact: bytes | None = None,
    namespace: str = NS,
    evidence: bytes | None = None,
) -> submission_format.Submission:
    return submission_format.sign_submission(
        operator,
        namespace,
        epoch,
        artifact_for(epoch, evidence=evidence) if artifact is None else artifact,
        submitted_at_ms=clock(),
        evidence=evidence,
    )


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def db_dump(path: Path) -> list[str]:
    """Every row and schema statement of the database, via a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@contextmanager
def running_server(service: WitnessService) -> Iterator[str]:
    """Serve ``service`` with uvicorn on 127.0.0.1 (free port) in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
