"""Recovery latency through real processes, against the same recoveries on an in-process HSM.

What is timed: one full recovery, ``VaultClient.recover(password)`` as an app calls it, with the
Identity KSF on the client (so the numbers are the vault's, not Argon2id's): OPAQUE login start,
``RecoverStart`` (HPKE-sealed, counts an attempt: one persist), OPAQUE login finish,
``RecoverFinish`` (KE3 check, counter reset: a second persist, key release), unwrapping the
backup key. Each recovery's result is checked against the backed-up key. Also timed, to split
the cost: ``VaultClient.status()``, one request that changes nothing (no persist).

Three targets, measured in the same run, on the same client code:

- **processes**: witness, HSM and host started as real ``bkv`` processes on 127.0.0.1 by
  :mod:`bkv.devnet` (as ``make demo`` does); the client talks HTTP to the host, the host to the
  HSM; the HSM commits each batch (changed sealed records, tree nodes and its sealed state) to
  its SQLite record store on disk (one fsync'd transaction) and advances its NV counter before
  each answer that depends on a change. Fleet keys come over the air (the
  bundle is validated once, when each client starts).
- **procs+tmpfs**: a second such deployment whose directories (so the HSM's record store and
  NV counter, and their fsyncs) live in tmpfs (``/dev/shm``, when the machine has one): the
  difference from **processes** is what durable writes on this machine's disk cost.
- **in process** (the baseline): the same ``VaultClient``, whose HTTP transport is replaced by
  a function call into an :class:`~bkv.hsm.app.HsmApp` driven by the host half
  (:class:`~bkv.hsm.runner.BatchRunner`, one request per batch) over a memory record store in
  this process (no sockets, no host, no HSM server, no disk). The ratio is what the deployment
  (two HTTP hops, the host, the HSM server, durable persists) adds to a recovery.

Phases (``PHASES``): recoveries at 1 and at 4 concurrent clients (threads of this process, one
account each, on an empty vault: only the bench's accounts are registered), then status at 1
client. Reported per phase and target: operations per second (all clients together, over wall
time), p50 and p99 latency, and the processes / in-process ratios; the target is p99 <= 10 ms
for a recovery at 1 client. Noise (2 vCPUs shared with other jobs, and with the servers
themselves): each phase runs in ``CHUNKS`` alternating chunks per target, so a burst of load
hits both alike. Bounded: at most the phase's count and ``PHASE_BUDGET_S`` seconds per phase and
target, every server wait bounded by :mod:`bkv.devnet`, every process stopped on exit. Nothing
here asserts on time.
"""

from __future__ import annotations

import gc
import hmac
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bkv import devnet
from bkv.client.operator import artifact_from_public_keys
from bkv.client.sdk import VaultClient
from bkv.client.store_json import JsonFileStateStore
from bkv.client.trust import FleetKeys, PinnedFleetKeys
from bkv.crypto.ksf import Identity
from bkv.hsm.app import HsmApp
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.runner import BatchRunner, Refused
from bkv.keystore import SoftwareSealer
from bkv.records.store_memory import MemoryTreeStore

PHASES = (("recover", 1, 300), ("recover", 4, 400), ("status", 1, 150))
"""(operation, concurrent clients, operations per target): what is timed, in this order."""
WARMUP_PER_CLIENT = 5
CHUNKS = 3
PHASE_BUDGET_S = 15.0
"""Wall-clock cap per phase and target (the chunks stop early when it is reached)."""
TARGET_P99_MS = 10.0  # a recovery at 1 client, empty vault, state on disk
PROCESSES = "processes"
PROCESSES_TMPFS = "procs+tmpfs"
IN_PROCESS = "in process"
TMPFS = "/dev/shm"
FLEET_ID = "bench-service"
GUESS_LIMIT = 10
KSF = Identity()
PASSWORD = b"bench service password"
REQUEST_PATH = "/v1/request"  # the host's API (docs/protocol.md): octet-stream in and out
OCTET_STREAM = "application/octet-stream"
MAX_CLIENTS = max(clients for _, clients, _ in PHASES)
# Every recovery costs the account two requests and the record one attempt (the HSM refunds
# the attempt, the host's limiter does not): the host's limits must let the whole run through.
HOST_BURST = 10 * sum(count + WARMUP_PER_CLIENT * clients for _, clients, count in PHASES)


@dataclass(frozen=True)
class BenchClient:
    """One app on one account: a registered backup key, and the operations timed on it."""

    vault: VaultClient
    backup_key: bytes

    @classmethod
    def registered(cls, vault: VaultClient) -> BenchClient:
        backup_key = secrets.token_bytes(32)
        vault.register(PASSWORD, backup_key, guess_limit=GUESS_LIMIT)
        return cls(vault, backup_key)

    def recover(self) -> None:
        """A full recovery, checked: the vault must give back the backed-up key."""
        if not hmac.compare_digest(self.vault.recover(PASSWORD).backup_key, self.backup_key):
            raise RuntimeError("a recovery returned the wrong backup key")

    def status(self) -> None:
        """One request that changes no state: the round trip without a persist."""
        if not self.vault.status().exists:
            raise RuntimeError("the bench account has no record")


