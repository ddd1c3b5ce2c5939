"""A local deployment on 127.0.0.1: witness, HSM and host as real ``bkv`` processes.

This is what ``make demo`` and the end-to-end tests start. Every process is
launched through the ``bkv`` command (``python -m bkv.cli.main``) exactly as an
operator would run it, in its own working directory under ``root``; each
``serve`` prints a ``listening on URL`` line (port 0 picks a free port) only
once it accepts connections (:mod:`bkv.serving.server`), so the URL is usable
the moment :meth:`Processes.serve` returns it, with no retry loop. The host
reaches the HSM with the link key that ``bkv hsm init`` made
(:func:`hsm_link_key`).
:class:`Processes` stops every process it started (SIGTERM, then SIGKILL) and
every wait is bounded in time, so a failure never leaves servers behind.

Nothing here is trusted by the vault: it is an operator's script, in Python.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from bkv.client.trust import TrustRoots
from bkv.host.config import token_digest
from bkv.protocol.plexi import WitnessKey

NAMESPACE = "bkv.fleet_keys.v1"
"""The witness namespace of bkv's fleet keys (docs/protocol.md)."""

START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


def bkv_command(*args: str) -> list[str]:
    """The argv of ``bkv ARGS`` run by this interpreter (works without the console script)."""
    return [sys.executable, "-m", "bkv.cli.main", *args]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``bkv ARGS`` to completion; raise with its stderr if it fails and ``check``."""
    # Our own CLI with arguments built here, never a shell: S603 does not apply.
    result = subprocess.run(  # noqa: S603
        bkv_command(*args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"bkv {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result


@dataclass
class Processes:
    """The servers started so far; :meth:`stop_all` (or leaving the ``with``) stops them.

    Each server's stderr goes to a temporary file, never to a pipe: nobody reads
    a pipe while the server runs, and a server that has written a pipe's worth
    (64 KiB on Linux: a few hundred refusal lines) would block on its next line.
    """

    started: list[subprocess.Popen[str]] = field(default_factory=list)
    _stderr_files: list[IO[str]] = field(default_factory=list)

    def serve(self, *args: str) -> str:
        """Start ``bkv ARGS``; return the URL of its ``listening on`` line."""
        # Closed by stop_all(), after the server that writes it has ended.
        stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._stderr_files.append(stderr)
        process = subprocess.Popen(  # noqa: S603 - our own CLI, argv list, no shell
            bkv_command(*args),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started.append(process)
        line = first_line(process, START_TIMEOUT_S)
        if "listening on " not in line:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
            stderr.seek(0)
            said = stderr.read()[-2000:].strip()  # bounded: the tail only
            raise RuntimeError(f"bkv {' '.join(args)} did not start: {said}")
        return line.strip().rsplit("listening on ", 1)[1]

    def stop_all(self) -> None:
        """Stop every started process, newest first."""
        for process in reversed(self.started):
            stop_process(process)
        self.started.clear()
        for stderr in self._stderr_files:
            stderr.close()
        self._stderr_files.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after a bounded wait; close its stdout."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    if process.stdout:
        process.stdout.close()


def first_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The first line the process prints, or "" if none comes within ``timeout_s``."""
    # readline() has no timeout: read in a daemon thread and wait a bounded time.
    found: list[str] = []

    def read() -> None:
        if process.stdout is not None:
            found.append(process.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0] if found else ""


@dataclass(frozen=True)
class Witness:
    """A running witness: its URL and the public keys ``bkv witness init`` printed."""

    url: str
    info: dict[str, Any]

    @property
    def statement_key(self) -> str:
        """The current statement key, hex (what ``--witness-key`` takes)."""
        return str(self.info["statement_keys"][-1]["public_key"])

    @property
    def statement_keys(self) -> tuple[WitnessKey, ...]:
        return tuple(
            WitnessKey(bytes.fromhex(k["public_key"]), int(k["not_before"]))
            for k in self.info["statement_keys"]
        )

    @property
    def origin(self) -> str:
        return str(self.info["origin"])

    @property
    def log_verifier_key(self) -> str:
        return str(self.info["log_public_key"])

    def roots(self, operator_public_key: bytes) -> TrustRoots:
        """What an app pins in over-the-air mode: witness and operator keys, the log's identity."""
        return TrustRoots(
            witness_keys=self.statement_keys,
            operator_keys=(operator_public_key,),
            namespace=NAMESPACE,
            log_origin=self.origin,
            log_verifier_key=self.log_verifier_key,
        )

    def pin_arguments(self) -> list[str]:
        """The ``--witness-key/--log-key/--origin`` pins for ``bkv operator``/``bkv audit``."""
        args: list[str] = []
        for key in self.info["statement_keys"]:
            args += ["--witness-key", f"{key['public_key']}@{key['not_before']}"]
        return [*args, "--log-key", self.log_verifier_key, "--origin", self.origin]


