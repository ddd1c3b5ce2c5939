"""A real witness process on 127.0.0.1 for the audit and end-to-end tests.

Started with ``python -m bkv.cli.main witness`` (init, add-namespace, serve --listen
127.0.0.1:0); the bound port is read from its ``listening on`` line. Every wait
is bounded in time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bkv.keystore import SoftwareSigner
from bkv.protocol import witness_api
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey
from bkv.protocol.submission import sign_submission

NAMESPACE = "bkv.fleet_keys.v1"
DAY_MS = 24 * 3600 * 1000
START_TIMEOUT_S = 30.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def det(label: str, size: int = 32) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:size]


def artifact_bytes(
    seed: str, *, fleet_id: str = "fleet-a", members: int = 3, attestation: bool = True
) -> bytes:
    keys = [
        PublicKey("channel", "x25519", det(f"{seed}/channel")),
        PublicKey("opaque_ake", "ristretto255", det(f"{seed}/ake")),
    ]
    if attestation:
        keys.append(PublicKey("hsm_attestation", "ed25519", det(f"{seed}/attest")))
    keys.sort(key=lambda k: k.role)
    now = now_ms()
    return FleetKeyArtifact(
        fleet_id=fleet_id,
        keys=tuple(keys),
        members=tuple(f"hsm-{i}" for i in range(1, members + 1)),
        policy=FleetPolicy(guess_limit=10, quorum=members // 2 + 1),
        not_before_ms=now - DAY_MS,
        not_after_ms=now + 365 * DAY_MS,
    ).to_bytes()


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bkv.cli.main", "witness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class LiveWitness:
    url: str
    info: dict[str, Any]
    operator: SoftwareSigner
    client: httpx.Client

    def submit(self, artifact: bytes, epoch: int) -> dict[str, Any]:
        submission = sign_submission(
            self.operator, NAMESPACE, epoch, artifact, submitted_at_ms=now_ms()
        )
        response = self.client.post(
            f"{self.url}/namespaces/{NAMESPACE}/submissions",
            content=json.dumps(witness_api.submission_to_json(submission)).encode(),
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    @property
    def statement_key(self) -> bytes:
        return bytes.fromhex(self.info["keys"][0]["public_key"])


@contextmanager
def live_witness(directory: Path) -> Iterator[LiveWitness]:
    operator = SoftwareSigner(det("operator-live"))
    _run(["init", "--dir", str(directory), "--name", "audit-test"], directory)
    config = str(directory / "witness.json")
    _run(["add-namespace", NAMESPACE, "--operator-key", operator.public_key().hex(),
          "--config", config], directory)  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "bkv.cli.main", "witness", "serve", "--config", config,
         "--listen", "127.0.0.1:0"],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded: the server prints it first, or exits
        assert line.startswith("listening on "), line + (
            process.stderr.read() if process.stderr else ""
        )
        url = line.split()[-1]
        client = httpx.Client(timeout=10.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                info = client.get(f"{url}/info")
                if info.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "witness did not start"
            time.sleep(0.05)
        yield LiveWitness(url, info.json(), operator, client)
        client.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
