"""One emulated HSM: the sans-IO app, its device, the host's record store, and group commit.

:class:`HsmNode` ties the :class:`~bkv.hsm.app.HsmApp` (secrets and the record
tree's head, sans-IO) to its device (:mod:`bkv.hsm.device`: sealing key and
NV counter) and to the host-side record store (:mod:`bkv.records`, SQLite or
PostgreSQL, :func:`bkv.records.engines.open_tree_store`), through the host's
batch protocol (:class:`bkv.hsm.runner.BatchRunner`). :func:`init_hsm` creates
one, :func:`load_hsm` opens one.

Persist protocol, for every batch that changes state ``v``: the host stores
the sealed records, the tree nodes and the sealed state in one transaction ->
the HSM advances its NV counter to ``(v, SHA-256(sealed state))`` -> only then
do the answers that depend on ``v`` leave. On start,
:func:`bkv.hsm.sealing.check_freshness` compares the stored state with the
counter and refuses an older (rolled back) one with
:class:`~bkv.errors.StateRollbackError`: rolling back any record means rolling
back the tree head, which the counter covers.

Failing safe. If a persist fails (the store refuses or fails the write, the
counter cannot advance, housekeeping hits anything unexpected), the store,
the counter and the in-memory state may disagree. The node then stops
serving (:class:`~bkv.errors.HsmFailedError`, HTTP 503, one log line naming
the error class, no secrets) until the process is restarted; the restart
re-runs the freshness check, which decides from the counter what is committed.
A request whose record read fails the HSM's checks (a tampered or broken
store) is refused on its own (:class:`~bkv.hsm.runner.Refused`) and changes nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from bkv.errors import HsmFailedError, StorageError
from bkv.hsm.app import HsmApp, Persist
from bkv.hsm.config import HsmConfig
from bkv.hsm.device import HsmDevice, open_device
from bkv.hsm.pause import no_pause
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.runner import BatchRunner, Outcome, Refused
from bkv.hsm.sealing import Freshness, blob_digest, check_freshness
from bkv.hsm.store import PUBLIC_KEYS_FILE, STATE_DIR_MODE, write_atomically
from bkv.records.engines import open_tree_store
from bkv.records.tree import TreeStore

Pause = Callable[[str], None]
"""Called with each point of the request path (:mod:`bkv.hsm.pause`; tests only)."""


def now_ms() -> int:
    """The wall clock in milliseconds (what the sans-IO app is given)."""
    return time.time_ns() // 1_000_000


class HsmNode:
    """One emulated HSM: the app, its device, and the host's record store.

    Owns the persist protocol (the runner's ``on_stored`` advances the NV
    counter) and the fail-safe latch. Not thread-safe: the HTTP adapter runs
    one batch at a time. Close it (or use ``with``) to release the device and the store.
    """

    def __init__(self, app: HsmApp, device: HsmDevice, store: TreeStore) -> None:
        self.app = app
        self.device = device
        self.store = store
        self.runner = BatchRunner(app, store, self._advance_counter)
        self._failure: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the HSM stopped serving after a persistence failure."""
        return self._failure is not None

    def handle(self, body: bytes, now_ms: int, pause: Pause = no_pause) -> bytes:
        """One request as a batch of one: its response; StorageError if its read was refused."""
        (outcome,) = self.handle_batch([body], now_ms, pause)
        if isinstance(outcome, Refused):
            raise StorageError(f"the record read was refused ({outcome.error})")
        return outcome

    def handle_batch(
        self, bodies: Sequence[bytes], now_ms: int, pause: Pause = no_pause
    ) -> list[Outcome]:
        """Run ``bodies`` as one batch (one durable write); their outcomes, in order."""
        self._check_serving()
        try:
            return self.runner.run(bodies, now_ms, pause)
        except BaseException as exc:
            self.fail(exc)
            raise

    def run_housekeeping(self, clock: Callable[[], int] = now_ms) -> int:
        """Apply every housekeeping change due now (bounded); return how many were made."""
        self._check_serving()
        try:
            return self.runner.housekeeping(clock())
        except BaseException as exc:
            self.fail(exc)
            raise

    def _advance_counter(self, persist: Persist) -> None:
        self.device.advance_counter(persist.version, blob_digest(persist.sealed_state))

    def fail(self, exc: BaseException) -> None:
        """Stop serving (latched until restart); log the error class only, never its text."""
        if self._failure is None:
            self._failure = type(exc).__name__
            print(
                f"bkv hsm: persistence failed ({self._failure}); refusing service until restarted",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Release the device and the store."""
        try:
            self.store.close()
        finally:
            self.device.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HsmNode({self.app!r}, failed={self.failed})"

    def _check_serving(self) -> None:
        if self._failure is not None:
            raise HsmFailedError(f"the HSM stopped after a persistence failure ({self._failure})")


# --- init and load ---------------------------------------------------------------------


def init_hsm(config: HsmConfig) -> HsmNode:
    """Generate fleet secrets, sealing key and NV counter; store the empty vault; write public keys.

    The returned node holds the device and the store open: close it
    (``with init_hsm(c) as node``).
    """
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    store = open_tree_store(config.record_store)
    try:
        if store.sealed_state() is not None or store.head() is not None:
            raise StorageError("the record store holds an HSM state; refusing to overwrite it")
        device = open_device(config, create=True)
    except BaseException:
        store.close()
        raise
    try:
        app = HsmApp.initialize(
            config.fleet_id,
            device.sealer,
            max_guess_limit=config.max_guess_limit,
            counter_id=device.counter_id,
        )
        node = HsmNode(app, device, store)
        # The genesis goes through the same two steps as every batch: stored
        # first, then the counter covers it.
        node.runner.store_genesis()
        write_atomically(config.state_dir / PUBLIC_KEYS_FILE, render_public_keys(app.public_keys()))
    except BaseException:
        device.close()
        store.close()
        raise
    return node


def load_hsm(config: HsmConfig) -> HsmNode:
    """Open the stored state, check it against the NV counter, and return the node.

    Tampering -> :class:`~bkv.errors.SealingError`; an older (rolled back) state
    -> :class:`~bkv.errors.StateRollbackError`. A state one step ahead of the
    counter (crash between the store's commit and the counter advance) is
    committed here.
    """
    device = open_device(config, create=False)
    try:
        store = open_tree_store(config.record_store)
    except BaseException:
        device.close()
        raise
    try:
        sealed_state = store.sealed_state()
        if sealed_state is None:
            raise StorageError("the record store holds no HSM state (run `bkv hsm init`)")
        app = HsmApp.load(
            sealed_state, device.sealer, fleet_id=config.fleet_id, counter_id=device.counter_id
        )
        # app.version is the authenticated one (bound by the AAD, equal to the
        # snapshot's own); the store's clear head is only the host's word.
        digest = blob_digest(sealed_state)
        trusted = device.committed
        if check_freshness(app.version, digest, trusted.version, trusted.digest) is Freshness.NEXT:
            device.advance_counter(app.version, digest)
    except BaseException:
        store.close()
        device.close()
        raise
    return HsmNode(app, device, store)