def start_witness(
    processes: Processes, directory: Path, name: str, operator_public_key: bytes
) -> Witness:
    """``bkv witness init``, register our namespace for the operator's key, ``serve``."""
    info = json.loads(run("witness", "init", "--dir", str(directory), "--name", name).stdout)
    config = str(directory / "witness.json")
    run("witness", "add-namespace", NAMESPACE, "--operator-key", operator_public_key.hex(),
        "--config", config)  # fmt: skip
    url = processes.serve("witness", "serve", "--config", config, "--listen", "127.0.0.1:0")
    return Witness(url, info)


def operator_keygen(path: Path) -> bytes:
    """``bkv operator keygen``: a software operator key file; returns the public key."""
    return bytes.fromhex(run("operator", "keygen", "--out", str(path)).stdout.strip())


def init_hsm(directory: Path, fleet_id: str, max_guess_limit: int = 10) -> Path:
    """Write an HSM config and run ``bkv hsm init``; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "hsm.toml"
    config.write_text(
        f'[hsm]\nfleet_id = "{fleet_id}"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        f'max_guess_limit = {max_guess_limit}\n\n[sealer]\nbackend = "software"\n',
        encoding="utf-8",
    )
    run("hsm", "init", "--config", str(config))
    return config


def hsm_public_keys(hsm_config: Path) -> Path:
    """The ``public-keys.json`` that ``bkv hsm init`` wrote."""
    return hsm_config.parent / "state" / "public-keys.json"


def hsm_link_key(hsm_config: Path) -> Path:
    """The host-to-HSM link key that ``bkv hsm init`` wrote (the config's default place)."""
    return hsm_config.parent / "link.key"


def publish(
    witness: Witness,
    public_keys: Path,
    operator_key: Path,
    out: Path,
    *,
    fleet_id: str,
    members: str = "hsm-1",
    guess_limit: int = 10,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``bkv operator publish``: artifact -> witness -> counter-signature -> bundle file.

    The operator pins the witness's keys it got out of band (here: what ``bkv
    witness init`` printed), never the keys the witness serves.
    """
    return run(
        "operator", "publish",
        "--public-keys", str(public_keys),
        "--fleet-id", fleet_id,
        "--members", members,
        "--guess-limit", str(guess_limit),
        "--witness", witness.url,
        "--namespace", NAMESPACE,
        "--operator-key", str(operator_key),
        *witness.pin_arguments(),
        "--out", str(out),
        check=check,
    )  # fmt: skip


def install_bundle(bundle: bytes, current: Path) -> None:
    """Replace the host's bundle file atomically (write, then rename over the old one)."""
    staging = current.with_name(current.name + ".new")
    staging.write_bytes(bundle)
    os.replace(staging, current)


@dataclass(frozen=True)
class Account:
    """An account the host knows: its id and bearer token (the host stores only the hash)."""

    account_id: bytes
    token: str


def write_host_config(
    path: Path,
    *,
    fleet_id: str,
    hsm_url: str,
    hsm_link_key_file: Path,
    bundle_file: Path,
    witness_url: str,
    log_verifier_key: str,
    accounts: list[Account],
    record_attempt_burst: int = 5,
    account_burst: int = 30,
) -> Path:
    """A host config (see :mod:`bkv.host.config`) listing ``accounts`` by token hash.

    ``hsm_link_key_file`` is the HSM's link key (:func:`hsm_link_key`);
    ``log_verifier_key`` the witness log's key (:attr:`Witness.log_verifier_key`), under
    which the host checks the old checkpoints it proves consistency from.
    """
    listed = "".join(
        f'\n[[accounts]]\naccount_id = "{a.account_id.hex()}"\n'
        f'token_sha256 = "{token_digest(a.token).hex()}"\n'
        for a in accounts
    )
    path.write_text(
        f'[host]\nfleet_id = "{fleet_id}"\nlisten = "127.0.0.1:0"\n'
        f'hsm_url = "{hsm_url}/v1/message"\nhsm_timeout_seconds = 20\n'
        f'hsm_link_key_file = "{hsm_link_key_file}"\n'
        f'bundle_file = "{bundle_file}"\nwitness_url = "{witness_url}"\n'
        f'log_verifier_key = "{log_verifier_key}"\n'
        f"{listed}\n[rate_limits.account]\nburst = {account_burst}\n"
        "per_period = 60\nperiod_seconds = 60\n"
        f"\n[rate_limits.record_attempts]\nburst = {record_attempt_burst}\n"
        "per_period = 10\nperiod_seconds = 3600\n",
        encoding="utf-8",
    )
    return path
