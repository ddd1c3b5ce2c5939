"""The vault at 1k, 100k and 1M records: HSM cost, end-to-end cost, disk, memory, group commit.

Setup, per size. One SQLite record store (:class:`bkv.records.store_sqlite.SqliteTreeStore`,
WAL, ``synchronous=FULL``) per size, ON DISK: a temporary directory under the repository's
``build/`` directory (the file system it is on is printed; never tmpfs), removed at the end.
The loader fills it with synthetic accounts whose sealed slots are exactly what a registration
leaves: per account ``pre-%08d``, an :class:`~bkv.hsm.state.AccountSlot` (generation 1) with
one live :class:`~bkv.hsm.state.Record` of real field sizes (generation 1, a random 32-byte
registration id, a random ``REGISTRATION_RECORD_SIZE`` (192-byte) opaque record, a random
64-byte secret (a wrapped 32-byte key), guess limit 10, no attempt counted), sealed with the
app's own record cipher (white box: ``app._cipher.seal(app.record_id(account), 0, slot)``, tree
version 0), all given to ``store.bulk_load(tree_id, entries, sealed_state_for)`` in one
transaction, where ``sealed_state_for(head)`` seals
``Snapshot(version=1, secrets=app._secrets, fleet_id, max_guess_limit, tree_id, tree_version=0,
root=head.root)`` with the app's sealer. The HSM is then opened from the store as a server
does (``HsmApp.load(store.sealed_state(), sealer, fleet_id=...)``) and driven by the host half,
:class:`~bkv.hsm.runner.BatchRunner`. The synthetic records are never opened by a password
(their opaque records are random bytes); the accounts the bench registers and recovers are
real ones, registered through the normal path (RegisterStart, RegisterFinish, RegisterExpose)
on top of the loaded records. The load time is printed (GC paused while loading).

What is timed (client-side work, Identity KSF, is done between the timed calls and not
counted), samples interleaved across sizes and the baseline, GC paused while timing, medians:

1. **register** = RegisterStart + RegisterFinish + RegisterExpose of a new account, and
   **recover** = RecoverStart + RecoverFinish of an account the bench registered, each request
   a batch of one through ``BatchRunner.run``. *e2e* is the whole ``run``: the host's record
   read (proof + sealed slot from SQLite), the HSM, and the store's fsync'd commit. *HSM* is
   the time spent inside ``app.submit`` / ``app.end_batch`` / ``app.persisted`` only (HPKE,
   OPAQUE, proof check, record open and seal, tree update, state seal): no store read or commit.
   *commit* is the time inside ``store.commit`` alone (the rest of e2e is the host's reads of
   proofs and sealed slots, and the runner).
2. The **baseline**, measured in the same run on the same inputs: the RFC 9807 server functions
   alone (``server_registration_response``; ``server_login_start`` + ``server_login_finish``).
   Targets: HSM recover <= 1.5x pure OPAQUE at every size; median at the largest size <= 1.2x
   the median at the smallest, for register and recover.
3. **bytes on disk per record**: ``store.disk_bytes()`` / records right after the load and a
   ``wal_checkpoint(TRUNCATE)`` (target <= 1 KiB).
4. **HSM process RSS**: a child process (:mod:`bench.vault_rss`) opens the smallest and the
   largest store with the app and runs ``RSS_RECOVERIES`` recoveries (after this process is
   done with that store); its peak RSS must be flat (within ``RSS_FLAT_MIB`` of each other).
   The peak is the child's ``VmHWM``: Linux carries ``ru_maxrss`` over fork and exec, so the
   child's ``ru_maxrss`` is this (loader) process's peak, also printed to show it. SQLite's
   page cache is the connection default (the child prints ``PRAGMA cache_size``).
5. **group commit**, on the largest store: RegisterFinish of ``GROUP`` registrations
   RegisterStart-ed beforehand (untimed), as one batch (one commit) vs one batch each (one
   commit per request); likewise RecoverStart (KE1) of ``GROUP`` live accounts (their
   sessions are finished, untimed, between rounds so no record nears its guess limit).
   Registrations and recoveries per second (``BatchRunner.run`` time only: client work
   excluded), median over ``GROUP_ROUNDS`` alternating rounds, with the split per request.
6. **same cost, real or not**: HSM time of a KE1 (RecoverStart, counted attempt, commit) for a
   registered account vs for an account that has no record (fake-record KE2, dummy seal and
   tree work, commit of a new version with the same root): medians and their ratio, per size.

Sizes: ``SIZES`` by default; ``BKV_BENCH_VAULT_SIZES=1000,100000`` (or ``python -m bench.vault
--sizes 1000,100000``) picks others (``make bench`` passes only module names). Bounded: the
default run takes about 1.5 minutes on an idle 2-vCPU machine (loading the 1.1M records and
checkpointing them is most of it), a few minutes when the machine is shared. Nothing here
asserts on time.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bkv.crypto import channel
from bkv.crypto.ksf import Identity
from bkv.crypto.opaque import (
    KE2,
    REGISTRATION_RECORD_SIZE,
    ClientLoginState,
    ClientRegistrationState,
    Config,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    ServerSecrets,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    server_login_finish,
    server_login_start,
    server_registration_response,
)
from bkv.hsm.app import BatchEnd, HsmApp
from bkv.hsm.runner import BatchRunner
from bkv.hsm.sealing import seal_snapshot
from bkv.hsm.state import AccountSlot, Record, Snapshot
from bkv.keystore import SoftwareSealer
from bkv.protocol.messages import (
    INNER_RESPONSES,
    KIND_OF_REQUEST,
    OPAQUE_CONTEXT,
    REGISTRATION_ID_SIZE,
    HsmRequest,
    HsmResponse,
    InnerRequest,
    KeyReleased,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterExpose,
    RegisterExposeOk,
    RegisterFinish,
    RegisterFinishOk,
    RegisterStart,
    RegisterStartOk,
    request_aad,
)
from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import TreeHead, TreeUpdate
from bkv.wire import decode, decode_any, encode

SIZES = (1_000, 100_000, 1_000_000)
SIZES_ENV = "BKV_BENCH_VAULT_SIZES"
SAMPLES = 101
"""Interleaved samples per size of register, recover and unknown-account KE1."""
WARMUP = 3
GROUP = 32
GROUP_ROUNDS = 6
RSS_RECOVERIES = 200
RSS_ACCOUNTS = 20
RSS_FLAT_MIB = 5.0
TARGET_RECOVER_VS_PURE = 1.5
TARGET_LARGEST_VS_SMALLEST = 1.2
TARGET_DISK_BYTES = 1024
SECRET_SIZE = 64  # a wrapped 32-byte key, what the SDK stores
GUESS_LIMIT = 10
CONFIG = Config(context=OPAQUE_CONTEXT, ksf=Identity())  # client work is not timed
FLEET = "bench-fleet"
PASSWORD = b"bench password"
REPO = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO / "build"

T = TypeVar("T")


# --- the HSM, timed ------------------------------------------------------------------


class _TimedApp(HsmApp):
    """An HsmApp that adds up the time spent in its message interface (the HSM's own work)."""

    spent = 0.0

    def submit(self, request: bytes, read: bytes | None, now_ms: int) -> int:
        started = time.perf_counter()
        try:
            return super().submit(request, read, now_ms)
        finally:
            self.spent += time.perf_counter() - started

    def end_batch(self) -> BatchEnd:
        started = time.perf_counter()
        try:
            return super().end_batch()
        finally:
            self.spent += time.perf_counter() - started

    def persisted(self, version: int) -> Any:
        started = time.perf_counter()
        try:
            return super().persisted(version)
        finally:
            self.spent += time.perf_counter() - started


class _TimedStore(SqliteTreeStore):
    """The SQLite record store, adding up the time spent in ``commit`` (one fsync'd transaction)."""

    spent = 0.0

    def __enter__(self) -> _TimedStore:
        return self

    def commit(
        self, update: TreeUpdate, records: Mapping[bytes, bytes | None], sealed_state: bytes
    ) -> None:
        started = time.perf_counter()
        try:
            super().commit(update, records, sealed_state)
        finally:
            self.spent += time.perf_counter() - started


@dataclass(frozen=True)
class _Cost:
    """One timed operation: end to end (runner), the HSM's share, and the store commit's."""

    e2e: float
    hsm: float
    commit: float

    def __add__(self, other: _Cost) -> _Cost:
        return _Cost(self.e2e + other.e2e, self.hsm + other.hsm, self.commit + other.commit)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Vault:
    """One size: the store on disk, the HSM opened from it, the host half, the real accounts."""

    size: int
    path: Path
    store: _TimedStore
    app: _TimedApp
    runner: BatchRunner
    load_s: float
    disk_bytes: int
    registered: list[bytes] = field(default_factory=list)
    _next: int = 0

    def new_account(self, label: str = "bench") -> bytes:
        self._next += 1
        return b"%s-%07d" % (label.encode(), self._next)

    def _request(self, account: bytes, inner: InnerRequest) -> tuple[bytes, object]:
        kind = KIND_OF_REQUEST[type(inner)]
        state, sealed = channel.seal_request(
            self.app.channel_public_key,
            FLEET.encode(),
            encode(inner),
            request_aad(FLEET, kind, account),
        )
        return encode(HsmRequest(FLEET, kind, account, sealed)), state

    def batch(self, calls: Sequence[tuple[bytes, InnerRequest]]) -> tuple[list[object], _Cost]:
        """Run ``calls`` as ONE batch (one commit at most); their inner answers and its cost."""
        sealed = [self._request(account, inner) for account, inner in calls]
        hsm_before, commit_before = self.app.spent, self.store.spent
        started = time.perf_counter()
        answers = self.runner.run([request for request, _ in sealed], _now_ms())
        elapsed = time.perf_counter() - started
        cost = _Cost(elapsed, self.app.spent - hsm_before, self.store.spent - commit_before)
        opened = []
        for answer, (_, state) in zip(answers, sealed, strict=True):
            if not isinstance(answer, bytes):
                raise RuntimeError(f"the HSM refused the host's read: {answer}")
            outer = decode(HsmResponse, answer)
            inner = channel.open_response(state, outer.sealed)  # type: ignore[arg-type]
            opened.append(decode_any(inner, INNER_RESPONSES))
        return opened, cost

    def call(self, account: bytes, inner: InnerRequest, want: type[T]) -> tuple[T, _Cost]:
        (answer,), cost = self.batch([(account, inner)])
        return _expect(answer, want), cost

    # --- the flows, one request per batch ---

    def register(self, account: bytes) -> _Cost:
        state, request = client_registration_start(PASSWORD)
        started, c1 = self.call(account, RegisterStart(request.to_bytes()), RegisterStartOk)
        finish = _finish_registration(state, started, account)
        _, c2 = self.call(account, finish, RegisterFinishOk)
        _, c3 = self.call(account, RegisterExpose(started.registration_id), RegisterExposeOk)
        self.registered.append(account)
        return c1 + c2 + c3

    def recover(self, account: bytes) -> tuple[_Cost, _Cost]:
        """A full recovery: its cost, and the cost of its KE1 (RecoverStart) alone."""
        login_state, ke1 = client_login_start(PASSWORD)
        started, c1 = self.call(account, RecoverStart(ke1.to_bytes()), RecoverStartOk)
        finish = _finish_login(login_state, started)
        _, c2 = self.call(account, finish, KeyReleased)
        return c1 + c2, c1

    def unknown_ke1(self) -> _Cost:
        """A KE1 for an account with no record (a fresh one each time)."""
        _, ke1 = client_login_start(PASSWORD)
        _, cost = self.call(
            self.new_account("nobody"), RecoverStart(ke1.to_bytes()), RecoverStartOk
        )
        return cost


def _expect(answer: object, want: type[T]) -> T:
    if not isinstance(answer, want):
        raise RuntimeError(f"expected {want.__name__}, the HSM answered {answer!r}")
    return answer


def _finish_registration(
    state: ClientRegistrationState, started: RegisterStartOk, _account: bytes
) -> RegisterFinish:
    response = RegistrationResponse.from_bytes(started.registration_response)
    record, _ = client_registration_finish(state, CONFIG, response)
    secret = random.randbytes(SECRET_SIZE)
    return RegisterFinish(started.registration_id, record.to_bytes(), secret, GUESS_LIMIT)


def _finish_login(state: ClientLoginState, started: RecoverStartOk) -> RecoverFinish:
    ke3, _key, _export = client_login_finish(state, CONFIG, KE2.from_bytes(started.ke2))
    return RecoverFinish(started.session_id, ke3.to_bytes())


# --- setup: the loader ---------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _synthetic_entries(app: HsmApp, size: int) -> Iterator[tuple[bytes, bytes]]:
    """(record id, sealed slot) of ``size`` accounts, each as a registration leaves it."""
    rng = random.Random(size)
    now_ms = _now_ms()
    for i in range(size):
        account = b"pre-%08d" % i
        record = Record(
            generation=1,
            registration_id=rng.randbytes(REGISTRATION_ID_SIZE),
            opaque_record=rng.randbytes(REGISTRATION_RECORD_SIZE),
            secret=rng.randbytes(SECRET_SIZE),
            guess_limit=GUESS_LIMIT,
            created_ms=now_ms,
        )
        record_id = app.record_id(account)
        yield record_id, app._cipher.seal(record_id, 0, AccountSlot(account, 1, record))


def _checkpoint(path: Path) -> None:
    """Fold the WAL into the database file and truncate it (a separate connection)."""
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError("the WAL checkpoint could not complete")
    finally:
        db.close()


def _load(size: int, directory: Path, sealer: SoftwareSealer) -> _Vault:
    """A store on disk with ``size`` synthetic records; the HSM opened from it (docstring)."""
    seeder = HsmApp.initialize(FLEET, sealer, max_guess_limit=GUESS_LIMIT)
    path = directory / f"records-{size}.sqlite3"
    store = _TimedStore(path)  # what open_tree_store("sqlite:...") opens, commits timed

    def sealed_state_for(head: TreeHead) -> bytes:
        snapshot = Snapshot(
            version=1,
            secrets=seeder._secrets,
            fleet_id=FLEET,
            max_guess_limit=GUESS_LIMIT,
            tree_id=head.tree_id,
            tree_version=0,
            root=head.root,
        )
        return seal_snapshot(sealer, snapshot)

    started = time.perf_counter()
    with _gc_paused():
        store.bulk_load(seeder.head.tree_id, _synthetic_entries(seeder, size), sealed_state_for)
    load_s = time.perf_counter() - started
    _checkpoint(path)
    disk = store.disk_bytes()
    sealed_state = store.sealed_state()
    if sealed_state is None:
        raise RuntimeError("the bulk load left no sealed state")
    app = _TimedApp.load(sealed_state, sealer, fleet_id=FLEET)  # cls(...): a _TimedApp
    if not isinstance(app, _TimedApp):
        raise TypeError("HsmApp.load did not build the subclass")
    return _Vault(size, path, store, app, BatchRunner(app, store), load_s, disk)


# --- baseline ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pure:
    secrets: ServerSecrets
    request: RegistrationRequest
    record: RegistrationRecord
    credential: bytes = b"bench credential identifier"

    @classmethod
    def make(cls) -> _Pure:
        secrets = ServerSecrets.generate()
        state, request = client_registration_start(PASSWORD)
        response = server_registration_response(secrets, request, cls.credential)
        record, _ = client_registration_finish(state, CONFIG, response)
        return cls(secrets, request, record)

    def register(self) -> float:
        started = time.perf_counter()
        server_registration_response(self.secrets, self.request, self.credential)
        return time.perf_counter() - started

    def recover(self) -> float:
        login_state, ke1 = client_login_start(PASSWORD)
        started = time.perf_counter()
        ke2, server_state = server_login_start(
            self.secrets, CONFIG, self.record, self.credential, ke1
        )
        elapsed = time.perf_counter() - started
        ke3, _key, _export = client_login_finish(login_state, CONFIG, ke2)
        started = time.perf_counter()
        server_login_finish(server_state, ke3)
        return elapsed + time.perf_counter() - started


# --- measurements --------------------------------------------------------------------


@dataclass
class _Series:
    """Per size: register and recover costs, and KE1 costs for real and unknown accounts."""

    register: list[_Cost] = field(default_factory=list)
    recover: list[_Cost] = field(default_factory=list)
    ke1_real: list[_Cost] = field(default_factory=list)
    ke1_unknown: list[_Cost] = field(default_factory=list)


def _median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def _e2e(costs: Sequence[_Cost]) -> float:
    return _median_ms([c.e2e for c in costs])


def _hsm(costs: Sequence[_Cost]) -> float:
    return _median_ms([c.hsm for c in costs])


def _commit(costs: Sequence[_Cost]) -> float:
    return _median_ms([c.commit for c in costs])


def _sample(
    vaults: Sequence[_Vault], pure: _Pure, samples: int
) -> tuple[dict[int, _Series], dict[str, list[float]]]:
    for vault in vaults:  # warm-up: first commits after the checkpoint, caches
        for _ in range(WARMUP):
            account = vault.new_account()
            vault.register(account)
            vault.recover(account)
            vault.unknown_ke1()
    series = {vault.size: _Series() for vault in vaults}
    baseline: dict[str, list[float]] = {"register": [], "recover": []}
    with _gc_paused():
        for _ in range(samples):  # interleaved: every kind sees the same machine noise
            baseline["register"].append(pure.register())
            baseline["recover"].append(pure.recover())
            for vault in vaults:
                got = series[vault.size]
                account = vault.new_account()
                got.register.append(vault.register(account))
                recover, ke1 = vault.recover(account)
                got.recover.append(recover)
                got.ke1_real.append(ke1)
                got.ke1_unknown.append(vault.unknown_ke1())
    return series, baseline


GroupKey = tuple[str, bool]
"""(operation, batched): one way of running ``GROUP`` requests."""


@dataclass
class _Group:
    """Per (operation, batched): the summed cost of the ``GROUP`` requests, one per round."""

    rounds: dict[GroupKey, list[_Cost]] = field(default_factory=dict)

    def add(self, key: GroupKey, cost: _Cost) -> None:
        self.rounds.setdefault(key, []).append(cost)


def _started_registrations(
    vault: _Vault,
) -> list[tuple[bytes, ClientRegistrationState, RegisterStartOk]]:
    accounts = [vault.new_account("group") for _ in range(GROUP)]
    states = [client_registration_start(PASSWORD) for _ in accounts]
    answers, _ = vault.batch(
        [(a, RegisterStart(r.to_bytes())) for a, (_, r) in zip(accounts, states, strict=True)]
    )
    return [
        (account, state, _expect(answer, RegisterStartOk))
        for account, (state, _), answer in zip(accounts, states, answers, strict=True)
    ]


def _timed_group(
    vault: _Vault, calls: list[tuple[bytes, InnerRequest]], batched: bool
) -> tuple[list[object], _Cost]:
    """Run ``calls`` as one batch or one batch each; their answers and summed runner cost."""
    with _gc_paused():
        if batched:
            return vault.batch(calls)
        answers, total = [], _Cost(0.0, 0.0, 0.0)
        for call in calls:
            (answer,), cost = vault.batch([call])
            answers.append(answer)
            total += cost
        return answers, total


def _group_commit(vault: _Vault) -> _Group:
    result = _Group()
    for round_ in range(GROUP_ROUNDS):
        modes = (True, False) if round_ % 2 == 0 else (False, True)
        for batched in modes:
            # Registrations: RegisterStart-ed beforehand, only the finishes are timed.
            started = _started_registrations(vault)
            finishes: list[tuple[bytes, InnerRequest]] = [
                (account, _finish_registration(state, ok, account))
                for account, state, ok in started
            ]
            answers, cost = _timed_group(vault, finishes, batched)
            for answer in answers:
                _expect(answer, RegisterFinishOk)
            result.add(("RegisterFinish", batched), cost)
            exposes: list[tuple[bytes, InnerRequest]] = [
                (account, RegisterExpose(ok.registration_id)) for account, _, ok in started
            ]
            for answer in vault.batch(exposes)[0]:
                _expect(answer, RegisterExposeOk)
            # Recoveries (KE1) of the accounts just made live; their sessions finished after.
            accounts = [account for account, _, _ in started]
            logins = [client_login_start(PASSWORD) for _ in accounts]
            ke1s: list[tuple[bytes, InnerRequest]] = [
                (account, RecoverStart(ke1.to_bytes()))
                for account, (_, ke1) in zip(accounts, logins, strict=True)
            ]
            answers, cost = _timed_group(vault, ke1s, batched)
            result.add(("RecoverStart (KE1)", batched), cost)
            finish: list[tuple[bytes, InnerRequest]] = [
                (account, _finish_login(state, _expect(answer, RecoverStartOk)))
                for account, (state, _), answer in zip(accounts, logins, answers, strict=True)
            ]
            for answer in vault.batch(finish)[0]:
                _expect(answer, KeyReleased)
    return result


def _rss(vault: _Vault, sealer: SoftwareSealer) -> dict[str, Any]:
    """Peak RSS of a child HSM process serving recoveries from this store (bench.vault_rss)."""
    vault.store.close()  # the child is the HSM now; this process never uses the store again
    job = {
        "store": str(vault.path),
        "sealer_key": sealer.key_bytes().hex(),
        "fleet_id": FLEET,
        "password": PASSWORD.hex(),
        "accounts": [a.hex() for a in vault.registered[:RSS_ACCOUNTS]],
        "recoveries": RSS_RECOVERIES,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.vault_rss"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.vault_rss failed: {done.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


# --- report --------------------------------------------------------------------------


def _sizes() -> tuple[int, ...]:
    raw = os.environ.get(SIZES_ENV, "").strip()
    if not raw:
        return SIZES
    try:
        sizes = tuple(sorted({int(part.replace("_", "")) for part in raw.split(",") if part}))
    except ValueError:
        raise SystemExit(f"{SIZES_ENV} is a comma-separated list of record counts") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"{SIZES_ENV} names at least one positive record count")
    return sizes


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (longest mount point in /proc/self/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, f"{parts[2]} ({parts[0]} on {mount})"
    return kind


def _ok(good: bool) -> str:
    return "ok" if good else "MISSES"


def _mib(kib: int) -> float:
    return kib / 1024


def run() -> list[str]:
    """Load, measure, report (see the module docstring)."""
    sizes = _sizes()
    BUILD_DIR.mkdir(exist_ok=True)
    sealer = SoftwareSealer.generate()
    pure = _Pure.make()
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-vault-", dir=BUILD_DIR) as tmp:
        directory = Path(tmp)
        lines.append(f"record stores: SQLite (WAL, synchronous=FULL) in {directory}")
        lines.append(f"  on {_file_system(directory)}")
        vaults = []
        try:
            for size in sizes:
                vaults.append(_load(size, directory, sealer))
            series, baseline = _sample(vaults, pure, SAMPLES)
            group = _group_commit(vaults[-1])
            rss_targets = [vaults[0], vaults[-1]] if len(vaults) > 1 else [vaults[0]]
            rss = {vault.size: _rss(vault, sealer) for vault in rss_targets}
        finally:
            for vault in vaults:
                with contextlib.suppress(Exception):
                    vault.store.close()
    lines += _report(vaults, series, baseline, group, rss)
    return lines


def _report(
    vaults: Sequence[_Vault],
    series: dict[int, _Series],
    baseline: dict[str, list[float]],
    group: _Group,
    rss: dict[int, dict[str, Any]],
) -> list[str]:
    pure_reg, pure_rec = _median_ms(baseline["register"]), _median_ms(baseline["recover"])
    lines = [
        f"pure OPAQUE server: register (RegistrationResponse) {pure_reg:.3f} ms, "
        f"recover (login start + finish) {pure_rec:.3f} ms (medians)",
        "",
        "1-2. medians in ms, one request per batch; e2e = BatchRunner.run (store reads + HSM + "
        "fsync'd commits), HSM = inside the app only, commit = inside store.commit only",
    ]
    row = "{:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}  {}"
    lines.append(
        row.format(
            "records",
            "load s",
            "reg e2e",
            "reg HSM",
            "reg cmt",
            "rec e2e",
            "rec HSM",
            "rec cmt",
            "HSM/pure",
            "",
        )
    )
    for vault in vaults:
        got = series[vault.size]
        rec_hsm = _hsm(got.recover)
        ratio = rec_hsm / pure_rec
        lines.append(
            row.format(
                f"{vault.size:,}",
                f"{vault.load_s:.1f}",
                f"{_e2e(got.register):.2f}",
                f"{_hsm(got.register):.2f}",
                f"{_commit(got.register):.2f}",
                f"{_e2e(got.recover):.2f}",
                f"{rec_hsm:.2f}",
                f"{_commit(got.recover):.2f}",
                f"{ratio:.2f}x",
                f"{_ok(ratio <= TARGET_RECOVER_VS_PURE)} (HSM recover <= "
                f"{TARGET_RECOVER_VS_PURE:g}x pure OPAQUE)",
            )
        )
    for vault in vaults:
        lines.append(
            f"   HSM register at {vault.size:,}: "
            f"{_hsm(series[vault.size].register) / pure_reg:.2f}x "
            "pure OPAQUE register (three requests against one server function)"
        )
    small, large = vaults[0], vaults[-1]
    if large is not small:
        s, g = series[small.size], series[large.size]
        for name, small_costs, large_costs in (
            ("recover", s.recover, g.recover),
            ("register", s.register, g.register),
        ):
            for what, median in (("e2e", _e2e), ("HSM", _hsm)):
                ratio = median(large_costs) / median(small_costs)
                lines.append(
                    f"   {name} {what} median {large.size:,} / {small.size:,}: {ratio:.2f}x  "
                    f"{_ok(ratio <= TARGET_LARGEST_VS_SMALLEST)} "
                    f"(<= {TARGET_LARGEST_VS_SMALLEST:g}x)"
                )
    lines += ["", "3. bytes on disk per record (database + WAL after a TRUNCATE checkpoint)"]
    for vault in vaults:
        per = vault.disk_bytes / vault.size
        lines.append(
            f"   {vault.size:>10,} records: {vault.disk_bytes / 2**20:8.1f} MiB, "
            f"{per:6.0f} B/record  {_ok(per <= TARGET_DISK_BYTES)} (<= {TARGET_DISK_BYTES} B)"
        )
    lines += [
        "",
        f"4. HSM process peak RSS (child: open store + app, {RSS_RECOVERIES} recoveries, "
        "each 2 batches/commits)",
    ]
    inherited: list[float] = []
    for size, child in rss.items():
        cache = child["cache_size"]
        cache_text = f"{-cache} KiB" if cache < 0 else f"{cache} pages of {child['page_size']} B"
        lines.append(
            f"   {size:>10,} records: peak {_mib(child['peak_kib']):.1f} MiB (after imports "
            f"{_mib(child['peak_after_imports_kib']):.1f}, after open "
            f"{_mib(child['peak_after_open_kib']):.1f}; current at end "
            f"{_mib(child['rss_at_end_kib']):.1f}); {child['recoveries']} recoveries in "
            f"{child['seconds']:.1f} s; SQLite cache_size={cache} ({cache_text})"
        )
        inherited.append(_mib(child["ru_maxrss_kib"]))
    lines.append(
        "   (peak = the child's VmHWM; its ru_maxrss, "
        + ", ".join(f"{m:.1f}" for m in inherited)
        + " MiB, is inherited from this loader process across fork+exec)"
    )
    if len(rss) > 1:
        first, last = rss[small.size], rss[large.size]
        delta = _mib(last["peak_kib"] - first["peak_kib"])
        lines.append(
            f"   {large.size:,} vs {small.size:,}: {delta:+.1f} MiB  "
            f"{_ok(abs(delta) <= RSS_FLAT_MIB)} (flat: within {RSS_FLAT_MIB:g} MiB)"
        )
    lines += [
        "",
        f"5. group commit at {large.size:,} records: {GROUP} requests as one batch (one commit) "
        f"vs one batch each; medians of {GROUP_ROUNDS} alternating rounds (runner time only); "
        "per request: HSM, store.commit, rest (store reads, runner)",
    ]
    for name in ("RegisterFinish", "RecoverStart (KE1)"):
        rates = {}
        for batched in (True, False):
            costs = group.rounds[(name, batched)]
            rate = GROUP / statistics.median([c.e2e for c in costs])
            rates[batched] = rate
            hsm = _hsm(costs) / GROUP
            commit = _commit(costs) / GROUP
            rest = _e2e(costs) / GROUP - hsm - commit
            mode = "one batch of 32" if batched else "32 batches of 1"
            lines.append(
                f"   {name:<19} {mode:<16} {rate:7.0f}/s  (ms/request: HSM {hsm:.2f}, "
                f"commit {commit:.2f}, rest {rest:.2f})"
            )
        lines.append(f"   {name:<19} group commit speed-up {rates[True] / rates[False]:.2f}x")
    lines += [
        "",
        "6. same cost, real or not: HSM time of a KE1 (RecoverStart), medians in ms",
    ]
    for vault in vaults:
        got = series[vault.size]
        real, fake = _hsm(got.ke1_real), _hsm(got.ke1_unknown)
        lines.append(
            f"   {vault.size:>10,} records: existing account {real:.3f}, unknown account "
            f"{fake:.3f}, unknown/existing {fake / real:.2f}x (e2e {_e2e(got.ke1_real):.2f} vs "
            f"{_e2e(got.ke1_unknown):.2f})"
        )
    lines.append(
        f"({SAMPLES} interleaved samples per size after {WARMUP} warm-up; GC paused while timing; "
        "software sealer; Identity KSF on the client, not timed)"
    )
    return lines


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--sizes"] and len(argv) == 2:
        os.environ[SIZES_ENV] = argv[1]
    elif argv:
        print("usage: python -m bench.vault [--sizes 1000,100000]")
        return 2
    print("\n".join(run()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
