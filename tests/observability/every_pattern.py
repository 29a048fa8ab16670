"""A process that uses every pattern, for scrape tests (also run as a script by them).

``use_every_pattern()`` leaves known counts in the ``shared_*`` families and
returns the objects to keep alive. As a script it does that, serves
``/metrics`` on a free loopback port, prints the port and waits until its
standard input closes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

from shared.observability import MetricsServer, register_idempotency_store
from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    RateLimitConfig,
    RateLimiterRegistry,
    Retry,
    RetryConfig,
    TimeoutContext,
    TokenBucket,
)
from shared.resilience import TimeoutError as SharedTimeoutError
from shared.resilience.retry import instant_retries


class FakeIdempotencyStore:
    """A store with the outcome counts the idempotency stores keep."""

    def __init__(self, name: str) -> None:
        self.name = name

    def outcome_counts(self) -> dict[str, int]:
        return {"executed": 7, "replayed": 3, "in_progress": 1, "mismatch": 2, "errors": 0}


def _fail() -> None:
    raise ConnectionError("down")


def use_every_pattern() -> list[Any]:
    """Breaker "payments" open after 3 failures and 2 rejections; retry "quotes" with one
    success, one recovery and one give-up; bucket "orders" 5 granted, 2 rejected;
    registry "users" 40 keys, 40 granted and 40 rejected; one timeout fired; store
    "orders-store"."""
    breaker = CircuitBreaker(
        "payments", CircuitBreakerConfig(failure_threshold=3, timeout=600.0), registry=None
    )
    breaker.call(lambda: None)
    for _ in range(3):
        with contextlib.suppress(ConnectionError):
            breaker.call(_fail)
    for _ in range(2):
        with contextlib.suppress(Exception):
            breaker.call(lambda: None)

    retry = Retry("quotes", RetryConfig(max_attempts=3))
    attempts = iter([None, ConnectionError, None])

    def flaky() -> str:
        error = next(attempts, ConnectionError)
        if error is not None:
            raise error("down")
        return "ok"

    with instant_retries():
        retry.execute(flaky)
        retry.execute(flaky)
        with contextlib.suppress(ConnectionError):
            retry.execute(flaky)

    bucket = TokenBucket(RateLimitConfig(tokens_per_second=1e-6, burst_size=5), name="orders")
    for _ in range(7):
        bucket.try_acquire()
    users = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1e-6, burst_size=1), name="users")
    for index in range(80):
        users.get_limiter(f"user-{index % 40}").try_acquire()

    with contextlib.suppress(SharedTimeoutError), TimeoutContext(0.01):
        time.sleep(1.0)

    store = FakeIdempotencyStore("orders-store")
    register_idempotency_store(store)
    return [breaker, retry, bucket, users, store]


def main() -> None:
    keep = use_every_pattern()
    server = MetricsServer("127.0.0.1", 0).start_in_background()
    print(server.port, flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)
    server.stop()
    del keep


if __name__ == "__main__":
    main()
