"""Token-bucket rate limiting (sans-IO: the caller passes the clock).

A bucket holds at most ``burst`` tokens and refills at ``rate_per_ms``; each
request takes one token or is refused with :class:`bkv.errors.RateLimitedError`
saying how long to wait. Buckets are kept per key (account id, record id);
memory is bounded by ``max_keys``: when full, buckets that have refilled
completely (indistinguishable from a fresh bucket) are dropped, and if none
can be dropped the limiter refuses new keys rather than forget old ones (a
forgotten bucket would hand out a fresh burst).
"""

from __future__ import annotations

from dataclasses import dataclass

from bkv.errors import RateLimitedError

DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True)
class Limit:
    """``burst`` requests at once, then ``per_period`` requests every ``period_ms``."""

    burst: int
    per_period: int
    period_ms: int

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_period < 1 or self.period_ms < 1:
            raise ValueError("burst, per_period and period_ms must be positive")


@dataclass
class _Bucket:
    tokens: float
    updated_ms: int


class RateLimiter:
    """Token buckets keyed by bytes; :meth:`take` spends one token or raises."""

    def __init__(self, limit: Limit, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.limit = limit
        self._rate = limit.per_period / limit.period_ms
        self._max_keys = max_keys
        self._buckets: dict[bytes, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, bucket: _Bucket, now_ms: int) -> float:
        elapsed = max(0, now_ms - bucket.updated_ms)  # a clock step backwards refills nothing
        return min(float(self.limit.burst), bucket.tokens + elapsed * self._rate)

    def check(self, key: bytes, now_ms: int) -> None:
        """Raise :class:`RateLimitedError` if :meth:`take` would; spend nothing."""
        bucket = self._buckets.get(key)
        if bucket is not None and self._refilled(bucket, now_ms) < 1.0:
            raise self._refusal(bucket, now_ms)

    def take(self, key: bytes, now_ms: int) -> None:
        """Spend one token of ``key``'s bucket, or raise :class:`RateLimitedError`."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now_ms)
            bucket = _Bucket(float(self.limit.burst), now_ms)
            self._buckets[key] = bucket
        tokens = self._refilled(bucket, now_ms)
        bucket.tokens, bucket.updated_ms = tokens, max(now_ms, bucket.updated_ms)
        if tokens < 1.0:
            raise self._refusal(bucket, now_ms)
        bucket.tokens = tokens - 1.0

    def retry_after_ms(self, key: bytes, now_ms: int) -> int:
        """How long until ``key``'s bucket holds a token again (0 if it does now)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0
        missing = 1.0 - self._refilled(bucket, now_ms)
        return 0 if missing <= 0 else int(missing / self._rate) + 1

    def _refusal(self, bucket: _Bucket, now_ms: int) -> RateLimitedError:
        missing = 1.0 - self._refilled(bucket, now_ms)
        return RateLimitedError(f"rate limit reached; retry in {int(missing / self._rate) + 1} ms")

    def _make_room(self, now_ms: int) -> None:
        if len(self._buckets) < self._max_keys:
            return
        full = [
            key
            for key, bucket in self._buckets.items()
            if self._refilled(bucket, now_ms) >= self.limit.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            raise RateLimitedError("too many clients are rate-limited right now; retry later")
