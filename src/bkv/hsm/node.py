"""One emulated HSM: the sans-IO app, its device and the host's store, and the persist protocol.

:class:`HsmNode` ties the :class:`~bkv.hsm.app.HsmApp` (secrets and vault,
sans-IO) to its device (:mod:`bkv.hsm.device`: sealing key and NV counter)
and to the host-side storage of its sealed state (:mod:`bkv.hsm.store`).
:func:`init_hsm` creates one, :func:`load_hsm` opens one.

Persist protocol (:meth:`HsmNode.commit`), for every state change ``v``:
the host writes the sealed blob durably -> the HSM advances its NV counter to
``(v, SHA-256(blob))`` -> only then does the response that depends on ``v``
leave. On start, :func:`bkv.hsm.sealing.check_freshness` compares the loaded
state with the counter and refuses an older (rolled back) state with
:class:`~bkv.errors.StateRollbackError`.

Failing safe. If a persist fails (the store refuses or fails the write, the
counter cannot advance, housekeeping hits anything unexpected), the blob on
disk, the counter and the in-memory state may disagree. The node then stops
serving (:class:`~bkv.errors.HsmFailedError`, HTTP 503, one log line naming
the error class, no secrets) until the process is restarted; the restart
re-runs the freshness check, which decides from the counter what is committed.
Serving on without housekeeping or with an uncertain persist state would risk
answering from a state that is not the durable one; refusing service only
costs availability, which the host can take away anyway.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from bkv.errors import HsmFailedError, StorageError
from bkv.hsm.app import HsmApp, Persist
from bkv.hsm.config import HsmConfig
from bkv.hsm.device import HsmDevice, open_device
from bkv.hsm.pause import no_pause
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.sealing import Freshness, blob_digest, check_freshness
from bkv.hsm.store import PUBLIC_KEYS_FILE, StateStore, write_atomically

MAX_TICKS_PER_ROUND: Final = 64
"""Most housekeeping changes :meth:`HsmNode.run_housekeeping` makes in one round."""

Pause = Callable[[str], None]
"""Called with each point of the request path (:mod:`bkv.hsm.pause`; tests only)."""


def now_ms() -> int:
    """The wall clock in milliseconds (what the sans-IO app is given)."""
    return time.time_ns() // 1_000_000


class HsmNode:
    """One emulated HSM: the app, its device, and the host's store for its sealed state.

    Owns the persist protocol (:meth:`commit`) and the fail-safe latch. Not
    thread-safe: the HTTP adapter serializes calls. Close it (or use ``with``)
    to release the device.
    """

    def __init__(self, app: HsmApp, device: HsmDevice, store: StateStore) -> None:
        self.app = app
        self.device = device
        self.store = store
        self._failure: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the HSM stopped serving after a persistence failure."""
        return self._failure is not None

    def handle(self, body: bytes, now_ms: int, pause: Pause = no_pause) -> bytes:
        """One request: decide, persist + commit if the state changes, return the response."""
        self._check_serving()
        pause("request-received")
        effects = self.app.handle(body, now_ms)
        if effects.persist is None:
            if effects.response is None:
                raise ValueError("HsmApp returned neither a response nor a persist effect")
            return effects.response
        response = self.commit(effects.persist, pause)
        if response is None:
            raise ValueError("a request's persist released no response")
        return response

    def commit(self, persist: Persist, pause: Pause = no_pause) -> bytes | None:
        """Write the blob, advance the NV counter to it, then release what depended on it.

        The order is the rollback defence: the counter covers every version whose
        response may have left, and it moves only after the blob is durable, so a
        crash in between leaves a blob exactly one step ahead of the counter
        (accepted on restart, see ``check_freshness``), never a released response
        the disk does not hold.
        """
        self._check_serving()
        try:
            self.store.write(persist.blob)
            pause("persisted")
            self.device.advance_counter(persist.version, blob_digest(persist.blob))
        except BaseException as exc:
            self.app.abandon(persist.version)
            self.fail(exc)
            raise
        pause("committed")
        return self.app.persisted(persist.version)

    def run_housekeeping(self, clock: Callable[[], int] = now_ms) -> int:
        """Apply every pending housekeeping change now (bounded); return how many were made."""
        self._check_serving()
        for made in range(MAX_TICKS_PER_ROUND):
            effects = self.app.tick(clock())
            if effects.persist is None:
                return made
            self.commit(effects.persist)
        return MAX_TICKS_PER_ROUND

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
        """Release the device."""
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
        return f"HsmNode({self.app!r}, {self.store!r}, failed={self.failed})"

    def _check_serving(self) -> None:
        if self._failure is not None:
            raise HsmFailedError(f"the HSM stopped after a persistence failure ({self._failure})")


# --- init and load ---------------------------------------------------------------------


def init_hsm(config: HsmConfig) -> HsmNode:
    """Generate fleet secrets, sealing key and NV counter; write the sealed state and public keys.

    The returned node holds the device open: close it (``with init_hsm(c) as node``).
    """
    store = StateStore(config.state_dir)
    if store.exists():
        raise StorageError(f"{store.path} exists; refusing to overwrite an HSM state")
    device = open_device(config, create=True)
    try:
        app = HsmApp.initialize(
            config.fleet_id,
            device.sealer,
            max_guess_limit=config.max_guess_limit,
            counter_id=device.counter_id,
        )
        node = HsmNode(app, device, store)
        # Version 1 is not staged (no response depends on it), but it goes through
        # the same two steps: on disk first, then the counter covers it.
        blob = app.sealed_state()
        store.write(blob)
        device.advance_counter(app.version, blob_digest(blob))
        write_atomically(config.state_dir / PUBLIC_KEYS_FILE, render_public_keys(app.public_keys()))
    except BaseException:
        device.close()
        raise
    return node


def load_hsm(config: HsmConfig) -> HsmNode:
    """Open the sealed state, check it against the NV counter, and return the node.

    Tampering -> :class:`~bkv.errors.SealingError`; an older (rolled back) state
    -> :class:`~bkv.errors.StateRollbackError`. A state one step ahead of the
    counter (crash between write and counter advance) is committed here.
    """
    device = open_device(config, create=False)
    try:
        store = StateStore(config.state_dir)
        blob = store.read()
        app = HsmApp.load(
            blob, device.sealer, fleet_id=config.fleet_id, counter_id=device.counter_id
        )
        # app.version is the authenticated one (bound by the AAD, equal to the
        # snapshot's own); the clear header alone would be the host's word.
        digest = blob_digest(blob)
        trusted = device.committed
        if check_freshness(app.version, digest, trusted.version, trusted.digest) is Freshness.NEXT:
            device.advance_counter(app.version, digest)
    except BaseException:
        device.close()
        raise
    return HsmNode(app, device, store)
