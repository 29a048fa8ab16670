"""CircuitBreaker under threads: exact counts, one probe at a time, calls run in parallel."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitBreakerState,
)
from shared.testing import ManualClock

THREADS = 8
CALLS = 10_000


def run_in_threads(count: int, target: object) -> None:
    barrier = threading.Barrier(count)

    def start() -> None:
        barrier.wait(timeout=10)
        target()  # type: ignore[operator]

    threads = [threading.Thread(target=start) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)


def test_mixed_calls_from_8_threads_add_up_exactly() -> None:
    """8 threads x 10,000 calls: successes, failures and neutral calls are all counted."""
    breaker = CircuitBreaker(
        "threads",
        CircuitBreakerConfig(failure_threshold=1_000_000, expected_exceptions=(ConnectionError,)),
        registry=None,
    )
    errors = (ConnectionError("down"), KeyError("neutral"))

    def ok() -> int:
        return 1

    def failing(i: int) -> None:
        raise errors[i % 2]

    def worker() -> None:
        for i in range(CALLS):
            if i % 4 == 0:
                with contextlib.suppress(ConnectionError, KeyError):
                    breaker.call(failing, i // 4)
            else:
                breaker.call(ok)

    run_in_threads(THREADS, worker)
    total = THREADS * CALLS
    counters = breaker.counters()
    assert counters["calls_succeeded"] == breaker.success_count == total * 3 // 4
    assert counters["calls_failed"] == breaker.failure_count == total // 8
    assert counters["calls_ignored"] == total // 8
    assert breaker.state is CircuitBreakerState.CLOSED


def test_half_open_admits_exactly_one_probe_at_a_time() -> None:
    """With half_open_max_calls=1, concurrent callers never run two probes at once."""
    clock = ManualClock()
    breaker = CircuitBreaker(
        "probe",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1_000, timeout=1.0),
        clock=clock,
        registry=None,
    )
    with pytest.raises(ConnectionError):
        breaker.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    clock.advance(1)
    lock = threading.Lock()
    running = [0]
    most = [0]
    admitted = [0]
    rejected: list[float] = []

    def probe() -> None:
        with lock:
            running[0] += 1
            admitted[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1

    def attempt() -> None:
        try:
            breaker.call(probe)
        except CircuitBreakerOpenError as exc:
            with lock:
                rejected.append(exc.retry_after)

    def worker() -> None:
        for _ in range(50):
            attempt()

    run_in_threads(4, worker)
    assert most[0] == 1
    assert admitted[0] >= 1
    assert admitted[0] + len(rejected) == 200
    assert set(rejected) <= {0.0}
    assert breaker.state is CircuitBreakerState.HALF_OPEN


def test_a_sleeping_protected_function_runs_in_two_threads_at_once() -> None:
    """The breaker holds no lock (and the core keeps no GIL) while the function sleeps."""
    breaker = CircuitBreaker("parallel", registry=None)
    inside = threading.Barrier(2)

    @breaker.protect
    def work() -> None:
        # Both calls must be inside at the same time, or the barrier times out.
        inside.wait(timeout=5)
        time.sleep(0.05)

    started = time.monotonic()
    run_in_threads(2, work)
    assert time.monotonic() - started < 5
    assert breaker.success_count == 2
