"""Another real process for the keystore tests: ``counter_worker.py``, driven line by line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WORKER = Path(__file__).with_name("counter_worker.py")
WORKER_TIMEOUT_S = 60


class Worker:
    """Another process running ``counter_worker.py``, one command line in, one answer out."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        # Bounded: a worker that hangs is killed, its answers end, and the test fails.
        self._watchdog = threading.Timer(WORKER_TIMEOUT_S, self._process.kill)
        self._watchdog.start()

    def send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def answer(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()  # EOF: the worker releases what it holds and exits
        try:
            self._process.wait(timeout=WORKER_TIMEOUT_S)
        finally:
            self._watchdog.cancel()
            self._process.kill()
            assert self._process.stdout is not None
            self._process.stdout.close()


@contextmanager
def worker(*args: str, env: dict[str, str] | None = None) -> Iterator[Worker]:
    """Start ``counter_worker.py ARGS``; on exit close its stdin and wait for it to end."""
    process = Worker(*args, env=env)
    try:
        yield process
    finally:
        process.close()
