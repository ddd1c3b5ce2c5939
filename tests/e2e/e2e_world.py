"""Real processes on 127.0.0.1 for the over-the-air end-to-end test.

Every process is started through the ``bkv`` command (``python -m bkv.cli.main``),
exactly as an operator runs it; each ``serve`` prints a ``listening on`` line that
gives its URL (port 0 = a free port). :class:`Processes` stops every process it
started (SIGTERM, then SIGKILL) whatever happens. Every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bkv.client.trust import TrustRoots
from bkv.crypto.ksf import Argon2id
from bkv.host.config import token_digest
from bkv.witness.plexi import WitnessKey

NAMESPACE = "bkv.fleet_keys.v1"
FLEET = "e2e-fleet"
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
TEST_KSF = Argon2id(memory_kib=256, iterations=1, lanes=1)
"""A real but small Argon2id (the production default costs ~0.2 s per login)."""


def bkv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bkv.cli.main", *args]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``bkv`` command to completion."""
    result = subprocess.run(
        bkv(*args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"bkv {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result


@dataclass
class Processes:
    """The servers a test started; :meth:`stop_all` always runs (fixture ``finally``)."""

    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def serve(self, *args: str) -> str:
        """Start ``bkv <args>`` and return the URL from its ``listening on`` line."""
        process = subprocess.Popen(
            bkv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started.append(process)
        line = _first_line(process)
        if "listening on " not in line:
            process.kill()
            stderr = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"bkv {' '.join(args)} did not start: {line!r} {stderr[-2000:]}")
        return line.strip().rsplit("listening on ", 1)[1]

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()
        self.started.clear()


def _first_line(process: subprocess.Popen[str]) -> str:
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        found.append(process.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    return found[0] if found else ""


@dataclass(frozen=True)
class Witness:
    url: str
    info: dict[str, Any]

    @property
    def statement_key(self) -> str:
        key: str = self.info["statement_keys"][0]["public_key"]
        return key

    def pin_args(self) -> list[str]:
        """The witness pins ``bkv operator publish/countersign`` need (from ``witness init``)."""
        keys = [f"{k['public_key']}@{k['not_before']}" for k in self.info["statement_keys"]]
        args = [arg for key in keys for arg in ("--witness-key", key)]
        return [*args, "--log-key", self.info["log_public_key"], "--origin", self.info["origin"]]

    def roots(self, operator_public_key: str) -> TrustRoots:
        """What an app pins in over-the-air mode: witness and operator keys, log identity."""
        return TrustRoots(
            witness_keys=tuple(
                WitnessKey(bytes.fromhex(k["public_key"]), k["not_before"])
                for k in self.info["statement_keys"]
            ),
            operator_keys=(bytes.fromhex(operator_public_key),),
            namespace=NAMESPACE,
            log_origin=self.info["origin"],
            log_verifier_key=self.info["log_public_key"],
        )


def start_witness(processes: Processes, directory: Path, operator_public_key: str) -> Witness:
    info = json.loads(run("witness", "init", "--dir", str(directory), "--name", "e2e").stdout)
    config = str(directory / "witness.json")
    run("witness", "add-namespace", NAMESPACE, "--operator-key", operator_public_key,
        "--config", config)  # fmt: skip
    url = processes.serve("witness", "serve", "--config", config, "--listen", "127.0.0.1:0")
    return Witness(url, info)


def init_hsm(directory: Path) -> Path:
    """``bkv hsm init`` a one-HSM fleet; returns its public-keys.json."""
    directory.mkdir(parents=True)
    config = directory / "hsm.toml"
    config.write_text(
        f'[hsm]\nfleet_id = "{FLEET}"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        'max_guess_limit = 10\n\n[sealer]\nbackend = "software"\n',
        encoding="utf-8",
    )
    run("hsm", "init", "--config", str(config))
    return directory / "state" / "public-keys.json"


def publish(
    witness: Witness, public_keys: Path, operator_key: Path, out: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        "operator", "publish",
        "--public-keys", str(public_keys),
        "--fleet-id", FLEET,
        "--members", "hsm-1",
        "--guess-limit", "10",
        "--witness", witness.url,
        "--namespace", NAMESPACE,
        "--operator-key", str(operator_key),
        "--out", str(out),
        *witness.pin_args(),
        check=check,
    )  # fmt: skip


@dataclass(frozen=True)
class Account:
    account_id: bytes
    token: str


def write_host_config(
    directory: Path, hsm_url: str, bundle_file: Path, witness_url: str, account: Account
) -> Path:
    path = directory / "host.toml"
    path.write_text(
        f'[host]\nfleet_id = "{FLEET}"\nlisten = "127.0.0.1:0"\n'
        f'hsm_url = "{hsm_url}/v1/message"\nhsm_timeout_seconds = 20\n'
        f'bundle_file = "{bundle_file}"\nwitness_url = "{witness_url}"\n\n'
        f'[[accounts]]\naccount_id = "{account.account_id.hex()}"\n'
        f'token_sha256 = "{token_digest(account.token).hex()}"\n',
        encoding="utf-8",
    )
    return path


def install_bundle(bundle: bytes, current: Path) -> None:
    """What the operator does: replace the host's bundle file atomically (write + rename)."""
    staging = current.with_name(current.name + ".new")
    staging.write_bytes(bundle)
    os.replace(staging, current)