@dataclass(frozen=True)
class Target:
    """One way of reaching the vault, with one registered client per account."""

    name: str
    clients: tuple[BenchClient, ...]


@dataclass
class Samples:
    """Latencies (s) and wall time (s) accumulated over the chunks of one phase."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def rate(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000


# --- the two targets ----------------------------------------------------------------


class _InProcessHsm:
    """An HsmApp behind the host half (BatchRunner) over a memory record store.

    One request per batch, one at a time (as the HSM server serializes them);
    every persist is "stored" in memory at once, so no disk.
    """

    def __init__(self) -> None:
        self.app = HsmApp.initialize(
            FLEET_ID, SoftwareSealer.generate(), max_guess_limit=GUESS_LIMIT
        )
        self.runner = BatchRunner(self.app, MemoryTreeStore())
        self.runner.store_genesis()
        self._lock = threading.Lock()

    def __call__(self, request: bytes) -> bytes:
        with self._lock:
            (answer,) = self.runner.run([request], time.time_ns() // 1_000_000)
        if isinstance(answer, Refused):
            raise RuntimeError(f"the HSM refused the host's record read: {answer.error}")
        return answer

    def fleet_keys(self) -> FleetKeys:
        """Pinned-mode keys for this one-HSM fleet, from its published public keys."""
        artifact = artifact_from_public_keys(
            render_public_keys(self.app.public_keys()),
            fleet_id=FLEET_ID,
            members=("hsm-1",),
            guess_limit=GUESS_LIMIT,
            not_before_ms=0,
            not_after_ms=2**53 - 1,
        )
        return PinnedFleetKeys.of(artifact).fleet_keys(time.time_ns() // 1_000_000)


class _InProcessTransport(httpx.BaseTransport):
    """The client's HTTP transport replaced by a call into the in-process HSM (no sockets)."""

    def __init__(self, hsm: _InProcessHsm) -> None:
        self._hsm = hsm

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != REQUEST_PATH:
            return httpx.Response(404, json={"error": "NotFound", "message": "in-process HSM"})
        answer = self._hsm(request.read())
        return httpx.Response(200, headers={"content-type": OCTET_STREAM}, content=answer)


def _tmpfs() -> str | None:
    """Where to put the second deployment: tmpfs if the machine has one (else the default)."""
    return TMPFS if Path(TMPFS).is_dir() else None


def _deploy_processes(processes: devnet.Processes, root: Path, count: int, name: str) -> Target:
    """Witness, HSM and host as ``bkv`` processes (bkv.devnet), ``count`` registered clients."""
    operator_key = root / "operator" / "operator.key"
    operator_key.parent.mkdir(parents=True)
    operator_public = devnet.operator_keygen(operator_key)
    witness = devnet.start_witness(processes, root / "witness", "bench-witness", operator_public)
    hsm_config = devnet.init_hsm(root / "hsm", FLEET_ID, GUESS_LIMIT)
    hsm_url = processes.serve("hsm", "serve", "--config", str(hsm_config))
    bundle = root / "operator" / "epoch-1.bundle"
    devnet.publish(
        witness, devnet.hsm_public_keys(hsm_config), operator_key, bundle, fleet_id=FLEET_ID
    )
    accounts = [devnet.Account(b"bench-%d" % i, secrets.token_hex(16)) for i in range(count)]
    host_config = devnet.write_host_config(
        root / "host.toml",
        fleet_id=FLEET_ID,
        hsm_url=hsm_url,
        hsm_link_key_file=devnet.hsm_link_key(hsm_config),
        bundle_file=bundle,
        witness_url=witness.url,
        log_verifier_key=witness.log_verifier_key,
        accounts=accounts,
        record_attempt_burst=HOST_BURST,
        account_burst=HOST_BURST,
    )
    host_url = processes.serve("host", "serve", "--config", str(host_config))
    roots = witness.roots(operator_public)
    clients = []
    for account in accounts:
        client = VaultClient.over_the_air(
            host_url,
            account.token,
            account.account_id,
            roots,
            JsonFileStateStore(root / f"{account.account_id.decode()}.json"),
            ksf=KSF,
        )
        clients.append(BenchClient.registered(client))
    return Target(name, tuple(clients))


def _in_process(count: int) -> Target:
    """The baseline: the same clients over a transport that calls an in-process HsmApp."""
    hsm = _InProcessHsm()
    fleet = hsm.fleet_keys()
    clients = []
    for i in range(count):
        client = VaultClient(
            "http://in-process.invalid",
            "in-process",
            b"bench-%d" % i,
            fleet,
            ksf=KSF,
            transport=_InProcessTransport(hsm),
        )
        clients.append(BenchClient.registered(client))
    return Target(IN_PROCESS, tuple(clients))


