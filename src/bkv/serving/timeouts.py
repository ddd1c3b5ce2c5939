"""How long a client may take to send a request: the head, then the body.

A client that sends its request slowly holds a connection, and the server's
memory and file descriptor for it, for as long as the server waits; without a
bound, enough such clients keep everyone else out (the "slowloris" attack). Every server
therefore closes a connection whose request head is not complete
``header_seconds`` after the connection opened or after the previous response
(:mod:`bkv.serving.connection`), and answers 408 to a request whose body is not
complete ``body_seconds`` after its head (:mod:`bkv.serving.guard`). An idle
keep-alive connection is closed after :data:`KEEP_ALIVE_SECONDS`.

The bodies bkv accepts are small (2 KiB to the HSM and host), so the defaults
leave a slow but honest client plenty of time; the witness's largest body, an
operator's submission, may reach about 2 MiB and may need a longer
``body_seconds`` on a slow link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from bkv.errors import ConfigError

DEFAULT_HEADER_SECONDS: Final = 10.0
DEFAULT_BODY_SECONDS: Final = 10.0
MAX_TIMEOUT_SECONDS: Final = 300.0
KEEP_ALIVE_SECONDS: Final = 5
"""Idle time after a response before a keep-alive connection is closed (uvicorn's default)."""

HEADER_TIMEOUT_KEY: Final = "header_timeout_seconds"
BODY_TIMEOUT_KEY: Final = "body_timeout_seconds"
"""The configuration keys (TOML) of the two timeouts, the same in every server's config."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds a client may take for the request head and for the request body."""

    header_seconds: float = DEFAULT_HEADER_SECONDS
    body_seconds: float = DEFAULT_BODY_SECONDS

    def __post_init__(self) -> None:
        for value in (self.header_seconds, self.body_seconds):
            if not _is_seconds(value):
                raise ValueError(f"a timeout must be a number in (0, {MAX_TIMEOUT_SECONDS:g}]")


def timeouts_from(table: dict[str, Any], where: str) -> Timeouts:
    """The two timeouts of a config table (absent keys take the defaults); ConfigError if bad."""
    return Timeouts(
        header_seconds=seconds_from(table, HEADER_TIMEOUT_KEY, DEFAULT_HEADER_SECONDS, where),
        body_seconds=seconds_from(table, BODY_TIMEOUT_KEY, DEFAULT_BODY_SECONDS, where),
    )


def seconds_from(table: dict[str, Any], key: str, default: float, where: str) -> float:
    """``table[key]`` (or ``default``) as seconds in (0, 300]; ConfigError naming it otherwise."""
    value = table.get(key, default)
    if not _is_seconds(value):
        raise ConfigError(f"{where} {key} must be a number in (0, {MAX_TIMEOUT_SECONDS:g}]")
    return float(value)


def _is_seconds(value: object) -> bool:
    # bool is an int subclass, but `true` is not a number of seconds; NaN fails both compares.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 < value <= MAX_TIMEOUT_SECONDS
