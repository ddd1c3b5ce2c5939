"""Child process of bench.vault: peak RSS of an HSM serving recoveries from a record store on disk.

Reads one JSON object on stdin (so the throwaway sealer key is never on a command line)::

    {"store": path, "sealer_key": hex, "fleet_id": str, "password": hex,
     "accounts": [hex, ...], "recoveries": int}

opens the SQLite record store (:func:`bkv.records.engines.open_tree_store`) and
the HSM app from the store's sealed state, as ``bkv hsm serve`` does, and runs
``recoveries`` full recoveries (RecoverStart + RecoverFinish, each its own
batch and its own fsync'd commit) through :class:`bkv.hsm.runner.BatchRunner`,
cycling over the given accounts (each already registered with ``password``,
Identity KSF). Prints one JSON object on stdout: the process's peak RSS after
the imports, after opening and at the end (``VmHWM``, KiB; not ``ru_maxrss``,
see :func:`_status_kib`), its current RSS at the end (``VmRSS``), ``ru_maxrss``
for reference,
SQLite's page cache setting for the store's connection (``PRAGMA cache_size``
and ``page_size``), how many recoveries ran, and how long they took.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from bkv.crypto import channel
from bkv.crypto.ksf import Identity
from bkv.crypto.opaque import KE2, Config, client_login_finish, client_login_start
from bkv.hsm.app import HsmApp
from bkv.hsm.runner import BatchRunner
from bkv.keystore import SoftwareSealer
from bkv.protocol.messages import (
    INNER_RESPONSES,
    KIND_OF_REQUEST,
    OPAQUE_CONTEXT,
    HsmRequest,
    HsmResponse,
    InnerRequest,
    KeyReleased,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    request_aad,
)
from bkv.records.engines import open_tree_store
from bkv.wire import decode, decode_any, encode

CONFIG = Config(context=OPAQUE_CONTEXT, ksf=Identity())


def _maxrss_kib() -> int:
    """``ru_maxrss`` (KiB on Linux): NOT this program's own peak (see :func:`_status_kib`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmHWM``: peak RSS, ``VmRSS``: current), or -1.

    The peak is ``VmHWM``, the high-water mark of this process's own address
    space, which starts afresh at ``execve``: Linux carries ``ru_maxrss`` over
    fork and exec (a child of a parent that held 500 MiB reports 500 MiB), so
    it would show the bench's peak, not the HSM's.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _call(runner: BatchRunner, account: bytes, inner: InnerRequest) -> object:
    app = runner.app
    kind = KIND_OF_REQUEST[type(inner)]
    fleet = app.fleet_id
    state, sealed = channel.seal_request(
        app.channel_public_key, fleet.encode(), encode(inner), request_aad(fleet, kind, account)
    )
    (answer,) = runner.run([encode(HsmRequest(fleet, kind, account, sealed))], _now_ms())
    if not isinstance(answer, bytes):
        raise RuntimeError(f"the HSM refused the host's read: {answer}")
    outer = decode(HsmResponse, answer)
    return decode_any(channel.open_response(state, outer.sealed), INNER_RESPONSES)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _recover(runner: BatchRunner, account: bytes, password: bytes) -> None:
    login_state, ke1 = client_login_start(password)
    started = _call(runner, account, RecoverStart(ke1.to_bytes()))
    if not isinstance(started, RecoverStartOk):
        raise RuntimeError(f"RecoverStart answered {type(started).__name__}")
    ke3, _key, _export = client_login_finish(login_state, CONFIG, KE2.from_bytes(started.ke2))
    released = _call(runner, account, RecoverFinish(started.session_id, ke3.to_bytes()))
    if not isinstance(released, KeyReleased):
        raise RuntimeError(f"RecoverFinish answered {type(released).__name__}")


def main() -> int:
    job = json.load(sys.stdin)
    after_imports = _status_kib("VmHWM")
    password = bytes.fromhex(job["password"])
    accounts = [bytes.fromhex(a) for a in job["accounts"]]
    store = open_tree_store(f"sqlite:{job['store']}")
    try:
        sealed_state = store.sealed_state()
        if sealed_state is None:
            raise RuntimeError("the record store holds no sealed state")
        sealer = SoftwareSealer(bytes.fromhex(job["sealer_key"]))
        app = HsmApp.load(sealed_state, sealer, fleet_id=job["fleet_id"])
        runner = BatchRunner(app, store)
        db = store._db  # type: ignore[attr-defined]  # white box: the connection's page cache
        cache_size = db.execute("PRAGMA cache_size").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        after_open = _status_kib("VmHWM")
        started = time.perf_counter()
        for i in range(int(job["recoveries"])):
            _recover(runner, accounts[i % len(accounts)], password)
        seconds = time.perf_counter() - started
    finally:
        store.close()
    report = {
        "peak_after_imports_kib": after_imports,
        "peak_after_open_kib": after_open,
        "peak_kib": _status_kib("VmHWM"),
        "rss_at_end_kib": _status_kib("VmRSS"),
        "ru_maxrss_kib": _maxrss_kib(),
        "cache_size": cache_size,
        "page_size": page_size,
        "recoveries": int(job["recoveries"]),
        "seconds": seconds,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