# --- timing -------------------------------------------------------------------------

Operation = Callable[[], None]


def _chunk(
    operations: Sequence[Operation], per_client: int, deadline: float, into: Samples
) -> None:
    """Each client runs its operation ``per_client`` times in its own thread, or to ``deadline``."""
    per_thread: list[list[float]] = [[] for _ in operations]
    errors: list[BaseException] = []
    start = threading.Barrier(len(operations) + 1)

    def work(operation: Operation, latencies: list[float]) -> None:
        try:
            start.wait()
            for _ in range(per_client):
                began = time.perf_counter()
                operation()
                latencies.append(time.perf_counter() - began)
                if time.perf_counter() > deadline:
                    break
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(operation, latencies), daemon=True)
        for operation, latencies in zip(operations, per_thread, strict=True)
    ]
    for thread in threads:
        thread.start()
    gc.collect()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    into.wall_s += time.perf_counter() - began
    if errors:
        raise RuntimeError(f"an operation failed: {errors[0]!r}") from errors[0]
    for latencies in per_thread:
        into.latencies.extend(latencies)


def _measure(
    targets: Sequence[Target], operation: str, clients: int, count: int
) -> dict[str, Samples]:
    """Alternate chunks between targets; each runs ``count`` operations at most, all clients."""
    ops = {t.name: [getattr(c, operation) for c in t.clients[:clients]] for t in targets}
    for operations in ops.values():  # warm-up: connections, caches, first requests
        _chunk(operations, WARMUP_PER_CLIENT, time.perf_counter() + PHASE_BUDGET_S, Samples())
    samples = {name: Samples() for name in ops}
    per_client = max(1, count // clients // CHUNKS)
    deadline = time.perf_counter() + PHASE_BUDGET_S * len(ops)
    for _ in range(CHUNKS):
        for name, operations in ops.items():
            _chunk(operations, per_client, deadline, samples[name])
    return samples


_ROW = "{:<9} {:>7}  {:<11} {:>8} {:>8} {:>8} {:>10} {:>10}  {}"


def _rows(operation: str, clients: int, samples: dict[str, Samples]) -> list[str]:
    base = samples[IN_PROCESS]
    rows = []
    for name, got in samples.items():
        p50, p99 = got.percentile_ms(50), got.percentile_ms(99)
        is_base = got is base
        verdict = ""
        if operation == "recover" and clients == 1 and name == PROCESSES:
            verdict = f"{'ok' if p99 <= TARGET_P99_MS else 'MISSES'} (p99 <= {TARGET_P99_MS:g} ms)"
        rows.append(
            _ROW.format(
                operation,
                clients,
                name,
                f"{got.rate():.1f}",
                f"{p50:.2f}",
                f"{p99:.2f}",
                "-" if is_base else f"{p50 / base.percentile_ms(50):.2f}x",
                "-" if is_base else f"{base.rate() / got.rate():.2f}x",
                verdict,
            )
        )
    return rows


def run() -> list[str]:
    """Deploy, register, measure; return the report lines (see the module docstring)."""
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bkv-bench-service-") as tmp,
        tempfile.TemporaryDirectory(prefix="bkv-bench-service-", dir=_tmpfs()) as in_memory,
        devnet.Processes() as processes,
    ):
        targets = (
            _deploy_processes(processes, Path(tmp), MAX_CLIENTS, PROCESSES),
            _deploy_processes(processes, Path(in_memory), MAX_CLIENTS, PROCESSES_TMPFS),
            _in_process(MAX_CLIENTS),
        )
        setup_s = time.perf_counter() - started
        try:
            results = [
                (operation, clients, _measure(targets, operation, clients, count))
                for operation, clients, count in PHASES
            ]
        finally:
            for target in targets:
                for client in target.clients:
                    client.vault.close()
    lines = [
        "latency in ms through witness/HSM/host processes vs an in-process HsmApp (same client "
        "code, Identity KSF, empty vault); ratios are each target / in process",
        _ROW.format(
            "operation", "clients", "target", "ops/s", "p50", "p99", "p50 ratio", "time/op", ""
        ),
    ]
    for operation, clients, samples in results:
        lines += _rows(operation, clients, samples)
    counts = "; ".join(
        f"{operation} x{clients}: {len(samples[PROCESSES].latencies)} per target"
        for operation, clients, samples in results
    )
    lines.append(
        "(recover = 2 requests and 2 durable persists: RecoverStart counts an attempt, "
        "RecoverFinish forgives it and releases the key; status = 1 request, no persist. "
        f"{PROCESSES_TMPFS} = a second deployment whose state (and fsyncs) live in "
        f"{_tmpfs() or 'the default temp dir: no tmpfs here'}. "
        f"{counts}; {CHUNKS} alternating chunks; time/op = in-process rate / target's rate; "
        f"setup (processes, bundles, registrations) {setup_s:.1f} s)"
    )
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
