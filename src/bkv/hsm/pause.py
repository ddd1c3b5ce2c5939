"""Test-only fault injection: stop the HSM at a point of the request path so a test can kill it.

With ``[testing] pause_at = "<point>"`` in the config (:mod:`bkv.hsm.config`),
the process blocks when a request reaches that point and first writes
``<state_dir>/paused-<point>`` (holding its pid), so that a crash test can
SIGKILL it exactly there:

- ``request-received``: nothing done yet;
- ``persisted``: the batch is in the record store, the NV counter not yet advanced;
- ``committed``: the counter advanced, the answers not yet released.

It only delays: it cannot skip a step of the persist protocol or release
anything (:class:`bkv.hsm.runner.BatchRunner`). Production configs omit
``[testing]``, and then :class:`Pauser` does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

PAUSE_POINTS: Final = ("request-received", "persisted", "committed")
PAUSE_SECONDS: Final = 60.0


class Pauser:
    """Called with each point a request passes; blocks at the configured one."""

    def __init__(self, point: str | None, state_dir: Path) -> None:
        if point is not None and point not in PAUSE_POINTS:
            raise ValueError(f"pause point must be one of {PAUSE_POINTS}")
        self.point = point
        self.state_dir = state_dir

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        (self.state_dir / f"paused-{point}").write_text(str(os.getpid()), encoding="utf-8")
        time.sleep(PAUSE_SECONDS)  # blocks the whole HSM, like a stalled device


def no_pause(_point: str) -> None:
    """The pauser of a production HSM: every point passes at once."""
