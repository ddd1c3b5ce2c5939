"""Group commit for the HSM's HTTP front: requests that arrive together share one durable write.

Requests are queued as they arrive; one worker task takes everything queued
(at most :data:`~bkv.hsm.app.MAX_BATCH_REQUESTS`), runs it as one batch in a
thread (:meth:`bkv.hsm.node.HsmNode.handle_batch`: one store transaction, one
NV counter advance), and hands each request its own answer. While a batch is
being written, the event loop keeps accepting requests, so the next batch
holds everything that arrived meanwhile: under load, throughput is set by the
cryptography and the batch size, not by one fsync per request. An idle HSM
still answers a lone request after one write, as before.

Batches never overlap: the worker is the only caller of the node (housekeeping
runs between batches), which is what the sans-IO app requires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from bkv.hsm.app import MAX_BATCH_REQUESTS
from bkv.hsm.node import HsmNode, Pause, now_ms
from bkv.hsm.pause import no_pause
from bkv.hsm.runner import Outcome

MAX_QUEUED: Final = 4 * MAX_BATCH_REQUESTS
"""Requests waiting for a batch at most; beyond that a request is refused at once (503)."""


class QueueFullError(Exception):
    """Too many requests are waiting for the HSM: try again later."""


@dataclass
class _Waiting:
    body: bytes = field(repr=False)
    done: asyncio.Future[Outcome]


class GroupCommitter:
    """Queues requests, runs them in batches on one worker, and runs housekeeping between."""

    def __init__(self, node: HsmNode, *, pause: Pause = no_pause, tick_interval_s: float) -> None:
        self._node = node
        self._pause = pause
        self._tick_interval_s = tick_interval_s
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()

    async def submit(self, body: bytes) -> Outcome:
        """The outcome of ``body`` once its batch is durable (or the batch's exception)."""
        if len(self._queue) >= MAX_QUEUED:
            raise QueueFullError("the HSM's queue is full")
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(body, done))
        self._wake.set()
        return await done

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the worker for the duration of the context (the server's lifespan)."""
        task = asyncio.create_task(self._work())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._fail_waiting(RuntimeError("the HSM is shutting down"))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._tick_interval_s
        while True:
            timeout = max(0.0, next_tick - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._queue:
                await self._run_batch()
            if loop.time() >= next_tick and not self._node.failed:
                await self._housekeeping()
                next_tick = loop.time() + self._tick_interval_s

    async def _run_batch(self) -> None:
        batch = self._queue[:MAX_BATCH_REQUESTS]
        del self._queue[:MAX_BATCH_REQUESTS]
        if self._queue:
            self._wake.set()  # more waiting: the next batch starts at once
        bodies = [waiting.body for waiting in batch]
        try:
            outcomes = await asyncio.to_thread(
                self._node.handle_batch, bodies, now_ms(), self._pause
            )
        except Exception as exc:  # latched by the node; every request of the batch fails
            for waiting in batch:
                _settle_error(waiting.done, exc)
            return
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(outcome)

    async def _housekeeping(self) -> None:
        # Any failure latches the node (fail safe, bkv.hsm.node): requests then get 503.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._node.run_housekeeping)

    def _fail_waiting(self, exc: BaseException) -> None:
        for waiting in self._queue:
            _settle_error(waiting.done, exc)
        self._queue.clear()


def _settle_error(done: asyncio.Future[Outcome], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)
