"""Token buckets of the host (sans-IO clock)."""

from __future__ import annotations

import pytest

from bkv.errors import RateLimitedError
from bkv.host.ratelimit import Limit, RateLimiter

LIMIT = Limit(burst=3, per_period=1, period_ms=1000)


def test_burst_then_refusal() -> None:
    limiter = RateLimiter(LIMIT)
    for _ in range(3):
        limiter.take(b"a", 0)
    with pytest.raises(RateLimitedError):
        limiter.take(b"a", 0)
    assert limiter.retry_after_ms(b"a", 0) == 1001


def test_refill_over_time() -> None:
    limiter = RateLimiter(LIMIT)
    for _ in range(3):
        limiter.take(b"a", 0)
    with pytest.raises(RateLimitedError):
        limiter.take(b"a", 999)
    limiter.take(b"a", 1000)
    with pytest.raises(RateLimitedError):
        limiter.take(b"a", 1000)


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter(LIMIT)
    limiter.take(b"a", 0)
    for _ in range(3):
        limiter.take(b"a", 1_000_000)
    with pytest.raises(RateLimitedError):
        limiter.take(b"a", 1_000_000)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(LIMIT)
    for _ in range(3):
        limiter.take(b"a", 0)
    limiter.take(b"b", 0)
    assert limiter.retry_after_ms(b"b", 0) == 0
    assert limiter.retry_after_ms(b"unknown", 0) == 0


def test_refusals_cost_nothing_and_clock_going_back_refills_nothing() -> None:
    limiter = RateLimiter(LIMIT)
    for _ in range(3):
        limiter.take(b"a", 5000)
    for _ in range(10):
        with pytest.raises(RateLimitedError):
            limiter.take(b"a", 5500)
    with pytest.raises(RateLimitedError):
        limiter.take(b"a", 0)  # clock stepped back
    limiter.take(b"a", 6000)


def test_check_spends_nothing() -> None:
    limiter = RateLimiter(LIMIT)
    for _ in range(5):
        limiter.check(b"a", 0)
    for _ in range(3):
        limiter.take(b"a", 0)
    with pytest.raises(RateLimitedError):
        limiter.check(b"a", 0)


def test_memory_is_bounded_and_full_buckets_are_forgotten_first() -> None:
    limiter = RateLimiter(LIMIT, max_keys=2)
    limiter.take(b"a", 0)
    limiter.take(b"b", 0)
    with pytest.raises(RateLimitedError):
        limiter.take(b"c", 0)  # both buckets are in use: refuse rather than forget
    limiter.take(b"c", 10_000)  # by now a and b have refilled and are dropped
    assert len(limiter) == 1


@pytest.mark.parametrize(
    ("burst", "per_period", "period_ms"), [(0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 1, 1)]
)
def test_limit_rejects_non_positive_values(burst: int, per_period: int, period_ms: int) -> None:
    with pytest.raises(ValueError):
        Limit(burst, per_period, period_ms)


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(LIMIT, max_keys=0)
