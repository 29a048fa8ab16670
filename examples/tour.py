"""A runnable tour of shared on the Rust backend: breaker, limiter, retry, timeout.

`python examples/tour.py` runs it. It simulates a flaky upstream (no network): the retry
absorbs transient errors, the breaker opens when the upstream goes down and
closes again after it recovers, the rate limiter sheds excess load, and a
timeout stops a call that hangs. Each part prints what happened and what one
hot-path operation costs on this backend.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

import shared
from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    RateLimitConfig,
    RateLimiterRegistry,
    Retry,
    RetryConfig,
    TimeoutContext,
    TimeoutError,
    TokenBucket,
)
from shared.testing import ManualClock


def per_call_ns(operation: Callable[[], object], n: int = 200_000) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        operation()
    return (time.perf_counter_ns() - start) / n


class Upstream:
    """A fake price feed: healthy, then down, then healthy again."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def quote(self, symbol: str) -> float:
        self.calls += 1
        if self.down:
            raise ConnectionError("upstream unreachable")
        return 101.25


def call_through(breaker: CircuitBreaker, upstream: Upstream) -> str:
    try:
        return f"quote: {breaker.call(upstream.quote, 'BTC-USD')}"
    except ConnectionError:
        return "upstream failed (counted)"
    except CircuitBreakerOpenError as exc:
        return f"rejected without calling upstream; retry after {exc.retry_after:.1f}s"


def breaker_demo() -> None:
    print("\n== circuit breaker")
    clock = ManualClock()
    upstream = Upstream()
    breaker = CircuitBreaker(
        "price_feed",
        CircuitBreakerConfig(failure_threshold=3, success_threshold=2, timeout=5.0),
        clock=clock,
        registry=None,
    )
    breaker.add_listener(lambda b, old, new: print(f"   {b.name}: {old.name} -> {new.name}"))
    print(f"   quote: {breaker.call(upstream.quote, 'BTC-USD')}")
    upstream.down = True
    for _ in range(5):
        print(f"   {call_through(breaker, upstream)}")
    upstream.down = False
    clock.advance(5.0)
    for _ in range(2):
        print(f"   probe: {breaker.call(upstream.quote, 'BTC-USD')}")
    print(f"   upstream saw {upstream.calls} calls; state {breaker.state.name}")
    fast = CircuitBreaker("bench", CircuitBreakerConfig(), registry=None)
    cost = per_call_ns(functools.partial(fast.call, int))
    print(f"   closed breaker.call(f): {cost:.0f} ns per call")


def limiter_demo() -> None:
    print("\n== rate limiting")
    clock = ManualClock()
    bucket = TokenBucket(RateLimitConfig(tokens_per_second=10.0, burst_size=20), clock=clock)
    granted = sum(bucket.try_acquire() for _ in range(50))
    print(f"   burst: {granted} of 50 requests granted, retry after {bucket.retry_after():.2f}s")
    clock.advance(1.0)
    print(f"   after 1s: {bucket.available_tokens:.0f} tokens available")
    registry = RateLimiterRegistry(default_config=RateLimitConfig(tokens_per_second=5.0))
    users = [f"user_{i}" for i in range(10_000)]
    allowed = sum(registry.get_limiter(u).try_acquire() for u in users)
    print(f"   registry: {allowed} first requests from {len(registry)} users allowed")
    hot = TokenBucket(RateLimitConfig(tokens_per_second=1e9, burst_size=1e9))
    print(f"   try_acquire(): {per_call_ns(hot.try_acquire):.0f} ns per call")


def retry_demo() -> None:
    print("\n== retry with backoff")
    clock = ManualClock()
    failures = iter([ConnectionError("reset by peer"), TimeoutError("slow"), None])

    def flaky() -> str:
        error = next(failures)
        if error is not None:
            raise error
        return "order accepted"

    retry = Retry(
        "submit_order",
        RetryConfig(
            max_attempts=3,
            initial_delay=0.5,
            retry_on=(ConnectionError, TimeoutError),
            on_retry=lambda attempt, exc, delay: print(
                f"   attempt {attempt} failed ({exc!r}); backing off {delay:.2f}s"
            ),
        ),
        clock=clock,
        sleep=clock.sleep,
    )
    print(f"   {retry.execute(flaky)} after {clock.monotonic():.2f}s of (simulated) backoff")
    ok = Retry("bench", RetryConfig())
    cost = per_call_ns(functools.partial(ok.execute, int))
    print(f"   retry.execute(f) that succeeds: {cost:.0f} ns per call")


def timeout_demo() -> None:
    print("\n== timeout")
    start = time.monotonic()
    try:
        with TimeoutContext(seconds=0.2):
            while True:  # a call that hangs
                time.sleep(0.01)
    except TimeoutError as exc:
        print(f"   stopped after {time.monotonic() - start:.2f}s: {exc}")


def main() -> None:
    print(f"shared {shared.__version__} on the {shared.BACKEND} backend")
    print(json.dumps(shared.backend_info(), indent=2))
    breaker_demo()
    limiter_demo()
    retry_demo()
    timeout_demo()


if __name__ == "__main__":
    main()
