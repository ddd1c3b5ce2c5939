"""The host's half of the batch protocol: read each request's record, run a batch, store it.

:class:`BatchRunner` drives an :class:`~bkv.hsm.app.HsmApp` against a record
store (:class:`bkv.records.tree.TreeStore`, any engine): for every request it
finds the account in the clear header, reads that account's record with its
proof at the head the HSM holds, submits both, and at the end of the batch
stores everything the HSM sealed in one transaction, has the NV counter
advanced (``on_stored``), and only then collects the answers
(:mod:`bkv.hsm.app`, "Group commit"). It is what an untrusted host does; the
HSM checks everything it is given, so a runner (or a store) that misbehaves
can deny service but never get an answer the HSM's checks would refuse.

Used by the HSM process (:mod:`bkv.hsm.node`), the tests and the benchmarks.
Not thread-safe: one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from bkv.errors import CodecError, StorageError, VerificationError
from bkv.hsm.app import MAX_BATCH_REQUESTS, HsmApp, Persist
from bkv.hsm.pause import no_pause
from bkv.protocol.messages import HsmRequest
from bkv.protocol.vault_records import RecordRead
from bkv.records.proof import encode_proof
from bkv.records.tree import TreeStore, read_record_proof
from bkv.wire import decode, encode

Pause = Callable[[str], None]
"""Called with each point of the request path (:mod:`bkv.hsm.pause`; tests only)."""

OnStored = Callable[[Persist], None]
"""Called once a batch is in the store, before its answers are released (the NV counter)."""

MAX_HOUSEKEEPING_ROUNDS: Final = 64
"""Most housekeeping batches :meth:`BatchRunner.housekeeping` runs in one call."""


@dataclass(frozen=True)
class Refused:
    """A request the HSM did not take: the host's read of its record failed the HSM's checks.

    Nothing changed and nothing was answered; the host answers the client
    with a server error (its storage is at fault).
    """

    error: str  # the error class and message (no secrets: they name the failed check)


Outcome = bytes | Refused


@dataclass
class BatchRunner:
    """One HSM app, one record store, and what to do once a batch is stored."""

    app: HsmApp
    store: TreeStore
    on_stored: OnStored = field(default=lambda _persist: None)

    def store_genesis(self) -> None:
        """Create a new vault's store: the app's :meth:`~bkv.hsm.app.HsmApp.genesis`, counted."""
        persist = self.app.genesis()
        self.store.commit(persist.update, persist.records, persist.sealed_state)
        self.on_stored(persist)

    def read(self, account_id: bytes) -> bytes:
        """The :class:`RecordRead` of ``account_id`` at the app's head, as the HSM takes it."""
        proof, blob = read_record_proof(self.store, self.app.head, self.app.record_id(account_id))
        return encode(RecordRead(encode_proof(proof), blob or b""))

    def run(self, requests: Sequence[bytes], now_ms: int, pause: Pause = no_pause) -> list[Outcome]:
        """Run ``requests`` as one batch (at most MAX_BATCH_REQUESTS); their answers, in order.

        Raises (after :meth:`HsmApp.abandon`) if the batch cannot be stored or
        counted: none of its answers is released, and the caller must stop
        serving until restart (:mod:`bkv.hsm.node`).
        """
        if len(requests) > MAX_BATCH_REQUESTS:
            raise ValueError(f"a batch is at most {MAX_BATCH_REQUESTS} requests")
        tickets: list[int | Refused] = []
        for request in requests:
            pause("request-received")
            tickets.append(self._submit(request, now_ms))
        answers = self._finish(pause)
        return [t if isinstance(t, Refused) else _answer(answers, t) for t in tickets]

    def housekeeping(self, now_ms: int) -> int:
        """Make every housekeeping change due now (bounded); return how many were made."""
        made = 0
        for _ in range(MAX_HOUSEKEEPING_ROUNDS):
            due = self.app.housekeeping_due(now_ms)
            if not due:
                break
            for account in due:
                self.app.housekeep(account, self.read(account), now_ms)
            before = self.app.batch_size
            self._finish(no_pause)
            made += before
            if before == 0:
                break
        return made

    def _submit(self, request: bytes, now_ms: int) -> int | Refused:
        account = _account_of(request)
        try:
            read = None if account is None else self.read(account)
            return self.app.submit(request, read, now_ms)
        except (StorageError, VerificationError, CodecError) as exc:
            # A read the store could not give or the HSM refused (RecordProofError,
            # RecordMismatchError, SealingError): this request only.
            return Refused(f"{type(exc).__name__}: {exc}")

    def _finish(self, pause: Pause) -> dict[int, bytes | None]:
        end = self.app.end_batch()
        if end.persist is None:
            return dict(end.answers)
        persist = end.persist
        try:
            self.store.commit(persist.update, persist.records, persist.sealed_state)
            pause("persisted")
            self.on_stored(persist)
        except BaseException:
            self.app.abandon(persist.version)
            raise
        pause("committed")
        return dict(self.app.persisted(persist.version))


def _account_of(request: bytes) -> bytes | None:
    """The account a request names in the clear (None if it is not a request at all)."""
    try:
        return decode(HsmRequest, request).account_id
    except CodecError:
        return None


def _answer(answers: dict[int, bytes | None], ticket: int) -> bytes:
    response = answers.get(ticket)
    if response is None:
        raise ValueError("a request's batch released no answer for it")
    return response
